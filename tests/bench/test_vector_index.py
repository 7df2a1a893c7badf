"""The vector index `LanceDBStore.optimize` builds past `_VECTOR_INDEX_MIN_ROWS`
(bench/bench_scale.py measured why): built once, with a bitmap on `owner`, and searches
through it keep visibility rules and exact top-k when the graph walk (ef) covers the
whole table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import pertinent.stores.lancedb as lance_mod
from pertinent.stores.base import SearchFilter
from pertinent.stores.lancedb import LanceDBStore
from pertinent.types import Chunk

DIM = 16
ROWS = 400  # fewer than the search's ef (500): the graph walk sees every row


def _chunks(rng: np.random.Generator) -> list[Chunk]:
    vecs = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [
        Chunk(
            id=f"c{i}",
            doc_id=f"d{i // 4}",
            text=f"passage number {i}",
            position=i % 4,
            owner="bob" if i % 10 == 0 else None,  # every tenth chunk is private to bob
            model_id="m",
            vector=vecs[i],
        )
        for i in range(ROWS)
    ]


def _assert_exact_top10(store: LanceDBStore, chunks: list[Chunk], seed: int) -> None:
    """For a few random queries, the store's top 10 is the exact cosine top 10 of the
    chunks anyone may see (no owner)."""
    matrix = np.stack([c.vector for c in chunks])
    shared = np.array([c.owner is None for c in chunks])
    for q in np.random.default_rng(seed).normal(size=(5, DIM)).astype(np.float32):
        q /= np.linalg.norm(q)
        scores = np.where(shared, matrix @ q, -np.inf)
        hits = store.vector_search(q, k=10, where=SearchFilter())
        assert [h.id for h in hits] == [chunks[i].id for i in np.argsort(-scores)[:10]]


def test_optimize_indexes_vectors_past_the_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lance_mod, "_VECTOR_INDEX_MIN_ROWS", ROWS)
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    chunks = _chunks(np.random.default_rng(0))
    store.upsert_chunks(chunks[: ROWS // 2])
    store.optimize()
    assert not store._has_vector_index  # below the threshold: flat scan, exact
    store.upsert_chunks(chunks[ROWS // 2 :])
    store.optimize()
    assert store._has_vector_index
    kinds = {tuple(ix.columns): ix.index_type for ix in store._chunks.list_indices()}
    assert kinds[("vector",)] == "IvfHnswSq" and kinds[("owner",)] == "Bitmap"

    matrix = np.stack([c.vector for c in chunks])
    shared = np.array([c.owner is None for c in chunks])
    for q in np.random.default_rng(1).normal(size=(5, DIM)).astype(np.float32):
        q /= np.linalg.norm(q)
        scores = np.where(shared, matrix @ q, -np.inf)
        exact = [f"c{i}" for i in np.argsort(-scores)[:10]]
        hits = store.vector_search(q, k=10, where=SearchFilter())
        assert [h.id for h in hits] == exact  # bob's chunks stay invisible to others
        bob = store.vector_search(q, k=10, where=SearchFilter(user_id="bob"))
        assert [h.id for h in bob] == [f"c{i}" for i in np.argsort(-(matrix @ q))[:10]]

    reopened = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    assert reopened._has_vector_index  # found again, not rebuilt
    store.close()
    reopened.close()


def test_optimize_leaves_one_file_after_a_batched_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ingest in batches indexes as it goes (a graph segment per batch); Lance merges
    only fragments covered by the same index segments, so every batch stayed a file of
    its own. `optimize` drops the old index before compacting, then builds the new one
    over the single file."""
    monkeypatch.setattr(lance_mod, "_VECTOR_INDEX_MIN_ROWS", ROWS // 4)
    batch = 40  # whole documents (four chunks each): an upsert replaces a document
    monkeypatch.setattr(lance_mod, "_FTS_REFRESH_ROWS", batch)
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    chunks = _chunks(np.random.default_rng(2))
    for start in range(0, ROWS, batch):
        store.upsert_chunks(chunks[start : start + batch])
    assert store._has_vector_index  # built during the load
    assert len(store._chunks.to_lance().get_fragments()) > 2
    store.optimize()
    assert len(store._chunks.to_lance().get_fragments()) == 1
    assert store.count_chunks() == ROWS

    _assert_exact_top10(store, chunks, seed=3)
    found = store.keyword_search("number 123", k=3, where=SearchFilter())
    assert found and found[0].id == "c123"
    store.close()


def test_a_long_batched_load_keeps_the_vector_segments_few(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folded in at every refresh, each batch written after the vector index was built
    became a graph segment of its own, which every search walks: 141 at 715,000 chunks,
    and folding the next batch then ran out of file handles. New rows now join the index
    once they are a quarter of it, and until then exact search finds them."""
    min_rows, batch, total = 100, 20, 1240
    monkeypatch.setattr(lance_mod, "_VECTOR_INDEX_MIN_ROWS", min_rows)
    monkeypatch.setattr(lance_mod, "_FTS_REFRESH_ROWS", batch)
    vecs = np.random.default_rng(4).normal(size=(total, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    chunks = [
        Chunk(
            id=f"c{i}",
            doc_id=f"d{i // 4}",
            text=f"passage number {i}",
            position=i % 4,
            model_id="m",
            vector=vecs[i],
        )
        for i in range(total)
    ]
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    for start in range(0, total, batch):
        store.upsert_chunks(chunks[start : start + batch])
        if store._has_vector_index:
            stats = store._chunks.index_stats("vector_idx")
            assert stats is not None
            assert stats.num_unindexed_rows < max(batch, stats.num_indexed_rows // 4)
    stats = store._chunks.index_stats("vector_idx")
    assert stats is not None and stats.num_unindexed_rows > 0  # the tail is still outside
    # One segment per fold, each at least a quarter of what was indexed before it:
    # at most 1 + log(1240 / 100) / log(1.25) = 12.3 (it was one per batch, 57).
    assert stats.num_indices <= 12

    last = total - 1  # written last, so not in the graph
    hits = store.vector_search(vecs[last], k=10, where=SearchFilter())
    assert hits[0].id == f"c{last}"
    _assert_exact_top10(store, chunks, seed=5)
    store.close()


def test_re_ingesting_leaves_the_graph_alone_until_optimize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-ingested documents delete their old rows. Once a tenth of a file was deleted,
    the next upsert's compaction rewrote it and remapped the vector index over it, which
    costs as much as building it (22.4 s for one upsert at 30,000 chunks). An ingest now
    leaves deleted rows in place, and `optimize` rebuilds the index without them."""
    monkeypatch.setattr(lance_mod, "_VECTOR_INDEX_MIN_ROWS", ROWS // 4)
    monkeypatch.setattr(lance_mod, "_FTS_REFRESH_ROWS", 20)
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    chunks = _chunks(np.random.default_rng(6))
    for start in range(0, ROWS, 40):
        store.upsert_chunks(chunks[start : start + 40])
    store.optimize()
    [indexed] = store._chunks.to_lance().get_fragments()

    changed = 80  # 20 documents of 4 chunks: a fifth of the file
    fresh = np.random.default_rng(7).normal(size=(changed, DIM)).astype(np.float32)
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    new = [
        replace(c, text=f"revised passage {c.id}", vector=fresh[n])
        for n, c in enumerate(chunks[:changed])
    ]
    for start in range(0, changed, 20):
        store.upsert_chunks(new[start : start + 20])
    files = {f.fragment_id: f for f in store._chunks.to_lance().get_fragments()}
    assert indexed.fragment_id in files  # not rewritten, so the graph was not remapped
    assert files[indexed.fragment_id].num_deletions == changed
    [graph] = [ix for ix in store._chunks.to_lance().describe_indices() if ix.name == "vector_idx"]
    assert any(indexed.fragment_id in segment.fragment_ids for segment in graph.segments)

    store.optimize()
    assert all(f.num_deletions == 0 for f in store._chunks.to_lance().get_fragments())
    stats = store._chunks.index_stats("vector_idx")
    assert stats is not None and stats.num_unindexed_rows == 0 and stats.num_indices == 1
    assert store.count_chunks() == ROWS
    _assert_exact_top10(store, new + chunks[changed:], seed=8)
    found = store.keyword_search("revised passage c12", k=1, where=SearchFilter())
    assert found and found[0].id == "c12"
    store.close()


def test_optimize_keeps_the_graph_when_only_unindexed_rows_were_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows the vector index does not cover yet are rewritten without remapping it, so
    replacing them is no reason for `optimize` to rebuild the graph (minutes at 1M)."""
    monkeypatch.setattr(lance_mod, "_VECTOR_INDEX_MIN_ROWS", ROWS // 4)
    monkeypatch.setattr(lance_mod, "_FTS_REFRESH_ROWS", 20)
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    chunks = _chunks(np.random.default_rng(10))
    store.upsert_chunks(chunks[: ROWS - 40])
    store.optimize()

    def graph() -> set[str]:
        dataset = store._chunks.to_lance()
        [index] = [ix for ix in dataset.describe_indices() if ix.name == "vector_idx"]
        return {segment.uuid for segment in index.segments}

    built = graph()
    tail = chunks[ROWS - 40 :]  # a tenth of the table: not yet due to join the graph
    store.upsert_chunks(tail)
    # Half of it replaced: a file is dropped whole once every row in it is deleted.
    store.upsert_chunks([replace(c, text=f"revised {c.text}") for c in tail[:20]])
    stats = store._chunks.index_stats("vector_idx")
    assert stats is not None and stats.num_unindexed_rows == 40
    store.optimize()
    assert built <= graph()  # the graph built first is still there, not rebuilt
    stats = store._chunks.index_stats("vector_idx")
    assert stats is not None and stats.num_unindexed_rows == 0
    shared = tail[1]  # tail[0] is private to bob
    found = store.keyword_search(f"revised {shared.text}", k=1, where=SearchFilter())
    assert found and found[0].id == shared.id
    store.close()


def test_forgetting_a_user_rebuilds_the_graph_rather_than_remapping_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`forget_user` rewrites every file that held the user's chunks. LanceDB then
    remapped the vector index over the new files, which costs about as much as building
    it and lost recall (0.976 to 0.936 after forgetting a user who owned 1,000 of
    100,000 chunks, bench/probe_forget_index.py); the index is now rebuilt, over the
    rows that remain. A user whose chunks the graph does not cover yet costs no
    rebuild."""
    monkeypatch.setattr(lance_mod, "_VECTOR_INDEX_MIN_ROWS", ROWS // 4)
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    chunks = _chunks(np.random.default_rng(11))
    store.upsert_chunks(chunks)
    store.optimize()
    builds: list[str] = []
    create_index = store._chunks.create_index

    def counted(column: str, *args: object, **kwargs: object) -> object:
        builds.append(column)
        return create_index(column, *args, **kwargs)

    monkeypatch.setattr(store._chunks, "create_index", counted)

    store.delete_user("bob")  # every tenth chunk, all inside the graph's one file
    assert builds == ["vector"]
    kept = [c for c in chunks if c.owner is None]
    assert store._meta_value("vector_index_rows") == str(len(kept))
    stats = store._chunks.index_stats("vector_idx")
    assert stats is not None
    assert (stats.num_indexed_rows, stats.num_unindexed_rows, stats.num_indices) == (
        len(kept),
        0,
        1,
    )
    _assert_exact_top10(store, kept, seed=12)

    late = replace(chunks[1], id="late#0", doc_id="late", owner="carol")
    store.upsert_chunks([late])  # outside the graph until it is due
    store.delete_user("carol")
    assert builds == ["vector"]  # no second build
    assert store.count_chunks() == len(kept)
    store.close()
