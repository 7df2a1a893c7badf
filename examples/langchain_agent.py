"""A LangChain tool-calling agent whose retrieval and chat history are pertinent's.

    python examples/langchain_agent.py            # a fresh store in a temp dir
    python examples/langchain_agent.py --data DIR # keep the store

One agent serves every user: the retriever takes the user and session from the run's
``config["configurable"]``. `PertinentChatMessageHistory` keeps each conversation in the
store, so it survives restarts and moves the session embedding that ranks the next
answer; the retriever records each search as a ``query`` event of the user.

With OPENAI_API_KEY set, OpenAI answers (model: $PERTINENT_EXAMPLE_MODEL, default
gpt-4o-mini). Without it a stub model stands in: it calls the search tool with the
user's question, then quotes the top passage. Nothing else leaves the machine.
"""

from __future__ import annotations

import argparse
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
from langchain.agents import create_agent
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import create_retriever_tool
from langchain_openai import ChatOpenAI

import pertinent
from pertinent.integrations.langchain import (
    PertinentChatMessageHistory,
    PertinentRetriever,
    ingest_documents,
    score_breakdown,
)

TEAM_DOCS = [
    Document(
        id="keys",
        page_content="Rotate API keys every 90 days from the admin console. Old keys stop "
        "working one hour after rotation.",
        metadata={"title": "API keys", "source": "handbook/keys.md"},
    ),
    Document(
        id="borrow",
        page_content="The Rust borrow checker rejects two mutable references to the same "
        "value; use RefCell for interior mutability.",
        metadata={"title": "Rust ownership", "source": "handbook/rust.md"},
    ),
    Document(
        id="asyncio",
        page_content="In Python, asyncio.TaskGroup runs coroutines concurrently and raises "
        "an ExceptionGroup when some of them fail.",
        metadata={"title": "Python asyncio", "source": "handbook/python.md"},
    ),
]
BOB_NOTES = [
    Document(
        id="bob/staging",
        page_content="My staging API keys are in the legacy keystore; I rotate them by hand "
        "after each release.",
        metadata={"title": "bob: staging keys"},
    ),
]


# --------------------------------------------------------------------------- the LLM


def _text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return " ".join(str(content).split())


def _stub(request: httpx.Request) -> httpx.Response:
    """An OpenAI-compatible chat endpoint that needs no key: it calls the first tool
    offered with the user's words, then quotes the top passage the tool returned."""
    body = json.loads(request.content)
    last = body["messages"][-1]
    message: dict[str, Any]
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
        message = {"role": "assistant", "content": f"(stub) The top passage: {_text(last)[:160]}"}
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    choice = {"index": 0, "message": message, "finish_reason": finish}
    return httpx.Response(
        200,
        json={"id": "stub", "object": "chat.completion", "created": 0, "model": body["model"],
              "choices": [choice]},
    )  # fmt: skip


def make_llm() -> ChatOpenAI:
    if os.environ.get("OPENAI_API_KEY"):
        model = os.environ.get("PERTINENT_EXAMPLE_MODEL", "gpt-4o-mini")
        print(f"LLM: OpenAI {model}")
        return ChatOpenAI(model=model)
    print("LLM: stub model (OPENAI_API_KEY is not set); it quotes the top passage it was given")
    return ChatOpenAI(
        model="gpt-4o-mini",
        api_key="stub",
        base_url="http://stub.invalid/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(_stub)),
        http_async_client=httpx.AsyncClient(transport=httpx.MockTransport(_stub)),
    )


# --------------------------------------------------------------------------- the agent


def ask(agent: Any, px: pertinent.Pertinent, user_id: str, session_id: str, q: str) -> None:
    history = PertinentChatMessageHistory(px, user_id, session_id)
    config = {"configurable": {"user_id": user_id, "session_id": session_id}}
    out = agent.invoke({"messages": [*history.messages, HumanMessage(q)]}, config=config)
    history.add_messages([HumanMessage(q), out["messages"][-1]])
    print(f"\n[{user_id}/{session_id}] {q}")
    for m in out["messages"]:
        if isinstance(m, ToolMessage) and m.artifact:
            for d in m.artifact:
                b = score_breakdown(d)
                session = f"session={b.session:.2f}x{b.session_gate:.2f}"
                user = f"user={b.user:.2f}x{b.user_gate:.2f}"
                print(f"    {d.metadata['score']:.3f} {d.id:<14} {session} {user}")
    print(f"  answer: {out['messages'][-1].content}")


def main(data: Path) -> None:
    px = pertinent.open(data)
    ingest_documents(px, TEAM_DOCS, show_progress=False)
    ingest_documents(px, BOB_NOTES, owner="bob", show_progress=False)
    print(f"store: {data} ({px.store.count_chunks()} chunks)")

    tool = create_retriever_tool(
        PertinentRetriever(client=px, top_k=3),
        "search_docs",
        "Search the team handbook and the user's own notes.",
        response_format="content_and_artifact",
    )
    agent = create_agent(
        make_llm(), [tool], system_prompt="Answer briefly from the search results."
    )

    ask(agent, px, "bob", "s1", "How do I rotate my API keys?")
    ask(agent, px, "alice", "s1", "How do I rotate my API keys?")
    ask(agent, px, "carol", "s1", "I keep fighting the borrow checker in Rust.")
    ask(agent, px, "carol", "s1", "What should I use instead?")

    history = PertinentChatMessageHistory(px, "carol", "s1")
    print(f"\ncarol's conversation, as stored ({len(history.messages)} messages):")
    for m in history.messages:
        print(f"  {m.type}: {str(m.content)[:70]}")
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
