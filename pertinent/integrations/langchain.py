"""LangChain components backed by `pertinent.Pertinent`.

    px = pertinent.open("./pertinent-data")
    ingest_documents(px, loader.load())
    retriever = PertinentRetriever(client=px)
    tool = create_retriever_tool(retriever, "search_docs", "Search the team's docs.")
    agent = create_agent(ChatOpenAI(model="gpt-4o-mini"), [tool])
    agent.invoke({"messages": [...]},
                 config={"configurable": {"user_id": "alice", "session_id": "s1"}})

- `PertinentRetriever`: personalized hybrid search as a `BaseRetriever` (LCEL chains,
  `create_retriever_tool`, agents).
- `PertinentCompressor`: re-scores documents from *any* retriever (e.g. inside
  `ContextualCompressionRetriever`) and optionally keeps what fits a token budget.
- `PertinentChatMessageHistory`: a conversation stored per user and session in the
  pertinent store; every message added moves the session embedding.
- `ingest_documents` / `aingest_documents`: store LangChain `Document`s.

Who the user is: a component's own ``user_id`` / ``session_id``, else the run's
``config["configurable"]["user_id"]`` / ``["session_id"]`` (so one retriever serves
every user of an agent); the two must agree when both are set. A retriever call may
also pass them as keyword arguments (``retriever.invoke(q, user_id="bob")``), which win.

Each returned document carries its `ScoreBreakdown` as a dict under
``metadata["score_breakdown"]``; `score_breakdown(doc)` turns it back into the frozen
dataclass. Everything here translates types and calls the core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from pertinent.client import IngestReport, Pertinent
from pertinent.errors import ConfigurationError, InvalidInput, MissingDependency
from pertinent.memory.longterm import LongTermMemory, MemoryTurn
from pertinent.types import Budget, Chunk, Result, ScoreBreakdown

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManagerForRetrieverRun,
        Callbacks,
    )
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        ChatMessage,
        HumanMessage,
        SystemMessage,
    )
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import RunnableConfig, ensure_config
    from pydantic import ConfigDict, Field
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency("langchain-core", "langchain") from exc

__all__ = [
    "PertinentChatMessageHistory",
    "PertinentCompressor",
    "PertinentRetriever",
    "aingest_documents",
    "ingest_documents",
    "score_breakdown",
    "to_ingest_items",
]

BREAKDOWN_KEY = "score_breakdown"
_CALL_ARGS = frozenset({"user_id", "session_id", "run_id", "verbose"})
_ROLE_OF_TYPE = {"human": "user", "ai": "assistant", "system": "system"}


# --------------------------------------------------------------------------- shared


def score_breakdown(document: Document) -> ScoreBreakdown:
    """The `ScoreBreakdown` a pertinent component stored on `document`.

    Raises `InvalidInput` for a document that did not pass through pertinent.
    """
    data = document.metadata.get(BREAKDOWN_KEY)
    if not isinstance(data, dict):
        raise InvalidInput(
            f"This document has no {BREAKDOWN_KEY!r} metadata: only documents returned by "
            "PertinentRetriever or PertinentCompressor carry one."
        )
    return ScoreBreakdown(**{**data, "found_by": tuple(data["found_by"])})


def _resolve(
    own: str | None, key: str, config: RunnableConfig | None = None, override: str | None = None
) -> str | None:
    """Which user (or session) a call is for: an explicit argument, else the component's
    own value, else ``configurable[key]`` of the run (`ensure_config` merges the config
    LangChain passes down to tools and chain steps through a context variable). A
    component bound to one user refuses a run configured for another: serving the wrong
    user's private documents is the failure this guards against."""
    if override is not None:
        return override
    value = ensure_config(config).get("configurable", {}).get(key)
    configured = value if isinstance(value, str) else None
    if own is not None and configured is not None and own != configured:
        raise InvalidInput(
            f"This component is bound to {key}={own!r} but the run is configured with "
            f"{key}={configured!r}. Leave {key} unset on the component to follow the run's "
            "config, or pass it explicitly per call."
        )
    return own if own is not None else configured


def _fit(results: list[Result], budget: Budget | None, client: Pertinent) -> list[Result]:
    return results if budget is None else client.fit(results, budget)


def _to_document(result: Result) -> Document:
    chunk = result.chunk
    metadata: dict[str, Any] = dict(chunk.metadata)
    if chunk.title:
        metadata["title"] = chunk.title
    if chunk.source:
        metadata["source"] = chunk.source
    metadata.update(
        chunk_id=chunk.id,
        doc_id=chunk.doc_id,
        position=chunk.position,
        rank=result.rank,
        score=result.score,
        score_breakdown=result.explain.as_dict(),
    )
    return Document(id=chunk.id, page_content=chunk.text, metadata=metadata)


def _check_client(client: object, what: str) -> None:
    if not isinstance(client, Pertinent):
        raise InvalidInput(
            f"{what} needs a pertinent.Pertinent client (pertinent.open(...)), "
            f"got {type(client).__name__}."
        )


