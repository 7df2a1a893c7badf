"""Run every benchmark and rewrite the generated part of docs/benchmarks.md (`make bench`).

The part between the ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` markers is
replaced; the hand-written sections around it are kept. Corpus vectors come from the
cache that ``python bench/corpus.py --chunks 100000`` fills; chunks beyond what is
cached get derived vectors, and the report says how many (see corpus.cached_vectors).
Usage:
    python bench/run_all.py --cranfield ../shared/data/cranfield [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_alternatives  # noqa: E402
import bench_scale  # noqa: E402
import bench_throughput  # noqa: E402

import pertinent  # noqa: E402

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
PACKAGES = (
    "torch",
    "sentence-transformers",
    "lancedb",
    "pylance",
    "pyarrow",
    "tiktoken",
    "langchain-classic",
    "langchain-community",
    "rank-bm25",
    "faiss-cpu",
    "llama-index-core",
    "llama-index-retrievers-bm25",
    "bm25s",
    "weaviate-client",
)
T = TypeVar("T")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0.0
    try:
        import psutil

        ram = psutil.virtual_memory().total / 2**30
    except ImportError:
        pass
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = "absent"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit, dirty = "unknown", ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(ram, 1),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def timed(name: str, log: dict[str, Any], f: Callable[[], T]) -> T:
    """Run one section, recording its wall time and the load average around it."""
    before = os.getloadavg()[0]
    t = time.perf_counter()
    out = f()
    log[name] = {
        "seconds": time.perf_counter() - t,
        "load_before": before,
        "load_after": os.getloadavg()[0],
    }
    print(f"[run_all] {name}: {log[name]['seconds']:.0f} s", file=sys.stderr, flush=True)
    return out


def _span(xs: list[float]) -> str:
    """The lowest and highest of a benchmark's rounds, as "lo–hi"."""
    return f"{_fmt(min(xs))}–{_fmt(max(xs))}"


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def targets(res: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows; met is None when the part did not run."""
    rows: list[tuple[str, str, bool | None]] = []
    scale = {r["chunks"]: r for r in res.get("scale", [])}
    big = scale[max(scale)] if scale else None
    if big is not None:
        for system in ("retrieve-warm", "retrieve-warm-fused", "retrieve-cold"):
            if system not in big["totals"]:
                continue
            p95 = big["totals"][system]["p95"]
            rows.append(
                (
                    f"`retrieve` p95 ≤ 20 ms at {big['chunks']:,} chunks ({system})",
                    f"{_fmt(p95)} ms",
                    p95 <= 20.0,
                )
            )
        bare = big["totals"]["bare-hybrid"]["median"]
        embed = big["stages"]["retrieve-warm"]["embed_query"]["median"]
        search = max(bare - embed, 1e-9)
        for system in ("retrieve-warm", "retrieve-warm-fused"):
            if system not in big["totals"]:
                continue
            warm = big["totals"][system]["median"]
            share = (warm - bare) / search
            rows.append(
                (
                    f"personalization + packing ≤ 10% of bare hybrid search (medians, {system})",
                    f"{_fmt(warm - bare)} ms over a {_fmt(search)} ms search = {share:.0%}",
                    share <= 0.10,
                )
            )
        rec = big["recall"]["recall"]
        rows.append(
            (f"ANN recall@50 ≥ 0.95 at {big['chunks']:,} chunks", f"{rec:.3f}", rec >= 0.95)
        )
    alt = res.get("alternatives")
    if alt is not None:
        t = alt["totals"]
        for other in ("langchain-ensemble", "llamaindex-fusion"):
            speedup = t[other]["median"] / t["pertinent-retrieve"]["median"]
            rows.append(
                (
                    f"≥ 3× faster than {other} (median, {alt['chunks']:,} chunks)",
                    f"{speedup:.2f}× ({_fmt(t['pertinent-retrieve']['median'])} vs "
                    f"{_fmt(t[other]['median'])} ms)",
                    speedup >= 3.0,
                )
            )
    q = res.get("quality")
    if q is not None:
        nd = q["ndcg@10"]
        mine = nd["pertinent-search"]
        for other in ("langchain-ensemble", "llamaindex-fusion"):
            rows.append(
                (
                    f"Cranfield nDCG@10 ≥ {other}",
                    f"{mine:.4f} vs {nd[other]:.4f}",
                    mine >= nd[other],
                )
            )
    tp = res.get("throughput", {})
    if "record" in tp:
        r = tp["record"]
        rows.append(
            (
                "`record` ≥ 50,000 events/s batched",
                f"{_fmt(r['batched_events_per_s'], 0)} events/s (batches of {r['batch_size']})",
                r["batched_events_per_s"] >= 50_000,
            )
        )
        rows.append(
            (
                f"profile rebuild of {r['log_events']:,} events ≤ 50 ms",
                f"{_fmt(r['rebuild_ms'])} ms (fold alone {_fmt(r['fold_only_ms'])} ms)",
                r["rebuild_ms"] <= 50.0,
            )
        )
    if "ingest" in tp:
        i = tp["ingest"]
        rows.append(
            (
                "ingest ≥ 90% of the embedder's own throughput",
                f"{i['ratio']:.0%} ({_fmt(i['ingest_chunks_per_s'])} vs "
                f"{_fmt(i['embedder_chunks_per_s'])} chunks/s)",
                i["ratio"] >= 0.9,
            )
        )
    if "weaviate" in tp:
        # Cases labelled ", fused" ran with user_leg="fused" (only users with a profile
        # differ); the target is judged on the shipped default.
        w = {k: v for k, v in tp["weaviate"].items() if "remember" not in k}
        fused = {k.replace(", fused", ""): v for k, v in w.items() if k.endswith(", fused")}
        separate = {k: v for k, v in w.items() if not k.endswith(", fused")}
        modes = {"separate": separate, "fused": {**separate, **fused}}
        default = str(pertinent.Settings.model_fields["user_leg"].default)
        worst = max(v["search_calls"] for v in modes[default].values())
        text = "; ".join(
            f"user_leg={mode}: " + ", ".join(f"{k} {v['total']:g}" for k, v in cases.items())
            for mode, cases in modes.items()
            if cases
        )
        rows.append(
            (
                "one store round trip per `retrieve` on Weaviate (remember=False)",
                f"{text} (default: {default})",
                worst <= 1.0,
            )
        )
    return rows


def render(res: dict[str, Any], command: str) -> str:
    m = res["machine"]
    out = [
        BEGIN,
        "",
        "## Results at scale (generated by `make bench`)",
        "",
        f"Generated by `{command}` on {m['date']}, commit {m['commit']}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python "
        f"{m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        "Load average (1 min) before / after each part; other work shared the machine "
        "whenever it is above ~1:",
        "",
        "| part | seconds | load before | load after |",
        "|---|---|---|---|",
    ]
    for name, s in res["sections"].items():
        out.append(
            f"| {name} | {s['seconds']:.0f} | {s['load_before']:.1f} | {s['load_after']:.1f} |"
        )
    out += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target, measured, met in targets(res):
        out.append(f"| {target} | {measured} | {'yes' if met else 'no' if met is False else '–'} |")
    if res.get("scale"):
        out += ["", "### `retrieve` at scale (bench/bench_scale.py)", ""]
        reals = ", ".join(
            f"{r['chunks']:,} chunks: {r['real_vectors']:,} real" for r in res["scale"]
        )
        out.append(
            "Generated corpus (bench/corpus.py), 100 users × 200 events, packing to 2,000 "
            f"tokens, queries interleaved in random order after warm-up. Vectors: {reals} "
            "all-MiniLM-L6-v2 vectors; any others are derived (a real vector plus noise, "
            "see corpus.cached_vectors): they time the search and measure index recall but "
            "do not match their text."
        )
        out.append("")
        scale_results = [bench_scale.ScaleResult(**r) for r in res["scale"]]
        out.append(bench_scale.markdown(scale_results))
    alt = res.get("alternatives")
    if alt is not None:
        out += ["", "### Against LangChain and LlamaIndex (bench/bench_alternatives.py)", ""]
        out.append(
            f"{alt['chunks']:,} chunks ({alt['real_vectors']:,} with real vectors), the same "
            f"texts and vectors in every system, {alt['queries']} queries interleaved, top "
            f"{bench_alternatives.K}; each system embeds its query with the same model."
        )
        out += [
            "",
            "| system | n | median ms | p95 ms | overlap with LangChain top 10 |",
            "|---|---|---|---|---|",
        ]
        for name, s in alt["totals"].items():
            out.append(
                f"| {name} | {s['n']} | {s['median']:.1f} | {s['p95']:.1f} | "
                f"{alt['overlap_with_langchain'][name]:.2f} |"
            )
        out.append("")
        out.append(
            "Ratios pertinent / alternative (median; p95): "
            + "; ".join(
                f"{k} {v:.2f} ({alt['ratio_p95'][k]:.2f})" for k, v in alt["ratio_median"].items()
            )
            + "."
        )
    q = res.get("quality")
    if q is not None:
        out += [
            "",
            f"Cranfield nDCG@10 ({q['queries']} judged queries, {q['documents']:,} documents "
            f"as {q['chunks']:,} chunks; each system's top {3 * bench_alternatives.K} chunks "
            "folded to documents): "
            + ", ".join(f"{k} {v:.4f}" for k, v in q["ndcg@10"].items())
            + ".",
        ]
    tp = res.get("throughput", {})
    if tp:
        out += ["", "### Throughput and footprint (bench/bench_throughput.py)", ""]
    if "record" in tp:
        r = tp["record"]
        out.append(
            f"- `record`: {_fmt(r['single_events_per_s'], 0)} events/s one per call, "
            f"{_fmt(r['batched_events_per_s'], 0)} events/s in batches of {r['batch_size']}; "
            f"rebuilding a profile from its {r['log_events']:,}-event log "
            f"{_fmt(r['rebuild_ms'])} ms (store read + fold), the fold alone "
            f"{_fmt(r['fold_only_ms'])} ms."
        )
    if "ingest" in tp:
        i = tp["ingest"]
        out.append(
            f"- ingest: {i['documents']} documents → {i['chunks']} chunks, "
            f"{_fmt(i['ingest_chunks_per_s'])} chunks/s end to end against "
            f"{_fmt(i['embedder_chunks_per_s'])} chunks/s for the embedder alone on the same "
            f"texts ({i['ratio']:.0%}; medians of {len(i['rounds']['ingest'])} alternating "
            f"rounds, ingest {_span(i['rounds']['ingest'])}, embedder "
            f"{_span(i['rounds']['embed'])} chunks/s)."
        )
    if "packing" in tp:
        p = tp["packing"]
        out.append(
            f"- packing to 2,000 tokens from 50 candidates: "
            f"{_fmt(p['cached']['passages_per_s'], 0)} passages/s with token counts cached "
            f"({_fmt(p['cached']['pack_ms_median'], 2)} ms per call), "
            f"{_fmt(p['uncached']['passages_per_s'], 0)} uncached "
            f"({_fmt(p['uncached']['pack_ms_median'], 2)} ms per call)."
        )
    if "weaviate" in tp:
        out.append(
            "- Weaviate, requests per `retrieve` against tests/fake_weaviate.py "
            "(steady state: consent and profile cached):"
        )
        for k, v in tp["weaviate"].items():
            detail = ", ".join(f"{m} {n:g}" for m, n in v["per_retrieve"].items())
            out.append(f"  - {k}: {v['total']:g} ({detail})")
    if "memory" in tp:
        mm = tp["memory"]
        out.append(
            f"- resident memory serving {mm['chunks']:,} chunks ({mm['real_vectors']:,} real "
            f"vectors) and {mm['users']:,} users ({mm['events_per_user']} events each, every "
            f"profile in memory): {_fmt(mm['rss_serving_mb'], 0)} MiB "
            f"(start {_fmt(mm['rss_start_mb'], 0)}, model loaded "
            f"{_fmt(mm['rss_model_mb'], 0)}, store loaded {_fmt(mm['rss_store_mb'], 0)}; "
            f"peak {_fmt(mm['peak_rss_mb'], 0)} MiB)."
        )
    out += ["", END]
    return "\n".join(out)


def write_doc(path: Path, block: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        head, _, rest = text.partition("\n## ")
        text = head.rstrip() + "\n\n" + block + "\n" + ("\n## " + rest if rest else "")
    path.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cranfield", type=Path, help="Cranfield directory (corpus.jsonl, ...)")
    ap.add_argument("--chunks", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--alt-chunks", type=int, default=10_000)
    ap.add_argument("--memory-chunks", type=int, default=100_000)
    ap.add_argument("--memory-users", type=int, default=10_000)
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--no-doc", action="store_true", help="print, do not rewrite the doc")
    ap.add_argument(
        "--render", type=Path, help="only rewrite the doc from a --json file of an earlier run"
    )
    args = ap.parse_args(argv)
    given = list(argv) if argv is not None else sys.argv[1:]
    # no absolute machine paths in the tracked doc
    command = "python bench/run_all.py " + " ".join(
        "<path>" if a.startswith("/") else a for a in given
    )
    if args.render:
        saved = json.loads(args.render.read_text())
        write_doc(args.doc, render(saved, saved.get("command", command)))
        return 0
    res: dict[str, Any] = {"machine": machine(), "sections": {}, "command": command}
    log = res["sections"]
    res["scale"] = [
        timed(
            f"scale {n:,}",
            log,
            lambda n=n: bench_scale.run(n, args.queries).as_dict(),  # type: ignore[misc]
        )
        for n in args.chunks
    ]
    res["alternatives"] = timed(
        "alternatives", log, lambda: bench_alternatives.speed(args.alt_chunks, args.queries)
    )
    if args.cranfield:
        res["quality"] = timed("cranfield", log, lambda: bench_alternatives.quality(args.cranfield))
    res["throughput"] = {}
    for part in ("record", "ingest", "packing", "weaviate"):
        res["throughput"].update(
            timed(part, log, lambda part=part: bench_throughput.run([part], ingest_docs=128))  # type: ignore[misc]
        )
    res["throughput"].update(
        timed(
            "memory",
            log,
            lambda: bench_throughput.run(
                ["memory"], memory_chunks=args.memory_chunks, memory_users=args.memory_users
            ),
        )
    )
    block = render(res, command)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    if args.no_doc:
        print(block)
    else:
        write_doc(args.doc, block)
        print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
