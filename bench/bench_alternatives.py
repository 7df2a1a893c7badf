"""pertinent against what a user would pick instead, same texts, same vectors, one process.

- `langchain-ensemble`: LangChain's `EnsembleRetriever(BM25Retriever, FAISS)` (rank_bm25 and
  a flat FAISS index, weights 0.5 / 0.5, reciprocal-rank fusion).
- `llamaindex-fusion`: LlamaIndex's `QueryFusionRetriever` over a `VectorStoreIndex` and
  its `BM25Retriever` (bm25s), reciprocal rerank, one query (no LLM rewriting).
- `pertinent-search`: `search` (hybrid, re-score, MMR), top 10, no packing: the like
  for like.
- `pertinent-retrieve`: `retrieve` for a user with no history, packed to 2,000 tokens.

Every system gets the same chunk texts and the same cached all-MiniLM-L6-v2 vectors
(wrappers hand the precomputed vectors to LangChain and LlamaIndex); each embeds its
query live with the same model, one torch thread. Queries are interleaved in random
order. Quality: nDCG@10 on Cranfield (document ids from the top chunks) through the
same four systems. Usage:
    python bench/bench_alternatives.py --chunks 10000 --queries 200 --cranfield DIR
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
from bench_scale import chunk_objects, open_px, query_embedder, shared_embedder, summary  # noqa: E402

import pertinent  # noqa: E402

K = 10
warnings.filterwarnings("ignore", category=DeprecationWarning)  # langchain-community


def _langchain(
    texts: Sequence[str], vectors: np.ndarray, ids: Sequence[str], emb: pertinent.Embedder, k: int
) -> Callable[[str], list[str]]:
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_community.retrievers import BM25Retriever
    from langchain_community.vectorstores import FAISS
    from langchain_core.embeddings import Embeddings

    by_text = {t: v for t, v in zip(texts, vectors, strict=True)}

    class Precomputed(Embeddings):
        """Document vectors from the cache, queries from the same MiniLM."""

        def embed_documents(self, docs: list[str]) -> list[list[float]]:
            return [by_text[d].tolist() for d in docs]

        def embed_query(self, text: str) -> list[float]:
            return [float(x) for x in emb.embed_query(text)]

    metas = [{"id": i} for i in ids]
    bm25 = BM25Retriever.from_texts(list(texts), metadatas=metas, k=k)
    faiss = FAISS.from_embeddings(
        list(zip(texts, (v.tolist() for v in vectors), strict=True)),
        Precomputed(),
        metadatas=metas,
    )
    ensemble = EnsembleRetriever(
        retrievers=[bm25, faiss.as_retriever(search_kwargs={"k": k})], weights=[0.5, 0.5]
    )

    def run(q: str) -> list[str]:
        return [d.metadata["id"] for d in ensemble.invoke(q)][:k]

    return run


def _llamaindex(
    texts: Sequence[str], vectors: np.ndarray, ids: Sequence[str], emb: pertinent.Embedder, k: int
) -> Callable[[str], list[str]]:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.core.schema import TextNode
    from llama_index.retrievers.bm25 import BM25Retriever

    class Precomputed(BaseEmbedding):
        """Queries from the same MiniLM; nodes arrive with their vectors set."""

        def _get_query_embedding(self, query: str) -> list[float]:
            return [float(x) for x in emb.embed_query(query)]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            raise AssertionError("every node carries its precomputed vector")

    nodes = [
        TextNode(text=t, id_=i, embedding=v.tolist())
        for t, v, i in zip(texts, vectors, ids, strict=True)
    ]
    index = VectorStoreIndex(nodes, embed_model=Precomputed(model_name="minilm"))
    bm25 = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=k)
    fusion = QueryFusionRetriever(
        [index.as_retriever(similarity_top_k=k), bm25],
        llm=MockLLM(),
        mode="reciprocal_rerank",  # type: ignore[arg-type]
        similarity_top_k=k,
        num_queries=1,
        use_async=False,
    )

    def run(q: str) -> list[str]:
        return [n.node.node_id for n in fusion.retrieve(q)][:k]

    return run


def systems_for(
    px: pertinent.Pertinent,
    texts: Sequence[str],
    vectors: np.ndarray,
    ids: Sequence[str],
    k: int,
    doc_of: Callable[[str], str] | None = None,
) -> dict[str, Callable[[str], list[str]]]:
    """Each system answers a query with its top-k chunk ids (or document ids)."""
    emb = query_embedder(px.embedder)
    lc = _langchain(texts, vectors, ids, emb, k)
    li = _llamaindex(texts, vectors, ids, emb, k)
    budget = pertinent.Budget("gpt-4o", 2000)
    counter = iter(range(10**9))

    def p_search(q: str) -> list[str]:
        return [r.id for r in px.search(q, top_k=k)]

    def p_retrieve(q: str) -> list[str]:
        packed = px.retrieve(
            q, user_id=f"new{next(counter)}", top_k=k, budget=budget, remember=False
        )
        return [c.chunk_id for c in packed.citations]

    out = {
        "pertinent-search": p_search,
        "pertinent-retrieve": p_retrieve,
        "langchain-ensemble": lc,
        "llamaindex-fusion": li,
    }
    if doc_of is None:
        return out

    def to_docs(f: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
        return lambda q: [doc_of(i) for i in f(q)]

    return {name: to_docs(f) for name, f in out.items()}


def _open(tmp: Path) -> pertinent.Pertinent:
    # No query cache: every system pays its query embedding.
    return open_px(tmp, query_cache_size=0)


def speed(
    n_chunks: int, n_queries: int, warmup: int = 10, seed: int = 1, embed_missing: bool = False
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pertinent-bench-alt-"))
    px = _open(tmp / "store")
    emb = query_embedder(px.embedder)
    texts = corpus.chunk_texts(n_chunks)
    vectors, n_real = corpus.vectors_for(texts, emb, embed_missing=embed_missing)
    for start in range(0, n_chunks, 5000):
        px.store.upsert_chunks(
            chunk_objects(
                texts[start : start + 5000], vectors[start : start + 5000], emb.model_id, start
            )
        )
    px.store.optimize()  # type: ignore[attr-defined]
    ids = [f"c{i}" for i in range(n_chunks)]
    t0 = time.perf_counter()
    systems = systems_for(px, texts, vectors, ids, K)
    build_s = time.perf_counter() - t0
    qs = corpus.queries(n_queries + warmup, seed=seed)
    for q in qs[:warmup]:
        for f in systems.values():
            f("warm up " + q)
    times: dict[str, list[float]] = {k: [] for k in systems}
    overlap: dict[str, list[float]] = {k: [] for k in systems}
    for i, q in enumerate(qs[warmup:]):
        order = list(systems.items())
        random.Random(i).shuffle(order)
        got: dict[str, list[str]] = {}
        for name, f in order:
            t = time.perf_counter()
            got[name] = f(q)
            times[name].append((time.perf_counter() - t) * 1000)
        for name in systems:  # agreement with LangChain's top 10, a sanity check
            ref = set(got["langchain-ensemble"])
            overlap[name].append(len(ref & set(got[name])) / max(1, len(ref)))
    px.close()
    shutil.rmtree(tmp, ignore_errors=True)
    totals = {k: summary(v) for k, v in times.items()}
    ratios = {
        f"{p} / {alt}": totals[p]["median"] / totals[alt]["median"]
        for p in ("pertinent-search", "pertinent-retrieve")
        for alt in ("langchain-ensemble", "llamaindex-fusion")
    }
    ratios_p95 = {
        f"{p} / {alt}": totals[p]["p95"] / totals[alt]["p95"]
        for p in ("pertinent-search", "pertinent-retrieve")
        for alt in ("langchain-ensemble", "llamaindex-fusion")
    }
    return {
        "chunks": n_chunks,
        "real_vectors": n_real,
        "queries": n_queries,
        "build_alternatives_s": build_s,
        "totals": totals,
        "ratio_median": ratios,
        "ratio_p95": ratios_p95,
        "overlap_with_langchain": {k: float(np.mean(v)) for k, v in overlap.items()},
    }


def quality(cranfield: Path, max_queries: int | None = None) -> dict[str, Any]:
    """nDCG@10 on Cranfield: pertinent ingests the documents (vectors from the eval
    cache when present); the alternatives index the very chunks and vectors it stored."""
    from pertinent.eval.datasets import load_cranfield
    from pertinent.eval.index import VectorCacheEmbedder, default_cache_dir
    from pertinent.eval.metrics import ndcg_at_k

    data = load_cranfield(cranfield).subset(max_queries)
    tmp = Path(tempfile.mkdtemp(prefix="pertinent-bench-cran-"))
    cached = VectorCacheEmbedder(shared_embedder(), default_cache_dir())
    px = pertinent.open(
        tmp / "store",
        settings=pertinent.Settings(show_progress=False, query_cache_size=0),
        embedder=cached,
    )
    px.ingest([{"id": it.id, "text": it.text} for it in data.items])
    cached.save()
    rows = px.store._chunks.to_arrow().select(["id", "doc_id", "text", "vector"])  # type: ignore[attr-defined]
    ids = rows["id"].to_pylist()
    doc_ids = dict(zip(ids, rows["doc_id"].to_pylist(), strict=True))
    texts = rows["text"].to_pylist()
    vectors = np.asarray(rows["vector"].to_pylist(), dtype=np.float32)
    depth = 3 * K  # chunks per query, folded to documents (first occurrence)
    systems = systems_for(px, texts, vectors, ids, depth, doc_of=doc_ids.__getitem__)
    scores: dict[str, list[float]] = {k: [] for k in systems}
    for q in data.queries:
        if not q.gains:
            continue
        for name, f in systems.items():
            docs = list(dict.fromkeys(f(q.text)))
            scores[name].append(ndcg_at_k(docs, q.gains, K))
    px.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "queries": len(next(iter(scores.values()))),
        "documents": len(data.items),
        "chunks": len(ids),
        "ndcg@10": {k: float(np.mean(v)) for k, v in scores.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--cranfield", type=Path, help="directory with corpus.jsonl etc.")
    ap.add_argument("--cranfield-queries", type=int)
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"speed": speed(args.chunks, args.queries)}
    if args.cranfield:
        out["quality"] = quality(args.cranfield, args.cranfield_queries)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
