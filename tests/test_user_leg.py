"""The user-blended candidate leg, separate (two searches) or fused into the hybrid
search (one): real MiniLM, real LanceDB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CORPUS

import pertinent
from pertinent import Chunk, Event
from pertinent.embeddings import CachedQueryEmbedder
from pertinent.retrievers.pipeline import fused_candidates, gather_candidates
from pertinent.stores.base import SearchFilter
from pertinent.types import Hit

QUERY = "which framework should I use for retrieval?"


def _open(path: Path, embedder: CachedQueryEmbedder, user_leg: str) -> pertinent.Pertinent:
    px = pertinent.open(path, settings=pertinent.Settings(user_leg=user_leg), embedder=embedder)
    px.ingest(CORPUS, show_progress=False)
    li = px.search("LlamaIndex query engines node postprocessors")[0]
    assert li.chunk.doc_id == "li"
    px.record(
        "carol", [Event(kind="open", item_id=li.id)] * 3 + [Event(kind="accept", item_id=li.id)]
    )
    return px


@pytest.fixture(params=["separate", "fused"])
def both(
    request: pytest.FixtureRequest, tmp_path: Path, embedder: CachedQueryEmbedder
) -> Iterator[pertinent.Pertinent]:
    with _open(tmp_path / request.param, embedder, request.param) as px:
        yield px


def _count_vector_searches(px: pertinent.Pertinent, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the embedded store's ANN searches (its hybrid search runs one as well)."""
    inner: Any = px.store
    calls: list[int] = []
    original = inner.vector_search

    def counted(*args: Any, **kwargs: Any) -> list[Hit]:
        calls.append(kwargs["k"])
        result: list[Hit] = original(*args, **kwargs)
        return result

    monkeypatch.setattr(inner, "vector_search", counted)
    return calls


def test_warm_user_costs_one_ann_search_when_fused(
    both: pertinent.Pertinent, monkeypatch: pytest.MonkeyPatch
) -> None:
    both.search(QUERY, user_id="carol")  # the profile is loaded and cached
    calls = _count_vector_searches(both, monkeypatch)
    results = both.search(QUERY, user_id="carol")
    s = both.settings
    if s.user_leg == "fused":
        assert calls == [s.candidates + s.user_candidates]
    else:
        assert sorted(calls) == sorted([s.candidates, s.user_candidates])
    assert results[0].chunk.doc_id == "li"
    calls.clear()
    both.search(QUERY)  # anonymous: no user leg in either mode
    assert calls == [s.candidates]


def test_fused_explains_scores_about_the_query(
    both: pertinent.Pertinent, embedder: CachedQueryEmbedder
) -> None:
    both.search(QUERY, user_id="carol")
    results = both.search(QUERY, user_id="carol")
    q = embedder.embed_query(QUERY)
    w = both.settings.weights
    for r in results:
        e = r.explain
        assert r.chunk.vector is not None
        assert e.vector == pytest.approx(float(r.chunk.vector @ q), abs=1e-5)
        assert 0.0 <= e.hybrid <= 1.0
        assert e.user_gate > 0
        assert set(e.found_by) <= {"hybrid", "user"}
        expected = (w.hybrid * e.hybrid + w.user * e.user_gate * e.user) / (
            w.hybrid + w.user * e.user_gate
        )
        assert e.final == pytest.approx(expected)


def test_cold_user_gets_plain_hybrid_in_both_modes(both: pertinent.Pertinent) -> None:
    anon = both.search("how do retrievers work?")
    unknown = both.search("how do retrievers work?", user_id="never-seen")
    assert [r.id for r in unknown] == [r.id for r in anon]
    assert [r.explain.final for r in unknown] == pytest.approx([r.explain.hybrid for r in anon])


def test_fused_and_separate_agree_on_a_small_corpus(
    tmp_path: Path, embedder: CachedQueryEmbedder
) -> None:
    """With fewer chunks than candidates both modes see the whole corpus, so the
    candidate pools are equal; the rankings differ only by how the hybrid term is fused."""
    with (
        _open(tmp_path / "a", embedder, "separate") as a,
        _open(tmp_path / "b", embedder, "fused") as b,
    ):
        ra = a.search(QUERY, user_id="carol", top_k=len(CORPUS))
        rb = b.search(QUERY, user_id="carol", top_k=len(CORPUS))
    assert {r.id for r in ra} == {r.id for r in rb}
    assert ra[0].id == rb[0].id
    assert [r.explain.user for r in sorted(ra, key=lambda r: r.id)] == pytest.approx(
        [r.explain.user for r in sorted(rb, key=lambda r: r.id)]
    )


def test_fused_falls_back_while_the_profile_loads(
    tmp_path: Path, embedder: CachedQueryEmbedder
) -> None:
    """A user whose state is still loading gets the separate legs, so the load overlaps
    the search instead of delaying it."""
    with _open(tmp_path / "s", embedder, "fused") as px:
        q = embedder.embed_query(QUERY)
        view = px.profile("carol")
        where = SearchFilter(user_id="carol", principals=("user:carol",))
        loading = gather_candidates(
            px.store, QUERY, q, lambda: view, px.settings, where, profile_ready=lambda: False
        )
        ready = gather_candidates(
            px.store, QUERY, q, lambda: view, px.settings, where, profile_ready=lambda: True
        )
    assert any("user" in c.found_by for c in ready)
    assert all(c.found_by != ("user",) or c.bm25 == 0.0 for c in ready)
    # the separate path marks chunks both legs found with both names
    assert any(c.found_by == ("hybrid", "user") for c in loading)
    assert not any(c.found_by == ("hybrid", "user") for c in ready)


def _hit(i: int, vector: list[float], bm25: float | None) -> Hit:
    v = np.asarray(vector, dtype=np.float32)
    v /= np.linalg.norm(v)
    return Hit(chunk=Chunk(id=f"c{i}", doc_id=f"d{i}", text="t", position=0, vector=v), bm25=bm25)


def test_fused_candidates_recompute_hybrid_against_the_query() -> None:
    q = np.array([1.0, 0.0], dtype=np.float32)
    hits = [
        _hit(0, [1.0, 0.0], 4.0),  # best cosine, best bm25
        _hit(1, [0.0, 1.0], None),  # found by the blended vector only, cosine 0
        _hit(2, [1.0, 1.0], 2.0),  # cosine 0.707, lowest bm25
    ]
    out = fused_candidates(hits, q, alpha=0.5)
    assert [c.found_by for c in out] == [("hybrid",), ("user",), ("hybrid",)]
    assert [c.vector for c in out] == pytest.approx([1.0, 0.0, 0.70710678], abs=1e-6)
    assert [c.bm25 for c in out] == [4.0, 0.0, 2.0]
    assert [c.hybrid for c in out] == pytest.approx([1.0, 0.0, 0.5 * 0.70710678], abs=1e-6)
    assert fused_candidates([], q, alpha=0.5) == []
