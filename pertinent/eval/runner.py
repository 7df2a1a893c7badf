"""Run every method of a protocol on one embedded index and report them side by side.

One run: load the data (`datasets.py`), ingest the items once into a fresh LanceDB
store through `Pertinent.ingest` (document vectors come from an on-disk cache when a
previous run embedded the same texts), replay users' histories through
`Pertinent.record`, then ask every query of every method, interleaved query by query
so that background load hits all methods alike. Methods:

- ``bm25``: the store's keyword search; ``vector``: its dense search on the query's
  embedding; ``hybrid``: its relative-score fusion of both (``alpha`` from the settings);
- ``personalized``: `Pertinent.search` for the query's user: the full pipeline
  (hybrid + user-blended leg, re-scoring, MMR) without a cross-encoder;
- ``personalized+rerank``: the same with the cross-encoder, when one is given;
- ``memory`` (LoCoMo, on request: ``--methods ...,memory``): the turns added per
  conversation and session to a second store through `LongTermMemory`, ranked by its
  `search` and packed by its `pack_context` (docs/memory.md).

The latency of a method is the wall time of one call from the query text to its
ranked list, query embedding included (query embeddings are not cached during a run).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from pertinent.client import Pertinent
from pertinent.client import open as open_pertinent
from pertinent.config import Settings
from pertinent.embeddings import Embedder, SentenceTransformerEmbedder
from pertinent.errors import InvalidInput
from pertinent.eval.datasets import EvalQuery, EvalSet
from pertinent.eval.index import VectorCacheEmbedder, default_cache_dir
from pertinent.eval.metrics import (
    Lift,
    evidence_recall,
    mrr_at_k,
    ndcg_at_k,
    paired_bootstrap_lift,
    percentiles,
    recall_at_k,
)
from pertinent.eval.protocols import Protocol, get_protocol
from pertinent.prompts.packing import pack
from pertinent.prompts.tokenizers import tokenizer_for
from pertinent.retrievers.rerank import Reranker
from pertinent.stores.base import SearchFilter
from pertinent.types import Budget, Chunk, Event, Hit, Result, ScoreBreakdown

__all__ = [
    "BASELINES",
    "METHODS",
    "EvalIndex",
    "EvalReport",
    "blas_threads",
    "build_index",
    "evaluate",
    "git_commit",
    "parse_overrides",
    "run_protocol",
    "settings_with",
]

BASELINES = ("bm25", "vector", "hybrid")
METHODS = (*BASELINES, "personalized", "personalized+rerank")
PACK_MODEL = "gpt-4"  # cl100k_base, as the LoCoMo protocol counts its budgets
EVAL_USER = "eval-user"  # asks the queries of protocols without users: no history


# --------------------------------------------------------------------------- settings


def parse_overrides(assignments: Iterable[str]) -> dict[str, Any]:
    """``["weights.user=2", "mmr_lambda=1"]`` → ``{"weights.user": 2, "mmr_lambda": 1}``.

    Values are read as JSON when they parse (numbers, true/false, null), else as text.
    """
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--set takes key=value (e.g. weights.user=2), got {item!r}.")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def settings_with(base: Settings, overrides: Mapping[str, Any]) -> Settings:
    """`base` with dotted-key overrides applied and validated like any `Settings`."""
    data = base.model_dump()
    for key, value in overrides.items():
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                raise InvalidInput(f"Unknown setting {key!r}: {part!r} has no sub-fields.")
            node = child
        if parts[-1] not in node:
            raise InvalidInput(
                f"Unknown setting {key!r}. Known: {', '.join(sorted(_flat_keys(data)))}."
            )
        node[parts[-1]] = value
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise InvalidInput(f"Invalid settings override {dict(overrides)}: {exc}") from exc


def _flat_keys(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        if isinstance(v, dict):
            keys.extend(_flat_keys(v, f"{prefix}{k}."))
        else:
            keys.append(f"{prefix}{k}")
    return keys


@contextmanager
def blas_threads(limit: int | None) -> Iterator[int | None]:
    """Limit numpy's BLAS threads for the duration of a run; yields the limit applied.

    The pipeline's matrix products are small (a hundred candidates by 384 dimensions).
    With OpenBLAS's default of one thread per core they took 9-15 ms instead of
    0.1-0.9 ms on the 2-core machine with other work running, which would be billed to
    `personalized` as latency. None (or threadpoolctl missing) leaves BLAS alone and
    yields None, which the report records.
    """
    if limit is None:
        yield None
        return
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:
        yield None
        return
    with threadpool_limits(limits=limit, user_api="blas"):
        yield limit


def git_commit(root: Path | None = None) -> str | None:
    """The short commit of the checkout this package runs from, or None outside git."""
    where = root or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


# --------------------------------------------------------------------------- index


@dataclass
class EvalIndex:
    """The store of one run, the chunks of every item, and how long building took."""

    px: Pertinent
    embedder: VectorCacheEmbedder
    chunks_of: dict[str, list[Chunk]]
    build_seconds: float
    record_seconds: float = 0.0
    _exclusions: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)

    def chunk_ids(self, doc_ids: tuple[str, ...]) -> tuple[str, ...]:
        """Chunk ids of documents (memoised: MovieLens repeats one history per user)."""
        out = self._exclusions.get(doc_ids)
        if out is None:
            out = tuple(c.id for d in doc_ids for c in self.chunks_of.get(d, ()))
            self._exclusions[doc_ids] = out
        return out

    def close(self) -> None:
        self.px.close()


def build_index(
    evalset: EvalSet,
    directory: Path,
    settings: Settings,
    embedder: Embedder,
    *,
    cache_dir: Path | None,
    progress: bool | None = None,
) -> EvalIndex:
    """Ingest `evalset`'s items into a new store under `directory` and replay histories."""
    t0 = time.perf_counter()
    cached = VectorCacheEmbedder(embedder, cache_dir)
    px = open_pertinent(directory, settings=settings, embedder=cached)
    px.ingest(
        [
            {
                "id": item.id,
                "text": item.text,
                "title": item.title,
                "owner": item.owner,
                "metadata": dict(item.metadata),
            }
            for item in evalset.items
        ],
        show_progress=progress,
    )
    cached.save()
    optimize = getattr(px.store, "optimize", None)
    if callable(optimize):
        # Measure the store in its steady state: rows written after the last index
        # refresh are searched by a flat scan, which would bill ingest order to search.
        optimize()
    chunks_of: dict[str, list[Chunk]] = defaultdict(list)
    total = px.store.count_chunks()
    probe = np.zeros(px.embedder.dim, dtype=np.float32)
    probe[0] = 1.0
    for owner in sorted({item.owner for item in evalset.items}, key=lambda o: o or ""):
        # An exact vector search over every visible row is the store's public way to list
        # an owner's chunks with their vectors.
        for hit in px.store.vector_search(probe, k=total, where=SearchFilter(user_id=owner)):
            if owner is None or hit.chunk.owner == owner:
                chunks_of[hit.chunk.doc_id].append(hit.chunk)
    for chunks in chunks_of.values():
        chunks.sort(key=lambda c: c.position)
    index = EvalIndex(px, cached, dict(chunks_of), time.perf_counter() - t0)
    t1 = time.perf_counter()
    for user, events in evalset.histories.items():
        batch = [
            Event(kind=e.kind, item_id=index.chunks_of[e.item_id][0].id, timestamp=e.timestamp)
            for e in events
            if e.item_id in index.chunks_of
        ]
        if batch:
            px.record(user, batch)
    index.record_seconds = time.perf_counter() - t1
    return index