# --------------------------------------------------------------------------- retriever


class PertinentRetriever(BaseRetriever):
    """Personalized hybrid search over a pertinent store, as a LangChain retriever.

    With `remember` (default) each query is recorded as a ``query`` event of the user,
    so their profile learns what they look for; session turns are left to
    `PertinentChatMessageHistory`, which sees the real conversation (a tool's query is
    not something the user said). `budget` keeps only the passages that fit it whole,
    counted with the budget model's tokenizer.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: Pertinent = Field(exclude=True)
    user_id: str | None = None
    session_id: str | None = None
    principals: tuple[str, ...] = ()
    top_k: int | None = None
    budget: Budget | None = None
    remember: bool = True

    def __init__(self, *, client: Pertinent, **data: Any) -> None:
        _check_client(client, "PertinentRetriever")
        super().__init__(client=client, **data)

    def _identity(self, config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(kwargs) - _CALL_ARGS)
        if unknown:
            raise InvalidInput(
                f"PertinentRetriever got unknown argument(s) {', '.join(unknown)}; per call it "
                "takes user_id and session_id (plus LangChain's own run_id and verbose)."
            )
        return {
            **kwargs,
            "user_id": _resolve(self.user_id, "user_id", config, kwargs.get("user_id")),
            "session_id": _resolve(self.session_id, "session_id", config, kwargs.get("session_id")),
        }

    def invoke(
        self, input: str, config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[Document]:
        """`BaseRetriever.invoke`, with the user and session resolved from the arguments,
        the retriever and the run's config (LangChain does not hand the config to
        `_get_relevant_documents`)."""
        return super().invoke(input, config, **self._identity(config, kwargs))

    async def ainvoke(
        self, input: str, config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[Document]:
        return await super().ainvoke(input, config, **self._identity(config, kwargs))

    def _search(self, query: str, user_id: str | None, session_id: str | None) -> list[Document]:
        results = self.client.search(
            query,
            user_id=user_id,
            session_id=session_id,
            principals=self.principals,
            top_k=self.top_k,
            remember=self.remember,
        )
        return [_to_document(r) for r in _fit(results, self.budget, self.client)]

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        user_id: str | None = None,
        session_id: str | None = None,
        **langchain_kwargs: Any,  # e.g. verbose, which BaseRetriever passes on
    ) -> list[Document]:
        return self._search(query, user_id, session_id)

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        user_id: str | None = None,
        session_id: str | None = None,
        **langchain_kwargs: Any,  # e.g. verbose, which BaseRetriever passes on
    ) -> list[Document]:
        # The embedder and the store are blocking: search off the event loop.
        return await asyncio.to_thread(self._search, query, user_id, session_id)


# --------------------------------------------------------------------------- compressor


class PertinentCompressor(BaseDocumentCompressor):
    """Re-scores documents from any retriever for this user and session
    (`Pertinent.personalize`), e.g. as the compressor of a `ContextualCompressionRetriever`.

    The relevance term is ``metadata["score"]`` when every document has one, else the
    query's cosine with each text (LangChain retrievers return no scores); the user's
    and the session's embeddings add their affinity; MMR orders the result. Texts are
    embedded with pertinent's own model. `top_n` keeps the best n; `budget` keeps what
    fits it whole. Returns copies with the breakdown in their metadata.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: Pertinent = Field(exclude=True)
    user_id: str | None = None
    session_id: str | None = None
    top_n: int | None = None
    budget: Budget | None = None

    def __init__(self, *, client: Pertinent, **data: Any) -> None:
        _check_client(client, "PertinentCompressor")
        super().__init__(client=client, **data)

    def _compress(
        self,
        documents: Sequence[Document],
        query: str,
        user_id: str | None,
        session_id: str | None,
    ) -> list[Document]:
        if not documents:
            return []
        items = [
            Chunk(id=str(i), doc_id=d.id or str(i), text=d.page_content, position=i)
            for i, d in enumerate(documents)
        ]
        given = [d.metadata.get("score") for d in documents]
        scores = [
            float(s) for s in given if isinstance(s, (int, float)) and not isinstance(s, bool)
        ]
        results = self.client.personalize(
            query,
            items,
            scores=scores if len(scores) == len(documents) else None,
            user_id=user_id,
            session_id=session_id,
            top_k=self.top_n or len(documents),
        )
        out: list[Document] = []
        for r in _fit(results, self.budget, self.client):
            doc = documents[int(r.id)]
            metadata = {**doc.metadata, "score": r.score, BREAKDOWN_KEY: r.explain.as_dict()}
            out.append(Document(id=doc.id, page_content=doc.page_content, metadata=metadata))
        return out

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        return self._compress(
            documents,
            query,
            _resolve(self.user_id, "user_id"),
            _resolve(self.session_id, "session_id"),
        )

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        uid = _resolve(self.user_id, "user_id")
        sid = _resolve(self.session_id, "session_id")
        return await asyncio.to_thread(self._compress, documents, query, uid, sid)


