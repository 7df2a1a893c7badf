"""How the embedded store's vector index keeps up with an ingest, and with a re-ingest.

1. Load: `--chunks` chunks of the generated corpus (bench/corpus.py) in batches of
   `--batch`, printing every `--every` batches the rows written, the vector index's
   graph segments and the rows it does not cover yet, the table's files, and the
   slowest upsert since the last line. Every search walks every segment; folded in at
   each refresh, a 715,000-chunk load had 141 and then ran out of file handles
   (docs/benchmarks.md, "Seventh pass").
2. Re-ingest: `optimize`, then `--reingest` of the documents again with new text, in
   batches of `--reingest-batch` chunks: the slowest and total upsert time, and whether
   the graph built by `optimize` is still there (an upsert that rewrote an indexed file
   remapped it: 22.4 s for one upsert at 30,000 chunks). Then `optimize` again.

Vectors are random unit vectors (the probe times index upkeep, not ANN recall), so no
model runs:
    python bench/probe_ingest_index.py --chunks 30000 --reingest 0.12
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

from pertinent.stores.lancedb import LanceDBStore
from pertinent.types import Chunk

DIM = 384
CHUNKS_PER_DOC = 5


def _chunks(texts: Sequence[str], vectors: np.ndarray, start: int, stop: int) -> list[Chunk]:
    return [
        Chunk(
            id=f"c{i}",
            doc_id=f"d{i // CHUNKS_PER_DOC}",
            text=texts[i],
            position=i % CHUNKS_PER_DOC,
            model_id="random",
            vector=vectors[i],
        )
        for i in range(start, stop)
    ]


def _graph(store: LanceDBStore) -> tuple[int, int, set[str]]:
    """Segments, rows not yet in the vector index, and the segments' ids."""
    dataset = store._chunks.to_lance()
    for index in dataset.describe_indices():
        if list(index.field_names) == ["vector"]:
            stats = store._chunks.index_stats(index.name)
            unindexed = int(stats.num_unindexed_rows) if stats else 0
            return len(index.segments), unindexed, {s.uuid for s in index.segments}
    return 0, store.count_chunks(), set()


def _files(store: LanceDBStore) -> int:
    return len(store._chunks.to_lance().get_fragments())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=5000, help="chunks per upsert while loading")
    ap.add_argument("--every", type=int, default=4, help="print a line every this many batches")
    ap.add_argument("--reingest", type=float, default=0.12, help="share of documents re-ingested")
    ap.add_argument("--reingest-batch", type=int, default=500)
    args = ap.parse_args(argv)

    texts = corpus.chunk_texts(args.chunks)
    vectors = np.random.default_rng(0).normal(size=(args.chunks, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tmp = Path(tempfile.mkdtemp(prefix="pertinent-probe-ingest-"))
    store = LanceDBStore(tmp / "store", model_id="random", dim=DIM)
    try:
        print("rows  segments  unindexed  files  slowest upsert s  elapsed s")
        t0 = time.perf_counter()
        slowest = 0.0
        for n, start in enumerate(range(0, args.chunks, args.batch), start=1):
            stop = min(args.chunks, start + args.batch)
            t = time.perf_counter()
            store.upsert_chunks(_chunks(texts, vectors, start, stop))
            slowest = max(slowest, time.perf_counter() - t)
            if n % args.every == 0 or stop == args.chunks:
                segments, unindexed, _ = _graph(store)
                print(
                    f"{stop:>7} {segments:>5} {unindexed:>10} {_files(store):>6}"
                    f" {slowest:>12.2f} {time.perf_counter() - t0:>14.1f}"
                )
                slowest = 0.0
        t = time.perf_counter()
        store.optimize()
        print(f"optimize {time.perf_counter() - t:.1f} s, {_files(store)} file(s)")

        _, _, built = _graph(store)
        stop = int(args.chunks * args.reingest) // CHUNKS_PER_DOC * CHUNKS_PER_DOC
        revised = [f"revised {text}" for text in texts[:stop]]
        times = []
        for start in range(0, stop, args.reingest_batch):
            end = min(stop, start + args.reingest_batch)
            t = time.perf_counter()
            store.upsert_chunks(_chunks(revised, vectors, start, end))
            times.append(time.perf_counter() - t)
        segments, unindexed, now = _graph(store)
        print(
            f"re-ingest {stop} chunks in {len(times)} upserts:"
            f" slowest {max(times, default=0):.2f} s, total {sum(times):.2f} s;"
            f" graph kept: {'yes' if built <= now else 'no'};"
            f" {segments} segment(s), {unindexed} rows outside, {_files(store)} file(s)"
        )
        t = time.perf_counter()
        store.optimize()
        segments, unindexed, _ = _graph(store)
        print(
            f"optimize {time.perf_counter() - t:.1f} s: {segments} segment(s),"
            f" {unindexed} rows outside, {_files(store)} file(s)"
        )
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
