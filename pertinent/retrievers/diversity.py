"""Maximal marginal relevance: trade a little relevance for less repetition.

Agents pack the top results into a prompt; five near-copies of one paragraph waste
the budget. MMR picks, one at a time, the candidate maximising
`λ·score − (1−λ)·max cosine to what is already picked`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mmr"]


def mmr(scores: np.ndarray, vectors: np.ndarray, *, k: int, lam: float) -> list[tuple[int, float]]:
    """Indices in pick order with the MMR value each was picked with.

    `vectors` are unit rows, so `vectors @ vectors.T` is the cosine matrix. O(k·n).
    """
    n = len(scores)
    if n == 0 or k <= 0:
        return []
    if lam >= 1.0:
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(i), float(scores[i])) for i in order]
    sims = vectors @ vectors.T
    picked: list[tuple[int, float]] = []
    max_sim = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = lam * scores - (1.0 - lam) * penalty
        value = np.where(available, value, -np.inf)
        i = int(np.argmax(value))
        picked.append((i, float(value[i])))
        available[i] = False
        max_sim = np.maximum(max_sim, sims[i])
    return picked
