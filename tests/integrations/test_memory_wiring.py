"""The framework components read from and write to `LongTermMemory` when given one."""

from __future__ import annotations

import asyncio

from langchain_core.messages import AIMessage, HumanMessage
from llama_index.core.base.llms.types import ChatMessage, MessageRole

import pertinent
from pertinent.integrations.langchain import PertinentChatMessageHistory
from pertinent.integrations.llama_index import PertinentMemoryBlock


def test_llama_index_block_remembers_and_recalls(px: pertinent.Pertinent) -> None:
    memory = pertinent.LongTermMemory(px)
    block = PertinentMemoryBlock(client=px, user_id="ivy", session_id="s1", memory=memory)
    asyncio.run(
        block._aput(
            [
                ChatMessage(
                    role=MessageRole.USER, content="My cat is called Pixel and loves tuna."
                ),
                ChatMessage(role=MessageRole.ASSISTANT, content="Noted: Pixel loves tuna."),
            ]
        )
    )
    found = memory.search("what is my cat's name?", user_id="ivy")
    assert any("Pixel" in r.text for r in found)
    text = asyncio.run(
        block._aget([ChatMessage(role=MessageRole.USER, content="What does my cat like to eat?")])
    )
    assert "tuna" in text
    assert memory.search("cat", user_id="someone-else") == []


def test_langchain_history_remembers_long_term(px: pertinent.Pertinent) -> None:
    memory = pertinent.LongTermMemory(px)
    history = PertinentChatMessageHistory(px, user_id="jon", session_id="s1", memory=memory)
    history.add_messages(
        [HumanMessage("I moved to Lisbon in March."), AIMessage("Lisbon in March, noted.")]
    )
    assert [m.content for m in history.messages] == [
        "I moved to Lisbon in March.",
        "Lisbon in March, noted.",
    ]
    assert any("Lisbon" in r.text for r in memory.search("where do I live?", user_id="jon"))
    px.set_consent("kim", memory=False)
    opted_out = PertinentChatMessageHistory(px, user_id="kim", session_id="s1", memory=memory)
    opted_out.add_messages([HumanMessage("My passport number is in the drawer.")])
    assert memory.search("passport", user_id="kim") == []
