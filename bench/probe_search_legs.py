"""Where a search's time goes on the embedded store, leg by leg.

Interleaved query by query on one store of the generated corpus (bench/corpus.py):
- `embed`: the query embedding alone (one torch thread, as `retrieve` runs it);
- `vector raw id+vector` / `vector raw all`: LanceDB's vector search as the store runs
  it (prefilter, ef, refine), returning two columns or every column;
- `vector store`: `LanceDBStore.vector_search` (every column, converted to chunks);
- the same three for the BM25 leg;
- `events unknown user`: the event-log read a new user's `retrieve` makes.
Each line gives the median and p95 wall time and the median CPU time of the process
(LanceDB's own threads included), in ms. The chunk table's file count is printed too:
a batched load left one file per batch until `optimize` dropped the old vector index
before compacting (docs/benchmarks.md, "Sixth pass").

    python bench/probe_search_legs.py --chunks 100000 --queries 200
    python bench/probe_search_legs.py --chunks 100000 --store /tmp/probe-100k  # kept, reused
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale
import corpus

from pertinent.stores.base import SearchFilter
from pertinent.stores.lancedb import _VECTOR_EF, _VECTOR_REFINE, LanceDBStore, _visibility


def build(path: Path, n_chunks: int, users: int, *, embed_missing: bool) -> None:
    px = bench_scale.open_px(path)
    texts = corpus.chunk_texts(n_chunks)
    vectors, n_real = corpus.vectors_for(
        texts, bench_scale.query_embedder(px.embedder), embed_missing=embed_missing
    )
    took = bench_scale.load_store(px, texts, vectors)
    bench_scale.record_users(px, n_chunks, users, 200)
    px.close()
    print(f"built {n_chunks:,} chunks ({n_real:,} real vectors): {took}")


def cases(store: LanceDBStore, emb: Any, k: int) -> dict[str, Callable[[str, Any], Any]]:
    table = store._chunks
    vis = _visibility(SearchFilter())
    ef = max(_VECTOR_EF, k * _VECTOR_REFINE)

    def vector(q: Any) -> Any:
        search = (
            table.search(q, vector_column_name="vector")
            .distance_type("cosine")
            .where(vis, prefilter=True)
        )
        if store._has_vector_index:
            search = search.ef(ef).refine_factor(_VECTOR_REFINE)
        return search.limit(k)

    def keywords(text: str) -> Any:
        return (
            table.search(text, query_type="fts", fts_columns="text")
            .where(vis, prefilter=True)
            .limit(k)
        )

    users = iter(range(10**9))
    return {
        "embed": lambda text, q: emb.embed_query(text + " probe"),
        "vector raw id+vector": lambda text, q: vector(q).select(["id", "vector"]).to_arrow(),
        "vector raw all": lambda text, q: vector(q).to_arrow(),
        "vector store": lambda text, q: store.vector_search(q, k=k, where=SearchFilter()),
        "bm25 raw id+vector": lambda text, q: keywords(text).select(["id", "vector"]).to_arrow(),
        "bm25 raw all": lambda text, q: keywords(text).to_arrow(),
        "bm25 store": lambda text, q: store.keyword_search(text, k=k, where=SearchFilter()),
        "events unknown user": lambda text, q: store.read_event_arrays(f"nobody{next(users)}"),
    }


def probe(path: Path, n_queries: int, warmup: int, k: int) -> list[str]:
    px = bench_scale.open_px(path)
    store = px.store
    assert isinstance(store, LanceDBStore)
    emb = bench_scale.query_embedder(px.embedder)
    qs = corpus.queries(n_queries + warmup, seed=7)
    qvecs = [emb.embed_query(q) for q in qs]
    runs = cases(store, emb, k)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for i, (text, q) in enumerate(zip(qs, qvecs, strict=True)):
        order = list(runs.items())
        random.Random(i).shuffle(order)
        for name, run in order:
            t, c = time.perf_counter(), time.process_time()
            run(text, q)
            if i >= warmup:
                wall[name].append((time.perf_counter() - t) * 1000)
                cpu[name].append((time.process_time() - c) * 1000)
    files = len(store._chunks.to_lance().get_fragments())
    lines = [
        f"chunks: {store.count_chunks():,} in {files} file(s); vector index: "
        f"{store._vector_index_type or 'none'}; k={k}; queries: {n_queries}",
        f"{'case':22s} {'median':>8s} {'p95':>8s} {'cpu':>8s}",
    ]
    for name in runs:
        ms = sorted(wall[name])
        p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        lines.append(
            f"{name:22s} {statistics.median(ms):8.2f} {p95:8.2f} "
            f"{statistics.median(cpu[name]):8.2f}"
        )
    lines.append(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}")
    px.close()
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--k", type=int, default=50, help="depth of each leg (candidates)")
    ap.add_argument("--users", type=int, default=100, help="users with 200 events each")
    ap.add_argument(
        "--store", type=Path, help="keep the store here (built if missing, reused if there)"
    )
    ap.add_argument(
        "--embed-missing",
        action="store_true",
        help="embed chunks the vector cache lacks instead of deriving their vectors",
    )
    args = ap.parse_args(argv)
    path = args.store or Path(tempfile.mkdtemp(prefix="pertinent-probe-legs-")) / "store"
    if not path.exists():
        build(path, args.chunks, args.users, embed_missing=args.embed_missing)
    try:
        print("\n".join(probe(path, args.queries, args.warmup, args.k)))
    finally:
        if args.store is None:
            shutil.rmtree(path.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
