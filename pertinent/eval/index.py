"""One embedded index per evaluation run, with document vectors cached on disk.

Every method of a run searches the same LanceDB store, built through the public
`Pertinent.ingest` path (so chunking and storage are what users get). Embedding the
documents is the slow part of a run (minutes on two cores), so their vectors are kept
in a file keyed by the embedding model and the text's hash: a second run, or another
protocol with the same texts, embeds nothing. The store itself is rebuilt in a
temporary directory each run, so no state (events, profiles) leaks between runs.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pertinent.embeddings import Embedder
from pertinent.types import Vector

__all__ = ["VectorCacheEmbedder", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pertinent/eval`` (``~/.cache/pertinent/eval`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pertinent" / "eval"


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class VectorCacheEmbedder:
    """An `Embedder` whose document vectors are remembered in ``<cache_dir>/<model>.npz``.

    Queries are never cached here: their embedding is part of the latency a run
    measures. Call `save()` after ingesting; vectors of texts not seen before are
    appended. A cache file that cannot be read is ignored (and rewritten), never trusted.
    """

    def __init__(self, inner: Embedder, cache_dir: Path | None) -> None:
        self.inner = inner
        self.cache_dir = cache_dir
        self._vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        self.hits = 0
        self.misses = 0
        if cache_dir is not None:
            self._load()

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def max_tokens(self) -> int:
        return self.inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def embed_query(self, text: str) -> Vector:
        return self.inner.embed_query(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        keys = [_key(t) for t in texts]
        by_key = dict(zip(keys, texts, strict=True))
        missing = sorted(k for k in by_key if k not in self._vectors)
        if missing:
            fresh = self.inner.embed_documents([by_key[k] for k in missing])
            for k, v in zip(missing, fresh, strict=True):
                self._vectors[k] = np.asarray(v, dtype=np.float32)
            self._dirty = True
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vectors[k] for k in keys])

    @property
    def path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        # float32 and bfloat16 vectors share a model_id but not their digits; an
        # evaluation should score the vectors its precision gives, so each has a file.
        precision = getattr(self.inner, "precision", "float32")
        tag = self.model_id if precision == "float32" else f"{self.model_id}-{precision}"
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)
        return self.cache_dir / f"{name}.npz"

    def _load(self) -> None:
        path = self.path
        if path is None or not path.is_file():
            return
        try:
            with np.load(path, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
        except (OSError, ValueError, KeyError):
            return
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(keys) != len(vectors):
            return
        self._vectors = {str(k): v for k, v in zip(keys, vectors.astype(np.float32), strict=True)}

    def save(self) -> None:
        """Write the cache atomically (a crash leaves the old file, never half a new one)."""
        path = self.path
        if path is None or not self._dirty:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self._vectors)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            keys=np.array(keys, dtype="U32"),
            vectors=np.stack([self._vectors[k] for k in keys]).astype(np.float32),
        )
        os.replace(tmp, path)
        self._dirty = False
