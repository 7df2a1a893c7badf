"""An IDE assistant: what a developer opens and accepts shapes what they are shown next.

    python examples/copilot_personalization.py            # a fresh store in a temp dir
    python examples/copilot_personalization.py --data DIR # keep the store

The repository's files are in the store. Two developers ask the same question ("how
should I handle errors here?"). Before they have done anything they see the same
passages; then the IDE reports what each opens (``open`` events) and which suggestions
they accept or reject (``accept`` / ``reject``), and the same question gives each of
them their own code base's conventions, with the score terms that say why.

With OPENAI_API_KEY set, OpenAI writes the suggestion (model: $PERTINENT_EXAMPLE_MODEL,
default gpt-4o-mini). Without it a stub model stands in and quotes the first source it
was given. Nothing else leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
from openai import OpenAI

import pertinent
from pertinent import Budget, Event

REPO = {
    "src/payments/errors.rs": "Error handling in the Rust payment service: return "
    "Result<T, PaymentError>, propagate with the ? operator, add context with map_err, and "
    "never unwrap() inside a request handler.",
    "src/payments/retry.rs": "Retry failed card-network calls with exponential backoff: "
    "retry_with_backoff(|| charge(&card), 3) returns Result<Receipt, PaymentError>.",
    "services/billing/errors.py": "Error handling in the Python billing service: catch the "
    "specific exception, raise BillingError(...) from err to keep the cause, never use a "
    "bare except.",
    "services/billing/retry.py": "Retry billing API calls with tenacity: "
    "@retry(stop=stop_after_attempt(3), wait=wait_exponential()) around the HTTP call.",
    "web/src/api.ts": "Error handling in the TypeScript web client: wrap fetch in "
    "try/catch, narrow unknown errors with instanceof ApiError, and show toast(error.message).",
    "docs/logging.md": "Log errors with structured fields (request_id, account_id); never "
    "log card numbers or API keys.",
}
WORKS_IN = {
    "ana": ("src/payments/errors.rs", "src/payments/retry.rs"),
    "ben": ("services/billing/errors.py", "services/billing/retry.py"),
}
QUESTION = "how should I handle errors here?"
BUDGET = Budget(model="gpt-4o", max_tokens=160)


# --------------------------------------------------------------------------- the LLM


def _stub(request: httpx.Request) -> httpx.Response:
    """An OpenAI-compatible chat endpoint that needs no key: it quotes source [1]."""
    body = json.loads(request.content)
    prompt = "\n".join(str(m.get("content") or "") for m in body["messages"])
    first = next((line for line in prompt.splitlines() if line.startswith("[1]")), "nothing")
    message = {"role": "assistant", "content": f"(stub) Follow {first}"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return httpx.Response(
        200,
        json={"id": "stub", "object": "chat.completion", "created": 0, "model": body["model"],
              "choices": [choice]},
    )  # fmt: skip


def make_llm() -> tuple[OpenAI, str]:
    if os.environ.get("OPENAI_API_KEY"):
        model = os.environ.get("PERTINENT_EXAMPLE_MODEL", "gpt-4o-mini")
        print(f"LLM: OpenAI {model}")
        return OpenAI(), model
    print("LLM: stub model (OPENAI_API_KEY is not set); it quotes source [1]")
    client = OpenAI(
        api_key="stub",
        base_url="http://stub.invalid/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(_stub)),
    )
    return client, "gpt-4o-mini"


# --------------------------------------------------------------------------- the IDE


def show(px: pertinent.Pertinent, dev: str) -> list[str]:
    results = px.search(QUESTION, user_id=dev, session_id="ide", top_k=3)
    print(f"  {dev}:")
    for r in results:
        b = r.explain
        print(
            f"    {r.score:.3f} {r.chunk.doc_id:<28} hybrid={b.hybrid:.2f} "
            f"user={b.user:.2f} (gate {b.user_gate:.2f}) session={b.session:.2f}"
        )
    return [r.chunk.doc_id for r in results]


def suggest(px: pertinent.Pertinent, llm: OpenAI, model: str, dev: str, file: str) -> str:
    """Ask the copilot in `file`; returns the chunk id the suggestion was grounded on."""
    ctx = px.retrieve(
        QUESTION,
        user_id=dev,
        session_id="ide",
        budget=BUDGET,
        instructions=f"The developer is editing {file}. Suggest one concrete change.",
    )
    reply = llm.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": ctx.text},
            {"role": "user", "content": QUESTION},
        ],
    )
    print(f"  {dev} in {file} ({ctx.token_count}/{BUDGET.max_tokens} tokens of context)")
    print(f"    suggestion: {(reply.choices[0].message.content or '')[:110]}")
    return ctx.citations[0].chunk_id


def main(data: Path) -> None:
    px = pertinent.open(data)
    px.ingest(
        [{"id": path, "text": text, "source": path} for path, text in REPO.items()],
        show_progress=False,
    )
    llm, model = make_llm()

    print(f"\nBefore any activity, both developers asking {QUESTION!r} see:")
    assert show(px, "ana") == show(px, "ben")

    # What the IDE reports: the files each developer works in, opened through the day
    # (a chunk id is "<document id>#<n>").
    for dev, paths in WORKS_IN.items():
        for path in paths * 2:
            px.record(dev, Event(kind="open", item_id=f"{path}#0", session_id="ide"))

    print("\nSuggestions; a developer accepts one grounded in their own code base:")
    for dev, file in (("ana", "src/payments/refund.rs"), ("ben", "services/billing/invoice.py")):
        used = suggest(px, llm, model, dev, file)
        verdict = "accept" if used.split("#")[0] in WORKS_IN[dev] else "reject"
        px.record(dev, Event(kind=verdict, item_id=used, session_id="ide"))
        print(f"    -> {verdict}ed")

    print(f"\nAfter, the same question {QUESTION!r}:")
    ana, ben = show(px, "ana"), show(px, "ben")
    print(f"\nana's top: {ana[0]}   ben's top: {ben[0]}")
    for dev in ("ana", "ben"):
        p = px.profile(dev)
        print(
            f"profile {dev}: positive mass {p.positive_mass:.2f}, negative mass "
            f"{p.negative_mass:.2f}, personalization gate {p.gate:.2f}"
        )
    px.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="store directory (default: a temp dir)")
    args = parser.parse_args()
    if args.data:
        main(args.data)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "store")
