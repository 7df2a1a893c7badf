"""`pertinent mcp`: the Model Context Protocol server for IDE assistants and agents.

One server process acts for one user, fixed by configuration (``--user`` or
``PERTINENT_MCP_USER``). No tool takes a user id: a model that could pass one could be
talked into reading or forgetting somebody else. Tools:

- ``retrieve_context(query, max_tokens?)``: the packed, cited context for the user;
- ``remember(text)``: a note in the user's long-term memory;
- ``record_event(kind, item_id?, text?)``: feedback (opened, accepted, rejected ...);
- ``forget_me(confirm)``: delete everything the user owns.

Errors the core raises on purpose come back as tool errors with their message (so the
model can correct its call); anything else stays in the server's log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pertinent.client import Pertinent
from pertinent.errors import InvalidInput, MissingDependency, PertinentError
from pertinent.memory.longterm import LongTermMemory
from pertinent.types import Budget, Event

__all__ = ["build_mcp_server", "run_mcp"]

_INSTRUCTIONS = (
    "pertinent knows the documents of this workspace and what this user has done. Call "
    "retrieve_context before answering a question about them; record_event when the user "
    "opens, accepts or rejects a passage; remember for facts the user wants kept."
)


def build_mcp_server(
    px: Pertinent,
    *,
    user_id: str,
    principals: Sequence[str] = (),
    session_id: str | None = None,
    model: str = "gpt-4o",
    max_tokens: int = 1500,
) -> Any:
    """The `mcp.server.mcpserver.MCPServer` with the four tools bound to `user_id`."""
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
        from mcp_types import ToolAnnotations
    except ImportError as exc:
        raise MissingDependency("mcp", "server") from exc
    if not isinstance(user_id, str) or not user_id.strip():
        raise InvalidInput("The MCP server needs a user id (--user or PERTINENT_MCP_USER).")
    Budget(model=model, max_tokens=max_tokens)  # fail at start, not at the first call
    session = session_id or f"mcp-{uuid.uuid4().hex[:12]}"
    acl = tuple(principals)
    default_tokens = max_tokens
    ltm = LongTermMemory(px)
    server = MCPServer("pertinent", instructions=_INSTRUCTIONS)

    async def call(fn: Any) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except PertinentError as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from exc

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, open_world_hint=False))
    async def retrieve_context(query: str, max_tokens: int | None = None) -> str:
        """The context to answer `query` for this user: the most relevant passages of the
        workspace, personalised, cited as [n] and packed into `max_tokens` (default set by
        the server). The query is remembered to personalise later calls."""
        budget = Budget(model=model, max_tokens=max_tokens or default_tokens)
        packed = await call(
            lambda: px.retrieve(
                query, user_id=user_id, session_id=session, budget=budget, principals=acl
            )
        )
        if not packed.results:
            return "No passage in the workspace matches this query."
        ids = ", ".join(f"[{c.marker}] {c.chunk_id}" for c in packed.citations)
        return f"{packed.text}\n\n(result ids for record_event: {ids})"

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, idempotent_hint=True))
    async def remember(text: str) -> str:
        """Keep a fact or note about the user in their long-term memory (e.g. "I prefer
        pytest over unittest"); later retrievals can use it."""
        report = await call(lambda: ltm.add_turn(user_id, text, role="user", session_id=session))
        return f"Remembered ({report.chunks} item{'s' if report.chunks != 1 else ''})."

    @server.tool(annotations=ToolAnnotations(read_only_hint=False))
    async def record_event(
        kind: Literal["open", "click", "accept", "like", "reject", "dislike", "skip", "query"],
        item_id: str | None = None,
        text: str | None = None,
    ) -> str:
        """Record what the user did with a passage (`item_id`, a result id from
        retrieve_context) or a topic (`text`): open/click/accept/like bring similar
        passages up for this user, reject/dislike/skip push them down."""
        event = Event(kind=kind, item_id=item_id, text=text, session_id=session)
        await call(lambda: px.record(user_id, event))
        return f"Recorded {kind}."

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    async def forget_me(confirm: bool) -> str:
        """Delete everything stored about this user (events, sessions, memories, owned
        documents). Irreversible: call with confirm=true only when the user asked."""
        if not confirm:
            raise ToolError("Nothing deleted: call forget_me with confirm=true to delete.")

        def forget() -> Any:
            receipt = px.forget_user(user_id)
            ltm.forget(user_id)
            return receipt

        receipt = await call(forget)
        counts = ", ".join(f"{k}: {v}" for k, v in receipt.deleted.items())
        return f"Forgot the user at {receipt.at.isoformat()} ({counts})."

    return server


def run_mcp(
    px: Pertinent,
    *,
    user_id: str,
    principals: Sequence[str] = (),
    session_id: str | None = None,
    transport: Literal["stdio", "streamable-http"] = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    model: str = "gpt-4o",
    max_tokens: int = 1500,
) -> None:
    """Serve until the client goes away (stdio) or the process is stopped (HTTP).
    Over HTTP anyone who reaches the port acts as the user: bind to loopback."""
    server = build_mcp_server(
        px,
        user_id=user_id,
        principals=principals,
        session_id=session_id,
        model=model,
        max_tokens=max_tokens,
    )
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=port)
