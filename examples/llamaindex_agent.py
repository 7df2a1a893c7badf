"""A LlamaIndex agent whose retrieval and memory are pertinent's.

    python examples/llamaindex_agent.py            # a fresh store in a temp dir
    python examples/llamaindex_agent.py --data DIR # keep the store

Two users ask the same question and get different passages: alice's private notes are
hers alone. A `PertinentMemoryBlock` gives the agent what pertinent knows about alice,
and the conversation it flushes goes back to pertinent (session turns, query events).

With OPENAI_API_KEY set, OpenAI answers (model: $PERTINENT_EXAMPLE_MODEL, default
gpt-4o-mini). Without it a stub model stands in: it calls the search tool with the
user's question, then quotes the top passage. Nothing else leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
from llama_index.core import Document
from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCallResult
from llama_index.core.memory import Memory
from llama_index.core.tools import RetrieverTool
from llama_index.llms.openai import OpenAI

import pertinent
from pertinent.integrations.llama_index import (
    PertinentMemoryBlock,
    PertinentRetriever,
    ingest_nodes,
    score_breakdown,
)

TEAM_DOCS = [
    Document(
        doc_id="keys",
        text="Rotate API keys every 90 days from the admin console. Old keys stop working "
        "one hour after rotation.",
        metadata={"title": "API keys"},
    ),
    Document(
        doc_id="deploys",
        text="Deploys go through the blue-green pipeline; a failed health check rolls "
        "back automatically within two minutes.",
        metadata={"title": "Deploys"},
    ),
    Document(
        doc_id="refunds",
        text="Refunds take five business days to reach the card; support can expedite "
        "them for enterprise customers.",
        metadata={"title": "Refunds"},
    ),
]
ALICE_NOTES = [
    Document(
        doc_id="alice/keys",
        text="My team's payment API keys live in the vault at secret/payments; I rotate "
        "them on Fridays.",
        metadata={"title": "alice: keys"},
    ),
]


# --------------------------------------------------------------------------- the LLM


def _text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return " ".join(str(content).split())


def _reply(body: dict[str, Any], message: dict[str, Any]) -> httpx.Response:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    base = {"id": "stub", "created": 0, "model": body.get("model", "stub")}
    if not body.get("stream"):
        choice = {"index": 0, "message": message, "finish_reason": finish}
        return httpx.Response(200, json={**base, "object": "chat.completion", "choices": [choice]})
    delta = dict(message)
    if "tool_calls" in delta:
        delta["tool_calls"] = [{**c, "index": i} for i, c in enumerate(delta["tool_calls"])]
    events = [
        {"index": 0, "delta": delta, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": finish},
    ]
    sse = "".join(
        f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [e]})}\n\n"
        for e in events
    )
    return httpx.Response(
        200,
        content=(sse + "data: [DONE]\n\n").encode(),
        headers={"content-type": "text/event-stream"},
    )


def _stub(request: httpx.Request) -> httpx.Response:
    """An OpenAI-compatible chat endpoint that needs no key: it calls the first tool
    offered with the user's words, then quotes the top passage the tool returned."""
    body = json.loads(request.content)
    last = body["messages"][-1]
    if body.get("tools") and last["role"] == "user":
        fn = body["tools"][0]["function"]
        arg = next(iter(fn["parameters"]["properties"]))
        call = {"name": fn["name"], "arguments": json.dumps({arg: _text(last)})}
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_0", "type": "function", "function": call}],
        }
    else:
        passages = _text(last)
        message = {"role": "assistant", "content": f"(stub) The top passage: {passages[:220]}"}
    return _reply(body, message)


def make_llm() -> OpenAI:
    if os.environ.get("OPENAI_API_KEY"):
        model = os.environ.get("PERTINENT_EXAMPLE_MODEL", "gpt-4o-mini")
        print(f"LLM: OpenAI {model}")
        return OpenAI(model=model)
    print("LLM: stub model (OPENAI_API_KEY is not set); it quotes the top passage it was given")
    return OpenAI(
        model="gpt-4o-mini",
        api_key="stub",
        api_base="http://stub.invalid/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(_stub)),
        async_http_client=httpx.AsyncClient(transport=httpx.MockTransport(_stub)),
    )


# --------------------------------------------------------------------------- the agent


async def ask(px: pertinent.Pertinent, llm: OpenAI, user_id: str, memory: Memory, q: str) -> None:
    retriever = PertinentRetriever(px, user_id=user_id, session_id=memory.session_id, top_k=3)
    tool = RetrieverTool.from_defaults(
        retriever=retriever,
        name="search_docs",
        description="Search the team's documentation and the user's own notes.",
    )
    agent = FunctionAgent(
        tools=[tool], llm=llm, system_prompt="Answer briefly from the search results."
    )
    out: AgentOutput = await agent.run(user_msg=q, memory=memory)
    print(f"\n[{user_id}] {q}")
    for call in out.tool_calls:
        if not isinstance(call, ToolCallResult):
            continue
        print(f"  tool {call.tool_name}({call.tool_kwargs})")
        for n in call.tool_output.raw_output:
            b = score_breakdown(n)
            print(f"    {n.score:.3f} {n.node.node_id:<14} user={b.user:.2f}x{b.user_gate:.2f}")
    print(f"  answer: {out}")


async def main(data: Path) -> None:
    px = pertinent.open(data)
    ingest_nodes(px, TEAM_DOCS, show_progress=False)
    ingest_nodes(px, ALICE_NOTES, owner="alice", show_progress=False)
    print(f"store: {data} ({px.store.count_chunks()} chunks)")
    llm = make_llm()

    # A short-term queue small enough that older exchanges flush into the block.
    memories = {
        user: Memory.from_defaults(
            session_id=f"{user}-s1",
            token_limit=600,
            chat_history_token_ratio=0.3,
            memory_blocks=[PertinentMemoryBlock(client=px, user_id=user)],
        )
        for user in ("alice", "bob")
    }
    q = "How do I rotate the payment API keys?"
    await ask(px, llm, "alice", memories["alice"], q)
    await ask(px, llm, "bob", memories["bob"], q)
    await ask(px, llm, "alice", memories["alice"], "And how do deploys roll back?")

    shown = await memories["alice"].aget()
    system = next((m.content or "" for m in shown if m.role == "system"), "")
    print("\nWhat alice's memory block puts in the prompt:")
    print("  " + "\n  ".join(line for line in system.splitlines() if line.startswith(("##", "-"))))
    events = [e.text for e in px.store.read_events("alice") if e.kind == "query"]
    turns = px.history("alice", "alice-s1")
    print(f"\npertinent knows about alice: {len(events)} query events, {len(turns)} session turns")
    for t in turns:
        print(f"  {t.role}: {t.text[:70]}")
    px.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="store directory (default: a temp dir)")
    args = parser.parse_args()
    if args.data:
        asyncio.run(main(args.data))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(Path(tmp) / "store"))
