"""The user profile: a fold of the user's event log with exact exponential decay.

With decay rate λ = ln 2 / half-life, the profile at reference time T is

    S(T) = Σ_i w_i · v_i · exp(−λ (T − t_i)),    T = the latest event time seen,

kept incrementally as `S ← S·exp(−λ(t−T)) + w·v, T ← t` for an event newer than T,
and `S ← S + w·v·exp(−λ(T−t))` for an older one. The sum does not depend on the order
the events arrive in, so a profile rebuilt from the log equals the incrementally
updated one (tested, including shuffled logs). Positive and negative feedback have
separate sums; the decayed masses are the confidence that gates personalization.

Sums are float64: a profile folds thousands of events and float32 drift would make a
rebuild differ from the live profile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from pertinent.types import Vector

__all__ = ["ProfileView", "UserProfile"]

F64 = npt.NDArray[np.float64]
# Bytes of the event matrix widened to float64 at a time by a fold (see `_fold`).
_FOLD_BLOCK_BYTES = 512 * 1024


def _fold_block(dim: int) -> int:
    """Rows per widened block: under 1 MiB, the mmap threshold a LanceDB store sets
    (stores/allocator.py), so each block reuses heap memory instead of mapping fresh
    pages. 1,024 rows at 384-d (3 MiB) took 22.5 ms to fold a 12,000-event log beside a
    store against 5.1-5.5 ms at 128-256 rows (interleaved, docs/benchmarks.md)."""
    return max(1, _FOLD_BLOCK_BYTES // (8 * max(1, dim)))


@dataclass
class _Centroid:
    total: F64
    mass: float


@dataclass(frozen=True)
class ProfileView:
    """The profile as of a moment: unit directions and decayed masses.

    `gate = n / (n + n0)` with n the decayed mass of all feedback; a user with no
    history has gate 0 and gets plain search.
    """

    positive: Vector | None
    negative: Vector | None
    positive_mass: float
    negative_mass: float
    gate: float
    interests: tuple[tuple[Vector, float], ...] = field(default=())

    @property
    def is_cold(self) -> bool:
        return self.positive is None and self.negative is None


class UserProfile:
    """Mutable, per-user accumulator. Not thread-safe: the caller holds a lock per user."""

    def __init__(
        self,
        dim: int,
        *,
        half_life_days: float,
        interests: int = 1,
        interest_threshold: float = 0.35,
    ) -> None:
        self.dim = dim
        self.rate = math.log(2.0) / (half_life_days * 86400.0)
        self.max_interests = interests
        self.interest_threshold = interest_threshold
        self.ref_time: float | None = None
        self.positive: F64 = np.zeros(dim, dtype=np.float64)
        self.negative: F64 = np.zeros(dim, dtype=np.float64)
        self.positive_mass = 0.0
        self.negative_mass = 0.0
        self.events = 0
        self._centroids: list[_Centroid] = []

    def add(self, vector: Vector, weight: float, when: datetime) -> None:
        """Fold one event. `weight` > 0 is positive feedback, < 0 negative."""
        self._add(vector, weight, when.timestamp())

    def _add(self, vector: npt.ArrayLike, weight: float, t: float) -> None:
        if weight == 0.0:
            return
        v = np.asarray(vector, dtype=np.float64)
        if self.ref_time is None:
            self.ref_time = t
        if t > self.ref_time:
            self._decay(math.exp(-self.rate * (t - self.ref_time)))
            self.ref_time = t
            coef = 1.0
        else:
            coef = math.exp(-self.rate * (self.ref_time - t))
        w = abs(weight) * coef
        self.events += 1
        if weight > 0:
            self.positive += w * v
            self.positive_mass += w
            if self.max_interests > 1:
                self._assign(v, w)
        else:
            self.negative += w * v
            self.negative_mass += w

    def _decay(self, factor: float) -> None:
        self.positive *= factor
        self.negative *= factor
        self.positive_mass *= factor
        self.negative_mass *= factor
        for c in self._centroids:
            c.total *= factor
            c.mass *= factor

    def _assign(self, v: F64, w: float) -> None:
        """Online clustering into at most K interests. Unlike the sums, the assignment
        depends on arrival order; `rebuild` folds in time order, so a live profile fed in
        time order has the same interests as its rebuild."""
        best, best_cos = -1, -2.0
        for i, c in enumerate(self._centroids):
            norm = float(np.linalg.norm(c.total))
            cos = float(c.total @ v) / norm if norm > 0 else -1.0
            if cos > best_cos:
                best, best_cos = i, cos
        if best < 0 or (
            best_cos < self.interest_threshold and len(self._centroids) < self.max_interests
        ):
            self._centroids.append(_Centroid(total=w * v.copy(), mass=w))
        else:
            self._centroids[best].total += w * v
            self._centroids[best].mass += w

    @classmethod
    def rebuild(
        cls,
        dim: int,
        events: Iterable[tuple[Vector, float, datetime]],
        *,
        half_life_days: float,
        interests: int = 1,
        interest_threshold: float = 0.35,
    ) -> UserProfile:
        """Refold a profile from its log (e.g. after a model change or a crash)."""
        log = sorted(events, key=lambda e: e[2])
        vectors = (
            np.stack([np.asarray(v, dtype=np.float64) for v, _, _ in log])
            if log
            else np.zeros((0, dim), dtype=np.float64)
        )
        return cls.from_arrays(
            dim,
            vectors,
            np.fromiter((w for _, w, _ in log), dtype=np.float64, count=len(log)),
            np.fromiter((t.timestamp() for _, _, t in log), dtype=np.float64, count=len(log)),
            half_life_days=half_life_days,
            interests=interests,
            interest_threshold=interest_threshold,
        )

    @classmethod
    def from_arrays(
        cls,
        dim: int,
        vectors: npt.NDArray[np.floating],
        weights: F64,
        times: F64,
        *,
        half_life_days: float,
        interests: int = 1,
        interest_threshold: float = 0.35,
    ) -> UserProfile:
        """`rebuild` from a log held as columns (`Store.read_event_arrays`): `vectors`
        (n, dim), `weights` and `times` (POSIX seconds) of length n, in any order."""
        profile = cls(
            dim,
            half_life_days=half_life_days,
            interests=interests,
            interest_threshold=interest_threshold,
        )
        if profile.max_interests > 1:
            # Interest clustering depends on arrival order: fold one event at a time, in
            # time order (stable, so ties keep the log's order).
            for n in np.argsort(times, kind="stable"):
                profile._add(vectors[n], float(weights[n]), float(times[n]))
        else:
            profile._fold(vectors, weights, times)
        return profile

    def add_many(self, vectors: npt.NDArray[np.floating], weights: F64, times: F64) -> None:
        """Fold a batch of events (`vectors` (n, dim), `weights`, `times` in POSIX
        seconds). Same result as `add` on each in turn, up to rounding (tested); with one
        interest it is one matrix product instead of n Python calls."""
        if self.max_interests > 1:
            for n in range(len(weights)):
                self._add(vectors[n], float(weights[n]), float(times[n]))
        else:
            self._fold(vectors, weights, times)

    def _fold(self, vectors: npt.NDArray[np.floating], weights: F64, times: F64) -> None:
        """Fold events into a single-interest profile at once: the closed form
        Σ w·v·exp(−λ(T−t)) with numpy, which equals the incremental fold up to rounding
        (tested) and is what makes rebuilding a long log, or a big batch, cheap."""
        keep = weights != 0.0
        if not keep.any():
            return
        ref = float(times[keep].max())
        if self.ref_time is not None:
            if ref > self.ref_time:
                self._decay(math.exp(-self.rate * (ref - self.ref_time)))
            else:
                ref = self.ref_time
        # Masses of dropped (zero-weight) and other-sign events are 0 in each sum, so the
        # (n, dim) matrix is never copied.
        mass = np.abs(weights) * np.exp(-self.rate * (ref - np.where(keep, times, ref)))
        pos = np.where(weights > 0, mass, 0.0)
        neg = np.where(weights < 0, mass, 0.0)
        self.ref_time = ref
        self.events += int(keep.sum())
        # Both sums at once, (2, n) @ (n, dim). Vectors are widened to float64, as `add`
        # does, so the sums do not drift from the live fold; block by block, since
        # widening a 10,000-event log whole writes a 30 MB copy (see `_fold_block`).
        masses = np.stack([pos, neg])
        sums = np.zeros((2, self.dim), dtype=np.float64)
        block = _fold_block(self.dim)
        for start in range(0, len(masses[0]), block):
            stop = start + block
            sums += masses[:, start:stop] @ np.asarray(vectors[start:stop], dtype=np.float64)
        self.positive = self.positive + sums[0]
        self.negative = self.negative + sums[1]
        self.positive_mass += float(pos.sum())
        self.negative_mass += float(neg.sum())

    def view(self, now: datetime, n0: float) -> ProfileView:
        """The profile decayed to `now` (never forward: a clock behind the log is ignored)."""
        decay = 1.0
        if self.ref_time is not None:
            decay = math.exp(-self.rate * max(0.0, now.timestamp() - self.ref_time))
        pos_mass = self.positive_mass * decay
        neg_mass = self.negative_mass * decay
        n = pos_mass + neg_mass
        gate = n / (n + n0) if n > 0 else 0.0

        def unit(x: F64) -> Vector | None:
            norm = float(np.linalg.norm(x))
            return (x / norm).astype(np.float32) if norm > 1e-12 else None

        interests = tuple(
            (u, c.mass / self.positive_mass)
            for c in self._centroids
            if self.positive_mass > 0 and (u := unit(c.total)) is not None
        )
        return ProfileView(
            positive=unit(self.positive) if self.positive_mass > 0 else None,
            negative=unit(self.negative) if self.negative_mass > 0 else None,
            positive_mass=pos_mass,
            negative_mass=neg_mass,
            gate=gate,
            interests=interests,
        )

    def state(self) -> tuple[F64, F64, float, float]:
        """The sums decayed to the reference time; used by tests to compare folds."""
        return self.positive.copy(), self.negative.copy(), self.positive_mass, self.negative_mass