# --------------------------------------------------------------------------- methods


def _hits_as_results(hits: Sequence[Hit], method: str) -> list[Result]:
    """Store hits in the pipeline's result type, so that every method packs alike."""
    out = []
    for rank_no, h in enumerate(hits, start=1):
        score = h.hybrid if method == "hybrid" else (h.bm25 or h.vector_cosine or 0.0)
        explain = ScoreBreakdown(
            bm25=h.bm25 or 0.0,
            vector=h.vector_cosine or 0.0,
            hybrid=h.hybrid,
            user=0.0,
            user_negative=0.0,
            user_gate=0.0,
            session=0.0,
            session_gate=0.0,
            personalized=score,
            rerank=None,
            final=score,
            mmr=score,
            found_by=(method,),
        )
        out.append(Result(chunk=h.chunk, rank=rank_no, score=score, explain=explain))
    return out


MethodFn = Callable[[EvalQuery], list[Result]]


def method_functions(
    index: EvalIndex, settings: Settings, depth: int, reranker: Reranker | None
) -> dict[str, MethodFn]:
    """One callable per method, from a query to its ranked results."""
    px = index.px
    store, embedder = px.store, px.embedder

    def where(q: EvalQuery) -> SearchFilter:
        return SearchFilter(user_id=q.owner, exclude_ids=index.chunk_ids(q.exclude))

    def bm25(q: EvalQuery) -> list[Result]:
        return _hits_as_results(store.keyword_search(q.text, k=depth, where=where(q)), "bm25")

    def vector(q: EvalQuery) -> list[Result]:
        vec = embedder.embed_query(q.text)
        return _hits_as_results(store.vector_search(vec, k=depth, where=where(q)), "vector")

    def hybrid(q: EvalQuery) -> list[Result]:
        vec = embedder.embed_query(q.text)
        hits = store.hybrid_search(q.text, vec, k=depth, alpha=settings.alpha, where=where(q))
        return _hits_as_results(hits, "hybrid")

    def personalized_with(p: Pertinent) -> MethodFn:
        def run(q: EvalQuery) -> list[Result]:
            return p.search(
                q.text,
                user_id=q.user_id or EVAL_USER,
                exclude_ids=index.chunk_ids(q.exclude),
                now=q.now,
                top_k=depth,
            )

        return run

    fns: dict[str, MethodFn] = {
        "bm25": bm25,
        "vector": vector,
        "hybrid": hybrid,
        "personalized": personalized_with(px),
    }
    if reranker is not None:
        # Shares the store, embedder and the profiles' event log; only the reranker differs.
        fns["personalized+rerank"] = personalized_with(
            Pertinent(store, embedder, settings, reranker=reranker)
        )
    return fns


