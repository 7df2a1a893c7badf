"""LlamaIndex components backed by `pertinent.Pertinent`.

    px = pertinent.open("./pertinent-data")
    ingest_nodes(px, SimpleDirectoryReader("docs").load_data())
    retriever = PertinentRetriever(px, user_id="alice", session_id="s1")
    agent = FunctionAgent(tools=[RetrieverTool.from_defaults(retriever)], llm=llm)
    memory = Memory.from_defaults(session_id="s1",
                                  memory_blocks=[PertinentMemoryBlock(client=px, user_id="alice")])

- `PertinentRetriever`: personalized hybrid search as a `BaseRetriever` (query engines,
  `RetrieverTool`, `QueryEngineTool`).
- `PertinentReranker`: re-scores nodes from *any* retriever (e.g. an existing
  `VectorStoreIndex`) with the user's and the session's embeddings.
- `PertinentMemoryBlock`: a `Memory` block that feeds the conversation to pertinent and
  returns the user's own notes relevant to it.
- `ingest_nodes` / `aingest_nodes`: store LlamaIndex `Document`s and `TextNode`s.

Each node carries its `ScoreBreakdown` as a dict under ``metadata["score_breakdown"]``
(hidden from the LLM and the embedder); `score_breakdown(node)` turns it back into the
frozen dataclass. Everything here translates types and calls the core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from pertinent.client import IngestReport, Pertinent
from pertinent.errors import InvalidInput, MissingDependency
from pertinent.memory.longterm import LongTermMemory, MemoryTurn
from pertinent.prompts.packing import pack
from pertinent.prompts.tokenizers import tokenizer_for
from pertinent.types import Budget, Chunk, Event, Result, ScoreBreakdown

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.base.llms.types import ChatMessage, MessageRole
    from llama_index.core.bridge.pydantic import Field
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.memory.memory import BaseMemoryBlock
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import (
        BaseNode,
        MetadataMode,
        NodeRelationship,
        NodeWithScore,
        QueryBundle,
        RelatedNodeInfo,
        TextNode,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency("llama-index-core", "llama-index") from exc

__all__ = [
    "PertinentMemoryBlock",
    "PertinentReranker",
    "PertinentRetriever",
    "aingest_nodes",
    "ingest_nodes",
    "score_breakdown",
    "to_ingest_items",
]

BREAKDOWN_KEY = "score_breakdown"
# Bookkeeping keys added to node metadata: useful to code, noise to the LLM and the embedder.
_HIDDEN_KEYS = ("chunk_id", "doc_id", "position", "rank", BREAKDOWN_KEY)
_CONVERSATION_ROLES = {
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}


# --------------------------------------------------------------------------- shared


def score_breakdown(node: BaseNode | NodeWithScore) -> ScoreBreakdown:
    """The `ScoreBreakdown` a pertinent component stored on `node`.

    Raises `InvalidInput` for a node that did not pass through pertinent.
    """
    inner = node.node if isinstance(node, NodeWithScore) else node
    data = inner.metadata.get(BREAKDOWN_KEY)
    if not isinstance(data, dict):
        raise InvalidInput(
            f"Node {inner.node_id!r} has no {BREAKDOWN_KEY!r} metadata: only nodes returned by "
            "PertinentRetriever or PertinentReranker carry one."
        )
    return ScoreBreakdown(**{**data, "found_by": tuple(data["found_by"])})


def _check_client(client: object, what: str) -> None:
    if not isinstance(client, Pertinent):
        raise InvalidInput(
            f"{what} needs a pertinent.Pertinent client (pertinent.open(...)), "
            f"got {type(client).__name__}."
        )


def _fit(results: list[Result], budget: Budget | None, client: Pertinent) -> list[Result]:
    return results if budget is None else client.fit(results, budget)


def _hide(node: BaseNode, keys: Iterable[str]) -> None:
    for key in keys:
        if key not in node.excluded_llm_metadata_keys:
            node.excluded_llm_metadata_keys.append(key)
        if key not in node.excluded_embed_metadata_keys:
            node.excluded_embed_metadata_keys.append(key)


def _to_node(result: Result) -> NodeWithScore:
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
        score_breakdown=result.explain.as_dict(),
    )
    node = TextNode(
        id_=chunk.id,
        text=chunk.text,
        metadata=metadata,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=chunk.doc_id)},
    )
    _hide(node, _HIDDEN_KEYS)
    return NodeWithScore(node=node, score=result.score)


# --------------------------------------------------------------------------- retriever


class PertinentRetriever(BaseRetriever):
    """Personalized hybrid search over a pertinent store, for any LlamaIndex consumer.

    The user and session are fixed at construction; `for_user` gives a copy for another
    user or session (a cheap object sharing the same client), which is how one
    retriever serves many users. With `remember` (default) each query is recorded as a
    ``query`` event of the user, so their profile learns what they look for; session
    turns are left to `PertinentMemoryBlock`, which sees the real conversation (a tool's
    query is not something the user said). `budget` keeps only the passages that fit it
    whole, counted with the budget model's tokenizer.
    """

    def __init__(
        self,
        client: Pertinent,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        principals: Sequence[str] = (),
        top_k: int | None = None,
        budget: Budget | None = None,
        remember: bool = True,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        _check_client(client, "PertinentRetriever")
        self.client = client
        self.user_id = user_id
        self.session_id = session_id
        self.principals = tuple(principals)
        self.top_k = top_k
        self.budget = budget
        self.remember = remember
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def for_user(self, user_id: str | None, session_id: str | None = None) -> PertinentRetriever:
        """The same retriever for another user (and session): per-request use in a server."""
        return PertinentRetriever(
            self.client,
            user_id=user_id,
            session_id=session_id,
            principals=self.principals,
            top_k=self.top_k,
            budget=self.budget,
            remember=self.remember,
            callback_manager=self.callback_manager,
            verbose=self._verbose,
        )

    def _search(self, query: str) -> list[NodeWithScore]:
        results = self.client.search(
            query,
            user_id=self.user_id,
            session_id=self.session_id,
            principals=self.principals,
            top_k=self.top_k,
            remember=self.remember,
        )
        return [_to_node(r) for r in _fit(results, self.budget, self.client)]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._search(query_bundle.query_str)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # The embedder and the store are blocking: run them off the event loop.
        return await asyncio.to_thread(self._search, query_bundle.query_str)


# --------------------------------------------------------------------------- reranker


class PertinentReranker(BaseNodePostprocessor):
    """Re-scores nodes from any retriever for this user and session (`Pertinent.personalize`).

    The source's scores become the relevance term (the query's cosine with each text
    when a node has no score); the user's and the session's embeddings add their
    affinity; MMR orders the result. Node texts are embedded with pertinent's own model
    (a foreign index's vectors live in another space). Returns
    copies of the nodes, with the new score and the breakdown in their metadata.
    """

    client: Pertinent = Field(exclude=True)
    user_id: str | None = None
    session_id: str | None = None
    top_n: int | None = Field(default=None, description="keep this many (default: all)")
    budget: Budget | None = Field(default=None, description="keep what fits whole")

    def __init__(self, *, client: Pertinent, **data: Any) -> None:
        _check_client(client, "PertinentReranker")
        super().__init__(client=client, **data)

    @classmethod
    def class_name(cls) -> str:
        return "PertinentReranker"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise InvalidInput(
                "PertinentReranker needs the query: call postprocess_nodes(nodes, query_str=...) "
                "or use it inside a query engine, which passes the query bundle."
            )
        if not nodes:
            return []
        items = [
            Chunk(
                id=str(i),
                doc_id=n.node.ref_doc_id or n.node.node_id,
                text=n.node.get_content(metadata_mode=MetadataMode.NONE),
                position=i,
            )
            for i, n in enumerate(nodes)
        ]
        scores = [float(n.score) for n in nodes if n.score is not None]
        results = self.client.personalize(
            query_bundle.query_str,
            items,
            scores=scores if len(scores) == len(nodes) else None,
            user_id=self.user_id,
            session_id=self.session_id,
            top_k=self.top_n or len(nodes),
        )
        out: list[NodeWithScore] = []
        for r in _fit(results, self.budget, self.client):
            node = nodes[int(r.id)].node.model_copy()
            node.metadata = {**node.metadata, BREAKDOWN_KEY: r.explain.as_dict()}
            node.excluded_llm_metadata_keys = list(node.excluded_llm_metadata_keys)
            node.excluded_embed_metadata_keys = list(node.excluded_embed_metadata_keys)
            _hide(node, (BREAKDOWN_KEY,))
            out.append(NodeWithScore(node=node, score=r.score))
        return out


# --------------------------------------------------------------------------- memory


def _text(message: ChatMessage) -> str:
    return (message.content or "").strip()


class PertinentMemoryBlock(BaseMemoryBlock[str]):
    """A `llama_index.core.memory.Memory` block backed by pertinent.

    `_aput` (called by `Memory` with the messages it flushes out of its short-term
    queue) records the user's and the assistant's messages as session turns, which
    moves the session embedding, and each user message as a ``query`` event, which
    moves the user's profile. Tool calls, tool outputs and system prompts are not
    conversation and are skipped.

    `_aget` returns the user's long-term memories relevant to the latest user message:
    the documents ingested with ``owner=user_id`` (pertinent has no separate memory
    store yet), ranked by the core for this user and session and packed into
    `max_tokens` counted with `model`'s tokenizer. `atruncate` drops the least relevant
    memories first when `Memory` runs out of room (only for ``priority`` > 0: priority
    0 blocks are never truncated by `Memory`).

    The session is `session_id` when set, else the `Memory`'s own session id.
    """

    name: str = Field(default="user_memory", description="The name of the memory block.")
    client: Pertinent = Field(exclude=True)
    user_id: str = Field(description="Whose memories to read and whose turns to record.")
    memory: LongTermMemory | None = Field(
        default=None,
        exclude=True,
        description="pertinent.LongTermMemory to read from and remember turns in.",
    )
    session_id: str | None = Field(default=None, description="Default: the Memory's session.")
    top_k: int = Field(default=5, gt=0, description="How many memories at most.")
    max_tokens: int = Field(default=400, gt=0, description="The block's share of the context.")
    model: str = Field(default="gpt-4o", description="Whose tokenizer counts max_tokens.")
    candidates: int = Field(
        default=50, gt=0, description="How many results to search for owned memories among."
    )
    priority: int = Field(default=1, description="0 = never truncate; higher = kept longer.")

    def __init__(self, *, client: Pertinent, **data: Any) -> None:
        _check_client(client, "PertinentMemoryBlock")
        super().__init__(client=client, **data)

    def _session(self, session_id: Any) -> str | None:
        if self.session_id is not None:
            return self.session_id
        return session_id if isinstance(session_id, str) and session_id else None

    def _memories(self, query: str, session_id: str | None) -> str:
        budget = Budget(model=self.model, max_tokens=self.max_tokens)
        if self.memory is not None:
            found = self.memory.search(
                query, user_id=self.user_id, session_id=session_id, top_k=self.top_k
            )
            return self.memory.pack_context(found, budget).text if found else ""
        results = self.client.search(
            query, user_id=self.user_id, session_id=session_id, top_k=self.candidates
        )
        owned = [r.text for r in results if r.chunk.owner == self.user_id][: self.top_k]
        if not owned:
            return ""
        packed = pack(
            [],
            Budget(model=self.model, max_tokens=self.max_tokens),
            memories=owned,
            memory_share=1.0,
        )
        return packed.text

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        query = next(
            (_text(m) for m in reversed(messages or []) if m.role == MessageRole.USER and _text(m)),
            "",
        )
        if not query:
            return ""
        session_id = self._session(block_kwargs.get("session_id"))
        return await asyncio.to_thread(self._memories, query, session_id)

    def _record(self, turns: list[tuple[str, str]], session_id: str | None) -> None:
        vectors = self.client.embedder.embed_documents([text for _, text in turns])
        by_text = dict(zip((text for _, text in turns), vectors, strict=True))
        if session_id is not None:
            for (role, text), vector in zip(turns, vectors, strict=True):
                self.client.add_turn(self.user_id, session_id, role, text, vector=vector)
        if self.memory is not None and self.client.consent(self.user_id).memory:
            self.memory.add_conversation(
                self.user_id,
                [MemoryTurn(text=text, role=role) for role, text in turns],
                session_id=session_id or "default",
            )
        queries = [text for role, text in turns if role == "user"]
        if queries:
            self.client.record(
                self.user_id,
                [Event(kind="query", text=q, session_id=session_id) for q in queries],
                text_vectors=by_text,
            )

    async def _aput(self, messages: list[ChatMessage]) -> None:
        turns = [
            (_CONVERSATION_ROLES[m.role], _text(m))
            for m in messages
            if m.role in _CONVERSATION_ROLES and _text(m)
        ]
        if not turns:
            return
        session_id = self._session(
            next((m.additional_kwargs.get("session_id") for m in messages), None)
        )
        await asyncio.to_thread(self._record, turns, session_id)

    async def atruncate(self, content: str, tokens_to_truncate: int) -> str | None:
        lines = content.split("\n")
        header, memories = lines[:1], lines[1:]
        tok = tokenizer_for(self.model)
        removed = 0
        while memories and removed < tokens_to_truncate:
            removed += tok.count("\n" + memories.pop())
        return "\n".join(header + memories) if memories else None


# --------------------------------------------------------------------------- ingest


def to_ingest_items(nodes: Iterable[BaseNode]) -> list[dict[str, Any]]:
    """LlamaIndex `Document`s / `TextNode`s as items `Pertinent.ingest` takes.

    The id is the node id (a `Document`'s ``doc_id``), so ingesting the same node again
    replaces it; the text is the node's own text, without metadata; ``title`` and
    ``source`` are read from the usual metadata keys (``title`` / ``file_name``;
    ``source`` / ``file_path`` / ``url``); the rest of the metadata is kept, and a
    node's parent document id is kept as ``ref_doc_id``.
    """
    items: list[dict[str, Any]] = []
    for n in nodes:
        if not isinstance(n, BaseNode):
            raise InvalidInput(
                f"ingest_nodes takes LlamaIndex nodes or Documents, got {type(n).__name__}."
            )
        metadata = dict(n.metadata)
        if n.ref_doc_id and n.ref_doc_id != n.node_id:
            metadata.setdefault("ref_doc_id", n.ref_doc_id)
        item: dict[str, Any] = {
            "id": n.node_id,
            "text": n.get_content(metadata_mode=MetadataMode.NONE),
            "metadata": metadata,
        }
        title = metadata.get("title") or metadata.get("file_name")
        source = metadata.get("source") or metadata.get("file_path") or metadata.get("url")
        if isinstance(title, str) and title:
            item["title"] = title
        if isinstance(source, str) and source:
            item["source"] = source
        items.append(item)
    return items


def ingest_nodes(
    client: Pertinent,
    nodes: Iterable[BaseNode],
    *,
    acl: Sequence[str] = (),
    owner: str | None = None,
    show_progress: bool | None = None,
) -> IngestReport:
    """Chunk, embed and store LlamaIndex nodes (see `to_ingest_items` for the mapping).

    ``owner`` makes them one user's private documents (and, for `PertinentMemoryBlock`,
    that user's memories); ``acl`` restricts who may read them.
    """
    return client.ingest(to_ingest_items(nodes), acl=acl, owner=owner, show_progress=show_progress)


async def aingest_nodes(
    client: Pertinent,
    nodes: Iterable[BaseNode],
    *,
    acl: Sequence[str] = (),
    owner: str | None = None,
    show_progress: bool | None = None,
) -> IngestReport:
    """`ingest_nodes` off the event loop."""
    return await client.aingest(
        to_ingest_items(nodes), acl=acl, owner=owner, show_progress=show_progress
    )
