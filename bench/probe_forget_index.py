"""What `forget_user` does to the embedded store's vector index: its time, and ANN recall.

A store of `--chunks` generated chunks (bench/corpus.py, cached all-MiniLM-L6-v2 vectors
plus derived ones, see corpus.cached_vectors), of which one user owns every
`--every`-th (their long-term memories, spread through the table), is loaded and
optimized. Then `delete_user` scrubs the user's rows from disk, which rewrites every
file that held one. The probe prints, before and after: recall@50 of the vector search
against exact cosine top 50 over the shared chunks (`--queries` embedded corpus
queries), the graph's segments and the rows it does not cover, and how long the
forget took. LanceDB remaps the index over rewritten files unless the store rebuilds
it (docs/benchmarks.md, "Eighth pass"):
    python bench/probe_forget_index.py --chunks 100000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("LANCE_LOG", "error")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus
from bench_scale import query_embedder, shared_embedder

from pertinent.stores.base import SearchFilter
from pertinent.stores.lancedb import LanceDBStore
from pertinent.types import Chunk

OWNER = "forgotten"


def _recall(
    store: LanceDBStore, qvecs: np.ndarray, vectors: np.ndarray, shared: np.ndarray
) -> float:
    """Mean recall@50 of the store's vector search over the chunks anyone may see.
    Not bench_scale.ann_recall: that one ranks every chunk exactly, and the user's own
    are invisible to this search, before the forget as after."""
    k = 50
    recalls = []
    for q in qvecs:
        scores = np.where(shared, vectors @ q, -np.inf)
        exact = {f"c{i}" for i in np.argpartition(-scores, k)[:k]}
        got = {h.id for h in store.vector_search(q, k=k, where=SearchFilter())}
        recalls.append(len(got & exact) / k)
    return float(np.mean(recalls))


def _graph(store: LanceDBStore) -> str:
    stats = store._chunks.index_stats("vector_idx")
    if stats is None:
        return "no vector index"
    return (
        f"{stats.num_indices} segment(s), {stats.num_indexed_rows} rows indexed,"
        f" {stats.num_unindexed_rows} outside"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=100, help="the user owns every N-th chunk")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--batch", type=int, default=5000, help="chunks per upsert while loading")
    args = ap.parse_args(argv)

    texts = corpus.chunk_texts(args.chunks)
    vectors, n_real = corpus.cached_vectors(texts)
    emb = query_embedder(shared_embedder())
    qvecs = np.stack([emb.embed_query(q) for q in corpus.queries(args.queries, seed=21)])
    owned = np.arange(args.chunks) % args.every == 0
    chunks = [
        Chunk(
            id=f"c{i}",
            doc_id=f"d{i}",
            text=texts[i],
            position=0,
            owner=OWNER if owned[i] else None,
            model_id=emb.model_id,
            vector=vectors[i],
        )
        for i in range(args.chunks)
    ]
    print(f"{args.chunks} chunks ({n_real} real vectors), {int(owned.sum())} owned by the user")
    tmp = Path(tempfile.mkdtemp(prefix="pertinent-probe-forget-"))
    store = LanceDBStore(tmp / "store", model_id=emb.model_id, dim=emb.dim)
    try:
        t = time.perf_counter()
        for start in range(0, args.chunks, args.batch):
            store.upsert_chunks(chunks[start : start + args.batch])
        store.optimize()
        print(f"load + optimize {time.perf_counter() - t:.1f} s; {_graph(store)}")
        shared = ~owned
        print(f"recall@50 before: {_recall(store, qvecs, vectors, shared):.3f}")
        t = time.perf_counter()
        counts = store.delete_user(OWNER)
        print(
            f"delete_user {time.perf_counter() - t:.1f} s ({counts['owned_chunks']} chunks);"
            f" {_graph(store)}"
        )
        print(f"recall@50 after: {_recall(store, qvecs, vectors, shared):.3f}")
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
