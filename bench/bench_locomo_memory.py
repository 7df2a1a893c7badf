"""LoCoMo through long-term memory, beside the store's own bm25 / vector / hybrid.

    python bench/bench_locomo_memory.py --data ../shared/data/locomo/locomo_dev.json \
        --out /tmp/locomo-memory.json

Follows the protocol of the data's README (and `pertinent eval locomo`): every turn is a
memory item of its conversation's owner, questions of categories 1-4 with evidence,
recall@5/@10, nDCG@10 and evidence recall inside packed contexts of 1,000 / 2,000
cl100k tokens. The baselines search a second store that holds the same turns ingested as
plain documents (`Pertinent.ingest`); the `memory` method adds the turns with
`LongTermMemory.add_conversation` (turn embedded with the previous one) and ranks with
`LongTermMemory.search`, packing with `LongTermMemory.pack_context`. Latency is one
retrieval, query embedding included (no query cache), memory search and packing apart.
Document vectors are cached on disk (see pertinent/eval/index.py), so a second run
embeds nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

import pertinent
from pertinent.embeddings import SentenceTransformerEmbedder
from pertinent.eval.datasets import EvalItem, load_locomo
from pertinent.eval.index import VectorCacheEmbedder, default_cache_dir
from pertinent.eval.metrics import evidence_recall, ndcg_at_k, percentiles, recall_at_k
from pertinent.memory.longterm import LongTermMemory, MemorySettings, MemoryTurn
from pertinent.prompts.packing import pack
from pertinent.prompts.tokenizers import tokenizer_for
from pertinent.stores.base import SearchFilter
from pertinent.types import Budget, Result, ScoreBreakdown

BUDGETS = (1000, 2000)
PACK_MODEL = "gpt-4"  # cl100k_base
METRICS = ("recall@5", "recall@10", "ndcg@10", *(f"evidence_recall@{b}tok" for b in BUDGETS))


def memory_turns(items: list[EvalItem]) -> dict[str, dict[int, list[MemoryTurn]]]:
    """owner -> session number -> turns, in conversation order (the loader keeps it)."""
    out: dict[str, dict[int, list[MemoryTurn]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        assert item.owner is not None
        speaker, _, text = item.text.partition(": ")
        out[item.owner][int(item.metadata["session"])].append(
            MemoryTurn(
                text=text,
                speaker=speaker,
                role="user",
                timestamp=item.metadata.get("timestamp"),
                turn_id=item.id.split("/", 1)[1],
            )
        )
    return out


def item_id(result: Result) -> str:
    """The protocol's item id of a result from either store."""
    md = result.chunk.metadata
    if "turn_id" in md and result.chunk.owner:
        return f"{result.chunk.owner}/{md['turn_id']}"
    return result.chunk.doc_id


