"""The LlamaIndex components inside real LlamaIndex machinery: a FunctionAgent driving
the real OpenAI LLM class against a scripted endpoint (respx), query engines, Memory,
and a plain VectorStoreIndex whose nodes the reranker personalizes."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CORPUS
from llama_index.core import Document as LIDocument
from llama_index.core import VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import ChatMessage
from llama_index.core.memory import Memory
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.core.tools import FunctionTool, QueryEngineTool, RetrieverTool
from llama_index.llms.openai import OpenAI
from openai_stub import BASE_URL, answer, scripted_openai, tool_call

import pertinent
from pertinent import Budget, Event
from pertinent.integrations.llama_index import (
    PertinentMemoryBlock,
    PertinentReranker,
    PertinentRetriever,
    aingest_nodes,
    ingest_nodes,
    score_breakdown,
)
from pertinent.prompts.tokenizers import tokenizer_for

# llama-index's workflows inspect the agent's members, touching pydantic attributes that
# pydantic deprecated: their warnings, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")

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


def _llm() -> OpenAI:
    return OpenAI(model="gpt-4o-mini", api_key="sk-test", api_base=BASE_URL)


def _query_events(px: pertinent.Pertinent, user_id: str) -> list[str]:
    return [e.text or "" for e in px.store.read_events(user_id) if e.kind == "query"]


# --------------------------------------------------------------------------- agent loops


def test_function_agent_calls_pertinent_for_the_right_user_and_memory_keeps_the_turn(
    px: pertinent.Pertinent,
) -> None:
    retriever = PertinentRetriever(px, user_id="alice", session_id="s1")
    tool = RetrieverTool.from_defaults(
        retriever=retriever, name="search_docs", description="Search the team's docs."
    )
    block = PertinentMemoryBlock(client=px, user_id="alice", priority=0)
    # A short-term queue small enough that the first exchange is flushed to the block
    # when the second one starts: that is when Memory hands messages to its blocks.
    memory = Memory.from_defaults(
        session_id="s1", token_limit=400, chat_history_token_ratio=0.5, memory_blocks=[block]
    )
    agent = FunctionAgent(tools=[tool], llm=_llm(), system_prompt="Answer from the docs.")
    script = [
        tool_call("search_docs", {"input": "how do I rotate API keys"}),
        answer("Rotate them from the admin console every 90 days."),
        answer("Yours are in the vault at secret/payments."),
    ]

    async def run() -> tuple[Any, Any]:
        first = await agent.run(user_msg="How do I rotate our API keys?", memory=memory)
        second = await agent.run(user_msg="Where are my team's keys kept?", memory=memory)
        return first, second

    with scripted_openai(script) as llm:
        first, second = asyncio.run(run())

    # The tool call reached pertinent for alice: her query was recorded, nobody else's.
    assert _query_events(px, "alice")[0].strip() == "input is how do I rotate API keys"
    assert px.store.read_events("bob") == []
    # The passages pertinent found are what the model read in the second request.
    tool_text = llm.text_of(1, "tool")
    assert KEYS_DOC in tool_text and ALICE_NOTE in tool_text
    assert BOB_NOTE not in tool_text
    nodes = first.tool_calls[0].tool_output.raw_output
    ids = [n.node.node_id for n in nodes]
    assert "alice-note#0" in ids and "bob-note#0" not in ids
    assert nodes[0].node.metadata["doc_id"] == "keys"
    assert score_breakdown(nodes[0]).final == pytest.approx(nodes[0].score)
    assert "score_breakdown" not in nodes[0].node.get_content(MetadataMode.LLM)
    assert str(first) == "Rotate them from the admin console every 90 days."
    # The second run's first request carries alice's long-term memory (her own note),
    # put there by the memory block, and not bob's.
    system = llm.text_of(2, "system")
    assert "## What I know about the user" in system and ALICE_NOTE in system
    assert BOB_NOTE not in system
    assert str(second) == "Yours are in the vault at secret/payments."
    # Memory holds both exchanges; the first was flushed into pertinent as session turns
    # and user events.
    everything = asyncio.run(memory.aget_all())
    texts = [m.content for m in everything]
    assert "How do I rotate our API keys?" in texts
    assert "Yours are in the vault at secret/payments." in texts
    assert [(t.role, t.text) for t in px.history("alice", "s1")] == [
        ("user", "How do I rotate our API keys?"),
        ("assistant", "Rotate them from the admin console every 90 days."),
    ]
    assert "How do I rotate our API keys?" in _query_events(px, "alice")
    assert px.session("alice", "s1").turns == 2


def test_query_engine_tool_over_pertinent_in_an_agent(px: pertinent.Pertinent) -> None:
    engine = RetrieverQueryEngine.from_args(
        PertinentRetriever(px, user_id="bob", top_k=3), llm=_llm()
    )
    tool = QueryEngineTool.from_defaults(
        engine, name="docs", description="Answers questions from the team's docs."
    )
    agent = FunctionAgent(tools=[tool], llm=_llm())
    script = [
        tool_call("docs", {"input": "where are the staging keys"}),
        answer("In the legacy keystore."),  # the query engine's synthesis call
        answer("Bob, your staging keys are in the legacy keystore."),
    ]

    async def run() -> Any:
        return await agent.run(user_msg="Where are my staging keys?")

    with scripted_openai(script) as llm:
        out = asyncio.run(run())
    # The synthesis request was built from bob's passages (his private note included).
    synthesis = "\n".join(str(m.get("content")) for m in llm.messages(1))
    assert BOB_NOTE in synthesis and ALICE_NOTE not in synthesis
    assert "In the legacy keystore." in llm.text_of(2, "tool")
    assert str(out) == "Bob, your staging keys are in the legacy keystore."
    assert _query_events(px, "bob") == ["where are the staging keys"]


def test_sync_tool_over_the_sync_retriever_in_an_agent(px: pertinent.Pertinent) -> None:
    """A plain function tool calling `retrieve()`, the sync path, inside the agent loop."""
    retriever = PertinentRetriever(px, user_id="alice", session_id="s3", top_k=3)

    def search_notes(query: str) -> str:
        """Search the team's docs and the user's notes."""
        return "\n\n".join(n.node.get_content() for n in retriever.retrieve(query))

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(fn=search_notes)], llm=_llm())
    script = [tool_call("search_notes", {"query": "payments vault keys"}), answer("In the vault.")]

    async def run() -> Any:
        return await agent.run(user_msg="Where do we keep the payment keys?")

    with scripted_openai(script) as llm:
        out = asyncio.run(run())
    assert str(out) == "In the vault."
    assert ALICE_NOTE in llm.text_of(1, "tool") and BOB_NOTE not in llm.text_of(1, "tool")
    assert _query_events(px, "alice") == ["payments vault keys"]


class _MiniLM(BaseEmbedding):
    """The user's own LlamaIndex embedding (here the same MiniLM model, through
    LlamaIndex's interface), so the VectorStoreIndex below is an ordinary one."""

    def __init__(self, embedder: pertinent.Embedder) -> None:
        super().__init__(model_name="minilm")
        self._embedder = embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        return [float(x) for x in self._embedder.embed_query(query)]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return [float(x) for x in self._embedder.embed_documents([text])[0]]