class _MemoryMethod:
    """``memory``: LoCoMo's turns in long-term memory (a second store in the run's
    directory, same embedder and vector cache), with the protocol's item ids back."""

    def __init__(self, evalset: EvalSet, index: EvalIndex, depth: int) -> None:
        from pertinent.memory.longterm import LongTermMemory, MemoryTurn

        px = index.px
        self.px = open_pertinent(
            Path(px.settings.path).parent / "memory", settings=px.settings, embedder=index.embedder
        )
        self.ltm = LongTermMemory(self.px)
        self.depth = depth
        sessions: dict[tuple[str, int], list[MemoryTurn]] = defaultdict(list)
        for item in evalset.items:  # conversation order, as the loader keeps it
            speaker, _, text = item.text.partition(": ")
            sessions[(item.owner or "", int(item.metadata["session"]))].append(
                MemoryTurn(
                    text=text,
                    speaker=speaker,
                    timestamp=item.metadata.get("timestamp"),
                    turn_id=item.id.split("/", 1)[1],
                )
            )
        for (owner, number), turns in sessions.items():
            self.ltm.add_conversation(owner, turns, session_id=f"session_{number}")
        index.embedder.save()
        optimize = getattr(self.px.store, "optimize", None)
        if callable(optimize):
            optimize()

    def __call__(self, q: EvalQuery) -> list[Result]:
        results = self.ltm.search(q.text, user_id=q.owner or EVAL_USER, top_k=self.depth)
        out = []
        for r in results:
            item_id = f"{r.chunk.owner}/{r.chunk.metadata['turn_id']}"
            out.append(replace(r, chunk=replace(r.chunk, doc_id=item_id)))
        return out

    def pack(self, results: Sequence[Result], budget: int) -> str:
        return self.ltm.pack_context(results, Budget(model=PACK_MODEL, max_tokens=budget)).text

    def close(self) -> None:
        self.px.close()


def _doc_ranking(results: Sequence[Result]) -> list[str]:
    seen: set[str] = set()
    out = []
    for r in results:
        if r.chunk.doc_id not in seen:
            seen.add(r.chunk.doc_id)
            out.append(r.chunk.doc_id)
    return out


# --------------------------------------------------------------------------- metrics


def query_metric(
    name: str,
    ranking: Sequence[str],
    query: EvalQuery,
    contexts: Mapping[int, str],
    texts: Mapping[str, str],
) -> float | None:
    """One protocol metric for one query; None when the query does not count for it."""
    kind, _, arg = name.partition("@")
    if kind == "ndcg":
        return ndcg_at_k(ranking, query.gains, int(arg))
    if kind == "recall":
        return recall_at_k(ranking, query.relevant, int(arg)) if query.relevant else None
    if kind == "mrr":
        return mrr_at_k(ranking, query.relevant, int(arg)) if query.relevant else None
    if kind == "evidence_recall":
        budget = int(arg.removesuffix("tok"))
        evidence = [texts[i] for i in sorted(query.relevant) if i in texts]
        return evidence_recall(contexts[budget], evidence) if evidence else None
    raise InvalidInput(f"Unknown metric {name!r}.")