# --------------------------------------------------------------------------- history


class PertinentChatMessageHistory(BaseChatMessageHistory):
    """One user's conversation in one session, kept in the pertinent store.

    Human, AI and system messages with text become session turns (user, assistant,
    system), so every message added moves the session embedding that ranks the next
    answer, and the history survives restarts. Tool calls and tool outputs are not
    stored: they are traffic, not conversation, and an AI message that only calls
    tools has no text to keep. Reading gives `HumanMessage`, `AIMessage` and
    `SystemMessage` back (turns with other roles come back as `ChatMessage`).

    LangChain deprecated `BaseChatMessageHistory` in langchain-core 1.6.4 in favour of
    LangGraph checkpointers; it still drives `RunnableWithMessageHistory` and
    hand-written loops, which is what this serves.
    """

    def __init__(
        self,
        client: Pertinent,
        user_id: str,
        session_id: str,
        *,
        memory: LongTermMemory | None = None,
    ) -> None:
        """`memory` (a `pertinent.LongTermMemory`) also remembers every turn long-term."""
        _check_client(client, "PertinentChatMessageHistory")
        for value, what in ((user_id, "user_id"), (session_id, "session_id")):
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"{what} must be a non-empty string, got {value!r}.")
        self.client = client
        self.user_id = user_id
        self.session_id = session_id
        self.memory = memory

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        out: list[BaseMessage] = []
        for turn in self.client.history(self.user_id, self.session_id):
            if turn.role == "user":
                out.append(HumanMessage(content=turn.text))
            elif turn.role == "assistant":
                out.append(AIMessage(content=turn.text))
            elif turn.role == "system":
                out.append(SystemMessage(content=turn.text))
            else:
                out.append(ChatMessage(role=turn.role, content=turn.text))
        return out

    async def aget_messages(self) -> list[BaseMessage]:
        return await asyncio.to_thread(lambda: self.messages)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        turns: list[tuple[str, str]] = []
        for m in messages:
            if not isinstance(m, BaseMessage):
                raise InvalidInput(
                    f"add_messages takes LangChain messages, got {type(m).__name__}."
                )
            role = _ROLE_OF_TYPE.get(m.type)
            text = m.text.strip()
            if role is not None and text:
                turns.append((role, text))
        if not turns:
            return
        vectors = self.client.embedder.embed_documents([text for _, text in turns])
        for (role, text), vector in zip(turns, vectors, strict=True):
            self.client.add_turn(self.user_id, self.session_id, role, text, vector=vector)
        if self.memory is not None and self.client.consent(self.user_id).memory:
            self.memory.add_conversation(
                self.user_id,
                [MemoryTurn(text=text, role=role) for role, text in turns],
                session_id=self.session_id,
            )

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        await asyncio.to_thread(self.add_messages, messages)

    def clear(self) -> None:
        raise ConfigurationError(
            "pertinent cannot yet delete a single session's turns. Start a new session_id "
            "for a fresh conversation, or call client.forget_user(user_id) to delete all "
            "of the user's records."
        )


# --------------------------------------------------------------------------- ingest


def to_ingest_items(documents: Iterable[Document]) -> list[dict[str, Any]]:
    """LangChain `Document`s as items `Pertinent.ingest` takes.

    The id is ``Document.id`` when set, else derived from the text (so ingesting the
    same text twice stores it once); ``title`` and ``source`` are read from the
    metadata keys of those names (the ones LangChain loaders set); the rest of the
    metadata is kept.
    """
    items: list[dict[str, Any]] = []
    for d in documents:
        if not isinstance(d, Document):
            raise InvalidInput(
                f"ingest_documents takes LangChain Documents, got {type(d).__name__}."
            )
        item: dict[str, Any] = {"text": d.page_content, "metadata": dict(d.metadata)}
        if d.id:
            item["id"] = d.id
        for key in ("title", "source"):
            value = d.metadata.get(key)
            if isinstance(value, str) and value:
                item[key] = value
        items.append(item)
    return items


def ingest_documents(
    client: Pertinent,
    documents: Iterable[Document],
    *,
    acl: Sequence[str] = (),
    owner: str | None = None,
    show_progress: bool | None = None,
) -> IngestReport:
    """Chunk, embed and store LangChain documents (see `to_ingest_items` for the mapping).

    ``owner`` makes them one user's private documents; ``acl`` restricts who may read them.
    """
    return client.ingest(
        to_ingest_items(documents), acl=acl, owner=owner, show_progress=show_progress
    )


async def aingest_documents(
    client: Pertinent,
    documents: Iterable[Document],
    *,
    acl: Sequence[str] = (),
    owner: str | None = None,
    show_progress: bool | None = None,
) -> IngestReport:
    """`ingest_documents` off the event loop."""
    return await client.aingest(
        to_ingest_items(documents), acl=acl, owner=owner, show_progress=show_progress
    )
