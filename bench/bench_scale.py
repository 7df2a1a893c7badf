"""`retrieve` per stage at scale: 10k and 100k generated chunks, cold and warm users.

The corpus, users and queries come from `bench/corpus.py`; chunk vectors are the real
all-MiniLM-L6-v2 vectors from its on-disk cache (fill it first with
``python bench/corpus.py --chunks 100000``); query vectors are computed live, one
torch thread, as `retrieve` does. Chunks are written straight to the store with their
cached vectors (ingest throughput is measured in bench_throughput.py).

Systems, interleaved query by query in random order on the same store:
- `bare-hybrid`: query embedding + the store's hybrid search, nothing else (the floor),
  its BM25 leg started before the embedding as `retrieve` starts it
  (`pertinent.stores.fusion.start_hybrid_search`).
- `retrieve-cold`: `retrieve` for a user with no history (a new user id every query).
- `retrieve-warm`: `retrieve` for one of 100 users with 200 events each.
- `retrieve-warm-fused`: the same with `user_leg="fused"` (one search instead of two).

ANN recall@50 compares the store's vector search against exact search (NumPy, all
vectors) on the same query vectors. Usage:
    python bench/bench_scale.py --chunks 10000 100000 --queries 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus

import pertinent
from pertinent.stores.base import SearchFilter
from pertinent.stores.fusion import start_hybrid_search

CHUNKS_PER_DOC = 5
BATCH = 5000


def pct(xs: Sequence[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), p)) if xs else float("nan")


def summary(xs: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(xs),
        "median": statistics.median(xs) if xs else float("nan"),
        "p95": pct(xs, 95),
        "mean": statistics.fmean(xs) if xs else float("nan"),
    }


@lru_cache(maxsize=1)
def shared_embedder() -> pertinent.SentenceTransformerEmbedder:
    """One model per process: every store a benchmark opens embeds with the same one."""
    return pertinent.SentenceTransformerEmbedder()


def open_px(path: Path, **settings: Any) -> pertinent.Pertinent:
    return pertinent.open(
        path,
        settings=pertinent.Settings(show_progress=False, **settings),
        embedder=shared_embedder(),
    )


def query_embedder(emb: pertinent.Embedder) -> pertinent.Embedder:
    """The model without the query cache (every benchmark query pays its embedding)."""
    return emb.inner if isinstance(emb, pertinent.CachedQueryEmbedder) else emb


def chunk_objects(
    texts: Sequence[str], vectors: np.ndarray, model_id: str, start: int = 0
) -> list[pertinent.Chunk]:
    """Chunks `start`.. of the corpus (ids ``c<i>``, five chunks per document)."""
    return [
        pertinent.Chunk(
            id=f"c{i}",
            doc_id=f"d{i // CHUNKS_PER_DOC}",
            text=texts[i - start],
            position=i % CHUNKS_PER_DOC,
            model_id=model_id,
            vector=vectors[i - start],
        )
        for i in range(start, start + len(texts))
    ]


def load_store(
    px: pertinent.Pertinent, texts: Sequence[str], vectors: np.ndarray
) -> dict[str, float]:
    """Write the chunks in whole-document batches, then fold them into the indexes."""
    t0 = time.perf_counter()
    model_id = px.embedder.model_id
    for start in range(0, len(texts), BATCH):
        end = start + BATCH
        px.store.upsert_chunks(chunk_objects(texts[start:end], vectors[start:end], model_id, start))
    t_write = time.perf_counter() - t0
    t1 = time.perf_counter()
    px.store.optimize()  # type: ignore[attr-defined]
    t_index = time.perf_counter() - t1
    return {"write_s": t_write, "optimize_s": t_index}


def record_users(
    px: pertinent.Pertinent, n_chunks: int, users: int, per_user: int
) -> dict[str, float]:
    by_user: dict[str, list[pertinent.Event]] = {}
    for e in corpus.user_events(n_chunks, users=users, per_user=per_user):
        by_user.setdefault(e.user_id, []).append(
            pertinent.Event(kind=e.kind, item_id=f"c{e.chunk_index}", timestamp=e.timestamp)
        )
    t0 = time.perf_counter()
    n = 0
    for uid, events in by_user.items():
        n += px.record(uid, events)
    return {"events": n, "record_s": time.perf_counter() - t0}


def ann_recall(
    px: pertinent.Pertinent,
    qvecs: np.ndarray,
    vectors: np.ndarray,
    k: int = 50,
) -> dict[str, float]:
    """Mean recall@k of the store's vector search against exact cosine top-k."""
    where = SearchFilter()
    recalls: list[float] = []
    ms: list[float] = []
    # Exact top-k per query (argpartition: a full sort of 1M scores per query is slow).
    exact = [np.argpartition(-(vectors @ q), k)[:k] for q in qvecs]
    for q, ex in zip(qvecs, exact, strict=True):
        t = time.perf_counter()
        hits = px.store.vector_search(q, k=k, where=where)
        ms.append((time.perf_counter() - t) * 1000)
        got = {h.id for h in hits}
        recalls.append(len(got & {f"c{i}" for i in ex}) / k)
    return {
        "recall": float(np.mean(recalls)),
        "min": float(np.min(recalls)),
        **{f"vector_search_{key}": v for key, v in summary(ms).items() if key != "n"},
    }