@dataclass(frozen=True)
class EvalReport:
    """The outcome of one protocol run; `as_dict()` is the JSON written by ``--out``."""

    dataset: str
    data: str
    queries: int
    methods: Mapping[str, Mapping[str, Any]]
    lift: Lift | None
    per_category: Mapping[str, Mapping[str, Mapping[str, float]]]
    counts: Mapping[str, Any]
    config: Mapping[str, Any]
    commit: str | None
    date: str
    checks: Mapping[str, Any]
    per_query: Mapping[str, Mapping[str, list[float | None]]] = field(repr=False)

    def as_dict(self, *, include_per_query: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "data": self.data,
            "queries": self.queries,
            "methods": {m: dict(v) for m, v in self.methods.items()},
            "lift": self.lift.as_dict() if self.lift is not None else None,
            "per_category": self.per_category,
            "counts": dict(self.counts),
            "checks": dict(self.checks),
            "config": dict(self.config),
            "commit": self.commit,
            "date": self.date,
        }
        if include_per_query:
            out["per_query"] = self.per_query
        return out

    def metric_names(self) -> list[str]:
        first = next(iter(self.methods.values()), {})
        return [k for k in first if k not in ("latency_ms", "counted")]

    def table(self, *, markdown: bool = False) -> str:
        """The methods side by side, with latency; markdown for docs/evaluation.md."""
        names = self.metric_names()
        header = ["method", *names, "p50 ms", "p95 ms"]
        rows = []
        for method, values in self.methods.items():
            lat = values["latency_ms"]
            rows.append(
                [
                    method,
                    *(_fmt(values[n]) for n in names),
                    f"{lat['p50']:.1f}",
                    f"{lat['p95']:.1f}",
                ]
            )
        if markdown:
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
            lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        if self.lift is not None:
            lines.append("")
            lines.append(describe_lift(self.lift))
        return "\n".join(lines)

    def category_table(self, *, markdown: bool = False) -> str:
        """Per category (LoCoMo): one row per method and category."""
        if not self.per_category:
            return ""
        names = self.metric_names()
        header = ["method", "category", "n", *names]
        rows = []
        for method, cats in self.per_category.items():
            for cat, values in cats.items():
                rows.append(
                    [method, cat, str(int(values["queries"])), *(_fmt(values[n]) for n in names)]
                )
        if markdown:
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            return "\n".join(lines)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    v = float(value)
    return f"{v:.4f}" if abs(v) < 0.1 else f"{v:.3f}"


def describe_lift(lift: Lift) -> str:
    if lift.relative is None:
        return f"lift {lift.treatment} vs {lift.baseline} on {lift.metric}: undefined (baseline 0)"
    ci = (
        f" (95% CI {100 * lift.ci95[0]:+.1f}% to {100 * lift.ci95[1]:+.1f}%, "
        f"{lift.resamples} paired resamples of {lift.pairs})"
        if lift.ci95 is not None
        else ""
    )
    head = f"lift {lift.treatment} vs {lift.baseline} on {lift.metric}"
    return f"{head}: {100 * lift.relative:+.1f}%{ci}"


def _mean(values: Iterable[float | None]) -> tuple[float, int]:
    kept = [v for v in values if v is not None]
    return (float(np.mean(kept)) if kept else 0.0), len(kept)


# --------------------------------------------------------------------------- run