def ranking(results: list[Result]) -> list[str]:
    seen: dict[str, None] = {}
    for r in results:
        seen.setdefault(item_id(r), None)
    return list(seen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a LoCoMo JSON file (locomo10.json shape)")
    ap.add_argument("--out", help="write the report as JSON here")
    ap.add_argument("--max-queries", type=int)
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    ap.add_argument("--methods", default="bm25,vector,hybrid,memory")
    ap.add_argument(
        "--set", action="append", default=[], help="MemorySettings override, e.g. alpha=0.5"
    )
    ap.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="cap numpy's BLAS threads (0: leave alone); as `pertinent eval` does by default",
    )
    args = ap.parse_args(argv)
    if args.blas_threads:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            # Small matrix products (100 x 384) run 10x slower with one BLAS thread per
            # core on a busy 2-core machine; see pertinent/eval/runner.py `blas_threads`.
            threadpool_limits(limits=args.blas_threads, user_api="blas")
    methods = [m for m in args.methods.split(",") if m]
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = overrides
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    mem_settings = MemorySettings(**overrides)

    evalset = load_locomo(args.data).subset(args.max_queries)
    items = list(evalset.items)
    texts = {i.id: i.text.strip() for i in items}
    base = SentenceTransformerEmbedder()
    embedder = VectorCacheEmbedder(base, args.cache_dir)
    tok = tokenizer_for(PACK_MODEL)
    settings = pertinent.Settings(query_cache_size=0)
    report: dict[str, Any] = {"data": args.data, "queries": len(evalset.queries)}

    with tempfile.TemporaryDirectory(prefix="bench-locomo-") as tmp:
        t0 = time.perf_counter()
        plain = pertinent.open(Path(tmp) / "plain", settings=settings, embedder=embedder)
        plain.ingest(
            [
                {
                    "id": i.id,
                    "text": i.text,
                    "title": i.title,
                    "owner": i.owner,
                    "metadata": dict(i.metadata),
                }
                for i in items
            ],
            show_progress=False,
        )
        plain.store.optimize()  # type: ignore[attr-defined]
        mem_px = pertinent.open(Path(tmp) / "memory", settings=settings, embedder=embedder)
        ltm = LongTermMemory(mem_px, settings=mem_settings)
        for owner, sessions in memory_turns(items).items():
            for number in sorted(sessions):
                ltm.add_conversation(owner, sessions[number], session_id=f"session_{number}")
        mem_px.store.optimize()  # type: ignore[attr-defined]
        embedder.save()
        report["index_seconds"] = round(time.perf_counter() - t0, 1)

        store = plain.store
        values: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in methods}
        latency: dict[str, list[float]] = {m: [] for m in methods}
        pack_latency: list[float] = []
        cats: dict[str, list[int]] = defaultdict(list)
        for n, q in enumerate(evalset.queries):
            cats[q.category or ""].append(n)
            where = SearchFilter(user_id=q.owner)
            evidence = [texts[i] for i in sorted(q.relevant)]
            for m in methods:
                t1 = time.perf_counter()
                if m == "memory":
                    assert q.user_id is not None
                    results = ltm.search(
                        q.text, user_id=q.user_id, top_k=mem_settings.pack_candidates
                    )
                elif m == "bm25":
                    results = _as_results(store.keyword_search(q.text, k=100, where=where))
                elif m == "vector":
                    vec = embedder.embed_query(q.text)
                    results = _as_results(store.vector_search(vec, k=100, where=where))
                else:
                    vec = embedder.embed_query(q.text)
                    results = _as_results(
                        store.hybrid_search(q.text, vec, k=100, alpha=0.5, where=where)
                    )
                latency[m].append((time.perf_counter() - t1) * 1000)
                rank = ranking(results)
                values[m]["recall@5"].append(recall_at_k(rank, q.relevant, 5))
                values[m]["recall@10"].append(recall_at_k(rank, q.relevant, 10))
                values[m]["ndcg@10"].append(ndcg_at_k(rank, q.gains, 10))
                for b in BUDGETS:
                    budget = Budget(model=PACK_MODEL, max_tokens=b)
                    t2 = time.perf_counter()
                    if m == "memory":
                        text = ltm.pack_context(results, budget).text
                        pack_latency.append((time.perf_counter() - t2) * 1000)
                    else:
                        text = pack(results, budget, min_partial_tokens=b + 1, tokenizer=tok).text
                    values[m][f"evidence_recall@{b}tok"].append(evidence_recall(text, evidence))
        plain.close()
        mem_px.close()

    table: dict[str, Any] = {}
    for m in methods:
        row = {k: float(np.mean(v)) for k, v in values[m].items()}
        row["latency_ms"] = percentiles(latency[m])
        row["per_category"] = {
            c: {k: float(np.mean([v[i] for i in idx])) for k, v in values[m].items()}
            | {"queries": len(idx)}
            for c, idx in sorted(cats.items())
        }
        table[m] = row
    report["methods"] = table
    report["memory_pack_latency_ms"] = percentiles(pack_latency)
    report["memory_settings"] = mem_settings.model_dump()
    best = max(
        (table[b]["recall@10"] for b in ("bm25", "vector", "hybrid") if b in table), default=0.0
    )
    if "memory" in table and best:
        report["memory_recall@10_over_best_baseline"] = table["memory"]["recall@10"] / best

    print(f"{'method':8s} {'cat':>4s} {'n':>4s} " + " ".join(f"{k:>24s}" for k in METRICS))
    for m in methods:
        row = table[m]
        print(
            f"{m:8s} {'all':>4s} {len(evalset.queries):4d} "
            + " ".join(f"{row[k]:24.3f}" for k in METRICS)
            + f"   p50 {row['latency_ms']['p50']:.1f} ms  p95 {row['latency_ms']['p95']:.1f} ms"
        )
        for c, vals in row["per_category"].items():
            print(
                f"{'':8s} {c:>4s} {vals['queries']:4d} "
                + " ".join(f"{vals[k]:24.3f}" for k in METRICS)
            )
    if "memory_recall@10_over_best_baseline" in report:
        print(
            f"memory recall@10 / best baseline: {report['memory_recall@10_over_best_baseline']:.3f}"
        )
    print(f"memory packing p50/p95 ms: {report['memory_pack_latency_ms']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def _as_results(hits: list[Any]) -> list[Result]:
    """Store hits as results, in the order the store gave them (packing reads chunks)."""
    out = []
    for n, h in enumerate(hits, start=1):
        score = h.hybrid or h.bm25 or h.vector_cosine or 0.0
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
            found_by=("store",),
        )
        out.append(Result(chunk=h.chunk, rank=n, score=score, explain=explain))
    return out


if __name__ == "__main__":
    sys.exit(main())
