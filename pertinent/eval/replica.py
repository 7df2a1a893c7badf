"""An in-memory replica of a store's search, so a parameter sweep costs seconds per point.

`pertinent tune` evaluates dozens of settings on the same queries. Asking LanceDB each
time would take minutes per point (MovieLens excludes hundreds of history ids per
query, and LanceDB evaluates that filter row by row), so the sweep runs the real
pipeline (`Pertinent.search`: profiles, candidates, re-scoring, MMR) over this
replica instead:

- the dense leg is the same exact cosine search, in numpy over the store's vectors;
- the keyword leg is the store's own BM25 ranking, fetched once per query text and
  visibility (without the exclusions, deep enough) and filtered here: BM25 scores do
  not depend on a prefilter, so the filtered list is the one the store would return;
- `hybrid_search` fuses the two exactly as `LanceDBStore.hybrid_search` does.

tests/eval/test_runner_smoke.py checks the replica's results against the store's.
Everything else (events, chunks by id) is read from the real store, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from pertinent.errors import StoreNotWritable
from pertinent.stores.base import (
    EventArrays,
    SearchFilter,
    Store,
    StoredEvent,
    StoredTurn,
    event_arrays,
)
from pertinent.stores.fusion import relative_score_fusion
from pertinent.types import Chunk, Hit, Vector

__all__ = ["SearchReplica"]


class SearchReplica:
    """A read-only `Store` whose searches run in memory over a snapshot of `store`.

    `chunks` must be every chunk of the store, with vectors. Writes are refused: a
    sweep must not change the data it is measured on.
    """

    def __init__(self, store: Store, chunks: Sequence[Chunk]) -> None:
        self.store = store
        self._chunks = list(chunks)
        self._index = {c.id: i for i, c in enumerate(self._chunks)}
        self._matrix = np.stack(
            [np.asarray(c.vector, dtype=np.float32) for c in self._chunks]
        ).astype(np.float32)
        self._owner = np.array([c.owner or "" for c in self._chunks], dtype=object)
        self._public = np.array([not c.acl for c in self._chunks], dtype=bool)
        self._keyword: dict[tuple[str, str | None, tuple[str, ...]], tuple[list[Hit], int]] = {}
        self._masks: dict[tuple[str | None, tuple[str, ...], tuple[str, ...]], np.ndarray] = {}
        self._events: dict[str, list[StoredEvent]] = {}
        self._user_settings: dict[str, dict[str, Any] | None] = {}

    # --------------------------------------------------------------- protocol: metadata

    @property
    def dim(self) -> int:
        return self.store.dim

    @property
    def model_id(self) -> str:
        return self.store.model_id

    # --------------------------------------------------------------- visibility

    def _mask(self, where: SearchFilter) -> np.ndarray:
        if where.doc_ids is not None:
            return self._mask_uncached(where)
        key = (where.user_id, where.principals, where.exclude_ids)
        mask = self._masks.get(key)
        if mask is None:
            if len(self._masks) > 4096:
                self._masks.clear()
            mask = self._masks[key] = self._mask_uncached(where)
        return mask

    def _mask_uncached(self, where: SearchFilter) -> np.ndarray:
        mask = self._owner == ""
        if where.user_id is not None:
            mask = mask | (self._owner == where.user_id)
        principals = set(where.principals)
        acl_ok = self._public.copy()
        if principals:
            for i, c in enumerate(self._chunks):
                if c.acl and principals.intersection(c.acl):
                    acl_ok[i] = True
        mask = mask & acl_ok
        for cid in where.exclude_ids:
            at = self._index.get(cid)
            if at is not None:
                mask[at] = False
        if where.doc_ids is not None:
            wanted = set(where.doc_ids)
            mask = mask & np.array([c.doc_id in wanted for c in self._chunks], dtype=bool)
        out: np.ndarray = mask
        return out

    # --------------------------------------------------------------- search

    def vector_search(self, vector: Vector, *, k: int, where: SearchFilter) -> list[Hit]:
        q = np.asarray(vector, dtype=np.float32)
        mask = self._mask(where)
        scores = np.where(mask, self._matrix @ q, -np.inf)
        n = int(mask.sum())
        k = min(k, n)
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Hit(chunk=self._chunks[i], vector_cosine=float(self._matrix[i] @ q)) for i in top]

    def keyword_search(self, text: str, *, k: int, where: SearchFilter) -> list[Hit]:
        if not text.strip():
            return []
        key = (text, where.user_id, where.principals)
        excluded = set(where.exclude_ids)
        wanted = None if where.doc_ids is None else set(where.doc_ids)
        hits, fetched = self._keyword.get(key, ([], 0))
        while True:
            kept = [
                h
                for h in hits
                if h.id not in excluded and (wanted is None or h.chunk.doc_id in wanted)
            ]
            exhausted = len(hits) < fetched
            if len(kept) >= k or (exhausted and fetched > 0):
                return kept[:k]
            fetched = max(2 * fetched, k + len(excluded) + 50)
            hits = self.store.keyword_search(
                text,
                k=fetched,
                where=SearchFilter(user_id=where.user_id, principals=where.principals),
            )
            self._keyword[key] = (hits, fetched)

    def hybrid_search(
        self, text: str, vector: Vector, *, k: int, alpha: float, where: SearchFilter
    ) -> list[Hit]:
        """Relative score fusion, as `LanceDBStore.hybrid_search` computes it."""
        q = np.asarray(vector, dtype=np.float32)
        dense = self.vector_search(q, k=k, where=where) if alpha > 0 else []
        sparse = self.keyword_search(text, k=k, where=where) if alpha < 1 else []
        return relative_score_fusion(dense, sparse, q, k=k, alpha=alpha)

    # --------------------------------------------------------------- reads: the real store

    def get_chunks(self, ids: Sequence[str], *, user_id: str | None = None) -> list[Chunk]:
        return self.store.get_chunks(ids, user_id=user_id)

    def get_vectors(self, ids: Sequence[str], *, user_id: str | None = None) -> dict[str, Vector]:
        return self.store.get_vectors(ids, user_id=user_id)

    def count_chunks(self) -> int:
        return len(self._chunks)

    def document_ids(self) -> list[str]:
        return sorted({c.doc_id for c in self._chunks})

    def read_events(self, user_id: str) -> list[StoredEvent]:
        events = self._events.get(user_id)
        if events is None:
            events = self._events[user_id] = self.store.read_events(user_id)
        return list(events)

    def read_event_arrays(self, user_id: str) -> EventArrays:
        return event_arrays(self.read_events(user_id), self.dim)

    def read_turns(self, user_id: str, session_id: str) -> list[StoredTurn]:
        return self.store.read_turns(user_id, session_id)

    def known_users(self) -> list[str]:
        return self.store.known_users()

    def get_user_settings(self, user_id: str) -> dict[str, Any] | None:
        if user_id not in self._user_settings:
            self._user_settings[user_id] = self.store.get_user_settings(user_id)
        found = self._user_settings[user_id]
        return None if found is None else dict(found)

    # --------------------------------------------------------------- writes: refused

    def _read_only(self) -> None:
        raise StoreNotWritable("SearchReplica is read-only: write to the store it copies.")

    def upsert_chunks(self, chunks: Sequence[Chunk]) -> int:
        self._read_only()
        return 0

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        self._read_only()
        return 0

    def append_events(self, events: Sequence[StoredEvent]) -> None:
        self._read_only()

    def append_turns(self, turns: Sequence[StoredTurn]) -> None:
        self._read_only()

    def delete_user(self, user_id: str) -> Mapping[str, int]:
        self._read_only()
        return {}

    def purge_before(self, log: str, cutoff: datetime) -> int:
        self._read_only()
        return 0

    def put_user_settings(self, user_id: str, settings: Mapping[str, Any]) -> None:
        self._read_only()

    def close(self) -> None:
        """The replica holds no resource; the real store is closed by its owner."""
