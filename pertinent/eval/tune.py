"""`pertinent tune`: a small coordinate search over the scoring settings on given data.

Start from the settings the evaluation would use; for each parameter of the grid in
turn, try its values with the others fixed and keep the best, if it beats the current
point by at least `min_gain` (relative); repeat for a few rounds or until nothing
moves. The search runs the real pipeline (`Pertinent.search`) over an in-memory
replica of the store's search (`replica.py`), so one point costs seconds.

The grid is small on purpose: the data are a development split with a held-back rest,
and a fine search would fit the noise of the dev numbers. The report gives the score
of the start and of the best point on two halves of the users (or queries) so that a
gain that lives in one half only is visible.
"""

from __future__ import annotations

import tempfile
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pertinent.client import Pertinent
from pertinent.config import Settings
from pertinent.embeddings import CachedQueryEmbedder, Embedder, SentenceTransformerEmbedder
from pertinent.errors import InvalidInput
from pertinent.eval.datasets import EvalQuery, EvalSet
from pertinent.eval.index import default_cache_dir
from pertinent.eval.metrics import Lift, paired_bootstrap_lift
from pertinent.eval.protocols import Protocol, get_protocol
from pertinent.eval.replica import SearchReplica
from pertinent.eval.runner import (
    EVAL_USER,
    EvalIndex,
    _doc_ranking,
    blas_threads,
    build_index,
    git_commit,
    query_metric,
    settings_with,
)
from pertinent.stores.base import SearchFilter

__all__ = ["GRIDS", "Trial", "TuneReport", "parse_grid", "tune"]

# Values around the shipped defaults, a factor of 2-4 apart: coarse enough that a
# winner reflects a real trend, not the noise of one dev split.
GRIDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "movielens": {
        "weights.user": (0.5, 1.0, 2.0, 4.0, 8.0),
        "weights.negative": (0.0, 0.5, 1.0, 2.0),
        "half_life_days": (7.0, 30.0, 180.0, 730.0, 3650.0),
        "confidence_n0": (1.0, 3.0, 10.0),
        "rho": (0.0, 0.25, 0.5, 1.0, 2.0),
        "user_candidates": (0, 20, 50, 100, 200),
        "candidates": (100, 200, 400, 800),
        "mmr_lambda": (0.8, 0.9, 1.0),
        "alpha": (0.3, 0.5, 0.7),
    },
    # LoCoMo questions come from the conversation's owner, who has no event history:
    # the user and session terms cannot act, so only the search itself is tuned.
    "locomo": {
        "alpha": (0.3, 0.4, 0.5, 0.6, 0.7),
        "candidates": (50, 100, 200),
        "mmr_lambda": (0.8, 0.9, 1.0),
    },
}


