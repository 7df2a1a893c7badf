"""The item-vector cache behind `LanceDBStore.get_vectors` (what `record` reads): it
must never return a vector that another writer has changed or deleted since, nor a
private chunk to anyone but its owner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pertinent.stores.lancedb import LanceDBStore
from pertinent.stores.vector_cache import VersionedVectorCache
from pertinent.types import Chunk

DIM = 8
MODEL = "test-model@8"


def _chunks(doc: str, n: int, seed: int, owner: str | None = None) -> list[Chunk]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [
        Chunk(
            id=f"{doc}-{i}",
            doc_id=doc,
            text=f"text {doc} {i}",
            position=i,
            owner=owner,
            model_id=MODEL,
            vector=vecs[i],
        )
        for i in range(n)
    ]


def _store(path: Path, **kw: int) -> LanceDBStore:
    return LanceDBStore(path, model_id=MODEL, dim=DIM, **kw)


def test_a_second_read_is_served_from_the_cache(tmp_path: Path) -> None:
    store = _store(tmp_path / "s")
    chunks = _chunks("d", 3, seed=1)
    store.upsert_chunks(chunks)
    first = store.get_vectors(["d-0", "d-1"])
    second = store.get_vectors(["d-1", "d-0", "d-2"])
    assert second["d-0"] is first["d-0"] and second["d-1"] is first["d-1"]  # not re-read
    np.testing.assert_array_equal(second["d-2"], chunks[2].vector)
    with pytest.raises(ValueError):
        second["d-0"][0] = 1.0  # shared with the cache, so read-only
    store.close()


def test_another_writer_replacing_a_document_is_seen(tmp_path: Path) -> None:
    reader, writer = _store(tmp_path / "s"), _store(tmp_path / "s")
    reader.upsert_chunks(_chunks("d", 2, seed=1))
    before = reader.get_vectors(["d-0", "d-1"])
    fresh = _chunks("d", 2, seed=2)
    writer.upsert_chunks(fresh)  # e.g. another worker re-ingesting the document
    after = reader.get_vectors(["d-0", "d-1"])
    for i in (0, 1):
        np.testing.assert_array_equal(after[f"d-{i}"], fresh[i].vector)
        assert not np.allclose(after[f"d-{i}"], before[f"d-{i}"])
    writer.delete_documents(["d"])
    assert reader.get_vectors(["d-0", "d-1"]) == {}
    reader.close()
    writer.close()


def test_a_cached_private_chunk_is_only_returned_to_its_owner(tmp_path: Path) -> None:
    store = _store(tmp_path / "s")
    store.upsert_chunks(_chunks("mem", 1, seed=3, owner="alice") + _chunks("pub", 1, seed=4))
    assert set(store.get_vectors(["mem-0", "pub-0"], user_id="alice")) == {"mem-0", "pub-0"}
    assert set(store.get_vectors(["mem-0", "pub-0"], user_id="bob")) == {"pub-0"}
    assert set(store.get_vectors(["mem-0", "pub-0"])) == {"pub-0"}
    store.close()


def test_forgetting_a_user_drops_their_cached_vectors(tmp_path: Path) -> None:
    store = _store(tmp_path / "s")
    store.upsert_chunks(_chunks("mem", 40, seed=3, owner="alice"))
    ids = [f"mem-{i}" for i in range(40)]  # enough to go through the row-id index
    assert len(store.get_vectors(ids, user_id="alice")) == 40
    assert store._row_index is not None
    store.delete_user("alice")
    assert store._row_index is None  # not even their chunk ids are kept
    assert store.get_vectors(ids, user_id="alice") == {}
    store.close()


def test_the_cache_is_bounded_and_can_be_turned_off(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", vector_cache_entries=2)
    chunks = _chunks("d", 5, seed=1)
    store.upsert_chunks(chunks)
    got = store.get_vectors([c.id for c in chunks])
    assert len(got) == 5 and len(store._vector_cache) == 2
    # each cached vector owns its memory: a row view would pin the whole batch read
    assert all(v.base is None for v in got.values())
    off = _store(tmp_path / "s", vector_cache_entries=0)
    a, b = off.get_vectors(["d-0"]), off.get_vectors(["d-0"])
    assert a["d-0"] is not b["d-0"] and len(off._vector_cache) == 0
    np.testing.assert_array_equal(a["d-0"], chunks[0].vector)
    store.close()
    off.close()


def test_vectors_read_before_a_commit_are_not_kept_for_the_next_version() -> None:
    cache = VersionedVectorCache(10)
    v = np.ones(DIM, dtype=np.float32)
    cache.lookup(1, ["a"], None)
    cache.lookup(2, ["a"], None)  # a commit happened while version 1's rows were read
    cache.fill(1, {"a": ""}, {"a": v})
    assert cache.lookup(2, ["a"], None) == ({}, ["a"])


# ------------------------------------------------------- large misses: fetched by row id


def test_a_large_miss_is_fetched_by_row_id_with_the_same_answer(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", vector_cache_entries=0)  # every read is a miss
    shared = _chunks("d", 60, seed=1)
    store.upsert_chunks(shared)
    store.upsert_chunks(_chunks("m", 40, seed=2, owner="alice"))
    ids = [f"d-{i}" for i in range(60)] + [f"m-{i}" for i in range(40)] + ["nope-1", "nope-2"]
    as_bob = store.get_vectors(ids, user_id="bob")
    as_alice = store.get_vectors(ids, user_id="alice")
    anonymous = store.get_vectors(ids)
    assert store._row_index is not None  # the row-id path ran
    assert set(as_bob) == set(anonymous) == {c.id for c in shared}  # no one else's memory
    assert set(as_alice) == set(ids) - {"nope-1", "nope-2"}
    for c in shared:
        np.testing.assert_array_equal(as_bob[c.id], c.vector)
    store.close()


def test_the_row_index_follows_other_writers(tmp_path: Path) -> None:
    reader, writer = _store(tmp_path / "s"), _store(tmp_path / "s")
    reader.upsert_chunks(_chunks("d", 50, seed=1))
    ids = [f"d-{i}" for i in range(50)]
    reader.get_vectors(ids)
    fresh = _chunks("d", 40, seed=3)  # the document re-ingested shorter, elsewhere
    writer.upsert_chunks(fresh)
    reader._vector_cache.clear()
    after = reader.get_vectors(ids)
    assert set(after) == {c.id for c in fresh}
    for c in fresh:
        np.testing.assert_array_equal(after[c.id], c.vector)
    reader.close()
    writer.close()


def test_rows_that_moved_under_the_index_fall_back_to_the_filter(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", vector_cache_entries=0)
    chunks = _chunks("d", 50, seed=1)
    store.upsert_chunks(chunks)
    ids = [c.id for c in chunks]
    store.get_vectors(ids)
    version, all_ids, row_ids = store._row_index  # type: ignore[misc]
    # As if another process compacted between our version read and the take: the row
    # ids now point at other rows. The answer must still be right.
    store._row_index = (version, all_ids, row_ids.take(list(range(len(row_ids)))[::-1]))
    assert store._take_vectors(ids[:40], None) is None  # it notices
    got = store.get_vectors(ids[:40])
    assert set(got) == set(ids[:40])
    for c in chunks[:40]:
        np.testing.assert_array_equal(got[c.id], c.vector)
    store.close()
