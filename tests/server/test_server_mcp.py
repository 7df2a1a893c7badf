"""`pertinent mcp` over stdio, driven by the official SDK's client: the server is a real
subprocess on a real store, as an IDE would start it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import pertinent
from pertinent.memory.longterm import LongTermMemory

mcp = pytest.importorskip("mcp")

from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402

CORPUS = [
    {"id": "keys", "text": "Rotate API keys every 90 days from the admin console."},
    {"id": "rust", "text": "The Rust borrow checker rejects two mutable references."},
]


def _text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def _session(data: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LANCEDB_LOG": "error",
        "PERTINENT_MCP_USER": "alice",
    }
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pertinent.cli", "mcp", "--data", str(data), "--session", "ide-1"],
        env=env,
    )
    out: dict[str, Any] = {}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = (await session.list_tools()).tools
        out["tools"] = {t.name: t for t in tools}
        out["retrieve"] = await session.call_tool(
            "retrieve_context", {"query": "how often should I rotate API keys?"}
        )
        out["remember"] = await session.call_tool(
            "remember", {"text": "I prefer pytest over unittest."}
        )
        out["event"] = await session.call_tool(
            "record_event", {"kind": "open", "item_id": "rust#0"}
        )
        out["bad_event"] = await session.call_tool(
            "record_event", {"kind": "open", "item_id": "nope#0"}
        )
        out["forget_unconfirmed"] = await session.call_tool("forget_me", {"confirm": False})
    return out


def test_mcp_server_over_stdio_acts_for_the_configured_user(
    tmp_path: Path, embedder: pertinent.Embedder
) -> None:
    data = tmp_path / "store"
    with pertinent.open(data, embedder=embedder) as px:
        px.ingest(CORPUS, show_progress=False)

    out = asyncio.run(asyncio.wait_for(_session(data), 240))

    tools = out["tools"]
    assert set(tools) == {"retrieve_context", "remember", "record_event", "forget_me"}
    for tool in tools.values():  # the user is configuration, never an argument
        assert not {"user", "user_id"} & set(tool.input_schema.get("properties", {}))
    assert tools["forget_me"].annotations.destructive_hint is True

    assert out["retrieve"].is_error is False
    assert "Rotate API keys every 90 days" in _text(out["retrieve"])
    assert "keys#0" in _text(out["retrieve"])
    assert out["remember"].is_error is False and "Remembered" in _text(out["remember"])
    assert out["event"].is_error is False
    assert out["bad_event"].is_error is True and "UnknownItem" in _text(out["bad_event"])
    assert out["forget_unconfirmed"].is_error is True

    with pertinent.open(data, embedder=embedder) as px:
        kinds = sorted(e.kind for e in px.store.read_events("alice"))
        assert kinds == ["open", "query"]
        assert [t.text for t in px.history("alice", "ide-1")] == [
            "how often should I rotate API keys?"
        ]
        found = LongTermMemory(px).search("which test framework?", user_id="alice")
        assert any("pytest" in r.text for r in found)
        assert px.store.read_events("bob") == []
