"""Compaction deletes old table versions: a log appended to all day must not keep one
version and one set of files per append (972 MB for 24 MB of rows in the long soak)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from factories import T0, one_hot, stored_event

from pertinent import Settings
from pertinent.errors import StoreCorrupted, StoreUnavailable
from pertinent.stores import lancedb as lancedb_store
from pertinent.stores.base import StoredEvent
from pertinent.stores.lancedb import LanceDBStore
from pertinent.types import Chunk

DIM = 8


def _event(i: int) -> StoredEvent:
    return stored_event(f"e{i}", f"u{i % 3}", one_hot(i, DIM), at=T0 + timedelta(seconds=i))


def _chunk(i: int) -> Chunk:
    v = np.zeros(DIM, dtype=np.float32)
    v[i % DIM] = 1.0
    return Chunk(id=f"c{i}", doc_id=f"d{i}", text=f"note {i}", position=0, model_id="m", vector=v)


def _files(store: LanceDBStore, table: str, sub: str) -> int:
    return sum(1 for _ in (store.path / f"{table}.lance" / sub).iterdir())


def _append_one_by_one(store: LanceDBStore, n: int) -> None:
    for i in range(n):
        store.append_events([_event(i)])


@pytest.mark.parametrize(
    ("keep", "bounded"), [(timedelta(milliseconds=1), True), (timedelta(days=7), False)]
)
def test_compaction_deletes_versions_older_than_keep_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: timedelta, bounded: bool
) -> None:
    monkeypatch.setattr(lancedb_store, "_COMPACT_EVERY_APPENDS", 20)
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM, keep_versions=keep)
    _append_one_by_one(store, 100)
    versions = _files(store, "events", "_versions")
    data = _files(store, "events", "data")
    # No event is lost by compaction or cleanup, whichever the retention.
    events = [e for u in ("u0", "u1", "u2") for e in store.read_events(u)]
    assert sorted(e.id for e in events) == sorted(f"e{i}" for i in range(100))
    store.close()
    if bounded:
        # At most the appends since the last compaction, plus the compacted version.
        assert versions <= 22, versions
        assert data <= 22, data
    else:
        # LanceDB's 7-day default keeps every version, and every file it had.
        assert versions > 100, versions
        assert data > 100, data


def test_readers_on_a_slower_consistency_keep_their_versions(tmp_path: Path) -> None:
    store = LanceDBStore(
        tmp_path / "s",
        model_id="m",
        dim=DIM,
        keep_versions=timedelta(minutes=1),
        read_consistency=timedelta(minutes=5),
    )
    assert store._keep_versions == timedelta(minutes=10)
    store.close()


def test_settings_default_keeps_versions_one_minute() -> None:
    assert Settings().lancedb_keep_versions_s == 60.0


@pytest.mark.parametrize("consistency", [None, timedelta(hours=1)])
def test_a_reader_whose_version_was_deleted_reads_the_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, consistency: timedelta | None
) -> None:
    """Another process's reader stays on its version (`read_consistency` None or long);
    this one's compactions delete that version's files. The read must not fail as a
    corrupted store: it re-reads on the latest version."""
    monkeypatch.setattr(lancedb_store, "_COMPACT_EVERY_APPENDS", 20)
    writer = LanceDBStore(
        tmp_path / "s", model_id="m", dim=DIM, keep_versions=timedelta(milliseconds=1)
    )
    for i in range(5):
        writer.append_events([_event(i)])
    reader = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM, read_consistency=consistency)
    assert len(reader.read_events("u0")) == 2  # e0, e3
    for i in range(5, 45):  # two compactions, each deleting the reader's version
        writer.append_events([_event(i)])
    assert {e.id for e in reader.read_events("u0")} == {f"e{i}" for i in range(0, 45, 3)}
    assert reader.read_event_arrays("u1").vectors.shape == (15, DIM)
    writer.close()
    reader.close()


def test_other_failures_are_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    store.append_events([_event(0)])
    store.close()
    for f in (tmp_path / "s" / "events.lance" / "data").iterdir():
        f.write_bytes(b"not a lance file")
    broken = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    checkouts: list[int] = []
    monkeypatch.setattr(broken, "_checkout_latest", lambda: checkouts.append(1))
    with pytest.raises(StoreCorrupted, match="restore them from a backup"):
        broken.read_events("u0")
    assert checkouts == []  # a damaged file is reported, not re-read
    broken.close()


def test_log_compaction_rewrites_at_most_a_fragment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LanceDB's own compaction merged the whole log into one fragment every time (a
    full rewrite per 200 appends); the logs' fragments stop at _LOG_FRAGMENT_ROWS."""
    monkeypatch.setattr(lancedb_store, "_COMPACT_EVERY_APPENDS", 20)
    monkeypatch.setattr(lancedb_store, "_LOG_FRAGMENT_ROWS", 50)
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    for i in range(0, 400, 2):
        store.append_events([_event(i), _event(i + 1)])
    stats = store._events.stats()["fragment_stats"]
    # No fragment past the bound: LanceDB's optimize left one of 400 rows.
    assert stats["lengths"]["max"] == 50, stats
    events = [e for u in ("u0", "u1", "u2") for e in store.read_events(u)]
    assert sorted(e.id for e in events) == sorted(f"e{i}" for i in range(400))
    store.close()


def _conflict(*_: object, **__: object) -> None:
    from lance.commit import CommitConflictError

    raise CommitConflictError("another process compacted first")


