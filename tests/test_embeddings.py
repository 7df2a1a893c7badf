"""The bundled embedder: its query path, its precision, and the vectors both give.

The model is the real all-MiniLM-L6-v2. Only `resolve_precision`'s CPU probe is fed
stand-ins, since one machine has one CPU.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import pertinent
from pertinent.embeddings import CachedQueryEmbedder, SentenceTransformerEmbedder, resolve_precision
from pertinent.errors import ConfigurationError
from pertinent.eval.index import VectorCacheEmbedder
from tests.conftest import CORPUS

QUERIES = [
    "how often should API keys be rotated?",
    "what does a LangChain document compressor do",
    "refund to my card",
    "RefCell borrow checker two mutable references",
]


@pytest.fixture(scope="module")
def float32() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(precision="float32")


@pytest.fixture(scope="module")
def bfloat16() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(precision="bfloat16")


def test_a_query_gets_the_vector_encode_gives(float32: SentenceTransformerEmbedder) -> None:
    """Queries skip `encode`'s per-call set-up; the vector must not change with it."""
    ref = float32._model.encode(QUERIES, normalize_embeddings=True, convert_to_numpy=True)
    got = np.stack([float32.embed_query(q) for q in QUERIES])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # A fine-tuning caller may leave the model in train mode (dropout on); encode()
    # switches it back, so the direct path has to as well.
    float32._model.train()
    try:
        again = np.stack([float32.embed_query(q) for q in QUERIES])
        assert float32._model.training is False
    finally:
        float32._model.eval()
    np.testing.assert_allclose(again, ref, atol=1e-6)
    # Documents are normalised in NumPy now; in float32 that changes nothing either.
    texts = [d["text"] for d in CORPUS]
    docs = float32._model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(float32.embed_documents(texts), docs, atol=1e-6)


def test_bfloat16_vectors_are_unit_length_float32_and_near_float32(
    float32: SentenceTransformerEmbedder, bfloat16: SentenceTransformerEmbedder
) -> None:
    texts = [d["text"] for d in CORPUS]
    docs16, docs32 = bfloat16.embed_documents(texts), float32.embed_documents(texts)
    q16 = np.stack([bfloat16.embed_query(q) for q in QUERIES])
    q32 = np.stack([float32.embed_query(q) for q in QUERIES])
    for v in (docs16, q16):
        assert v.dtype == np.float32
        # Cosine is a dot product downstream: a bfloat16 norm would be off by ~0.4%.
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float((docs16 * docs32).sum(axis=1).min()) > 0.995
    assert float((q16 * q32).sum(axis=1).min()) > 0.995
    # The same documents win either way, each precision on its own vectors.
    assert ((q16 @ docs16.T).argmax(axis=1) == (q32 @ docs32.T).argmax(axis=1)).all()
    assert bfloat16.model_id == float32.model_id  # one model, stores searchable across


def _torch(amx: bool, avx512_bf16: bool) -> Any:
    cpu = SimpleNamespace(
        _is_amx_tile_supported=lambda: amx, _is_avx512_bf16_supported=lambda: avx512_bf16
    )
    return SimpleNamespace(cpu=cpu)


def test_auto_precision_is_bfloat16_only_where_the_cpu_has_it() -> None:
    assert resolve_precision("auto", "cpu", _torch(amx=True, avx512_bf16=True)) == "bfloat16"
    assert resolve_precision("auto", "cpu", _torch(amx=False, avx512_bf16=True)) == "bfloat16"
    assert resolve_precision("auto", "cpu", _torch(amx=False, avx512_bf16=False)) == "float32"
    assert resolve_precision("auto", "cpu", SimpleNamespace()) == "float32"  # no probes
    assert resolve_precision("auto", "cuda", _torch(amx=True, avx512_bf16=True)) == "float32"
    assert resolve_precision("bfloat16", "cpu", _torch(False, False)) == "bfloat16"
    assert resolve_precision("float32", "cpu", _torch(True, True)) == "float32"
    with pytest.raises(ConfigurationError, match="'auto', 'float32' or 'bfloat16'"):
        resolve_precision("float16", "cpu", torch)  # type: ignore[arg-type]


def test_settings_choose_the_precision(tmp_path: Path) -> None:
    native = resolve_precision("auto", "cpu", torch)
    with pertinent.open(tmp_path / "a", settings=pertinent.Settings()) as px:
        assert isinstance(px.embedder, CachedQueryEmbedder)
        assert px.embedder.precision == native
    settings = pertinent.Settings(embedding_precision="float32")
    with pertinent.open(tmp_path / "b", settings=settings) as px:
        assert px.embedder.precision == "float32"  # type: ignore[attr-defined]
        vec = px.embedder.embed_query(QUERIES[0])
    assert vec.dtype == np.float32


def test_eval_cache_keeps_one_file_per_precision(
    tmp_path: Path, float32: SentenceTransformerEmbedder, bfloat16: SentenceTransformerEmbedder
) -> None:
    """An evaluation scores the vectors its precision gives, not a cache of the other's."""
    a = VectorCacheEmbedder(float32, tmp_path)
    b = VectorCacheEmbedder(bfloat16, tmp_path)
    assert a.path is not None and b.path is not None and a.path != b.path
    a.embed_documents(["one text"])
    a.save()
    b2 = VectorCacheEmbedder(bfloat16, tmp_path)
    b2.embed_documents(["one text"])
    assert (b2.hits, b2.misses) == (0, 1)
    a2 = VectorCacheEmbedder(float32, tmp_path)
    a2.embed_documents(["one text"])
    assert (a2.hits, a2.misses) == (1, 0)
