"""The visibility filter on LanceDB is answered from scalar indexes (`public`, `acl`,
`owner`) once a table is big enough, and stores written before the `public` column
existed are migrated on open. Either way, who sees what must not change."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pytest
from lancedb.index import IvfFlat

from pertinent.stores import lancedb as lancedb_store
from pertinent.stores.base import SearchFilter
from pertinent.stores.lancedb import LanceDBStore
from pertinent.types import Chunk

DIM = 8
MODEL = "test-model@8"
WORDS = ("alpha", "beta", "gamma", "delta")


def _corpus(n: int) -> list[Chunk]:
    """Public, ACL'd and private chunks, mixed; every text shares the word 'shared'."""
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out = []
    for i in range(n):
        acl: tuple[str, ...] = ()
        owner = None
        if i % 3 == 1:
            acl = ("role:support",) if i % 2 else ("role:sales", "user:bob")
        elif i % 5 == 2:
            owner = "alice"
        out.append(
            Chunk(
                id=f"c{i}",
                doc_id=f"d{i}",
                text=f"shared {WORDS[i % 4]} text {i}",
                position=0,
                acl=acl,
                owner=owner,
                model_id=MODEL,
                vector=vecs[i],
            )
        )
    return out


def _visible(chunks: list[Chunk], user: str | None, principals: tuple[str, ...]) -> set[str]:
    return {
        c.id
        for c in chunks
        if (c.owner is None or c.owner == user) and (not c.acl or set(c.acl) & set(principals))
    }


FILTERS = [
    SearchFilter(),
    SearchFilter(user_id="alice", principals=("user:alice",)),
    SearchFilter(user_id="bob", principals=("user:bob",)),
    SearchFilter(user_id="carol", principals=("role:support", "user:carol")),
]


def _check_visibility(store: LanceDBStore, chunks: list[Chunk]) -> None:
    query = chunks[0].vector
    assert query is not None
    for where in FILTERS:
        expected = _visible(chunks, where.user_id, where.principals)
        found = {h.id for h in store.keyword_search("shared", k=len(chunks), where=where)}
        assert found == expected, where
        # IVF probes only part of the table: what it finds must be visible, and it must
        # find something.
        dense = {h.id for h in store.vector_search(query, k=len(chunks), where=where)}
        assert dense and dense <= expected, where


def test_filters_use_indexes_once_the_table_is_big_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lancedb_store, "_VECTOR_INDEX_MIN_ROWS", 200)
    chunks = _corpus(300)
    store = LanceDBStore(tmp_path / "s", model_id=MODEL, dim=DIM)
    store.upsert_chunks(chunks)
    store.optimize()
    indexed = {tuple(ix.columns): ix.index_type for ix in store._chunks.list_indices()}
    assert indexed[("public",)] == "Bitmap" and indexed[("acl",)] == "LabelList"
    assert indexed[("owner",)] == "Bitmap" and indexed[("vector",)] == "IvfHnswSq"
    _check_visibility(store, chunks)
    store.close()


def test_a_store_without_the_public_column_is_migrated_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lancedb_store, "_VECTOR_INDEX_MIN_ROWS", 200)
    chunks = _corpus(300)
    store = LanceDBStore(tmp_path / "s", model_id=MODEL, dim=DIM)
    store.upsert_chunks(chunks)
    store.optimize()
    store.close()
    # What a store written by pertinent before the column existed looks like.
    old = lancedb.connect(tmp_path / "s").open_table("chunks")
    old.drop_columns(["public"])
    old.create_index("vector", config=IvfFlat(distance_type="cosine"), replace=True)
    for ix in old.list_indices():
        if ix.columns == ["acl"]:
            old.drop_index(ix.name)
    reopened = LanceDBStore(tmp_path / "s", model_id=MODEL, dim=DIM)
    assert "public" in reopened._chunks.schema.names
    assert reopened._vector_index_type == "IvfFlat"  # kept, and probed as IVF
    _check_visibility(reopened, chunks)
    reopened.optimize()  # an old indexed store gets the new indexes on its next optimize
    assert {("public",), ("acl",)} <= {tuple(ix.columns) for ix in reopened._chunks.list_indices()}
    _check_visibility(reopened, chunks)
    reopened.close()


def test_the_vector_index_is_rebuilt_by_optimize_once_the_table_doubles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lancedb_store, "_VECTOR_INDEX_MIN_ROWS", 200)
    chunks = _corpus(700)
    store = LanceDBStore(tmp_path / "s", model_id=MODEL, dim=DIM)
    store.upsert_chunks(chunks[:300])
    store.optimize()
    assert store._meta_value("vector_index_rows") == "300"
    store.upsert_chunks(chunks[300:500])
    store.optimize()  # 500 < 2 x 300: new rows folded into the index, no rebuild
    assert store._meta_value("vector_index_rows") == "300"
    store.upsert_chunks(chunks[500:])
    store.optimize()  # 700 >= 2 x 300: rebuilt over every row
    assert store._meta_value("vector_index_rows") == "700"
    stats = store._chunks.index_stats("vector_idx")
    assert stats is not None and stats.num_indexed_rows == 700 and stats.num_indices == 1
    _check_visibility(store, chunks)
    store.close()
