"""Ranking metrics and the paired bootstrap, as the evaluation protocols define them.

Every function takes one query's ranking (item ids, best first) and its judgements,
and returns one number; the runner averages. They are plain functions over ids so a
result can be checked by hand (tests/eval/test_metrics.py does exactly that).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pertinent.errors import InvalidInput

__all__ = [
    "Lift",
    "dcg",
    "evidence_recall",
    "mrr_at_k",
    "ndcg_at_k",
    "paired_bootstrap_lift",
    "percentiles",
    "recall_at_k",
]


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise InvalidInput(f"k must be a positive int, got {k!r}.")


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain with linear gains: Σ gain_i / log2(i + 1), i from 1."""
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], gains: Mapping[str, float], k: int) -> float:
    """nDCG@k with graded (linear) gains; ids absent from `gains` have gain 0.

    The ideal ranking sorts every judged gain, not only those retrieved, so missing a
    relevant item costs. A query with no positive gain scores 0 (nothing to find);
    repeated ids count once, at their first rank.
    """
    _check_k(k)
    seen: set[str] = set()
    top: list[float] = []
    for item in ranking:
        if item in seen:
            continue
        seen.add(item)
        top.append(float(gains.get(item, 0.0)))
        if len(top) == k:
            break
    ideal = dcg(sorted((g for g in gains.values() if g > 0), reverse=True)[:k])
    return dcg(top) / ideal if ideal > 0 else 0.0


def recall_at_k(ranking: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the relevant ids found among the top `k`.

    Raises `InvalidInput` when `relevant` is empty: recall is undefined there, and the
    protocols leave such queries out instead of counting them as 0 or 1.
    """
    _check_k(k)
    if not relevant:
        raise InvalidInput("recall is undefined for a query with no relevant item; skip it.")
    found = set(ranking[:k]) & set(relevant)
    return len(found) / len(set(relevant))


def mrr_at_k(ranking: Sequence[str], relevant: Collection[str], k: int) -> float:
    """1 / rank of the first relevant id within the top `k`, else 0."""
    _check_k(k)
    if not relevant:
        raise InvalidInput("MRR is undefined for a query with no relevant item; skip it.")
    wanted = set(relevant)
    for i, item in enumerate(ranking[:k], start=1):
        if item in wanted:
            return 1.0 / i
    return 0.0


def evidence_recall(context: str, evidence_texts: Sequence[str]) -> float:
    """Share of the evidence texts that lie whole inside the packed `context`.

    A cut or paraphrased piece does not count: the reader model needs the whole turn.
    """
    if not evidence_texts:
        raise InvalidInput("evidence recall needs at least one evidence text.")
    return sum(1 for t in evidence_texts if t.strip() and t.strip() in context) / len(
        evidence_texts
    )


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50 and p95 (linear interpolation), in the unit given; zeros for no values."""
    if not values_ms:
        return {"p50": 0.0, "p95": 0.0}
    arr = np.asarray(values_ms, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


@dataclass(frozen=True)
class Lift:
    """Relative change of the mean of `metric`, treatment over baseline, with a paired
    bootstrap 95% percentile interval. `relative` is a fraction (0.05 = +5%); it is
    None when the baseline mean is 0 (a ratio to nothing is undefined)."""

    metric: str
    treatment: str
    baseline: str
    relative: float | None
    ci95: tuple[float, float] | None
    resamples: int
    pairs: int

    def as_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "method": self.treatment,
            "baseline": self.baseline,
            "relative": self.relative,
            "relative_pct": None if self.relative is None else 100.0 * self.relative,
            "ci95": None if self.ci95 is None else [self.ci95[0], self.ci95[1]],
            "resamples": self.resamples,
            "pairs": self.pairs,
        }


def paired_bootstrap_lift(
    treatment: Sequence[float],
    baseline: Sequence[float],
    *,
    metric: str = "",
    treatment_name: str = "treatment",
    baseline_name: str = "baseline",
    resamples: int = 1000,
    seed: int = 0,
) -> Lift:
    """`mean(treatment) / mean(baseline) − 1`, and its 2.5–97.5 percentile interval
    over `resamples` resamples of the *pairs* (the same queries for both, so the
    per-query difficulty cancels). Resamples whose baseline mean is 0 are dropped."""
    t = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if t.shape != b.shape or t.ndim != 1:
        raise InvalidInput(
            f"paired bootstrap needs two equal-length lists, got {t.shape} and {b.shape}."
        )
    if resamples <= 0:
        raise InvalidInput(f"resamples must be positive, got {resamples}.")
    n = len(t)
    base_mean = float(b.mean()) if n else 0.0
    if n == 0 or base_mean == 0.0:
        return Lift(metric, treatment_name, baseline_name, None, None, resamples, n)
    relative = float(t.mean()) / base_mean - 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    tb, bb = t[idx].mean(axis=1), b[idx].mean(axis=1)
    ok = bb > 0
    ratios = tb[ok] / bb[ok] - 1.0
    ci = (
        (float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5)))
        if ratios.size
        else None
    )
    return Lift(metric, treatment_name, baseline_name, relative, ci, resamples, n)
