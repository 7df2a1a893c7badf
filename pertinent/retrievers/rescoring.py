"""Personalized re-scoring: a bounded mix of hybrid relevance, user and session affinity.

    final = (w_h·H + w_u·g_u·U + w_s·g_s·S) / (w_h + w_u·g_u + w_s·g_s)

H is the store's fused hybrid score, U the user's net affinity (positive profile minus
a share of the negative one), S the session affinity; U and S are min-max normalised
over the candidates so every term lies in [0, 1] and so does `final`. The gates g are
the confidences of the profile and session: at 0 (a new user, a first turn) `final`
is exactly H, so personalization can only act where there is evidence for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pertinent.config import ScoringWeights
from pertinent.memory.profiles import ProfileView
from pertinent.memory.sessions import SessionView
from pertinent.types import Chunk, Vector

__all__ = ["Candidate", "Scored", "minmax", "rescore"]


@dataclass(frozen=True)
class Candidate:
    chunk: Chunk
    bm25: float
    vector: float
    hybrid: float
    found_by: tuple[str, ...]


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    user: float
    user_negative: float
    session: float
    personalized: float


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; all-equal inputs map to 1 (no term may favour any candidate)."""
    if x.size == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12:
        return np.ones_like(x)
    out: np.ndarray = (x - lo) / (hi - lo)
    return out


def user_affinity(matrix: np.ndarray, profile: ProfileView, negative_share: float) -> np.ndarray:
    """Net affinity in [−1, 1]: mass-weighted positive cosine minus the negative one.

    With several interests, the positive cosine is the best match among interests that
    hold at least 10% of the positive mass, so a minor taste is not averaged away.
    """
    n = matrix.shape[0]
    pos = np.zeros(n)
    if len(profile.interests) > 1:
        sims = [matrix @ u for u, share in profile.interests if share >= 0.1]
        if sims:
            pos = np.max(np.stack(sims), axis=0)
    elif profile.positive is not None:
        pos = matrix @ profile.positive
    neg = matrix @ profile.negative if profile.negative is not None else np.zeros(n)
    pm = profile.positive_mass if profile.positive is not None else 0.0
    nm = negative_share * profile.negative_mass if profile.negative is not None else 0.0
    if pm + nm <= 0:
        return np.zeros(n)
    out: np.ndarray = (pm * pos - nm * neg) / (pm + nm)
    return out


def rescore(
    candidates: Sequence[Candidate],
    matrix: np.ndarray,
    profile: ProfileView,
    session: SessionView,
    weights: ScoringWeights,
) -> list[Scored]:
    """Score every candidate; `matrix` holds their unit vectors as rows, in order."""
    n = len(candidates)
    if n == 0:
        return []
    hybrid = np.array([c.hybrid for c in candidates], dtype=np.float64)
    g_u = profile.gate
    g_s = session.gate
    user = minmax(user_affinity(matrix, profile, weights.negative)) if g_u > 0 else np.zeros(n)
    neg = matrix @ profile.negative if profile.negative is not None else np.zeros(n)
    sess = (
        minmax(matrix @ session.vector) if session.vector is not None and g_s > 0 else np.zeros(n)
    )
    wu = weights.user * g_u
    ws = weights.session * g_s
    denom = weights.hybrid + wu + ws
    final = (weights.hybrid * hybrid + wu * user + ws * sess) / denom
    return [
        Scored(
            candidate=c,
            user=float(user[i]),
            user_negative=float(neg[i]),
            session=float(sess[i]),
            personalized=float(final[i]),
        )
        for i, c in enumerate(candidates)
    ]


def blended_query(query: Vector, profile: ProfileView, rho: float) -> Vector | None:
    """`normalize(q + ρ·g·u)`: the query pulled toward the user's taste, for the extra
    candidate leg that brings in what plain search missed. None for a cold user."""
    if profile.positive is None or profile.gate <= 0 or rho <= 0:
        return None
    v = query.astype(np.float64) + rho * profile.gate * profile.positive.astype(np.float64)
    norm = float(np.linalg.norm(v))
    if norm <= 1e-12:
        return None
    out: Vector = (v / norm).astype(np.float32)
    return out