@dataclass
class ScaleResult:
    chunks: int
    queries: int
    build: dict[str, float]
    users: dict[str, float]
    recall: dict[str, float]
    totals: dict[str, dict[str, float]]
    stages: dict[str, dict[str, dict[str, float]]]
    index: list[str] = field(default_factory=list)
    real_vectors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def run(
    n_chunks: int,
    n_queries: int = 200,
    *,
    warmup: int = 20,
    users: int = 100,
    per_user: int = 200,
    embed_missing: bool = False,
    workdir: Path | None = None,
    seed: int = 0,
) -> ScaleResult:
    texts = corpus.chunk_texts(n_chunks)
    tmp = Path(tempfile.mkdtemp(prefix="pertinent-bench-scale-", dir=workdir))
    px = open_px(tmp / "store")
    emb = query_embedder(px.embedder)
    vectors, n_real = corpus.vectors_for(texts, emb, embed_missing=embed_missing)
    build = load_store(px, texts, vectors)
    indexes = [f"{ix.index_type}({','.join(ix.columns)})" for ix in px.store._chunks.list_indices()]  # type: ignore[attr-defined]
    user_stats = record_users(px, n_chunks, users, per_user)
    user_ids = sorted({f"u{u:03d}" for u in range(users)})
    qs = corpus.queries(n_queries + warmup, seed=seed)
    budget = pertinent.Budget("gpt-4o", 2000)

    def bare(q: str) -> None:
        search = start_hybrid_search(px.store, q, k=px.settings.candidates, where=SearchFilter())
        search.finish(emb.embed_query(q), k=px.settings.candidates, alpha=px.settings.alpha)

    counter = iter(range(10**9))
    rng = random.Random(seed)
    fused = px.settings.model_copy(update={"user_leg": "fused"})

    def warm_fused(q: str) -> None:
        # One client, its settings swapped for the call: the same store, caches and
        # profiles serve both warm systems (this loop is single-threaded).
        default, px.settings = px.settings, fused
        try:
            px.retrieve(q, user_id=rng.choice(user_ids), budget=budget, remember=False)
        finally:
            px.settings = default

    systems: dict[str, Callable[[str], None]] = {
        "bare-hybrid": bare,
        "retrieve-cold": lambda q: px.retrieve(
            q, user_id=f"new{next(counter)}", budget=budget, remember=False
        ),
        "retrieve-warm": lambda q: px.retrieve(
            q, user_id=rng.choice(user_ids), budget=budget, remember=False
        ),
        "retrieve-warm-fused": warm_fused,
    }
    # Warm-up: torch, tiktoken, LanceDB caches, every warm user's profile folded once.
    for uid in user_ids:
        px.profile(uid)
    for q in qs[:warmup]:
        for f in systems.values():
            f("warm up " + q)
    totals: dict[str, list[float]] = {k: [] for k in systems}
    stages: dict[str, dict[str, list[float]]] = {k: {} for k in systems if k != "bare-hybrid"}
    for i, q in enumerate(qs[warmup:]):
        order = list(systems.items())
        random.Random(i).shuffle(order)
        for name, f in order:
            qq = f"{q} {name.split('-')[-1]}"  # distinct text per system: no cache hits
            t = time.perf_counter()
            f(qq)
            totals[name].append((time.perf_counter() - t) * 1000)
            if name in stages and px.last_times is not None:
                for stage, ms in px.last_times.ms.items():
                    stages[name].setdefault(stage, []).append(ms)
                known = sum(px.last_times.ms.values())
                stages[name].setdefault("other", []).append(totals[name][-1] - known)
    sample = qs[warmup : warmup + min(n_queries, 200)]
    qvecs = np.stack([emb.embed_query(q) for q in sample])
    recall = ann_recall(px, qvecs, vectors)
    px.close()
    shutil.rmtree(tmp, ignore_errors=True)  # a 100k store is ~1.5 GB
    return ScaleResult(
        chunks=n_chunks,
        queries=n_queries,
        build=build,
        users=user_stats,
        recall=recall,
        totals={k: summary(v) for k, v in totals.items()},
        stages={name: {s: summary(v) for s, v in st.items()} for name, st in stages.items()},
        index=indexes,
        real_vectors=n_real,
    )