def test_reranker_personalizes_another_index_in_a_sync_query_engine(
    px: pertinent.Pertinent,
) -> None:
    index = VectorStoreIndex.from_documents(
        [LIDocument(text=d["text"], doc_id=d["id"]) for d in CORPUS],
        embed_model=_MiniLM(px.embedder),
    )
    q = "how do retrievers work"
    li = px.search("LlamaIndex query engines node postprocessors")[0]
    px.record("ola", [Event(kind="accept", item_id=li.id)] * 4)
    reranker = PertinentReranker(client=px, user_id="ola", top_n=3)
    engine = RetrieverQueryEngine.from_args(
        index.as_retriever(similarity_top_k=6), llm=_llm(), node_postprocessors=[reranker]
    )
    with scripted_openai([answer("Query engines call a retriever.")]) as llm:
        response = engine.query(q)  # the sync path: _postprocess_nodes, OpenAI.chat
    assert str(response) == "Query engines call a retriever."
    assert len(response.source_nodes) == 3
    top = response.source_nodes[0]
    assert top.node.ref_doc_id == "li"
    b = score_breakdown(top)
    assert b.user_gate > 0 and b.found_by == ("input",)
    assert all(b.user >= score_breakdown(n).user for n in response.source_nodes)
    assert "LlamaIndex query engines call a retriever" in llm.text_of(0, "user")
    # A cold user gets the source's own relevance back (no user term).
    cold = PertinentReranker(client=px).postprocess_nodes(
        index.as_retriever(similarity_top_k=6).retrieve(q), query_str=q
    )
    assert all(score_breakdown(n).user_gate == 0 for n in cold)


