"""SIGKILL a writer at random points: the store must always open afterwards, hold
everything that was acknowledged exactly once, and a re-run must finish the job."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pertinent

CHILD = textwrap.dedent(
    """
    import sys, pertinent
    from datetime import datetime, timedelta, timezone
    path, mode = sys.argv[1], sys.argv[2]
    px = pertinent.open(path)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    print("READY", flush=True)
    if mode == "ingest":
        for i in range(200):
            text = " ".join(f"Document {i} sentence {j} about topic {j % 5}." for j in range(40))
            px.ingest({"id": f"doc{i}", "text": text}, show_progress=False)
            print(f"ACK doc{i}", flush=True)
    else:
        for i in range(10_000):
            px.record("crash-user", pertinent.Event(kind="query", text=f"event {i}",
                                                     timestamp=t0 + timedelta(seconds=i)))
            print(f"ACK event {i}", flush=True)
    """
)


def _run_and_kill(path: Path, mode: str, acks_before_kill: int) -> list[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LANCEDB_LOG": "error"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    acked: list[str] = []
    for line in proc.stdout:
        if line.startswith("ACK "):
            acked.append(line[4:].strip())
            if len(acked) >= acks_before_kill:
                break
    proc.send_signal(signal.SIGKILL)  # mid-write of whatever comes next
    proc.wait(timeout=60)
    return acked


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_during_ingest(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder, seed: int
) -> None:
    path = tmp_path / "s"
    acked = _run_and_kill(path, "ingest", random.Random(seed).randint(1, 6))
    px = pertinent.open(path, embedder=embedder)  # must open
    stored = set(px.store.document_ids())
    assert set(acked) <= stored
    chunk_counts = {d: len(px.store.get_chunks([f"{d}#{i}" for i in range(20)])) for d in stored}
    # a document is written in one commit: all its chunks or none
    assert len(set(chunk_counts.values())) == 1
    total_before = px.store.count_chunks()
    for i in range(len(acked) + 2):  # a re-run finishes the job without duplicates
        text = " ".join(f"Document {i} sentence {j} about topic {j % 5}." for j in range(40))
        px.ingest({"id": f"doc{i}", "text": text}, show_progress=False)
    per_doc = next(iter(chunk_counts.values()))
    assert px.store.count_chunks() == (len(acked) + 2) * per_doc >= total_before


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_kill_during_event_recording(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder, seed: int
) -> None:
    path = tmp_path / "s"
    acked = _run_and_kill(path, "record", random.Random(seed).randint(5, 60))
    px = pertinent.open(path, embedder=embedder)
    texts = [e.text for e in px.store.read_events("crash-user")]
    assert len(texts) == len(set(texts))  # nothing twice
    assert set(acked) <= set(texts)
    # the log still takes writes and the profile folds what is there
    px.record("crash-user", pertinent.Event(kind="query", text="after the crash"))
    assert px.profile("crash-user").positive_mass > 0
