"""Embedding versions: re-embed side by side, switch, roll back to exactly the original
results; a query never mixes versions; forgetting reaches every version.

The second model is MiniLM cut to its first 192 dimensions and renormalised (a
Matryoshka-style truncation): a genuinely different embedding space, built offline from
the one model on disk. It is a plain `Embedder`, not a fake of anything."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS

import pertinent
from pertinent import Event, LongTermMemory, MemoryTurn
from pertinent.types import Vector
from pertinent.versions import load_registry

QUERIES = ("how do I rotate API keys?", "which framework for retrieval?", "tax when I sell")
MARKER = "vqmarker5521"
# Profiles decay with time: every comparison of scores is made at the same moment.
NOW = datetime.now(timezone.utc) + timedelta(hours=1)


class Truncated:
    """The first `dims` dimensions of another embedder's vectors, renormalised."""

    def __init__(self, inner: pertinent.Embedder, dims: int = 192) -> None:
        self.inner = inner
        self.dims = dims

    @property
    def model_id(self) -> str:
        return f"{self.inner.model_id}/first{self.dims}"

    @property
    def dim(self) -> int:
        return self.dims

    @property
    def max_tokens(self) -> int:
        return self.inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        cut = np.asarray(self.inner.embed_documents(texts))[:, : self.dims]
        return (cut / np.linalg.norm(cut, axis=1, keepdims=True)).astype(np.float32)

    def embed_query(self, text: str) -> Vector:
        cut = np.asarray(self.inner.embed_query(text))[: self.dims]
        return (cut / np.linalg.norm(cut)).astype(np.float32)


class Hooked:
    """The same model, with a hook run inside the next `embed_query` (mid-query)."""

    def __init__(self, inner: pertinent.Embedder) -> None:
        self.inner = inner
        self.hook: Callable[[], object] | None = None

    model_id = property(lambda self: self.inner.model_id)
    dim = property(lambda self: self.inner.dim)
    max_tokens = property(lambda self: self.inner.max_tokens)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> Vector:
        vec = self.inner.embed_query(text)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return vec


def _populate(px: pertinent.Pertinent, user: str = "ann") -> None:
    px.ingest(CORPUS, show_progress=False)
    li = px.search("LlamaIndex query engines node postprocessors")[0]
    px.record(user, [Event(kind="accept", item_id=li.id)] * 3)
    px.record(user, Event(kind="query", text=f"{MARKER} how does the Rust borrow checker work"))
    px.add_turn(user, "s", "user", f"I am writing Rust code {MARKER}")
    px.ingest({"id": f"{user}-note", "text": f"{MARKER} notes on retrieval"}, owner=user)
    LongTermMemory(px).add_conversation(
        user,
        [
            MemoryTurn(text="Where did you move from?", role="assistant", turn_id="a"),
            MemoryTurn(text=f"Sweden, four years ago {MARKER}", turn_id="b"),
        ],
        session_id="m",
    )
    px.set_consent("olaf", personalization=False)


def _results(px: pertinent.Pertinent) -> list[list[tuple[str, float]]]:
    return [
        [(r.id, r.score) for r in px.search(q, user_id="ann", session_id="s", now=NOW)]
        for q in QUERIES
    ]


