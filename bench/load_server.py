"""Load on `POST /v1/retrieve` of a real `pertinent serve` over loopback.

Starts `pertinent serve` as a subprocess on a fresh embedded store (LanceDB + MiniLM) in
a temporary directory, ingests the project's README.md and docs/*.md through the API,
gives 50 users 20 `open` events each, then runs closed-loop clients (each sends its next
request when the previous one is answered) at 1, 8 and 32 concurrent clients for a fixed
time each. Prints requests/s and p50/p95/p99 latency per level, then stops the server.

Every query text is distinct (a counter is appended), so the query-embedding cache never
hits: the worst case. The load generator (httpx, asyncio) runs on the same machine and
takes CPU from the server; on 2 cores that is part of what is measured.

Usage: python bench/load_server.py [--seconds 20] [--levels 1,8,32] [--remember]
       [--root .] [--port 8799] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx

from pertinent.server.auth import KeyStore

QUERIES = [
    "how do I rotate API keys",
    "what does the user profile decay half-life do",
    "how is the token budget counted",
    "which store backends are supported",
    "how does forgetting a user work",
    "what is the session embedding",
    "how are ACL principals checked",
    "how do I use pertinent with LangChain",
    "how to configure Weaviate multi-tenancy",
    "what does the score breakdown contain",
    "how is long-term memory searched",
    "what happens when the store is down",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def start_server(data: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "pertinent.cli",
        "serve",
        "--data",
        str(data),
        "--port",
        str(port),
        "--rate",
        "100000",
        "--burst",
        "100000",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"pertinent serve exited with {proc.returncode}:\n{err}")
        try:
            if httpx.get(f"{base}/v1/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"pertinent serve did not answer within {timeout:.0f} s")


def seed(base: str, headers: dict[str, str], root: Path, users: int) -> int:
    files = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    docs = [
        {"id": str(p.relative_to(root)), "text": p.read_text(encoding="utf-8"), "title": p.name}
        for p in files
        if p.exists()
    ]
    with httpx.Client(base_url=base, headers=headers, timeout=600) as c:
        r = c.post("/v1/documents", json={"documents": docs})
        r.raise_for_status()
        chunks = int(r.json()["chunks"])
        ids = [f"{d['id']}#0" for d in docs]
        rng = random.Random(0)
        for u in range(users):
            events = [{"kind": "open", "item_id": rng.choice(ids)} for _ in range(20)]
            c.post("/v1/events", json={"user_id": f"user{u}", "events": events}).raise_for_status()
    return chunks


async def level(
    base: str, headers: dict[str, str], clients: int, seconds: float, remember: bool, users: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = 0
    stop_at = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal counter
        rng = random.Random(i)
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as c:
            while time.perf_counter() < stop_at:
                counter += 1
                body = {
                    "query": f"{rng.choice(QUERIES)} ({counter})",
                    "user_id": f"user{rng.randrange(users)}",
                    "session_id": f"s{i}",
                    "budget": {"model": "gpt-4o", "max_tokens": 1500},
                    "remember": remember,
                }
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/retrieve", json=body)
                    ok = r.status_code == 200
                    kind = str(r.status_code)
                except httpx.HTTPError as exc:
                    ok, kind = False, type(exc).__name__
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[kind] = errors.get(kind, 0) + 1

    t_start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t_start
    ms = [x * 1000 for x in latencies]
    return {
        "clients": clients,
        "requests": len(ms),
        "errors": errors,
        "seconds": round(wall, 2),
        "rps": round(len(ms) / wall, 1),
        "p50_ms": round(percentile(ms, 0.50), 1),
        "p95_ms": round(percentile(ms, 0.95), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each level")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    ap.add_argument("--levels", default="1,8,32", help="concurrent clients per level")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--remember", action="store_true", help="each retrieve also writes")
    ap.add_argument("--root", default=".", help="project root whose README and docs/ to load")
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory(prefix="pertinent-load-") as tmp:
        data = Path(tmp) / "data"
        key = KeyStore(data / "api-keys.json").create("bench", ["admin"]).key
        headers = {"Authorization": f"Bearer {key}"}
        proc = start_server(data, args.port)
        try:
            wait_ready(base, proc)
            t0 = time.perf_counter()
            chunks = seed(base, headers, Path(args.root), args.users)
            print(f"seeded {chunks} chunks, {args.users} users in {time.perf_counter() - t0:.1f} s")
            asyncio.run(level(base, headers, 2, args.warmup, args.remember, args.users))
            results = []
            for n in levels:
                res = asyncio.run(level(base, headers, n, args.seconds, args.remember, args.users))
                results.append(res)
                print(
                    f"{n:>3} clients: {res['rps']:>7.1f} req/s  p50 {res['p50_ms']:>7.1f} ms  "
                    f"p95 {res['p95_ms']:>7.1f} ms  p99 {res['p99_ms']:>7.1f} ms  "
                    f"({res['requests']} ok, errors {res['errors'] or 0})"
                )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    meta = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "chunks": chunks,
        "seconds_per_level": args.seconds,
        "remember": args.remember,
        "command": "python bench/load_server.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(meta))
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "levels": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
