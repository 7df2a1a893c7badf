"""Every benchmark at a tiny size, so the scripts cannot rot. No timing is asserted:
only that each produces complete, sane output (counts, recall and nDCG in [0, 1],
the generated doc block between its markers)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

for _mod in ("faiss", "rank_bm25", "langchain_community", "bm25s", "psutil"):
    pytest.importorskip(_mod)
pytest.importorskip("llama_index.retrievers.bm25")

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import bench_alternatives  # noqa: E402
import bench_scale  # noqa: E402
import bench_throughput  # noqa: E402
import corpus  # noqa: E402
import run_all  # noqa: E402

CHUNKS = 200


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private vector cache: the tiny corpus is embedded once for the whole module."""
    cache = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        yield cache


@pytest.fixture(scope="module")
def scale(bench_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    r = bench_scale.run(
        CHUNKS,
        20,
        warmup=2,
        users=4,
        per_user=15,
        embed_missing=True,
        workdir=tmp_path_factory.mktemp("scale"),
    )
    return r.as_dict()


@pytest.fixture(scope="module")
def cranfield_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Cranfield-format directory of 30 corpus chunks and 4 judged queries."""
    d = tmp_path_factory.mktemp("cranfield")
    with (d / "corpus.jsonl").open("w") as f:
        for i in range(30):
            row = {"id": str(i + 1), "title": "", "text": corpus.chunk_text(i)}
            f.write(json.dumps(row) + "\n")
    with (d / "queries.jsonl").open("w") as f:
        for q in range(4):
            words = corpus.chunk_text(q).split()[3:7]
            f.write(json.dumps({"id": str(q + 1), "text": " ".join(words)}) + "\n")
    (d / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q + 1}\t{q + 1}\t1\n" for q in range(4))
    )
    return d


def test_scale_reports_every_stage_and_a_recall(scale: dict[str, Any]) -> None:
    assert scale["chunks"] == CHUNKS and scale["real_vectors"] == CHUNKS
    assert set(scale["totals"]) == {
        "bare-hybrid",
        "retrieve-cold",
        "retrieve-warm",
        "retrieve-warm-fused",
    }
    assert all(t["n"] == 20 and 0 < t["median"] <= t["p95"] for t in scale["totals"].values())
    warm, cold = scale["stages"]["retrieve-warm"], scale["stages"]["retrieve-cold"]
    for stage in ("embed_query", "hybrid_search", "rescore", "mmr", "pack"):
        assert warm[stage]["n"] == 20 and cold[stage]["n"] == 20
    assert "user_leg" in warm and "user_leg" not in cold  # a cold user has no user leg
    fused = scale["stages"]["retrieve-warm-fused"]
    assert "user_leg" not in fused and fused["hybrid_search"]["n"] == 20  # one search
    assert 0.0 <= scale["recall"]["min"] <= scale["recall"]["recall"] <= 1.0
    assert scale["users"]["events"] == 4 * 15
    assert "markdown" not in scale
    table = bench_scale.markdown([bench_scale.ScaleResult(**scale)])
    assert table.count("| 200 |") == 4 + 3 + 1  # totals, stage rows, index row


SYSTEMS = {"pertinent-search", "pertinent-retrieve", "langchain-ensemble", "llamaindex-fusion"}


@pytest.fixture(scope="module")
def alternatives(scale: dict[str, Any], cranfield_dir: Path) -> dict[str, Any]:
    # `scale` first: it fills the vector cache this reads.
    return {
        "speed": bench_alternatives.speed(CHUNKS, 10, warmup=2),
        "quality": bench_alternatives.quality(cranfield_dir),
    }


def test_alternatives_run_on_the_same_texts(alternatives: dict[str, Any]) -> None:
    speed, quality = alternatives["speed"], alternatives["quality"]
    systems = SYSTEMS
    assert set(speed["totals"]) == systems
    assert all(t["n"] == 10 for t in speed["totals"].values())
    assert all(0.0 <= v <= 1.0 for v in speed["overlap_with_langchain"].values())
    assert speed["overlap_with_langchain"]["langchain-ensemble"] == 1.0
    assert quality["queries"] == 4 and quality["documents"] == 30
    assert set(quality["ndcg@10"]) == systems
    assert all(0.0 <= v <= 1.0 for v in quality["ndcg@10"].values())
    # each query is four words of its own document: every system finds some of them
    assert all(v > 0.0 for v in quality["ndcg@10"].values())


def test_throughput_parts_and_the_generated_doc(
    scale: dict[str, Any], alternatives: dict[str, Any], bench_cache: Path, tmp_path: Path
) -> None:
    tp = bench_throughput.run(
        small=True, events=200, ingest_docs=8, memory_chunks=CHUNKS, memory_users=20
    )
    assert tp["record"]["log_events"] == 200
    assert tp["record"]["batched_events_per_s"] > 0 and tp["record"]["rebuild_ms"] > 0
    assert tp["ingest"]["chunks"] >= 8 and tp["ingest"]["ratio"] > 0
    assert tp["packing"]["cached"]["passages_per_s"] > 0
    w = tp["weaviate"]
    assert set(w) >= {"anonymous", "warm user", "warm user (remember)"}
    assert all(v["search_calls"] >= 1 for v in w.values())  # every retrieve searches
    # the fused user leg saves the warm user's second search (a consent re-read may add
    # a Search to either mode)
    assert w["warm user, fused"]["search_calls"] < w["warm user"]["search_calls"]
    assert w["warm user"]["per_retrieve"]["grpc:Search"] >= 2
    mem = tp["memory"]
    assert mem["users"] == 20 and mem["rss_serving_mb"] >= mem["rss_start_mb"] > 0

    res: dict[str, Any] = {
        "machine": run_all.machine(),
        "sections": {"scale": {"seconds": 1.0, "load_before": 0.5, "load_after": 0.7}},
        "scale": [scale],
        "alternatives": alternatives["speed"],
        "quality": alternatives["quality"],
        "throughput": tp,
    }
    block = run_all.render(res, "python bench/run_all.py --quick")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## Kept section\n\nkept\n")
    run_all.write_doc(doc, block)
    run_all.write_doc(doc, block)  # idempotent: replaces its own block
    text = doc.read_text()
    assert text.count(run_all.BEGIN) == 1 and text.count(run_all.END) == 1
    assert "## Kept section\n\nkept" in text and text.startswith("# Benchmarks\n\nintro")
    rows = run_all.targets(res)
    assert len(rows) >= 9 and all(met in (True, False) for _, _, met in rows)


def _run_script(name: str, *args: str) -> str:
    import subprocess

    out = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_write_soak_reports_rss_per_sample() -> None:
    out = _run_script("soak_writes.py", "--commits", "30", "--samples", "3", "--arena-cap", "1")
    assert "mmap threshold: 1024 KiB; arena cap: 1;" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["10"])]
    assert len(rows) == 2 and all(float(r[2]) > 0 for r in rows)
    assert "commits: 30 in" in out and "over the second half" in out


def test_lancedb_rss_probe_prints_its_samples() -> None:
    out = _run_script("probe_lancedb_rss.py", "--commits", "20", "--every", "10")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["10"], ["20"])]
    assert len(rows) == 2
    # columns: commits, RSS growth (MiB, may be 0 or below), seconds since the start,
    # MiB in LanceDB's caches (filled by the commits, within 2 x --cache-mib)
    assert all(len(r) == 4 and abs(float(r[1])) < 10_000 for r in rows)
    assert float(rows[1][2]) >= float(rows[0][2]) >= 0
    assert 0 <= float(rows[0][3]) < float(rows[1][3]) <= 128


def test_retrieve_soak_releases_what_it_opened() -> None:
    out = _run_script(
        "soak_retrieve.py", "--retrieves", "40", "--samples", "4", "--users", "5", "--threads", "2"
    )
    assert "retrieves: 40 in" in out
    assert "released on close: OK" in out
    assert "LanceDB cache MiB" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["10"])]
    # the store is bounded by default (lancedb_cache_mib), so its caches are measured
    assert len(rows) == 2 and all(len(r) == 10 and float(r[5]) < 1024 for r in rows)
    # glibc malloc's bytes in use hold at least LanceDB's and the tokenizer's buffers
    assert all(float(r[6]) > 1 and float(r[7]) >= 0 for r in rows)
    assert all(float(r[8]) > 100 for r in rows)  # thousands of Python blocks
    assert all(0 < float(r[9]) < float(r[2]) for r in rows)  # anonymous RSS, part of RSS
    assert "RSS anon growth over the second half:" in out


def test_log_versions_bench_prints_every_sample_for_each_retention() -> None:
    args = ["--commits", "30", "--samples", "3", "--reads", "2", "--keep", "60,604800"]
    out = _run_script("bench_log_versions.py", *args)
    rows = [line.split() for line in out.splitlines() if line.startswith("keep")]
    assert [(r[1], r[4]) for r in rows] == [
        (k, c) for k in ("60", "604800") for c in ("10", "20", "30")
    ]
    # Below the compaction interval every append is still its own version and file.
    assert all(int(r[6]) >= int(r[4]) and int(r[9]) >= int(r[4]) for r in rows)


def test_log_compaction_bench_reports_both_methods() -> None:
    args = ["--rows", "300", "--batch", "50", "--every", "2"]
    out = _run_script("bench_log_compaction.py", *args)
    for method in ("lancedb-optimize", "pertinent"):
        rows = [line.split() for line in out.splitlines() if line.split()[:2] == [method, "rows"]]
        assert [int(r[2]) for r in rows] == [50, 100, 150, 200, 250, 300]
        written = [float(r[4]) for r in rows]
        assert written == sorted(written) and written[-1] > 0  # cumulative bytes
        assert f"{method}  fragments" in out


def test_search_legs_probe_times_every_leg(
    bench_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import probe_search_legs

    store = tmp_path / "store"
    args = ["--chunks", "120", "--queries", "4", "--warmup", "1", "--users", "3"]
    assert probe_search_legs.main([*args, "--embed-missing", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "built 120 chunks" in out
    assert "chunks: 120 in 1 file(s)" in out  # optimize leaves one file
    rows = {line[:22].strip(): line[22:].split() for line in out.splitlines()[2:]}
    for case in ("embed", "vector store", "bm25 store", "events unknown user"):
        assert case in rows and len(rows[case]) == 3
        median, p95, _ = map(float, rows[case])
        assert 0 <= median <= p95
    assert probe_search_legs.main([*args, "--store", str(store)]) == 0  # reused, not rebuilt
    assert "built" not in capsys.readouterr().out


def test_ingest_index_probe_reports_the_load_and_the_reingest(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import probe_ingest_index

    import pertinent.stores.lancedb as lance_mod

    monkeypatch.setattr(lance_mod, "_VECTOR_INDEX_MIN_ROWS", 200)
    monkeypatch.setattr(lance_mod, "_FTS_REFRESH_ROWS", 50)
    args = ["--chunks", "1000", "--batch", "50", "--every", "5"]
    assert probe_ingest_index.main([*args, "--reingest", "0.2", "--reingest-batch", "50"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[1:] if line[:7].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [250, 500, 750, 1000]
    segments = [int(r[1]) for r in rows]
    assert segments[0] >= 1 and segments == sorted(segments)
    assert all(int(r[2]) < max(50, 1000 // 4) for r in rows)  # rows not yet in the graph
    assert "re-ingest 200 chunks in 4 upserts" in out and "graph kept: yes" in out
    assert out.rstrip().endswith("1 segment(s), 0 rows outside, 1 file(s)")


def test_forget_index_probe_reports_recall_before_and_after(
    scale: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `scale` first: it fills the vector cache this reads.
    import probe_forget_index

    import pertinent.stores.lancedb as lance_mod

    monkeypatch.setattr(lance_mod, "_VECTOR_INDEX_MIN_ROWS", 100)
    args = ["--chunks", str(CHUNKS), "--every", "10", "--queries", "3", "--batch", "50"]
    assert probe_forget_index.main(args) == 0
    out = capsys.readouterr().out
    assert f"{CHUNKS} chunks ({CHUNKS} real vectors), 20 owned by the user" in out
    recalls = [float(line.split(":")[1]) for line in out.splitlines() if "recall@50" in line]
    assert len(recalls) == 2 and all(0.0 <= r <= 1.0 for r in recalls)
    assert "(20 chunks); 1 segment(s), 180 rows indexed, 0 outside" in out