def test_reembed_switches_and_rollback_gives_exactly_the_original_results(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    root = tmp_path / "store"
    with pertinent.open(root, embedder=embedder) as px:
        _populate(px)
        before = _results(px)
        memory = LongTermMemory(px).search("where did I live before?", user_id="ann")
        assert any("Sweden" in m.text for m in memory)

        report = px.reembed(Truncated(embedder))
        assert (report.version, report.previous) == ("v2", "v1")
        assert report.shared_chunks == len(CORPUS) and report.owned_chunks == 3
        assert (report.events, report.turns, report.dropped_events) == (4, 1, 0)
        assert px.embedder.model_id.endswith("/first192") and px.store.dim == 192
        registry = load_registry(root)
        assert registry is not None and registry.active == "v2" and registry.previous == "v1"

        after = _results(px)
        assert after != before
        assert all(r for r in after)
        # profiles were refolded from the event log, memories re-embedded, consent carried
        assert px.profile("ann").gate > 0
        memory2 = LongTermMemory(px).search("where did I live before?", user_id="ann")
        assert any("Sweden" in m.text for m in memory2)
        fresh = pertinent.Pertinent(px.store, px.embedder, px.settings)
        assert fresh.consent("olaf").personalization is False

        # another process opens the active version from the registry
        with pertinent.open(root, embedder=Truncated(embedder)) as other:
            assert _results(other) == after
        with pytest.raises(pertinent.EmbeddingModelMismatch):
            pertinent.open(root, embedder=embedder)

        assert px.rollback() == "v1"
        assert _results(px) == before
    with pertinent.open(root, embedder=embedder) as px:
        assert _results(px) == before
        assert px.embedding_versions().active == "v1"


def test_a_query_never_mixes_versions(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    hooked = Hooked(embedder)
    with pertinent.open(root := tmp_path / "store", embedder=hooked) as px:
        _populate(px)
        old = _results(px)
        px.reembed(Truncated(embedder))
        new = _results(px)
        assert new != old
        px.rollback()
        assert _results(px) == old
        # The switch to v2 happens inside the next query, after its query embedding: the
        # query must finish on v1 (its store, profile and session), the next one on v2.
        switched: list[str] = []
        hooked.hook = lambda: switched.append(px.rollback())
        # (a new query string: a cached query embedding would not reach the hook)
        query = QUERIES[0] + " "
        during = [(r.id, r.score) for r in px.search(query, user_id="ann", session_id="s", now=NOW)]
        assert switched == ["v2"]
        assert during == old[0]
        assert _results(px) == new
        assert load_registry(root).active == "v2"  # type: ignore[union-attr]


def test_forget_reaches_every_version(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    root = tmp_path / "store"
    with pertinent.open(root, embedder=embedder) as px:
        _populate(px, "zoe")
        px.reembed(Truncated(embedder))
        assert (root / "versions" / "v2").is_dir()

        def hits() -> list[str]:
            return [
                str(p.relative_to(root))
                for p in root.rglob("*")
                if p.is_file() and MARKER.encode() in p.read_bytes()
            ]

        found = hits()
        assert any(h.startswith("versions") for h in found)
        assert any(not h.startswith("versions") for h in found)
        receipt = px.forget_user("zoe")
        assert receipt.deleted["other_versions"] >= 5
        assert hits() == []
        assert px.forget_user("zoe").total == 0


def test_encrypted_store_stays_sealed_in_a_new_version(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    root = tmp_path / "store"
    key = bytes(range(32))
    with pertinent.open(root, embedder=embedder, encryption_key=key) as px:
        _populate(px)
        px.reembed(Truncated(embedder))
        assert not [p for p in root.rglob("*") if p.is_file() and MARKER.encode() in p.read_bytes()]
        assert MARKER in px.history("ann", "s")[0].text
        found = {r.id: r.text for r in px.search("notes on retrieval", user_id="ann")}
        assert MARKER in found["ann-note#0"]
    with pytest.raises(pertinent.DecryptionFailed):
        pertinent.open(root, embedder=Truncated(embedder), encryption_key=bytes(32))


def test_version_errors(tmp_path: Path, embedder: pertinent.CachedQueryEmbedder) -> None:
    root = tmp_path / "store"
    with pertinent.open(root, embedder=embedder) as px:
        px.ingest(CORPUS[:2], show_progress=False)
        with pytest.raises(pertinent.InvalidInput, match="no previous embedding version"):
            px.rollback()
        with pytest.raises(pertinent.InvalidInput, match="already the active"):
            px.reembed(embedder)
        px.reembed(Truncated(embedder))
    with pytest.raises(pertinent.ConfigurationError, match="pass embedder="):
        pertinent.open(root)


def test_cli_rollback(tmp_path: Path, embedder: pertinent.CachedQueryEmbedder) -> None:
    from pertinent.cli import main

    root = tmp_path / "store"
    assert main(["rollback", "--data", str(root)]) == 2  # nothing to roll back to
    with pertinent.open(root, embedder=embedder) as px:
        px.ingest(CORPUS, show_progress=False)
        before = [(r.id, r.score) for r in px.search(QUERIES[0])]
        px.reembed(Truncated(embedder))
    assert main(["rollback", "--data", str(root)]) == 0
    with pertinent.open(root, embedder=embedder) as px:
        assert [(r.id, r.score) for r in px.search(QUERIES[0])] == before


def test_new_version_embeds_memories_in_context_and_retention_reaches_old_versions(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    from pertinent.versions import each_inactive_store

    truncated = Truncated(embedder)
    with pertinent.open(tmp_path / "store", embedder=embedder) as px:
        _populate(px)
        px.reembed(truncated)
        # A memory turn is embedded with the turn before it, as LongTermMemory does.
        answer, question = (
            px.store.get_chunks([f"mem:ann:m:{t}#0"], user_id="ann")[0] for t in ("b", "a")
        )
        expected = truncated.embed_documents([f"{answer.text}\n{question.text}"])[0]
        assert answer.vector is not None
        np.testing.assert_allclose(answer.vector, expected, atol=1e-6)

        px.settings = px.settings.model_copy(update={"retention_events_days": 1.0})
        report = px.apply_retention(now=NOW + timedelta(days=30))
        assert report.deleted["events"] == 4
        root, active = px.settings.path, px.embedding_versions().active
        assert [len(s.read_events("ann")) for s in each_inactive_store(root, active)] == [0]
