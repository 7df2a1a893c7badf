"""`pertinent demo`: the same question from two users with different histories.

Ingests the project's own README and docs/ into a fresh embedded store, gives two
simulated users a history (one reads about privacy and governance, one about search
quality), then asks both the same question and prints their top results side by side
with each score's breakdown, so the personalization is visible and explained.
"""

from __future__ import annotations

import os
import shutil
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pertinent.errors import ConfigurationError

__all__ = ["PERSONAS", "QUESTION", "find_project_root", "run_demo"]

QUESTION = "What does pertinent keep about a user, and how do I control it?"

# Each persona: what they asked before and which results they opened.
PERSONAS: dict[str, list[str]] = {
    "priya (privacy officer)": [
        "forget a user and delete all their data",
        "retention windows and purging old events",
        "per-user isolation so no user sees another user's records",
    ],
    "sam (search engineer)": [
        "how are hybrid BM25 and vector scores fused",
        "user embedding decay half-life and confidence gate",
        "MMR diversity and the score breakdown",
    ],
}


def find_project_root(start: Path | None = None) -> Path | None:
    """The nearest ancestor holding README.md and docs/ (the repository checkout)."""
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "README.md").is_file() and (p / "docs").is_dir():
            return p
    return None


def _short(text: str, width: int) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder="…")


def run_demo(data: Path, root: Path | None = None, fresh: bool = True, **store: Any) -> int:
    """`store` takes `pertinent.open`'s backend options (backend, url, api_key, grpc_port);
    on Weaviate the demo keeps to its own collections (prefix PertinentDemo)."""
    import pertinent
    from pertinent.config import Settings

    root = root or find_project_root()
    if root is None:
        raise ConfigurationError(
            "The demo ingests the project's README.md and docs/; run it from a checkout of "
            "pertinent or pass --root PATH."
        )
    if fresh and data.exists():
        shutil.rmtree(data)
    t = time.perf_counter()
    settings = Settings(weaviate_collection_prefix="PertinentDemo")
    with pertinent.open(data, settings=settings, **store) as px:
        if px.settings.backend == "weaviate":
            where = f"Weaviate at {px.settings.weaviate_url}, collections PertinentDemo*"
            if fresh:  # the cluster outlives the demo: the personas start over
                for persona in PERSONAS:
                    px.forget_user(persona.split()[0])
        else:
            where = f"embedded store at {data} (LanceDB)"
        print(f"pertinent demo: {where} + all-MiniLM-L6-v2, offline\n")
        # Relative paths give stable, readable document ids ("docs/scoring.md").
        sources = [Path(os.path.relpath(root / "README.md")), Path(os.path.relpath(root / "docs"))]
        report = px.ingest(sources, show_progress=True)
        print(
            f"ingested {report.documents} documents → {report.chunks} chunks "
            f"in {time.perf_counter() - t:.1f}s\n"
        )

        now = pertinent.types.utcnow()
        for persona, queries in PERSONAS.items():
            user = persona.split()[0]
            events = []
            for n, q in enumerate(queries):
                when = now - timedelta(days=3 * (len(queries) - n))
                events.append(pertinent.Event(kind="query", text=q, timestamp=when))
                for r in px.search(q, top_k=2):
                    events.append(pertinent.Event(kind="open", item_id=r.id, timestamp=when))
                    events.append(pertinent.Event(kind="accept", item_id=r.id, timestamp=when))
            px.record(user, events)
            print(f"{persona}: {len(events)} past events, e.g. {queries[0]!r}")

        budget = pertinent.Budget(model="gpt-4o", max_tokens=1500)
        print(f"\nBoth ask: {QUESTION!r}\n")
        contexts = {}
        for persona in (*PERSONAS, "anonymous (no history)"):
            asker = None if persona.startswith("anonymous") else persona.split()[0]
            contexts[persona] = px.retrieve(
                QUESTION, user_id=asker, session_id=None, budget=budget, remember=False
            )
        width = 100
        for persona, ctx in contexts.items():
            print("=" * width)
            print(
                f"{persona}: packed {ctx.token_count}/{budget.max_tokens} tokens "
                f"({ctx.tokenizer}), {len(ctx.citations)} passages cited"
            )
            print("-" * width)
            for r in ctx.results[:5]:
                e = r.explain
                where = r.chunk.metadata.get("section") or r.chunk.title or r.chunk.doc_id
                print(f" {r.rank}. [{_short(str(where), 40)}] {r.chunk.doc_id}")
                print(
                    f"    final {e.final:.3f} = hybrid {e.hybrid:.3f} (bm25 {e.bm25:.2f}, cos "
                    f"{e.vector:.3f}) + user {e.user:.3f} × gate {e.user_gate:.2f}"
                    f"  found by {'+'.join(e.found_by)}"
                )
                print(f"    {_short(r.text, width - 4)}")
        tops = {p: [r.id for r in c.results[:5]] for p, c in contexts.items()}
        a, b = list(PERSONAS)
        overlap = len(set(tops[a]) & set(tops[b]))
        print("=" * width)
        print(
            f"top-5 overlap between the two users: {overlap}/5; "
            f"retrieve took {sum((px.last_times.ms if px.last_times else {}).values()):.0f} ms "
            "(last call)"
        )
    return 0
