"""Latency of one `retrieve` on the demo corpus (the project's README + docs/), embedded.

Compared in the same process, interleaved query by query, on the same table:
- `lancedb-native`: LanceDB's own hybrid query (vector + FTS, RRF) with the same query
  embedding model: what a user of LanceDB alone would call.
- `pertinent-anon`: `retrieve` for an unknown user (plain hybrid + re-score + MMR + packing).
- `pertinent-warm`: `retrieve` for a user with 60 events (user-blended leg included).
- `pertinent-warm+remember`: the same, also writing the query event and session turn.

Every query text is distinct, so the query-embedding cache never hits (worst case).
Usage: python bench/bench_retrieve.py [--queries 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

import pertinent
from pertinent.demo import find_project_root
from pertinent.types import utcnow

TEMPLATES = [
    "how does {} work?",
    "what is {}?",
    "explain {} please",
    "where do I configure {}?",
    "{} in pertinent",
    "tell me about {}",
    "can I change {}?",
    "why {}?",
]


def make_queries(px: pertinent.Pertinent, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words: list[str] = []
    for doc in px.store.document_ids():
        for c in px.store.get_chunks([f"{doc}#{i}" for i in range(40)]):
            words.extend(w.strip(".,:;()`*#|") for w in c.text.split() if len(w) > 4)
    words = [w for w in words if w.isalpha()]
    out: set[str] = set()
    while len(out) < n:
        phrase = " ".join(rng.sample(words, rng.randint(1, 3)))
        out.add(rng.choice(TEMPLATES).format(phrase.lower()))
    return sorted(out)


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--query-threads",
        type=int,
        default=1,
        help="torch threads for query embedding (pertinent's default is 1)",
    )
    ap.add_argument(
        "--busy",
        action="store_true",
        help="keep one core busy with another process (a server beside other work)",
    )
    args = ap.parse_args()
    burner = None
    if args.busy:
        import subprocess

        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    root = find_project_root(Path(__file__).parent)
    assert root is not None
    tmp = tempfile.mkdtemp(prefix="pertinent-bench-")
    px = pertinent.open(
        Path(tmp) / "store", settings=pertinent.Settings(query_threads=args.query_threads)
    )
    report = px.ingest([root / "README.md", root / "docs"], show_progress=False)
    # the warm user: 60 events over the last 30 days
    ids = [r.id for r in px.search("user embedding decay privacy forgetting", top_k=20)]
    now = utcnow()
    px.record(
        "warm",
        [
            pertinent.Event(
                kind="open", item_id=ids[i % len(ids)], timestamp=now - timedelta(hours=12 * i)
            )
            for i in range(60)
        ],
    )
    table = px.store._chunks
    emb = (
        px.embedder.inner if isinstance(px.embedder, pertinent.CachedQueryEmbedder) else px.embedder
    )

    def native(q: str) -> None:
        v = emb.embed_query(q)
        table.search(query_type="hybrid").vector(v).text(q).limit(10).to_list()

    budget = pertinent.Budget("gpt-4o", 2000)
    systems = {
        "lancedb-native": native,
        "pertinent-anon": lambda q: px.retrieve(q, budget=budget, remember=False),
        "pertinent-warm": lambda q: px.retrieve(q, user_id="warm", budget=budget, remember=False),
        "pertinent-warm+remember": lambda q: px.retrieve(
            q + " ", user_id="warm", session_id="bench", budget=budget
        ),
    }
    stage_ms: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {k: [] for k in systems}
    for run in range(args.runs):
        queries = make_queries(px, args.queries, seed=run)
        for q in queries[:10]:  # warm-up: torch, tiktoken, LanceDB caches
            for f in systems.values():
                f("warm up " + q)
        px.embedder.clear() if isinstance(px.embedder, pertinent.CachedQueryEmbedder) else None
        for i, q in enumerate(queries):
            order = list(systems.items())
            random.Random(i + 1000 * run).shuffle(order)  # interleaved, in random order
            for name, f in order:
                qq = f"{q} [{name}]"  # distinct text per system: no cache hits anywhere
                t = time.perf_counter()
                f(qq)
                times[name].append((time.perf_counter() - t) * 1000)
                if name == "pertinent-warm" and px.last_times is not None:
                    for stage, ms in px.last_times.ms.items():
                        stage_ms.setdefault(stage, []).append(ms)

    print(f"# retrieve latency, demo corpus ({report.documents} docs, {report.chunks} chunks)")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, pertinent {pertinent.__version__}"
    )
    print(
        f"command: python {' '.join(sys.argv)}  ({args.runs} runs × {args.queries} distinct "
        "queries, interleaved, after warm-up)\n"
    )
    print("| system | n | median ms | p95 ms | mean ms |")
    print("|---|---|---|---|---|")
    for name, xs in times.items():
        print(
            f"| {name} | {len(xs)} | {statistics.median(xs):.1f} | {pct(xs, 95):.1f} | "
            f"{statistics.fmean(xs):.1f} |"
        )
    print("\nper stage, pertinent-warm (median / p95 ms):")
    for stage, xs in stage_ms.items():
        print(f"- {stage}: {statistics.median(xs):.2f} / {pct(xs, 95):.2f}")
    px.close()
    if burner is not None:
        burner.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
