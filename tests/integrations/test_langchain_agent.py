"""The LangChain components inside real LangChain machinery: a `create_agent` tool-calling
agent driving the real ChatOpenAI class against a scripted endpoint (respx), an LCEL
chain with `RunnableWithMessageHistory`, and `ContextualCompressionRetriever` over an
ordinary vector store."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any

import pytest
from conftest import CORPUS
from langchain.agents import create_agent
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import ConfigurableFieldSpec, Runnable, RunnablePassthrough
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_core.tools import create_retriever_tool
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_openai import ChatOpenAI
from openai_stub import BASE_URL, answer, scripted_openai, tool_call

import pertinent
from pertinent import Budget, Event
from pertinent.integrations.langchain import (
    PertinentChatMessageHistory,
    PertinentCompressor,
    PertinentRetriever,
    aingest_documents,
    ingest_documents,
    score_breakdown,
)
from pertinent.prompts.tokenizers import tokenizer_for

ALICE_NOTE = (
    "Alice keeps her team's API keys in the vault at secret/payments and rotates them every Friday."
)
BOB_NOTE = "Bob's staging API keys live in the legacy keystore; he rotates them by hand."
KEYS_DOC = "Rotate API keys every 90 days from the admin console"


@pytest.fixture(scope="module")
def template(
    tmp_path_factory: pytest.TempPathFactory, embedder: pertinent.CachedQueryEmbedder
) -> Path:
    """A store holding the shared corpus and one private note per user, written once per
    module; each test gets its own copy (an ingest costs a second, a copy milliseconds)."""
    path = tmp_path_factory.mktemp("template") / "store"
    notes = [
        {"id": "alice-note", "text": ALICE_NOTE, "owner": "alice"},
        {"id": "bob-note", "text": BOB_NOTE, "owner": "bob"},
    ]
    with pertinent.open(path, embedder=embedder) as px:
        px.ingest([*CORPUS, *notes], show_progress=False)
    return path


@pytest.fixture
def px(
    template: Path, tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> Iterator[pertinent.Pertinent]:
    shutil.copytree(template, tmp_path / "store")
    with pertinent.open(tmp_path / "store", embedder=embedder) as px:
        yield px


def _llm() -> ChatOpenAI:
    return ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", base_url=BASE_URL)


def _agent(px: pertinent.Pertinent) -> Any:
    tool = create_retriever_tool(
        PertinentRetriever(client=px),
        "search_docs",
        "Search the team's docs.",
        response_format="content_and_artifact",
    )
    return create_agent(_llm(), [tool], system_prompt="Answer from the docs.")


def _config(user_id: str, session_id: str) -> Any:
    return {"configurable": {"user_id": user_id, "session_id": session_id}}


def _query_events(px: pertinent.Pertinent, user_id: str) -> list[str]:
    return [e.text or "" for e in px.store.read_events(user_id) if e.kind == "query"]


# --------------------------------------------------------------------------- agent loops


def test_tool_calling_agent_sync(px: pertinent.Pertinent) -> None:
    agent = _agent(px)
    history = PertinentChatMessageHistory(px, "alice", "s1")
    script = [
        tool_call("search_docs", {"query": "how do I rotate API keys"}),
        answer("Rotate them from the admin console every 90 days."),
        tool_call("search_docs", {"query": "what are the rules"}, call_id="call_2"),
        answer("Every 90 days, and yours on Fridays."),
    ]
    q1, q2 = "How do I rotate our API keys?", "And what are the rules?"
    with scripted_openai(script) as llm:
        out = agent.invoke(
            {"messages": [*history.messages, HumanMessage(q1)]}, config=_config("alice", "s1")
        )
        history.add_messages([HumanMessage(q1), out["messages"][-1]])
        out2 = agent.invoke(
            {"messages": [*history.messages, HumanMessage(q2)]}, config=_config("alice", "s1")
        )
        history.add_messages([HumanMessage(q2), out2["messages"][-1]])

    # The tool call reached pertinent for alice (from the run's config), nobody else.
    assert _query_events(px, "alice") == ["how do I rotate API keys", "what are the rules"]
    assert px.store.read_events("bob") == []
    # What pertinent found is what the model read in the request after the tool call.
    tool_text = llm.text_of(1, "tool")
    assert KEYS_DOC in tool_text and ALICE_NOTE in tool_text and BOB_NOTE not in tool_text
    assert out["messages"][-1].content == "Rotate them from the admin console every 90 days."
    # The history holds the first exchange, replayed into the second run's first request,
    # and its turns shaped the second search (the session term is live).
    user_text = llm.text_of(2, "user")
    assert q1 in user_text and q2 in user_text
    assert "Rotate them from the admin console every 90 days." in llm.text_of(2, "assistant")
    artifact = next(m for m in out2["messages"] if isinstance(m, ToolMessage)).artifact
    assert all(score_breakdown(d).session_gate > 0 for d in artifact)
    assert [type(m) for m in history.messages] == [HumanMessage, AIMessage] * 2
    assert [m.content for m in history.messages] == [
        q1,
        "Rotate them from the admin console every 90 days.",
        q2,
        "Every 90 days, and yours on Fridays.",
    ]
    assert px.session("alice", "s1").turns == 4


def test_tool_calling_agent_async(px: pertinent.Pertinent) -> None:
    agent = _agent(px)
    script = [
        tool_call("search_docs", {"query": "where are the staging keys"}),
        answer("In the legacy keystore."),
    ]
    q = "Where are my staging keys?"

    async def run() -> Any:
        history = PertinentChatMessageHistory(px, "bob", "s9")
        before = await history.aget_messages()
        out = await agent.ainvoke(
            {"messages": [*before, HumanMessage(q)]}, config=_config("bob", "s9")
        )
        await history.aadd_messages([HumanMessage(q), out["messages"][-1]])
        return out

    with scripted_openai(script) as llm:
        out = asyncio.run(run())
    assert _query_events(px, "bob") == ["where are the staging keys"]
    assert px.store.read_events("alice") == []
    tool_text = llm.text_of(1, "tool")
    assert BOB_NOTE in tool_text and ALICE_NOTE not in tool_text
    assert out["messages"][-1].content == "In the legacy keystore."
    # A new history object (a restarted process) reads the same turns from the store.
    again = PertinentChatMessageHistory(px, "bob", "s9")
    assert [(m.type, m.content) for m in again.messages] == [
        ("human", q),
        ("ai", "In the legacy keystore."),
    ]


# LangChain deprecated RunnableWithMessageHistory (for LangGraph persistence) in
# langchain-core 1.x; it is still how an LCEL chain gets a BaseChatMessageHistory.
@pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")
def test_lcel_chain_with_message_history(px: pertinent.Pertinent) -> None:
    retriever = PertinentRetriever(client=px)
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer from these passages:\n{context}"),
            MessagesPlaceholder("history"),
            ("human", "{question}"),
        ]
    )

    def join(docs: list[Document]) -> str:
        return "\n\n".join(d.page_content for d in docs)

    chain = (
        {
            "context": itemgetter("question") | retriever | join,
            "question": itemgetter("question"),
            "history": itemgetter("history"),
        }
        | prompt
        | _llm()
        | StrOutputParser()
    )
    with_history = RunnableWithMessageHistory(
        chain,
        lambda user_id, session_id: PertinentChatMessageHistory(px, user_id, session_id),
        input_messages_key="question",
        history_messages_key="history",
        history_factory_config=[
            ConfigurableFieldSpec(id="user_id", annotation=str),
            ConfigurableFieldSpec(id="session_id", annotation=str),
        ],
    )
    script = [answer("Every 90 days."), answer("In the vault at secret/payments.")]
    with scripted_openai(script) as llm:
        first = with_history.invoke(
            {"question": "How often do keys rotate?"}, _config("alice", "c1")
        )
        second = with_history.invoke({"question": "Where are mine?"}, _config("alice", "c1"))
    assert (first, second) == ("Every 90 days.", "In the vault at secret/payments.")
    assert ALICE_NOTE in llm.text_of(0, "system") and BOB_NOTE not in llm.text_of(0, "system")
    assert "How often do keys rotate?" in llm.text_of(1, "user")
    assert "Every 90 days." in llm.text_of(1, "assistant")
    assert [m.content for m in PertinentChatMessageHistory(px, "alice", "c1").messages] == [
        "How often do keys rotate?",
        "Every 90 days.",
        "Where are mine?",
        "In the vault at secret/payments.",
    ]


# --------------------------------------------------------------------------- compressor


class _MiniLM(Embeddings):
    """The user's own LangChain embedding (the same MiniLM model through LangChain's
    interface), so the vector store below is an ordinary one."""

    def __init__(self, embedder: pertinent.Embedder) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in v] for v in self.embedder.embed_documents(texts)]

    def embed_query(self, text: str) -> list[float]:
        return [float(x) for x in self.embedder.embed_query(text)]


def test_compressor_personalizes_another_retriever(px: pertinent.Pertinent) -> None:
    store = InMemoryVectorStore(_MiniLM(px.embedder))
    store.add_documents([Document(id=d["id"], page_content=d["text"]) for d in CORPUS])
    q = "how do retrievers work"
    li = px.search("LlamaIndex query engines node postprocessors")[0]
    px.record("ola", [Event(kind="accept", item_id=li.id)] * 4)
    compressing = ContextualCompressionRetriever(
        base_compressor=PertinentCompressor(client=px, top_n=3),
        base_retriever=store.as_retriever(search_kwargs={"k": 6}),
    )
    # In a chain, LangChain hands the run's config down: the compressor sees the user.
    chain: Runnable[Any, list[Document]] = RunnablePassthrough() | compressing
    docs = chain.invoke(q, config=_config("ola", "c1"))
    assert len(docs) == 3 and docs[0].id == "li"
    b = score_breakdown(docs[0])
    assert b.user_gate > 0 and b.found_by == ("input",)
    assert docs[0].metadata["score"] == pytest.approx(b.final)
    adocs = asyncio.run(chain.ainvoke(q, config=_config("ola", "c1")))
    assert [d.id for d in adocs] == [d.id for d in docs]
    bound = ContextualCompressionRetriever(
        base_compressor=PertinentCompressor(client=px, user_id="ola", top_n=3),
        base_retriever=store.as_retriever(search_kwargs={"k": 6}),
    )
    assert [d.id for d in bound.invoke(q)] == [d.id for d in docs]
    # A cold user gets the query's relevance alone (no user term).
    cold = PertinentCompressor(client=px).compress_documents(store.similarity_search(q, k=6), q)
    assert all(score_breakdown(d).user_gate == 0 for d in cold)
    # A budget keeps whole documents that fit.
    budget = Budget(model="gpt-4o", max_tokens=50)
    fitted = PertinentCompressor(client=px, user_id="ola", budget=budget).compress_documents(
        store.similarity_search(q, k=6), q
    )
    tok = tokenizer_for("gpt-4o")
    assert 0 < len(fitted) < 6
    assert sum(tok.count(d.page_content) for d in fitted) <= 50
    texts = {d["text"] for d in CORPUS}
    assert all(d.page_content in texts for d in fitted)


# --------------------------------------------------------------------------- retriever


def test_retriever_is_the_core_search_as_documents(px: pertinent.Pertinent) -> None:
    q = "rotate API keys"
    retriever = PertinentRetriever(client=px, user_id="alice", remember=False)
    docs = retriever.invoke(q)
    results = px.search(q, user_id="alice")
    assert [d.id for d in docs] == [r.id for r in results]
    assert [score_breakdown(d) for d in docs] == [r.explain for r in results]
    assert docs[0].metadata["doc_id"] == "keys" and docs[0].metadata["title"] == "API keys"
    assert [d.id for d in asyncio.run(retriever.ainvoke(q))] == [r.id for r in results]
    assert _query_events(px, "alice") == []
    # Per call, an explicit user wins; a run configured for another user is refused.
    shared = PertinentRetriever(client=px)
    assert "bob-note#0" in [d.id for d in shared.invoke(q, user_id="bob")]
    assert "bob-note#0" not in [d.id for d in docs]
    assert "alice-note#0" in [d.id for d in shared.invoke(q, config=_config("alice", "x"))]
    with pytest.raises(pertinent.InvalidInput, match="bound to user_id='alice'"):
        retriever.invoke(q, config=_config("bob", "x"))
    assert _query_events(px, "bob") == [q]  # the shared retriever remembers by default
    assert shared.invoke(q, user_id="bob", verbose=True)[0].id == "keys#0"
    with pytest.raises(pertinent.InvalidInput, match="unknown argument"):
        shared.invoke(q, user="bob")


def test_history_keeps_conversation_not_tool_traffic(px: pertinent.Pertinent) -> None:
    history = PertinentChatMessageHistory(px, "alice", "h1")
    history.add_messages(
        [
            SystemMessage("You are helpful."),
            HumanMessage("I write Rust and fight the borrow checker."),
            AIMessage("", tool_calls=[{"name": "search_docs", "args": {}, "id": "t1"}]),
            ToolMessage("RefCell docs ...", tool_call_id="t1"),
            AIMessage("Use RefCell for interior mutability."),
        ]
    )
    assert [(t.role, t.text) for t in px.history("alice", "h1")] == [
        ("system", "You are helpful."),
        ("user", "I write Rust and fight the borrow checker."),
        ("assistant", "Use RefCell for interior mutability."),
    ]
    assert [type(m) for m in history.messages] == [SystemMessage, HumanMessage, AIMessage]
    res = px.search("what are the rules?", user_id="alice", session_id="h1")
    assert res[0].chunk.doc_id == "rust" and res[0].explain.session_gate > 0
    with pytest.raises(pertinent.ConfigurationError, match="forget_user"):
        history.clear()
    with pytest.raises(pertinent.InvalidInput, match="session_id"):
        PertinentChatMessageHistory(px, "alice", " ")
    with pytest.raises(pertinent.InvalidInput, match="LangChain messages"):
        history.add_messages(["hello"])  # type: ignore[list-item]


# --------------------------------------------------------------------------- ingest


def test_ingest_langchain_documents(px: pertinent.Pertinent) -> None:
    docs = [
        Document(
            id="rota",
            page_content="The on-call rota changes every Monday at 09:00 UTC.",
            metadata={"source": "ops/rota.md", "title": "On-call", "team": "sre"},
        ),
        Document(page_content="Pager alerts escalate after 15 minutes."),
    ]
    report = ingest_documents(px, docs, owner="carol", show_progress=False)
    assert report.doc_ids[0] == "rota" and report.doc_ids[1].startswith("text:")
    assert "rota#0" not in [r.id for r in px.search("on-call rota", user_id="dan")]
    hit = px.search("on-call rota", user_id="carol")[0].chunk
    assert (hit.doc_id, hit.title, hit.source, hit.owner) == (
        "rota",
        "On-call",
        "ops/rota.md",
        "carol",
    )
    assert hit.metadata["team"] == "sre"
    again = asyncio.run(aingest_documents(px, docs[1:], owner="carol", show_progress=False))
    assert again.doc_ids == report.doc_ids[1:]  # the same text, the same id
    with pytest.raises(pertinent.InvalidInput, match="LangChain Documents"):
        ingest_documents(px, ["plain text"])  # type: ignore[list-item]
    for cls in (PertinentRetriever, PertinentCompressor):
        with pytest.raises(pertinent.InvalidInput, match=r"pertinent\.Pertinent client"):
            cls(client=object())  # type: ignore[arg-type]
