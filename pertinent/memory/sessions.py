"""The session state: a recency-weighted mean of the conversation's turn embeddings.

Each turn costs O(d): `S ← γ·S + v`, `m ← γ·m + 1` with γ = 2^(−1/h) for a half-life
of h turns, so the last few turns dominate and nothing re-reads the history. The gate
`m / (m + n0)` grows with the number of turns and saturates at 1/(1−γ) turns' worth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pertinent.types import Vector

__all__ = ["SessionState", "SessionView"]


@dataclass(frozen=True)
class SessionView:
    vector: Vector | None
    gate: float
    turns: int


class SessionState:
    """Mutable, per-(user, session) accumulator. The caller serialises updates."""

    def __init__(self, dim: int, *, half_life_turns: float) -> None:
        self.decay = 0.5 ** (1.0 / half_life_turns)
        self.total: npt.NDArray[np.float64] = np.zeros(dim, dtype=np.float64)
        self.mass = 0.0
        self.turns = 0

    def add(self, vector: Vector, weight: float = 1.0) -> None:
        self.total *= self.decay
        self.mass *= self.decay
        self.total += weight * np.asarray(vector, dtype=np.float64)
        self.mass += weight
        self.turns += 1

    def view(self, n0: float) -> SessionView:
        norm = float(np.linalg.norm(self.total))
        if self.turns == 0 or norm <= 1e-12:
            return SessionView(vector=None, gate=0.0, turns=self.turns)
        return SessionView(
            vector=(self.total / norm).astype(np.float32),
            gate=self.mass / (self.mass + n0),
            turns=self.turns,
        )
