from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pertinent.memory import profiles
from pertinent.memory.profiles import UserProfile
from pertinent.memory.sessions import SessionState

DIM = 8
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def unit(i: int, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i % dim] = 1.0
    return v


events_strategy = st.lists(
    st.tuples(
        st.lists(st.floats(-1, 1, allow_nan=False), min_size=DIM, max_size=DIM),
        st.floats(-3, 3, allow_nan=False).filter(lambda w: abs(w) > 1e-3),
        st.integers(0, 400 * 24),  # hours after T0
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events=events_strategy, seed=st.integers(0, 10_000), half_life=st.floats(0.5, 365))
def test_incremental_equals_rebuild_in_any_order(
    events: list[tuple[list[float], float, int]], seed: int, half_life: float
) -> None:
    log = [(np.asarray(v, dtype=np.float32), w, T0 + timedelta(hours=h)) for v, w, h in events]
    arrival = log[:]
    random.Random(seed).shuffle(arrival)  # out-of-order arrival
    live = UserProfile(DIM, half_life_days=half_life)
    for v, w, t in arrival:
        live.add(v, w, t)
    rebuilt = UserProfile.rebuild(DIM, log, half_life_days=half_life)
    lp, ln, lpm, lnm = live.state()
    rp, rn, rpm, rnm = rebuilt.state()
    assert live.ref_time == rebuilt.ref_time
    np.testing.assert_allclose(lp, rp, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ln, rn, rtol=1e-9, atol=1e-12)
    assert math.isclose(lpm, rpm, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(lnm, rnm, rel_tol=1e-9, abs_tol=1e-12)
    # and both equal the closed form Σ w·v·exp(−λ(T−t))
    rate = math.log(2) / (half_life * 86400)
    t_ref = max(t for _, _, t in log).timestamp()
    expected = sum(
        (
            abs(w) * math.exp(-rate * (t_ref - t.timestamp())) * v.astype(np.float64)
            for v, w, t in log
            if w > 0
        ),
        np.zeros(DIM),
    )
    np.testing.assert_allclose(lp, expected, rtol=1e-9, atol=1e-12)


def test_half_life_halves_the_mass_and_gate_follows() -> None:
    p = UserProfile(DIM, half_life_days=30)
    p.add(unit(0), 10.0, T0)
    assert p.view(T0, n0=5).positive_mass == 10.0
    later = p.view(T0 + timedelta(days=30), n0=5)
    assert math.isclose(later.positive_mass, 5.0, rel_tol=1e-12)
    assert math.isclose(later.gate, 5.0 / 10.0)
    much_later = p.view(T0 + timedelta(days=300), n0=5)
    assert much_later.gate < 0.01
    # a clock behind the log does not inflate the profile
    assert p.view(T0 - timedelta(days=10), n0=5).positive_mass == 10.0


def test_drift_newer_interest_dominates() -> None:
    p = UserProfile(DIM, half_life_days=7)
    for d in range(10):
        p.add(unit(0), 1.0, T0 + timedelta(days=d))
    for d in range(60, 65):
        p.add(unit(1), 1.0, T0 + timedelta(days=d))
    view = p.view(T0 + timedelta(days=65), n0=5)
    assert view.positive is not None
    assert view.positive[1] > view.positive[0] * 10


def test_negative_feedback_has_its_own_sum() -> None:
    p = UserProfile(DIM, half_life_days=30)
    p.add(unit(0), 2.0, T0)
    p.add(unit(1), -2.0, T0)
    view = p.view(T0, n0=5)
    assert view.positive is not None and view.negative is not None
    assert view.positive[0] == 1.0 and view.positive[1] == 0.0
    assert view.negative[1] == 1.0 and view.negative[0] == 0.0
    assert view.gate == 4.0 / 9.0


def test_cold_profile() -> None:
    view = UserProfile(DIM, half_life_days=30).view(T0, n0=5)
    assert view.is_cold and view.gate == 0.0


def test_multi_interest_keeps_separate_tastes() -> None:
    p = UserProfile(DIM, half_life_days=30, interests=3, interest_threshold=0.5)
    for i in range(6):
        p.add(unit(0) if i % 2 == 0 else unit(3), 1.0, T0 + timedelta(hours=i))
    view = p.view(T0 + timedelta(hours=6), n0=5)
    dirs = sorted(int(np.argmax(u)) for u, _ in view.interests)
    assert dirs == [0, 3]
    assert all(math.isclose(share, 0.5, rel_tol=0.05) for _, share in view.interests)
    rebuilt = UserProfile.rebuild(
        DIM,
        [(unit(0) if i % 2 == 0 else unit(3), 1.0, T0 + timedelta(hours=i)) for i in range(6)],
        half_life_days=30,
        interests=3,
        interest_threshold=0.5,
    )
    assert sorted(int(np.argmax(u)) for u, _ in rebuilt.view(T0, n0=5).interests) == [0, 3]


@settings(max_examples=100, deadline=None)
@given(vectors=st.lists(st.integers(0, DIM - 1), min_size=1, max_size=30), h=st.floats(0.5, 10))
def test_session_state_matches_closed_form(vectors: list[int], h: float) -> None:
    s = SessionState(DIM, half_life_turns=h)
    for i in vectors:
        s.add(unit(i))
    g = 0.5 ** (1 / h)
    n = len(vectors)
    expected = sum((g ** (n - 1 - k)) * unit(i).astype(np.float64) for k, i in enumerate(vectors))
    view = s.view(n0=1.0)
    assert view.vector is not None
    np.testing.assert_allclose(view.vector, expected / np.linalg.norm(expected), atol=1e-6)
    mass = sum(g**k for k in range(n))
    assert math.isclose(view.gate, mass / (mass + 1.0), rel_tol=1e-9)


def test_session_recent_turns_dominate() -> None:
    s = SessionState(DIM, half_life_turns=1)
    for _ in range(3):
        s.add(unit(0))
    for _ in range(3):
        s.add(unit(5))
    v = s.view(1.0).vector
    assert v is not None and v[5] > v[0] * 3


@settings(max_examples=100, deadline=None)
@given(events=events_strategy, seed=st.integers(0, 10_000), interests=st.integers(1, 3))
def test_from_arrays_equals_the_time_ordered_fold(
    events: list[tuple[list[float], float, int]], seed: int, interests: int
) -> None:
    """The column-wise rebuild (any row order) matches a live profile fed in time order,
    interests included; zero weights are skipped as `add` skips them."""
    log = [(np.asarray(v, dtype=np.float32), w, T0 + timedelta(hours=h)) for v, w, h in events]
    log.append((unit(3), 0.0, T0 + timedelta(hours=500 * 24)))  # newest, but weightless
    live = UserProfile(DIM, half_life_days=30, interests=interests)
    for v, w, t in sorted(log, key=lambda e: e[2]):
        live.add(v, w, t)
    rows = log[:]
    random.Random(seed).shuffle(rows)
    rebuilt = UserProfile.from_arrays(
        DIM,
        np.stack([v for v, _, _ in rows]),
        np.array([w for _, w, _ in rows]),
        np.array([t.timestamp() for _, _, t in rows]),
        half_life_days=30,
        interests=interests,
    )
    assert rebuilt.ref_time == live.ref_time and rebuilt.events == live.events == len(events)
    for a, b in zip(live.state(), rebuilt.state(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # Ties in time may fold in another order; compare interests only when times differ.
    if interests > 1 and len({h for _, _, h in events}) == len(events):
        now = T0 + timedelta(days=500)
        lv, rv = live.view(now, 1.0), rebuilt.view(now, 1.0)
        assert len(lv.interests) == len(rv.interests)
        for (lu, ls), (ru, rs) in zip(lv.interests, rv.interests, strict=True):
            np.testing.assert_allclose(lu, ru, atol=1e-5)
            assert math.isclose(ls, rs, rel_tol=1e-9)


@settings(max_examples=100, deadline=None)
@given(events=events_strategy, split=st.integers(0, 30), interests=st.integers(1, 3))
def test_add_many_equals_adding_one_by_one(
    events: list[tuple[list[float], float, int]], split: int, interests: int
) -> None:
    """A batch folded into a profile that already has events (older or newer than the
    batch, in any order) ends where adding the same events one at a time ends."""
    log = [(np.asarray(v, dtype=np.float32), w, T0 + timedelta(hours=h)) for v, w, h in events]
    before, batch = log[: split % (len(log) + 1)], log[split % (len(log) + 1) :]
    one_by_one = UserProfile(DIM, half_life_days=30, interests=interests)
    batched = UserProfile(DIM, half_life_days=30, interests=interests)
    for v, w, t in before:
        one_by_one.add(v, w, t)
        batched.add(v, w, t)
    for v, w, t in batch:
        one_by_one.add(v, w, t)
    if batch:
        batched.add_many(
            np.stack([v for v, _, _ in batch]),
            np.array([w for _, w, _ in batch]),
            np.array([t.timestamp() for _, _, t in batch]),
        )
    assert batched.ref_time == one_by_one.ref_time and batched.events == one_by_one.events
    for a, b in zip(one_by_one.state(), batched.state(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_a_log_of_several_fold_blocks_folds_like_one_event_at_a_time() -> None:
    """The fold widens the event matrix block by block (`_fold_block` rows); a log that
    spans several blocks, the last one partial, sums exactly as the live fold does."""
    n = 2 * profiles._fold_block(384) + 57
    rng = np.random.default_rng(9)
    vectors = rng.normal(size=(n, 384)).astype(np.float32)
    weights = rng.choice([-1.0, 0.0, 0.5, 2.0], size=n)
    hours = rng.integers(0, 400 * 24, size=n)
    live = UserProfile(384, half_life_days=30)
    for i in np.argsort(hours, kind="stable"):
        live.add(vectors[i], float(weights[i]), T0 + timedelta(hours=int(hours[i])))
    times = np.array([(T0 + timedelta(hours=int(h))).timestamp() for h in hours])
    rebuilt = UserProfile.from_arrays(384, vectors, weights, times, half_life_days=30)
    grown = UserProfile(384, half_life_days=30)
    grown.add_many(vectors[:100], weights[:100], times[:100])
    grown.add_many(vectors[100:], weights[100:], times[100:])
    assert rebuilt.events == live.events == grown.events == int((weights != 0).sum())
    for other in (rebuilt, grown):
        for a, b in zip(live.state(), other.state(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