# --------------------------------------------------------------------------- retriever


def test_retriever_is_the_core_search_as_nodes(px: pertinent.Pertinent) -> None:
    q = "rotate API keys"
    retriever = PertinentRetriever(px, user_id="alice", remember=False)
    nodes = retriever.retrieve(q)
    results = px.search(q, user_id="alice")
    assert [n.node.node_id for n in nodes] == [r.id for r in results]
    assert [score_breakdown(n) for n in nodes] == [r.explain for r in results]
    assert [n.score for n in nodes] == [r.score for r in results]
    anodes = asyncio.run(retriever.aretrieve(q))
    assert [n.node.node_id for n in anodes] == [r.id for r in results]
    assert _query_events(px, "alice") == []  # remember=False writes nothing

    bob = retriever.for_user("bob")
    assert "bob-note#0" in [n.node.node_id for n in bob.retrieve(q)]
    assert "alice-note#0" not in [n.node.node_id for n in bob.retrieve(q)]
    assert "bob-note#0" not in [n.node.node_id for n in nodes]


def test_retriever_budget_keeps_whole_passages_that_fit(px: pertinent.Pertinent) -> None:
    budget = Budget(model="gpt-4o", max_tokens=60)
    nodes = PertinentRetriever(px, user_id="alice", budget=budget).retrieve("API keys")
    full = PertinentRetriever(px, user_id="alice").retrieve("API keys")
    assert 0 < len(nodes) < len(full)
    tok = tokenizer_for("gpt-4o")
    assert sum(tok.count(n.node.get_content()) for n in nodes) <= 60
    stored = {c.id: c.text for c in px.store.get_chunks([n.node.node_id for n in nodes])}
    stored |= {
        c.id: c.text for c in px.store.get_chunks([n.node.node_id for n in nodes], user_id="alice")
    }
    assert all(n.node.get_content() == stored[n.node.node_id] for n in nodes)  # never cut


def test_bad_input_is_typed(px: pertinent.Pertinent) -> None:
    with pytest.raises(pertinent.InvalidInput, match=r"pertinent\.Pertinent client"):
        PertinentRetriever(object())  # type: ignore[arg-type]
    with pytest.raises(pertinent.InvalidInput, match=r"pertinent\.Pertinent client"):
        PertinentReranker(client=object())  # type: ignore[arg-type]
    with pytest.raises(pertinent.InvalidInput, match=r"pertinent\.Pertinent client"):
        PertinentMemoryBlock(client=object(), user_id="alice")  # type: ignore[arg-type]
    with pytest.raises(pertinent.EmptyQuery):
        PertinentRetriever(px).retrieve("  ")
    with pytest.raises(pertinent.InvalidInput, match="session_id needs a user_id"):
        PertinentRetriever(px, session_id="s1").retrieve("keys")
    with pytest.raises(pertinent.InvalidInput, match="needs the query"):
        PertinentReranker(client=px).postprocess_nodes([NodeWithScore(node=TextNode(text="x"))])
    with pytest.raises(pertinent.InvalidInput, match="no 'score_breakdown'"):
        score_breakdown(TextNode(text="x"))
    with pytest.raises(pertinent.InvalidInput, match="LlamaIndex nodes"):
        ingest_nodes(px, ["plain text"])  # type: ignore[list-item]
    assert PertinentReranker(client=px).postprocess_nodes([], query_str="q") == []


# --------------------------------------------------------------------------- memory block


def test_memory_block_records_conversation_and_skips_tool_traffic(
    px: pertinent.Pertinent,
) -> None:
    block = PertinentMemoryBlock(client=px, user_id="alice")
    messages = [
        ChatMessage(role="system", content="You are helpful."),
        ChatMessage(role="user", content="I write Rust and fight the borrow checker."),
        ChatMessage(role="assistant", content=""),  # a tool-call-only message
        ChatMessage(role="tool", content="RefCell docs ..."),
        ChatMessage(role="assistant", content="Use RefCell for interior mutability."),
    ]
    asyncio.run(block.aput(messages, session_id="s7"))
    assert [(t.role, t.text) for t in px.history("alice", "s7")] == [
        ("user", "I write Rust and fight the borrow checker."),
        ("assistant", "Use RefCell for interior mutability."),
    ]
    assert _query_events(px, "alice") == ["I write Rust and fight the borrow checker."]
    # The session now ranks the Rust passage first for a vague question.
    res = px.search("what are the rules?", user_id="alice", session_id="s7")
    assert res[0].chunk.doc_id == "rust" and res[0].explain.session_gate > 0
    # Flushes LlamaIndex marks as short-term are refused when the block says so.
    refusing = PertinentMemoryBlock(client=px, user_id="bob", accept_short_term_memory=False)
    asyncio.run(refusing.aput(messages, from_short_term_memory=True, session_id="s7"))
    assert px.history("bob", "s7") == [] and px.store.read_events("bob") == []