def test_a_compaction_that_loses_a_race_does_not_fail_the_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lancedb_store, "_COMPACT_EVERY_APPENDS", 2)
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    monkeypatch.setattr(store, "_compact", _conflict)
    for i in range(6):  # three compactions, all failing
        store.append_events([_event(i)])
    assert sorted(e.id for u in ("u0", "u1", "u2") for e in store.read_events(u)) == [
        f"e{i}" for i in range(6)
    ]
    store.close()


def test_a_conflicting_scrub_is_a_typed_retryable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    store.append_events([_event(i) for i in range(6)])
    monkeypatch.setattr(store, "_compact", _conflict)
    with pytest.raises(StoreUnavailable, match=r"busy .*retry the call"):
        store.delete_user("u0")
    monkeypatch.undo()
    assert store.delete_user("u0")["events"] == 0  # the delete itself was committed
    assert len(store.read_events("u1")) == 2
    store.close()


def test_user_settings_writes_are_compacted_like_log_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every consent change is a merge_insert: a version and a file. Never compacted,
    each consent read scanned one file per write ever made."""
    monkeypatch.setattr(lancedb_store, "_COMPACT_EVERY_APPENDS", 20)
    store = LanceDBStore(
        tmp_path / "s", model_id="m", dim=DIM, keep_versions=timedelta(milliseconds=1)
    )
    for i in range(100):
        store.put_user_settings(f"u{i}", {"memory": i % 2 == 0})
    store.put_user_settings("u9", {"memory": True})
    stats = store._users.stats()["fragment_stats"]
    # At most the writes since the last compaction (uncompacted: one per user, 100).
    assert stats["num_fragments"] <= 21, stats
    assert _files(store, "users", "_versions") <= 22
    assert store.get_user_settings("u9") == {"memory": True}
    assert store.get_user_settings("u10") == {"memory": True}
    assert store.get_user_settings("u11") == {"memory": False}
    assert len(store.user_settings_ids()) == 100
    store.close()


def test_short_lived_writers_still_compact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One store per append, as with a CLI call per event: compaction is counted in
    table versions, whoever wrote them, not in one process's appends."""
    monkeypatch.setattr(lancedb_store, "_COMPACT_EVERY_APPENDS", 20)
    for i in range(70):
        store = LanceDBStore(
            tmp_path / "s", model_id="m", dim=DIM, keep_versions=timedelta(milliseconds=1)
        )
        store.append_events([_event(i)])
        store.put_user_settings(f"u{i}", {"memory": True})
        store.close()
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    for table in ("events", "users"):
        assert _files(store, table, "_versions") <= 22, table
        assert _files(store, table, "data") <= 22, table
    assert len({e.id for u in ("u0", "u1", "u2") for e in store.read_events(u)}) == 70
    store.close()


def test_a_new_process_carries_on_the_bm25_refresh_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lancedb_store, "_FTS_REFRESH_ROWS", 30)
    for i in range(40):  # one chunk per process: none reaches 30 on its own count
        store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
        store.upsert_chunks([_chunk(i)])
        store.close()
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    fts = next(ix.name for ix in store._chunks.list_indices() if ix.index_type == "FTS")
    stats = store._chunks.index_stats(fts)
    assert stats is not None and stats.num_unindexed_rows < 30, stats
    assert stats.num_indexed_rows + stats.num_unindexed_rows == 40
    store.close()


def test_appends_between_compactions_are_folded_into_the_user_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read scans every file the user_id index does not cover: with one file per
    append, a cold user's read grew to 37 ms before the next compaction. New rows are
    folded into the index every few appends, so at most that many stay uncovered."""
    monkeypatch.setattr(lancedb_store, "_COMPACT_EVERY_APPENDS", 1000)
    monkeypatch.setattr(lancedb_store, "_FOLD_EVERY_APPENDS", 8)
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    _append_one_by_one(store, 60)
    stats = store._events.index_stats("user_id_idx")
    assert stats is not None
    assert stats.num_unindexed_rows < 8, stats
    assert stats.num_indexed_rows + stats.num_unindexed_rows == 60
    assert len(store._events.to_lance().get_fragments()) > 50  # not compacted: folded
    events = [e for u in ("u0", "u1", "u2") for e in store.read_events(u)]
    assert sorted(e.id for e in events) == sorted(f"e{i}" for i in range(60))
    assert len(store.read_event_arrays("u1")) == 20
    assert store.read_event_arrays("nobody").vectors.shape == (0, DIM)
    store.close()


@pytest.mark.parametrize(
    "message",
    [
        "LanceError(IO): Too many open files (os error 24), lance-io/src/local.rs:134:24",
        "LanceError(IO): No space left on device (os error 28)",
    ],
)
def test_running_out_of_files_or_disk_is_not_called_corruption(
    tmp_path: Path, message: str
) -> None:
    """An ingest of 1M chunks ran out of file handles; the store was intact, yet the
    error told the user to restore it from a backup."""
    store = LanceDBStore(tmp_path / "s", model_id="m", dim=DIM)
    with pytest.raises(StoreUnavailable, match="ulimit -n") as caught, store._errors("upsert"):
        raise OSError(message)
    assert not isinstance(caught.value, StoreCorrupted)
    # Other I/O failures keep their class.
    with pytest.raises(StoreCorrupted), store._errors("upsert"):
        raise OSError("LanceError(IO): corrupt file footer")
    store.close()
