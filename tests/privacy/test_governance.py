"""Consent and retention, driven by a controllable clock (`now=` / explicit timestamps)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS

import pertinent
from pertinent import Event
from pertinent.memory.profiles import UserProfile

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def test_opt_out_gives_exactly_plain_search_and_stores_nothing(
    loaded: pertinent.Pertinent,
) -> None:
    q = "which framework should I use for retrieval?"
    li = loaded.search("LlamaIndex query engines node postprocessors")[0]
    loaded.record("olga", [Event(kind="accept", item_id=li.id)] * 5)
    loaded.add_turn("olga", "s", "user", "tell me about the Rust borrow checker")
    personalized = loaded.search(q, user_id="olga", session_id="s")
    assert personalized[0].explain.user_gate > 0
    plain = loaded.search(q)

    loaded.set_consent("olga", personalization=False)
    opted_out = loaded.search(q, user_id="olga", session_id="s")
    assert [(r.id, r.score) for r in opted_out] == [(r.id, r.score) for r in plain]
    assert all(r.explain.user_gate == 0 and r.explain.session_gate == 0 for r in opted_out)
    n_events = len(loaded.store.read_events("olga"))
    assert loaded.record("olga", Event(kind="open", item_id=li.id)) == 0
    loaded.retrieve("another question", user_id="olga", session_id="s")
    loaded.add_turn("olga", "s", "assistant", "an answer")
    assert len(loaded.store.read_events("olga")) == n_events
    assert len(loaded.history("olga", "s")) == 1

    # persisted: a new process sees the opt-out
    fresh = pertinent.Pertinent(loaded.store, loaded.embedder, loaded.settings)
    assert fresh.consent("olga") == pertinent.Consent(personalization=False, memory=True)
    assert [r.id for r in fresh.search(q, user_id="olga")] == [r.id for r in plain]
    loaded.set_consent("olga", personalization=True)
    assert loaded.search(q, user_id="olga")[0].explain.user_gate > 0


def test_memory_opt_out_refuses_owned_documents(loaded: pertinent.Pertinent) -> None:
    loaded.set_consent("max", memory=False)
    with pytest.raises(pertinent.ConsentWithheld, match="opted out of long-term memory"):
        loaded.ingest({"id": "max-note", "text": "my notes"}, owner="max", show_progress=False)
    assert "max-note" not in loaded.store.document_ids()
    assert loaded.consent("max").personalization is True


def test_retention_purges_old_rows_and_refolds_the_profile(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    settings = pertinent.Settings(retention_events_days=180, retention_turns_days=30)
    px = pertinent.open(tmp_path / "r", embedder=embedder, settings=settings)
    px.ingest(CORPUS, show_progress=False)
    ids = [f"{c['id']}#0" for c in CORPUS]
    ages = [400, 200, 179, 90, 10, 1]  # days before NOW
    px.record(
        "rita",
        [
            Event(kind="open", item_id=ids[i], timestamp=NOW - timedelta(days=a))
            for i, a in enumerate(ages)
        ],
    )
    px.add_turn("rita", "s", "user", "an old question", timestamp=NOW - timedelta(days=45))
    px.add_turn("rita", "s", "user", "a recent question", timestamp=NOW - timedelta(days=2))
    before = px.profile("rita", now=NOW)

    report = px.apply_retention(now=NOW)
    assert report.deleted == {"events": 2, "turns": 1}
    assert report.cutoffs["events"] == NOW - timedelta(days=180)
    kept = px.store.read_events("rita")
    assert [e.item_id for e in kept] == ids[2:]
    assert [t.text for t in px.history("rita", "s")] == ["a recent question"]

    after = px.profile("rita", now=NOW)
    expected = UserProfile.rebuild(
        embedder.dim,
        [(e.vector, e.weight, e.timestamp) for e in kept],
        half_life_days=settings.half_life_days,
    ).view(NOW, settings.confidence_n0)
    assert after.positive is not None and expected.positive is not None
    np.testing.assert_allclose(after.positive, expected.positive, atol=1e-6)
    assert after.positive_mass == pytest.approx(expected.positive_mass)
    assert after.positive_mass < before.positive_mass
    assert px.apply_retention(now=NOW).deleted == {"events": 0, "turns": 0}


def test_retention_off_by_default(px: pertinent.Pertinent) -> None:
    assert px.apply_retention(now=NOW).deleted == {}


def test_forget_leaves_no_marker_or_vector_bytes_on_disk(loaded: pertinent.Pertinent) -> None:
    marker = "zqvmarker4417"
    loaded.ingest(
        {"id": "z-note", "text": f"{marker} private diary"}, owner="zoe", show_progress=False
    )
    loaded.record("zoe", Event(kind="query", text=f"where did I put {marker}"))
    loaded.add_turn("zoe", "s", "user", f"remember {marker} for me")
    loaded.set_consent("zoe", memory=True)
    vectors = [e.vector for e in loaded.store.read_events("zoe")]
    vectors += [t.vector for t in loaded.store.read_turns("zoe", "s")]
    vectors += [c.vector for c in loaded.store.get_chunks(["z-note#0"], user_id="zoe")]
    needles = [marker.encode()] + [
        np.asarray(v, dtype=np.float32).tobytes()[:64] for v in vectors if v is not None
    ]
    assert len(needles) == 4

    def hits() -> list[str]:
        root = Path(loaded.settings.path)
        blobs = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
        return [f"{p.name}:{i}" for p, b in blobs.items() for i, n in enumerate(needles) if n in b]

    assert hits(), "the scan must see the data before forgetting, or it proves nothing"
    receipt = loaded.forget_user("zoe")
    assert receipt.total >= 3
    assert hits() == []
