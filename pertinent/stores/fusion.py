"""Relative score fusion, and hybrid searches started before the query vector exists.

A hybrid search's keyword leg needs only the text. A store that runs its two legs
itself (the embedded LanceDB store) can start that leg while the caller is still
embedding the query, and finish with the vector leg once the vector is there, so the
BM25 leg runs beside the embedding instead of after it (on two cores the two then share
the cores, and the gain is small: docs/benchmarks.md, "Sixth pass"). A store whose
hybrid search is one call (Weaviate: one round trip, the vectors in the same response)
starts nothing early and runs that call at `finish`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from pertinent.stores.base import SearchFilter, Store
from pertinent.types import Hit, Vector

__all__ = ["PendingHybrid", "minmax_scores", "relative_score_fusion", "start_hybrid_search"]


class PendingHybrid(Protocol):
    """A hybrid search whose keyword leg may already be running.

    `finish` returns what `Store.hybrid_search(text, vector, k=k, alpha=alpha, where=…)`
    returns; `k` may be at most the `k` the search was started with (a larger one runs
    the keyword leg again). `cancel` drops a search that will not be finished.
    """

    def finish(self, vector: Vector, *, k: int, alpha: float) -> list[Hit]: ...

    def cancel(self) -> None: ...


class _OneCall:
    """The store's own `hybrid_search`, run whole at `finish`."""

    def __init__(self, store: Store, text: str, where: SearchFilter) -> None:
        self._store = store
        self._text = text
        self._where = where

    def finish(self, vector: Vector, *, k: int, alpha: float) -> list[Hit]:
        return self._store.hybrid_search(self._text, vector, k=k, alpha=alpha, where=self._where)

    def cancel(self) -> None:
        pass


def start_hybrid_search(store: Store, text: str, *, k: int, where: SearchFilter) -> PendingHybrid:
    """Start `store`'s hybrid search for `text`; finish it with the query vector.

    Stores that can run the keyword leg alone define a `start_hybrid_search` method (it
    is optional: not part of the `Store` protocol); every other store, and the wrappers
    (encryption, circuit breaker, replication), run their `hybrid_search` at `finish`.
    The method is looked up on the class: a wrapper that forwards unknown attributes to
    the store it wraps (`EncryptedStore.__getattr__`) would otherwise hand out the inner
    store's search and skip its own step (opening sealed chunks).
    """
    start = getattr(type(store), "start_hybrid_search", None)
    if callable(start):
        pending: PendingHybrid = start(store, text, k=k, where=where)
        return pending
    return _OneCall(store, text, where)


def minmax_scores(values: Sequence[float]) -> list[float]:
    """Scores rescaled to [0, 1] over one leg's results; all 1.0 when they are equal."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12:
        return [1.0 for _ in values]
    return [(v - lo) / (hi - lo) for v in values]


def relative_score_fusion(
    dense: Sequence[Hit], sparse: Sequence[Hit], query: Vector, *, k: int, alpha: float
) -> list[Hit]:
    """Top `k` of the two legs' union by ``alpha·vector + (1-alpha)·bm25``, each leg
    min-max normalised over its own results (Weaviate's `relativeScoreFusion`).

    A chunk only the keyword leg found gets its query cosine computed from its vector, so
    every fused hit carries both raw scores for the explanation.
    """
    q = np.asarray(query, dtype=np.float32)
    dense_scores = minmax_scores([h.vector_cosine or 0.0 for h in dense])
    vec_norm = dict(zip([h.id for h in dense], dense_scores, strict=True))
    sparse_scores = minmax_scores([h.bm25 or 0.0 for h in sparse])
    bm_norm = dict(zip([h.id for h in sparse], sparse_scores, strict=True))
    merged: dict[str, Hit] = {h.id: h for h in dense}
    for h in sparse:
        if h.id in merged:
            merged[h.id] = Hit(
                chunk=merged[h.id].chunk, bm25=h.bm25, vector_cosine=merged[h.id].vector_cosine
            )
        else:
            assert h.chunk.vector is not None
            merged[h.id] = Hit(chunk=h.chunk, bm25=h.bm25, vector_cosine=float(h.chunk.vector @ q))
    fused = [
        Hit(
            chunk=h.chunk,
            bm25=h.bm25,
            vector_cosine=h.vector_cosine,
            hybrid=alpha * vec_norm.get(i, 0.0) + (1 - alpha) * bm_norm.get(i, 0.0),
        )
        for i, h in merged.items()
    ]
    fused.sort(key=lambda h: (-h.hybrid, h.id))
    return fused[:k]