def test_memory_block_returns_own_notes_within_its_share_and_truncates(
    px: pertinent.Pertinent,
) -> None:
    notes = [
        f"Alice note {i}: the payments service {w} runs on Kubernetes in region eu-west."
        for i, w in enumerate(["gateway", "ledger", "webhook", "refunder", "scheduler"])
    ]
    px.ingest(notes, owner="alice", show_progress=False)
    ask = [ChatMessage(role="user", content="Where does the payments service run?")]
    block = PertinentMemoryBlock(client=px, user_id="alice", top_k=10, max_tokens=60)
    text = asyncio.run(block.aget(ask, session_id="s1"))
    tok = tokenizer_for("gpt-4o")
    assert text.startswith("## What I know about the user\n- ")
    assert 0 < tok.count(text) <= 60
    lines = text.split("\n")[1:]
    assert 1 <= len(lines) < len(notes)  # the share, not top_k, limited it
    assert all(line[2:] in notes or line[2:] == ALICE_NOTE for line in lines)
    assert BOB_NOTE not in text
    # bob has no notes on this: an empty block, not someone else's.
    bob = PertinentMemoryBlock(client=px, user_id="bob")
    assert "payments service" not in asyncio.run(bob.aget(ask, session_id="s1"))
    assert asyncio.run(block.aget([], session_id="s1")) == ""

    shorter = asyncio.run(block.atruncate(text, 1))
    assert shorter is not None and shorter == "\n".join(text.split("\n")[:-1])
    assert asyncio.run(block.atruncate(text, 10_000)) is None


def test_memory_truncates_a_low_priority_block_when_full(px: pertinent.Pertinent) -> None:
    notes = [f"Alice note {i}: deploys go through the blue-green pipeline {i}." for i in range(6)]
    px.ingest(notes, owner="alice", show_progress=False)
    block = PertinentMemoryBlock(client=px, user_id="alice", top_k=6, max_tokens=300, priority=1)
    question = ChatMessage(role="user", content="How do deploys work here?")
    roomy = Memory.from_defaults(session_id="m1", token_limit=5000, memory_blocks=[block])
    tight = Memory.from_defaults(session_id="m2", token_limit=80, memory_blocks=[block])

    async def system_text(memory: Memory) -> str:
        await memory.aput(question)
        messages = await memory.aget()
        return "\n".join(m.content or "" for m in messages if m.role == "system")

    full, cut = asyncio.run(system_text(roomy)), asyncio.run(system_text(tight))
    assert sum(n in full for n in notes) == 6
    assert 0 <= sum(n in cut for n in notes) < 6


# --------------------------------------------------------------------------- ingest


def test_ingest_llama_index_documents_and_nodes(px: pertinent.Pertinent) -> None:
    doc = LIDocument(
        text="The on-call rota changes every Monday at 09:00 UTC.",
        doc_id="rota",
        metadata={"file_name": "rota.md", "file_path": "ops/rota.md", "team": "sre"},
    )
    node = TextNode(text="Pager alerts escalate after 15 minutes.", id_="pager#n1")
    report = ingest_nodes(px, [doc, node], acl=["role:sre"], show_progress=False)
    assert report.doc_ids == ("rota", "pager#n1")
    assert px.search("on-call rota", top_k=3)[0].chunk.doc_id != "rota"  # ACL hides it
    hit = px.search("on-call rota", principals=["role:sre"])[0].chunk
    assert (hit.doc_id, hit.title, hit.source) == ("rota", "rota.md", "ops/rota.md")
    assert hit.metadata["team"] == "sre" and hit.acl == ("role:sre",)
    # Re-ingesting replaces; the async path is the same translation.
    doc2 = LIDocument(text="The on-call rota now changes on Tuesdays.", doc_id="rota")
    asyncio.run(aingest_nodes(px, [doc2], acl=["role:sre"], show_progress=False))
    chunks = px.store.get_chunks(["rota#0"])
    assert [c.text for c in chunks] == ["The on-call rota now changes on Tuesdays."]
