"""Stored rows for the store-level tests, built one way: a `StoredEvent` has ten fields
and most tests vary two of them."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from pertinent.stores.base import StoredEvent

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def one_hot(i: int, dim: int) -> np.ndarray:
    """A unit vector on axis `i % dim`: distinct per event, and easy to check on read."""
    v = np.zeros(dim, dtype=np.float32)
    v[i % dim] = 1.0
    return v


def stored_event(
    id: str,
    user_id: str,
    vector: np.ndarray,
    *,
    kind: str = "open",
    text: str | None = None,
    at: datetime = T0,
) -> StoredEvent:
    """An event as a store keeps it, with model "m" and no item or session."""
    return StoredEvent(
        id=id,
        user_id=user_id,
        kind=kind,
        weight=1.0,
        timestamp=at,
        item_id=None,
        text=text,
        session_id=None,
        model_id="m",
        vector=vector,
    )
