"""Optional cross-encoder stage.

A cross-encoder reads (query, passage) pairs jointly and is more accurate than the
bi-encoder, at ~10-50 ms per candidate on a CPU, so it only re-orders the candidate
pool. No trained cross-encoder weights ship in any package this project may depend
on, so none is on by default: point `CrossEncoderReranker` at a model directory of
your choice (e.g. a saved ``cross-encoder/ms-marco-MiniLM-L-6-v2``), or pass any
object with a `score(query, texts)` method.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pertinent.errors import ConfigurationError, MissingDependency

__all__ = ["CrossEncoderReranker", "Reranker"]


@runtime_checkable
class Reranker(Protocol):
    """Scores passages for a query; higher is more relevant. Any scale: pertinent
    min-max normalises the scores over the candidates before mixing them in."""

    def score(self, query: str, texts: Sequence[str]) -> Sequence[float]: ...


class CrossEncoderReranker:
    """A sentence-transformers `CrossEncoder` loaded from a local directory."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 512,
    ) -> None:
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as exc:
            raise MissingDependency("sentence-transformers", "local") from exc
        path = Path(model_path).expanduser()
        if not (path / "config.json").exists():
            raise ConfigurationError(
                f"No cross-encoder at {path} (config.json missing). pertinent never downloads "
                "models: save one with `CrossEncoder(name).save(dir)` on a machine with a "
                "network, then pass that directory."
            )
        self._model = CrossEncoder(
            str(path), device=device, max_length=max_length, local_files_only=True
        )
        self._batch_size = batch_size
        self.model_id = path.name

    def score(self, query: str, texts: Sequence[str]) -> Sequence[float]:
        if not texts:
            return []
        out = self._model.predict(
            [(query, t) for t in texts],
            batch_size=self._batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        arr = np.asarray(out, dtype=np.float64)
        if arr.ndim == 2:  # a model with several labels: take the last (the "relevant" one)
            arr = arr[:, -1]
        return [float(x) for x in arr]
