"""Hybrid searches started before the query vector exists (pertinent/stores/fusion.py):
real MiniLM, real LanceDB. The keyword leg runs while the query is embedded, and what
`finish` returns is what `hybrid_search` returns."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import pertinent
from pertinent import Event
from pertinent.embeddings import CachedQueryEmbedder
from pertinent.errors import DimensionMismatch, QueryTooLong, StoreUnavailable
from pertinent.eval.replica import SearchReplica
from pertinent.stores.base import SearchFilter
from pertinent.stores.fusion import relative_score_fusion, start_hybrid_search
from pertinent.types import Hit

QUERY = "how do retrievers rank documents for a question"
ANYONE = SearchFilter()


def _ranked(hits: list[Hit]) -> list[tuple[str, float, float | None, float | None]]:
    return [(h.id, round(h.hybrid, 6), h.bm25, h.vector_cosine) for h in hits]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize(("started", "k"), [(5, 5), (12, 5), (3, 8)])
def test_finish_returns_what_hybrid_search_returns(
    loaded: pertinent.Pertinent, alpha: float, started: int, k: int
) -> None:
    store = loaded.store
    q = loaded.embedder.embed_query(QUERY)
    pending = start_hybrid_search(store, QUERY, k=started, where=ANYONE)
    got = pending.finish(q, k=k, alpha=alpha)
    want = store.hybrid_search(QUERY, q, k=k, alpha=alpha, where=ANYONE)
    assert _ranked(got) == _ranked(want)
    if alpha > 0:  # every chunk has a vector: the vector leg alone fills k
        assert len(got) == min(k, store.count_chunks())
    if alpha < 1:
        assert any(h.bm25 for h in got)  # the keyword leg took part


def test_the_keyword_leg_runs_before_the_vector_exists(
    loaded: pertinent.Pertinent, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: Any = loaded.store
    ran = threading.Event()
    original = store.keyword_search

    def keyword_search(*args: Any, **kwargs: Any) -> list[Hit]:
        out: list[Hit] = original(*args, **kwargs)
        ran.set()
        return out

    monkeypatch.setattr(store, "keyword_search", keyword_search)
    pending = start_hybrid_search(store, QUERY, k=5, where=ANYONE)
    # Nothing has been given a vector yet: the leg finishes on its own.
    assert ran.wait(timeout=30)
    hits = pending.finish(loaded.embedder.embed_query(QUERY), k=5, alpha=0.5)
    assert len(hits) == 5


def test_retrieve_embeds_the_query_while_the_keyword_leg_runs(
    loaded: pertinent.Pertinent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedder waits for the keyword leg: if `retrieve` started that leg only after
    embedding, the wait would time out and the test fail."""
    store: Any = loaded.store
    ran = threading.Event()
    depths: list[int] = []
    original = store.keyword_search

    def keyword_search(text: str, *, k: int, where: SearchFilter) -> list[Hit]:
        depths.append(k)
        out: list[Hit] = original(text, k=k, where=where)
        ran.set()
        return out

    embedder = loaded.embedder
    assert isinstance(embedder, CachedQueryEmbedder)
    inner_embed = embedder.inner.embed_query
    overlapped: list[bool] = []

    def embed_query(text: str) -> Any:
        overlapped.append(ran.wait(timeout=10))
        return inner_embed(text)

    monkeypatch.setattr(store, "keyword_search", keyword_search)
    monkeypatch.setattr(embedder.inner, "embed_query", embed_query)
    embedder.clear()
    packed = loaded.retrieve(QUERY + " (overlap)", remember=False)
    assert overlapped == [True]
    assert depths == [loaded.settings.candidates]  # started once, never re-run
    assert packed.results