def markdown(results: Sequence[ScaleResult]) -> str:
    out = ["| chunks | system | n | median ms | p95 ms |", "|---|---|---|---|---|"]
    for r in results:
        for name, s in r.totals.items():
            out.append(f"| {r.chunks:,} | {name} | {s['n']} | {s['median']:.1f} | {s['p95']:.1f} |")
    out.append("")
    out.append("Per stage (median / p95 ms):\n")
    stage_names = [
        "embed_query",
        "user_state",
        "user_leg",
        "hybrid_search",
        "rescore",
        "mmr",
        "pack",
        "other",
    ]
    out.append("| chunks | system | " + " | ".join(stage_names) + " |")
    out.append("|---|---|" + "---|" * len(stage_names))
    for r in results:
        for name, st in r.stages.items():
            cells = [
                f"{st[s]['median']:.2f} / {st[s]['p95']:.2f}" if s in st else "–"
                for s in stage_names
            ]
            out.append(f"| {r.chunks:,} | {name} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        "| chunks | indexes | ANN recall@50 (mean / min) | vector top-50 median / p95 ms "
        "| write s | optimize s | record 20k events s |"
    )
    out.append("|---|---|---|---|---|---|---|")
    for r in results:
        out.append(
            f"| {r.chunks:,} | {', '.join(r.index)} | {r.recall['recall']:.3f} / "
            f"{r.recall['min']:.2f} | {r.recall['vector_search_median']:.1f} / "
            f"{r.recall['vector_search_p95']:.1f} | {r.build['write_s']:.1f} | "
            f"{r.build['optimize_s']:.1f} | {r.users['record_s']:.1f} |"
        )
    return "\n".join(out)


def run_search_only(
    n_chunks: int, n_queries: int = 200, *, warmup: int = 20, seed: int = 0
) -> dict[str, Any]:
    """Ingest and search only (the issue's 1M size): write the store, build its indexes,
    then time the bare hybrid search and the vector leg and measure ANN recall@50. No
    users, no retrieve: re-scoring and packing do not depend on the table size."""
    texts = corpus.chunk_texts(n_chunks)
    tmp = Path(tempfile.mkdtemp(prefix="pertinent-bench-1m-"))
    px = open_px(tmp / "store")
    emb = query_embedder(px.embedder)
    vectors, n_real = corpus.vectors_for(texts, emb, embed_missing=False)
    build = load_store(px, texts, vectors)
    del texts
    indexes = [f"{ix.index_type}({','.join(ix.columns)})" for ix in px.store._chunks.list_indices()]  # type: ignore[attr-defined]
    qs = corpus.queries(n_queries + warmup, seed=seed)
    where = SearchFilter(user_id="someone", principals=("user:someone",))
    ms: list[float] = []
    for i, q in enumerate(qs):
        t = time.perf_counter()
        search = start_hybrid_search(px.store, q, k=px.settings.candidates, where=where)
        search.finish(emb.embed_query(q), k=px.settings.candidates, alpha=px.settings.alpha)
        if i >= warmup:
            ms.append((time.perf_counter() - t) * 1000)
    sample = qs[warmup : warmup + min(n_queries, 100)]
    qvecs = np.stack([emb.embed_query(q) for q in sample])
    recall = ann_recall(px, qvecs, vectors)
    px.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "chunks": n_chunks,
        "real_vectors": n_real,
        "build": build,
        "chunks_per_s_written": n_chunks / build["write_s"],
        "indexes": indexes,
        "bare_hybrid": summary(ms),
        "recall": recall,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument(
        "--embed-missing",
        action="store_true",
        help="embed chunks whose vectors are not cached (slow)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--search-only",
        action="store_true",
        help="ingest and search only (no users, no retrieve): the 1M-chunk run",
    )
    args = ap.parse_args(argv)
    if args.search_only:
        out = [run_search_only(n, args.queries, warmup=args.warmup) for n in args.chunks]
        print(json.dumps(out, indent=1))
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
        return 0
    results = [
        run(n, args.queries, warmup=args.warmup, embed_missing=args.embed_missing)
        for n in args.chunks
    ]
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
