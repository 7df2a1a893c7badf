"""The `pertinent` command, called through its entry function (same code path as the
console script) on a real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from pertinent.cli import main


def test_ingest_ask_forget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keys.md").write_text("# Keys\n\nRotate API keys every 90 days in the console.\n")
    (docs / "tax.txt").write_text("Capital gains tax applies to shares sold within a year.")
    data = str(tmp_path / "store")
    assert main(["ingest", str(docs), "--data", data]) == 0
    assert "ingested 2 documents" in capsys.readouterr().out

    assert (
        main(
            [
                "ask",
                "how often do I rotate keys?",
                "--user",
                "ana",
                "--session",
                "s1",
                "--data",
                data,
                "--max-tokens",
                "120",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("#1 keys.md#0")
    assert "packed context:" in out and "/120 tokens (tiktoken:o200k_base)" in out

    assert main(["forget", "ana", "--data", data]) == 0
    out = capsys.readouterr().out
    assert "forgot user 'ana'" in out and "events: 1" in out and "turns: 1" in out


def test_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ingest", str(tmp_path / "missing"), "--data", str(tmp_path / "s")])
    assert code == 2
    err = capsys.readouterr().err
    assert "DocumentLoadError" in err and "does not exist" in err
    code = main(["ask", "   ", "--data", str(tmp_path / "s")])
    assert code == 2
    assert "EmptyQuery" in capsys.readouterr().err


def test_demo_runs_on_a_project_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "proj"
    (root / "docs").mkdir(parents=True)
    (root / "README.md").write_text("# Proj\n\nA project about keeping and forgetting data.")
    (root / "docs" / "privacy.md").write_text(
        "# Privacy\n\nForget a user and delete their events, retention windows, isolation."
    )
    (root / "docs" / "scoring.md").write_text(
        "# Scoring\n\nHybrid BM25 and vector fusion, decay half-life, MMR diversity."
    )
    assert main(["demo", "--root", str(root), "--data", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "priya (privacy officer): packed" in out
    assert "sam (search engineer): packed" in out
    assert "top-5 overlap between the two users" in out
    assert "× gate" in out


def test_retention_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import datetime, timedelta, timezone

    import pertinent

    data = tmp_path / "store"
    now = datetime(2026, 11, 26, tzinfo=timezone.utc)
    with pertinent.open(data) as px:
        px.ingest({"id": "d", "text": "some shared text"}, show_progress=False)
        px.record(
            "u",
            [
                pertinent.Event(kind="open", item_id="d#0", timestamp=now - timedelta(days=d))
                for d in (1, 50, 400)
            ],
        )
    assert main(["retention", "apply", "--data", str(data)]) == 0
    assert "nothing purged" in capsys.readouterr().out
    assert (
        main(
            [
                "retention",
                "apply",
                "--data",
                str(data),
                "--events-days",
                "30",
                "--now",
                now.isoformat(),
            ]
        )
        == 0
    )
    assert "events: purged 2 rows older than 2026-10-27" in capsys.readouterr().out
    assert main(["retention", "apply", "--data", str(data), "--now", "yesterday"]) == 2
    assert "not an ISO 8601 time" in capsys.readouterr().err


def test_ingest_brings_the_indexes_up_to_date_unless_told_not_to(tmp_path: Path) -> None:
    import pertinent

    data = str(tmp_path / "store")
    for n, extra in enumerate(([], ["--no-optimize"], [])):
        doc = tmp_path / f"note{n}.md"
        doc.write_text(f"# Note {n}\n\nThe fleet report number {n} is due on Friday.\n")
        assert main(["ingest", str(doc), "--data", data, *extra]) == 0
        with pertinent.open(data) as px:
            stats = px.store._chunks.index_stats("text_idx")  # type: ignore[attr-defined]
            assert stats is not None
            # The first ingest builds the index over what it wrote; later ones add rows
            # it lacks until `optimize` folds them in.
            assert stats.num_unindexed_rows == (1 if extra else 0)