def test_a_fused_warm_user_starts_the_leg_as_deep_as_it_finishes(
    tmp_path: Any, embedder: CachedQueryEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import CORPUS

    settings = pertinent.Settings(user_leg="fused")
    with pertinent.open(tmp_path / "s", settings=settings, embedder=embedder) as px:
        px.ingest(CORPUS, show_progress=False)
        first = px.search("LlamaIndex query engines")[0]
        px.record("carol", [Event(kind="open", item_id=first.id)] * 3)
        px.search(QUERY, user_id="carol")  # profile cached
        store: Any = px.store
        depths: list[int] = []
        original = store.keyword_search

        def keyword_search(text: str, *, k: int, where: SearchFilter) -> list[Hit]:
            depths.append(k)
            out: list[Hit] = original(text, k=k, where=where)
            return out

        monkeypatch.setattr(store, "keyword_search", keyword_search)
        px.search(QUERY + " warm", user_id="carol")
        assert depths == [settings.candidates + settings.user_candidates]
        depths.clear()
        px.search(QUERY + " anonymous")
        assert depths == [settings.candidates]


def test_a_failed_embedding_cancels_nothing_it_should_not(
    loaded: pertinent.Pertinent,
) -> None:
    """A query the model refuses raises its own error; the store stays usable."""
    with pytest.raises(QueryTooLong):
        loaded.retrieve("word " * 2000, remember=False)
    assert loaded.retrieve(QUERY, remember=False).results


def test_finish_checks_the_vector(loaded: pertinent.Pertinent) -> None:
    pending = start_hybrid_search(loaded.store, QUERY, k=5, where=ANYONE)
    with pytest.raises(DimensionMismatch, match="dimension"):
        pending.finish(np.ones(7, dtype=np.float32), k=5, alpha=0.5)


def test_a_keyword_leg_failure_surfaces_at_finish(
    loaded: pertinent.Pertinent, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: Any = loaded.store

    def down(*args: Any, **kwargs: Any) -> list[Hit]:
        raise StoreUnavailable("the disk went away")

    monkeypatch.setattr(store, "keyword_search", down)
    pending = start_hybrid_search(store, QUERY, k=5, where=ANYONE)
    with pytest.raises(StoreUnavailable, match="disk went away"):
        pending.finish(loaded.embedder.embed_query(QUERY), k=5, alpha=0.5)


def test_stores_without_a_keyword_start_run_their_hybrid_search(
    loaded: pertinent.Pertinent,
) -> None:
    replica = SearchReplica(loaded.store, loaded.store.shared_chunks())  # type: ignore[attr-defined]
    assert not hasattr(replica, "start_hybrid_search")
    q = loaded.embedder.embed_query(QUERY)
    got = start_hybrid_search(replica, QUERY, k=6, where=ANYONE).finish(q, k=6, alpha=0.5)
    assert _ranked(got) == _ranked(replica.hybrid_search(QUERY, q, k=6, alpha=0.5, where=ANYONE))
    # The replica fuses as the store does.
    store_ids = [h.id for h in loaded.store.hybrid_search(QUERY, q, k=6, alpha=0.5, where=ANYONE)]
    assert [h.id for h in got] == store_ids


def test_relative_score_fusion_normalises_each_leg(loaded: pertinent.Pertinent) -> None:
    store = loaded.store
    q = loaded.embedder.embed_query(QUERY)
    dense = store.vector_search(q, k=4, where=ANYONE)
    sparse = store.keyword_search(QUERY, k=4, where=ANYONE)
    fused = relative_score_fusion(dense, sparse, q, k=8, alpha=0.5)
    assert [h.hybrid for h in fused] == sorted((h.hybrid for h in fused), reverse=True)
    top_vector = max(dense, key=lambda h: h.vector_cosine or 0.0).id
    top_bm25 = max(sparse, key=lambda h: h.bm25 or 0.0).id
    by_id = {h.id: h.hybrid for h in fused}
    # Each leg's best gets that leg's full weight.
    assert by_id[top_vector] >= 0.5 - 1e-9
    assert by_id[top_bm25] >= 0.5 - 1e-9
    assert all(h.vector_cosine is not None for h in fused)


def test_an_encrypted_store_opens_what_it_finishes(
    tmp_path: Any, embedder: CachedQueryEmbedder
) -> None:
    """`EncryptedStore` forwards unknown attributes to the store it wraps; the inner
    store's keyword-first search must not be picked up through that, or sealed chunks
    come back sealed."""
    note = "Deb keeps her API keys in the qzxvault password manager."
    with pertinent.open(
        tmp_path / "sealed", embedder=embedder, encryption_key=bytes(range(32))
    ) as px:
        px.ingest({"id": "deb-note", "text": note}, owner="deb", show_progress=False)
        where = SearchFilter(user_id="deb")
        q = embedder.embed_query("where are the API keys kept?")
        hits = start_hybrid_search(px.store, "API keys", k=3, where=where).finish(q, k=3, alpha=0.5)
        assert [h.chunk.text for h in hits] == [note]
        ctx = px.retrieve("where are the API keys kept?", user_id="deb", remember=False)
        assert [r.chunk.text for r in ctx.results] == [note]
