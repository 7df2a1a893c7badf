"""Document-embedding throughput with 1 vs all torch threads (all-MiniLM-L6-v2, CPU).

Decides `Settings.document_threads`. 120-word passages drawn from docs/scoring.md;
thread counts alternate so drift in machine load hits both alike.
Usage: python bench/bench_embed_threads.py [--passages 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from pertinent.embeddings import SentenceTransformerEmbedder


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    emb = SentenceTransformerEmbedder(query_threads=None, document_threads=None)
    rng = random.Random(0)
    words = (Path(__file__).parent.parent / "docs" / "scoring.md").read_text().split()
    texts = [" ".join(rng.choice(words) for _ in range(120)) for _ in range(args.passages)]
    cores = os.cpu_count() or 1
    rates: dict[int, list[float]] = {1: [], cores: []}
    for _ in range(args.rounds):
        for threads in rates:
            torch.set_num_threads(threads)
            emb.embed_documents(texts[:16])  # warm-up at this thread count
            t = time.perf_counter()
            emb.embed_documents(texts)
            rates[threads].append(len(texts) / (time.perf_counter() - t))
    print(f"command: python {' '.join(sys.argv)}; {cores} cores, torch {torch.__version__}")
    for threads, xs in rates.items():
        print(
            f"{threads} thread(s): median {statistics.median(xs):.1f} passages/s "
            f"(runs: {', '.join(f'{x:.1f}' for x in xs)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
