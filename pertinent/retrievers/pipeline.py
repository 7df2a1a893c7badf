"""From a query vector to ranked, explained results.

Stages: candidates (store hybrid search ∪ a vector leg on the user-blended query, or one
hybrid search whose vector leg is the blended query: `Settings.user_leg`) → re-score
(hybrid, user, session) → optional cross-encoder → MMR. Each stage's time is recorded in
`StageTimes` so benchmarks and servers can report them per stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np

from pertinent.config import Settings
from pertinent.errors import ConfigurationError
from pertinent.memory.profiles import ProfileView
from pertinent.memory.sessions import SessionView
from pertinent.retrievers.diversity import mmr
from pertinent.retrievers.rerank import Reranker
from pertinent.retrievers.rescoring import Candidate, blended_query, minmax, rescore
from pertinent.stores.base import SearchFilter, Store
from pertinent.stores.fusion import PendingHybrid, start_hybrid_search
from pertinent.types import Hit, Result, ScoreBreakdown, Vector

__all__ = [
    "StageTimes",
    "fused_candidates",
    "gather_candidates",
    "keyword_depth",
    "rank",
]


@dataclass
class StageTimes:
    """Milliseconds per stage of one retrieval."""

    ms: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - start) * 1000.0
        return now


def gather_candidates(
    store: Store,
    text: str,
    query: Vector,
    profile: Callable[[], ProfileView],
    settings: Settings,
    where: SearchFilter,
    times: StageTimes | None = None,
    executor: Executor | None = None,
    profile_ready: Callable[[], bool] | None = None,
    pending: PendingHybrid | None = None,
) -> list[Candidate]:
    """The store's hybrid top-N, plus the user-blended vector leg's top-M.

    With `settings.user_leg == "fused"` and the user's state loaded or cheap to finish
    loading (`profile_ready()`), a warm user costs one store search instead of two: see
    `fused_candidates`. A user whose profile is still being read from the store gets the
    separate legs, so that read keeps overlapping the search.

    `profile` is called once the hybrid search is under way (in `executor`), so loading
    a user's state from the store overlaps the search instead of preceding it. The user
    leg runs in this thread meanwhile, so the two searches overlap as well (both mostly
    wait on the store, which releases the GIL).

    `pending` is the hybrid search the caller started before embedding the query
    (`start_hybrid_search`, `keyword_depth(settings, ...)` deep), so that a store that
    runs its keyword leg alone has run it meanwhile; without it the search starts here.

    A chunk found only by the user leg gets a hybrid score from its query cosine,
    scaled like the hybrid leg's vector part (its bm25 part is 0: the keyword leg did
    not return it), so it competes on the same scale.
    """
    t0 = time.perf_counter()
    if pending is None:
        pending = start_hybrid_search(
            store, text, k=keyword_depth(settings, personal=True), where=where
        )
    if settings.user_leg == "fused" and (profile_ready is None or profile_ready()):
        view = profile()
        if times is not None:
            t0 = times.add("user_state", t0)
        blended = blended_query(query, view, settings.rho)
        if blended is not None and settings.user_candidates > 0:
            hits = pending.finish(
                blended, k=settings.candidates + settings.user_candidates, alpha=settings.alpha
            )
            if times is not None:
                times.add("hybrid_search", t0)
            return fused_candidates(hits, query, settings.alpha)
    hybrid_job: Future[list[Hit]] | None = None
    if executor is not None:
        hybrid_job = executor.submit(
            pending.finish, query, k=settings.candidates, alpha=settings.alpha
        )
    view = profile()
    if times is not None:
        t0 = times.add("user_state", t0)
    blended = blended_query(query, view, settings.rho)
    user_hits: list[Hit] = []
    if blended is not None and settings.user_candidates > 0:
        user_hits = store.vector_search(blended, k=settings.user_candidates, where=where)
        if times is not None:
            t0 = times.add("user_leg", t0)
    if hybrid_job is not None:
        hybrid_hits = hybrid_job.result()
    else:
        hybrid_hits = pending.finish(query, k=settings.candidates, alpha=settings.alpha)
    if times is not None:
        times.add("hybrid_search", t0)

    out: dict[str, Candidate] = {}
    cosines = [h.vector_cosine for h in hybrid_hits if h.vector_cosine is not None]
    lo, hi = (min(cosines), max(cosines)) if cosines else (0.0, 1.0)
    for h in hybrid_hits:
        out[h.id] = Candidate(
            chunk=h.chunk,
            bm25=h.bm25 or 0.0,
            vector=h.vector_cosine or 0.0,
            hybrid=h.hybrid,
            found_by=("hybrid",),
        )
    for h in user_hits:
        if h.id in out:
            c = out[h.id]
            out[h.id] = Candidate(c.chunk, c.bm25, c.vector, c.hybrid, (*c.found_by, "user"))
            continue
        assert h.chunk.vector is not None
        cos = float(h.chunk.vector @ query)
        scaled = (cos - lo) / (hi - lo) if hi - lo > 1e-12 else 1.0
        out[h.id] = Candidate(
            chunk=h.chunk,
            bm25=0.0,
            vector=cos,
            hybrid=settings.alpha * float(np.clip(scaled, 0.0, 1.0)),
            found_by=("user",),
        )
    return list(out.values())


def keyword_depth(settings: Settings, *, personal: bool) -> int:
    """How deep to start a hybrid search before the user's state is known: a personal
    query may take the fused user leg, one search `candidates + user_candidates` deep
    (cutting a deeper keyword leg to `candidates` later gives the same hits)."""
    if personal and settings.user_leg == "fused" and settings.user_candidates > 0:
        return settings.candidates + settings.user_candidates
    return settings.candidates


def fused_candidates(hits: Sequence[Hit], query: Vector, alpha: float) -> list[Candidate]:
    """Candidates from one hybrid search run with the user-blended vector.

    The store scored its vector leg against the blended vector; every term a result
    explains must be about the query, so the hybrid score is recomputed here:
    `alpha·minmax(query cosine) + (1 − alpha)·minmax(bm25)` over the pool (a chunk the
    keyword leg did not return has bm25 part 0). Unlike the store's fusion, a chunk
    found by keywords alone keeps its query cosine instead of 0: its vector is in hand.
    `found_by` is `hybrid` for keyword matches and `user` for the rest, which only the
    blended vector found.
    """
    if not hits:
        return []
    matrix = np.stack([np.asarray(h.chunk.vector, dtype=np.float32) for h in hits])
    cosines = (matrix @ np.asarray(query, dtype=np.float32)).astype(np.float64)
    vector_part = minmax(cosines)
    raw = np.array([h.bm25 if h.bm25 is not None else np.nan for h in hits])
    matched = ~np.isnan(raw)
    bm25_part = np.zeros(len(hits))
    if matched.any():
        bm25_part[matched] = minmax(raw[matched])
    return [
        Candidate(
            chunk=h.chunk,
            bm25=h.bm25 or 0.0,
            vector=float(cosines[n]),
            hybrid=float(alpha * vector_part[n] + (1.0 - alpha) * bm25_part[n]),
            found_by=("hybrid",) if matched[n] else ("user",),
        )
        for n, h in enumerate(hits)
    ]


def rank(
    query_text: str,
    candidates: Sequence[Candidate],
    profile: ProfileView,
    session: SessionView,
    settings: Settings,
    *,
    top_k: int,
    reranker: Reranker | None = None,
    times: StageTimes | None = None,
) -> list[Result]:
    """Re-score, optionally cross-encode, then pick `top_k` with MMR."""
    if not candidates:
        return []
    t0 = time.perf_counter()
    matrix = np.stack([np.asarray(c.chunk.vector, dtype=np.float32) for c in candidates])
    scored = rescore(candidates, matrix, profile, session, settings.weights)
    final = np.array([s.personalized for s in scored], dtype=np.float64)
    if times is not None:
        t0 = times.add("rescore", t0)
    rerank_terms: list[float | None] = [None] * len(scored)
    if reranker is not None:
        raw = np.asarray(
            reranker.score(query_text, [c.chunk.text for c in candidates]), dtype=np.float64
        )
        if raw.shape != (len(candidates),) or not np.all(np.isfinite(raw)):
            raise ConfigurationError(
                f"The reranker returned scores of shape {raw.shape} (all finite: "
                f"{bool(np.all(np.isfinite(raw)))}) "
                f"for {len(candidates)} passages; it must return one finite score per passage."
            )
        norm = minmax(raw)
        w = settings.weights.rerank
        final = (1.0 - w) * final + w * norm
        rerank_terms = [float(x) for x in norm]
        if times is not None:
            t0 = times.add("rerank", t0)
    picks = mmr(final, matrix.astype(np.float64), k=top_k, lam=settings.mmr_lambda)
    if times is not None:
        times.add("mmr", t0)
    results = []
    for rank_no, (i, mmr_value) in enumerate(picks, start=1):
        s = scored[i]
        c = s.candidate
        breakdown = ScoreBreakdown(
            bm25=c.bm25,
            vector=c.vector,
            hybrid=c.hybrid,
            user=s.user,
            user_negative=s.user_negative,
            user_gate=profile.gate,
            session=s.session,
            session_gate=session.gate,
            personalized=s.personalized,
            rerank=rerank_terms[i],
            final=float(final[i]),
            mmr=mmr_value,
            found_by=c.found_by,
        )
        results.append(
            Result(chunk=c.chunk, rank=rank_no, score=float(final[i]), explain=breakdown)
        )
    return results