def evaluate(
    protocol: Protocol,
    evalset: EvalSet,
    index: EvalIndex,
    settings: Settings,
    *,
    methods: Sequence[str] | None = None,
    reranker: Reranker | None = None,
    progress: bool | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, dict[str, list[float | None]]], dict[str, list[float]], dict[str, Any]]:
    """Ask every query of every method; per-query metric values, latencies, and checks."""
    from tqdm.auto import tqdm

    fns = method_functions(index, settings, protocol.depth, reranker)
    if protocol.name == "locomo" and methods and "memory" in methods:
        fns["memory"] = _MemoryMethod(evalset, index, protocol.depth)
    wanted = list(methods) if methods else [m for m in METHODS if m in fns]
    for m in wanted:
        if m not in fns:
            hint = " (needs --reranker)" if m == "personalized+rerank" else ""
            raise InvalidInput(f"Unknown or unavailable method {m!r}{hint}; use {list(fns)}.")
    texts = {item.id: item.text.strip() for item in evalset.items}
    tokenizer = tokenizer_for(PACK_MODEL) if protocol.budgets else None
    values: dict[str, dict[str, list[float | None]]] = {
        m: {name: [] for name in protocol.metrics} for m in wanted
    }
    latencies: dict[str, list[float]] = {m: [] for m in wanted}
    same_top10 = same_full = compared = 0
    bar = tqdm(
        evalset.queries,
        desc=protocol.name,
        unit="q",
        disable=None if progress is None else not progress,
        leave=False,
    )
    try:
        for query in bar:
            rankings: dict[str, list[str]] = {}
            for m in wanted:
                t0 = time.perf_counter()
                results = fns[m](query)
                latencies[m].append((time.perf_counter() - t0) * 1000.0)
                ranking = _doc_ranking(results)
                rankings[m] = ranking
                contexts: dict[int, str] = {}
                for budget in protocol.budgets:
                    assert tokenizer is not None
                    fn = fns[m]
                    if isinstance(fn, _MemoryMethod):  # packs its own way (dated lines)
                        contexts[budget] = fn.pack(results, budget)
                        continue
                    contexts[budget] = pack(
                        results,
                        Budget(model=PACK_MODEL, max_tokens=budget),
                        near_duplicate_cosine=settings.near_duplicate_cosine,
                        # A block that does not fit is skipped whole, never cut.
                        min_partial_tokens=budget + 1,
                        tokenizer=tokenizer,
                    ).text
                for name in protocol.metrics:
                    values[m][name].append(query_metric(name, ranking, query, contexts, texts))
            if "hybrid" in rankings and "personalized" in rankings:
                compared += 1
                same_top10 += rankings["hybrid"][:10] == rankings["personalized"][:10]
                same_full += rankings["hybrid"] == rankings["personalized"]
    finally:
        bar.close()
        for fn in fns.values():
            if isinstance(fn, _MemoryMethod):
                fn.close()
    checks: dict[str, Any] = {}
    if compared:
        checks["personalized_same_top10_as_hybrid"] = same_top10 / compared
        checks["personalized_same_ranking_as_hybrid"] = same_full / compared
        checks["users_with_history"] = sum(1 for h in evalset.histories.values() if h)
    return values, latencies, checks


def run_protocol(
    name: str,
    data: str | os.PathLike[str],
    *,
    settings: Settings | None = None,
    overrides: Mapping[str, Any] | None = None,
    methods: Sequence[str] | None = None,
    reranker: Reranker | None = None,
    embedder: Embedder | None = None,
    max_queries: int | None = None,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    workdir: Path | None = None,
    progress: bool | None = None,
    resamples: int = 1000,
    seed: int = 0,
    command: str | None = None,
    blas_limit: int | None = 1,
) -> EvalReport:
    """Load `data` with protocol `name`, build the index, evaluate, summarise.

    `settings` (default: `Settings()`, i.e. the package defaults and PERTINENT_* env
    vars) get the protocol's overrides, then `overrides` (dotted keys). The store lives
    in `workdir` (a temporary directory when None) and is deleted afterwards.
    `blas_limit` caps numpy's BLAS threads during the run (see `blas_threads`).
    """
    started = time.perf_counter()
    protocol = get_protocol(name)
    path = Path(data)
    evalset = protocol.load(path).subset(max_queries)
    if not evalset.queries:
        raise InvalidInput(f"{path} gives no query under the {name} protocol; nothing to measure.")
    effective = settings_with(
        settings or Settings(), {**protocol.overrides, **dict(overrides or {})}
    )
    # Query embeddings are part of each method's latency: no query cache during a run.
    effective = settings_with(effective, {"query_cache_size": 0})
    emb = embedder or SentenceTransformerEmbedder(
        effective.embedding_model,
        batch_size=effective.embedding_batch_size,
        query_threads=effective.query_threads,
        document_threads=effective.document_threads,
    )
    cache = (cache_dir or default_cache_dir()) if use_cache else None
    with (
        blas_threads(blas_limit) as blas,
        tempfile.TemporaryDirectory(prefix=f"pertinent-eval-{name}-", dir=workdir) as tmp,
    ):
        index = build_index(
            evalset, Path(tmp) / "store", effective, emb, cache_dir=cache, progress=progress
        )
        try:
            values, latencies, checks = evaluate(
                protocol,
                evalset,
                index,
                effective,
                methods=methods,
                reranker=reranker,
                progress=progress,
                resamples=resamples,
                seed=seed,
            )
            chunk_count = index.px.store.count_chunks()
        finally:
            index.close()
    return summarise(
        protocol,
        evalset,
        path,
        values,
        latencies,
        checks,
        config={
            "settings": effective.model_dump(mode="json", exclude={"path"}),
            "depth": protocol.depth,
            "budgets": list(protocol.budgets),
            "pack_model": PACK_MODEL if protocol.budgets else None,
            "embedding_model": emb.model_id,
            "reranker": type(reranker).__name__ if reranker is not None else None,
            "blas_threads": blas,
            "max_queries": max_queries,
            "resamples": resamples,
            "seed": seed,
            "command": command,
        },
        extra_counts={
            "chunks": chunk_count,
            "embedding_cache": {
                "path": str(index.embedder.path) if index.embedder.path else None,
                "hits": index.embedder.hits,
                "misses": index.embedder.misses,
            },
            "index_seconds": round(index.build_seconds, 2),
            "record_seconds": round(index.record_seconds, 2),
            "total_seconds": round(time.perf_counter() - started, 2),
        },
        resamples=resamples,
        seed=seed,
    )


