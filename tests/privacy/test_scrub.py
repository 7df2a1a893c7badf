"""Deleted rows leave the disk even when they are a small share of a data file.

LanceDB rewrites a fragment only once a tenth of its rows are deleted, so a user with
one event among a thousand kept their text in the data file after `forget_user`. These
tests put the user's rows inside large fragments written by others, then scan every
file of the store for their bytes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from factories import stored_event

from pertinent.stores.base import StoredEvent, StoredTurn
from pertinent.stores.lancedb import LanceDBStore
from pertinent.types import Chunk

DIM = 8
MARKER = "zqvmarker5519"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _vec(i: int) -> np.ndarray:
    v = np.random.default_rng(i).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _event(i: int, user: str, text: str, at: datetime = T0) -> StoredEvent:
    return stored_event(f"e{i}", user, _vec(i), kind="query", text=text, at=at)


def _on_disk(root: Path, needle: str) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and needle.encode() in p.read_bytes()
    ]


def test_forget_removes_a_user_who_is_one_row_in_a_thousand(tmp_path: Path) -> None:
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    store.append_events(
        [
            _event(i, "zoe" if i == 500 else f"u{i % 7}", MARKER if i == 500 else "plain")
            for i in range(1000)
        ]
    )
    store.append_turns(
        [
            StoredTurn(
                id=f"t{i}",
                user_id="zoe" if i == 300 else "u1",
                session_id="s",
                role="user",
                text=MARKER if i == 300 else "plain turn",
                timestamp=T0,
                model_id="m",
                vector=_vec(i),
            )
            for i in range(1000)
        ]
    )
    store.upsert_chunks(
        [
            Chunk(
                id=f"c{i}",
                doc_id=f"d{i}",
                text=f"{MARKER} diary" if i == 700 else f"shared text {i}",
                position=0,
                owner="zoe" if i == 700 else None,
                model_id="m",
                vector=_vec(i),
            )
            for i in range(1000)
        ]
    )
    assert len(_on_disk(store.path, MARKER)) >= 3, "the scan must see the data first"
    counts = store.delete_user("zoe")
    assert (counts["events"], counts["turns"], counts["owned_chunks"]) == (1, 1, 1)
    assert _on_disk(store.path, MARKER) == []
    # Nobody else lost anything.
    assert len(store.read_events("u1")) == len([i for i in range(1000) if i % 7 == 1 and i != 500])
    assert store.count_chunks() == 999
    store.close()


def test_retention_removes_an_expired_event_among_fresh_ones(tmp_path: Path) -> None:
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    old = T0 - timedelta(days=400)
    store.append_events(
        [
            _event(i, "u1", MARKER if i == 10 else "fresh", old if i == 10 else T0)
            for i in range(1000)
        ]
    )
    assert _on_disk(store.path, MARKER)
    assert store.purge_before("events", T0 - timedelta(days=30)) == 1
    assert _on_disk(store.path, MARKER) == []
    assert len(store.read_events("u1")) == 999
    store.close()