def parse_grid(assignments: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """``["rho=0,0.5,1"]`` → ``{"rho": (0.0, 0.5, 1.0)}`` (values read as JSON numbers)."""
    import json

    out: dict[str, tuple[Any, ...]] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise InvalidInput(f"--grid takes key=v1,v2,... (e.g. rho=0,0.5,1), got {item!r}.")
        values = []
        for part in raw.split(","):
            try:
                values.append(json.loads(part))
            except json.JSONDecodeError:
                values.append(part.strip())
        out[key.strip()] = tuple(values)
    return out


@dataclass(frozen=True)
class Trial:
    """One evaluated point: the overrides relative to the start, and its mean objective."""

    overrides: Mapping[str, Any]
    score: float
    seconds: float


@dataclass(frozen=True)
class TuneReport:
    dataset: str
    data: str
    objective: str
    queries: int
    start: Mapping[str, Any]
    start_score: float
    best: Mapping[str, Any]
    best_score: float
    changed: Mapping[str, Any]
    lift_over_hybrid: Lift
    start_lift_over_hybrid: Lift
    hybrid_score: float
    halves: Mapping[str, Mapping[str, float]]
    trials: Sequence[Trial]
    grid: Mapping[str, Sequence[Any]]
    rounds: int
    min_gain: float
    commit: str | None
    date: str
    seconds: float
    notes: Sequence[str] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data": self.data,
            "objective": self.objective,
            "queries": self.queries,
            "start": dict(self.start),
            "start_score": self.start_score,
            "best": dict(self.best),
            "best_score": self.best_score,
            "changed": dict(self.changed),
            "hybrid_score": self.hybrid_score,
            "lift": self.lift_over_hybrid.as_dict(),
            "start_lift": self.start_lift_over_hybrid.as_dict(),
            "halves": {k: dict(v) for k, v in self.halves.items()},
            "trials": [
                {"overrides": dict(t.overrides), "score": t.score, "seconds": t.seconds}
                for t in self.trials
            ],
            "grid": {k: list(v) for k, v in self.grid.items()},
            "rounds": self.rounds,
            "min_gain": self.min_gain,
            "commit": self.commit,
            "date": self.date,
            "seconds": self.seconds,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        from pertinent.eval.runner import describe_lift

        lines = [
            f"{self.dataset}: {self.objective} of personalized over {self.queries} queries, "
            f"{len(self.trials)} points tried",
            f"  hybrid                 {self.hybrid_score:.4f}",
            f"  start                  {self.start_score:.4f}",
            f"  best                   {self.best_score:.4f}",
            "  best settings (changed from start):",
        ]
        lines += [f"    {k} = {v}" for k, v in self.changed.items()] or ["    (none)"]
        for half, scores in self.halves.items():
            lines.append(
                f"  {half}: hybrid {scores['hybrid']:.4f}, start {scores['start']:.4f}, "
                f"best {scores['best']:.4f}"
            )
        lines.append("  " + describe_lift(self.lift_over_hybrid))
        lines.append("  --set " + " --set ".join(f"{k}={v}" for k, v in self.changed.items()))
        return "\n".join(lines)


def _setting(settings: Settings, key: str) -> Any:
    node: Any = settings
    for part in key.split("."):
        node = getattr(node, part)
    return node


class _Objective:
    """The per-query objective of `personalized` under some settings, over the replica."""

    def __init__(
        self,
        protocol: Protocol,
        evalset: EvalSet,
        index: EvalIndex,
        replica: SearchReplica,
        embedder: Embedder,
        metric: str,
    ) -> None:
        self.protocol = protocol
        self.evalset = evalset
        self.index = index
        self.replica = replica
        self.embedder = embedder
        self.metric = metric
        self.texts = {item.id: item.text.strip() for item in evalset.items}

    def _value(self, ranking: list[str], q: EvalQuery) -> float | None:
        return query_metric(self.metric, ranking, q, {}, self.texts)

    def personalized(self, settings: Settings) -> list[float | None]:
        px = Pertinent(self.replica, self.embedder, settings)
        try:
            return [
                self._value(
                    _doc_ranking(
                        px.search(
                            q.text,
                            user_id=q.user_id or EVAL_USER,
                            exclude_ids=self.index.chunk_ids(q.exclude),
                            now=q.now,
                            top_k=self.protocol.depth,
                        )
                    ),
                    q,
                )
                for q in self.evalset.queries
            ]
        finally:
            px.close()

    def hybrid(self, settings: Settings) -> list[float | None]:
        out = []
        for q in self.evalset.queries:
            hits = self.replica.hybrid_search(
                q.text,
                self.embedder.embed_query(q.text),
                k=self.protocol.depth,
                alpha=settings.alpha,
                where=SearchFilter(user_id=q.owner, exclude_ids=self.index.chunk_ids(q.exclude)),
            )
            ranking: list[str] = []
            for h in hits:
                if h.chunk.doc_id not in ranking:
                    ranking.append(h.chunk.doc_id)
            out.append(self._value(ranking, q))
        return out


def _mean(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else 0.0


def _half(q: EvalQuery) -> str:
    """A stable split by user (by query when there are no users), for the halves check."""
    key = q.user_id or q.id
    return "half A" if zlib.crc32(key.encode("utf-8")) % 2 == 0 else "half B"


def tune(
    name: str,
    data: str | Path,
    *,
    settings: Settings | None = None,
    overrides: Mapping[str, Any] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    params: Sequence[str] | None = None,
    rounds: int = 2,
    min_gain: float = 0.01,
    max_queries: int | None = None,
    embedder: Embedder | None = None,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    workdir: Path | None = None,
    progress: bool | None = None,
    resamples: int = 1000,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    blas_limit: int | None = 1,
) -> TuneReport:
    """Coordinate search on protocol `name`'s data; returns the best settings found.

    `grid` replaces or adds parameters' values in the protocol's grid (`GRIDS`);
    `params` restricts the search to those parameters, in that order.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    protocol = get_protocol(name)
    if name not in GRIDS and not grid:
        raise InvalidInput(f"No tuning grid for {name!r}; tune one of: {', '.join(GRIDS)}.")
    if rounds < 1:
        raise InvalidInput(f"rounds must be at least 1, got {rounds}.")
    space = {**GRIDS.get(name, {}), **dict(grid or {})}
    if params:
        unknown = [p for p in params if p not in space]
        if unknown:
            raise InvalidInput(
                f"No grid values for {', '.join(unknown)}; give them with --grid KEY=V1,V2."
            )
        space = {p: space[p] for p in params}
    path = Path(data)
    evalset = protocol.load(path).subset(max_queries)
    if not evalset.queries:
        raise InvalidInput(f"{path} gives no query under the {name} protocol; nothing to tune.")
    start = settings_with(settings or Settings(), {**protocol.overrides, **dict(overrides or {})})
    start = settings_with(start, {"query_cache_size": 0})
    for key in space:
        _setting(start, key)  # an unknown key fails here, before any work
        settings_with(start, {key: space[key][0]})
    emb = embedder or SentenceTransformerEmbedder(
        start.embedding_model,
        batch_size=start.embedding_batch_size,
        query_threads=start.query_threads,
        document_threads=start.document_threads,
        precision=start.embedding_precision,
    )
    cache = (cache_dir or default_cache_dir()) if use_cache else None
    say = log or (lambda _msg: None)
    trials: list[Trial] = []
    with (
        blas_threads(blas_limit),
        tempfile.TemporaryDirectory(prefix=f"pertinent-tune-{name}-", dir=workdir) as tmp,
    ):
        index = build_index(
            evalset, Path(tmp) / "store", start, emb, cache_dir=cache, progress=progress
        )
        try:
            replica = SearchReplica(
                index.px.store, [c for chunks in index.chunks_of.values() for c in chunks]
            )
            objective = _Objective(
                protocol,
                evalset,
                index,
                replica,
                CachedQueryEmbedder(index.embedder, 4096),
                protocol.lift_metric,
            )
            point: dict[str, Any] = {k: _setting(start, k) for k in space}
            memo: dict[tuple[tuple[str, Any], ...], list[float | None]] = {}

            def score(candidate: Mapping[str, Any]) -> list[float | None]:
                key = tuple(sorted(candidate.items()))
                if key not in memo:
                    t0 = time.perf_counter()
                    memo[key] = objective.personalized(settings_with(start, candidate))
                    trials.append(
                        Trial(
                            overrides={
                                k: v for k, v in candidate.items() if v != _setting(start, k)
                            },
                            score=_mean(memo[key]),
                            seconds=round(time.perf_counter() - t0, 2),
                        )
                    )
                    say(f"  {_describe(candidate, start)} → {_mean(memo[key]):.5f}")
                return memo[key]

            current = _mean(score(point))
            total = sum(len(v) for v in space.values()) * rounds
            bar = tqdm(
                total=total,
                desc=f"tune {name}",
                unit="pt",
                disable=None if progress is None else not progress,
                leave=False,
            )
            try:
                for _ in range(rounds):
                    moved = False
                    for key, values in space.items():
                        for value in values:
                            bar.update(1)
                            if value == point[key]:
                                continue
                            candidate = {**point, key: value}
                            value_score = _mean(score(candidate))
                            if value_score > current * (1.0 + min_gain):
                                point, current, moved = candidate, value_score, True
                    if not moved:
                        break
            finally:
                bar.close()
            best_settings = settings_with(start, point)
            best_values = score(point)
            start_values = score({k: _setting(start, k) for k in space})
            hybrid_values = objective.hybrid(start)
        finally:
            index.close()

    def pairs(
        a: Sequence[float | None], b: Sequence[float | None]
    ) -> tuple[list[float], list[float]]:
        kept = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
        return [x for x, _ in kept], [y for _, y in kept]

    halves: dict[str, dict[str, float]] = {}
    for half in ("half A", "half B"):
        idx = [i for i, q in enumerate(evalset.queries) if _half(q) == half]
        halves[half] = {
            "queries": float(len(idx)),
            "hybrid": _mean([hybrid_values[i] for i in idx]),
            "start": _mean([start_values[i] for i in idx]),
            "best": _mean([best_values[i] for i in idx]),
        }
    metric = protocol.lift_metric
    lift = paired_bootstrap_lift(
        *pairs(best_values, hybrid_values),
        metric=metric,
        treatment_name="personalized (tuned)",
        baseline_name="hybrid",
        resamples=resamples,
        seed=seed,
    )
    start_lift = paired_bootstrap_lift(
        *pairs(start_values, hybrid_values),
        metric=metric,
        treatment_name="personalized (start)",
        baseline_name="hybrid",
        resamples=resamples,
        seed=seed,
    )
    start_point = {k: _setting(start, k) for k in space}
    return TuneReport(
        dataset=name,
        data=str(path),
        objective=metric,
        queries=len(evalset.queries),
        start=start_point,
        start_score=_mean(start_values),
        best={k: _setting(best_settings, k) for k in space},
        best_score=_mean(best_values),
        changed={k: v for k, v in point.items() if v != start_point[k]},
        lift_over_hybrid=lift,
        start_lift_over_hybrid=start_lift,
        hybrid_score=_mean(hybrid_values),
        halves=halves,
        trials=trials,
        grid={k: list(v) for k, v in space.items()},
        rounds=rounds,
        min_gain=min_gain,
        commit=git_commit(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 1),
    )


def _describe(candidate: Mapping[str, Any], start: Settings) -> str:
    diff = {k: v for k, v in candidate.items() if v != _setting(start, k)}
    return ", ".join(f"{k}={v}" for k, v in diff.items()) or "(start)"