def summarise(
    protocol: Protocol,
    evalset: EvalSet,
    path: Path,
    values: Mapping[str, Mapping[str, list[float | None]]],
    latencies: Mapping[str, list[float]],
    checks: Mapping[str, Any],
    *,
    config: Mapping[str, Any],
    extra_counts: Mapping[str, Any],
    resamples: int,
    seed: int,
) -> EvalReport:
    """Averages per method (and category), latency percentiles, the lift and checks."""
    methods: dict[str, dict[str, Any]] = {}
    for m, per_metric in values.items():
        row: dict[str, Any] = {}
        counted: dict[str, int] = {}
        for name, vals in per_metric.items():
            row[name], counted[name] = _mean(vals)
        row["latency_ms"] = percentiles(latencies[m])
        row["counted"] = counted
        methods[m] = row

    per_category: dict[str, dict[str, dict[str, float]]] = {}
    if protocol.per_category:
        cats = sorted({q.category or "" for q in evalset.queries}, key=_category_key)
        for m, per_metric in values.items():
            per_category[m] = {}
            for cat in cats:
                idx = [i for i, q in enumerate(evalset.queries) if (q.category or "") == cat]
                entry: dict[str, float] = {"queries": float(len(idx))}
                for name, vals in per_metric.items():
                    entry[name] = _mean(vals[i] for i in idx)[0]
                per_category[m][cat] = entry

    lift = None
    metric = protocol.lift_metric
    if "personalized" in values and "hybrid" in values:
        pairs = [
            (p, h)
            for p, h in zip(values["personalized"][metric], values["hybrid"][metric], strict=True)
            if p is not None and h is not None
        ]
        lift = paired_bootstrap_lift(
            [p for p, _ in pairs],
            [h for _, h in pairs],
            metric=metric,
            treatment_name="personalized",
            baseline_name="hybrid",
            resamples=resamples,
            seed=seed,
        )
    all_checks = dict(checks)
    baselines = [methods[b][metric] for b in BASELINES if b in methods]
    if "personalized" in methods and baselines and max(baselines) > 0:
        all_checks["personalized_over_best_baseline"] = methods["personalized"][metric] / max(
            baselines
        )
    if "memory" in methods and baselines and max(baselines) > 0:
        all_checks["memory_over_best_baseline"] = methods["memory"][metric] / max(baselines)
    return EvalReport(
        dataset=protocol.name,
        data=str(path),
        queries=len(evalset.queries),
        methods=methods,
        lift=lift,
        per_category=per_category,
        counts={**evalset.counts, **extra_counts},
        config=config,
        commit=git_commit(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        checks=all_checks,
        per_query={m: {k: list(v) for k, v in d.items()} for m, d in values.items()},
    )


def _category_key(value: str) -> tuple[int, str]:
    return (int(value), value) if value.isdigit() else (1 << 30, value)
