"""The two framework snippets in README.md run as written: their code is read from the
README and executed against a real store, with OpenAI's endpoint mocked by respx."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import respx
from openai_stub import ScriptedOpenAI, answer, tool_call

import pertinent

README = Path(__file__).resolve().parents[2] / "README.md"
NOTE = "Alice rotates the payment API keys from the vault every Friday."

pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")


def _snippet(framework: str) -> str:
    section = README.read_text(encoding="utf-8").split("## LlamaIndex and LangChain", 1)[1]
    blocks: list[str] = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    return next(b for b in blocks if b.startswith(f"# {framework}:"))


def _run(
    code: str, px: pertinent.Pertinent, script: list[dict[str, Any]]
) -> tuple[dict[str, Any], Any]:
    stub = ScriptedOpenAI(script)
    scope: dict[str, Any] = {"px": px}
    with respx.mock(assert_all_called=True) as router:
        router.post("https://api.openai.com/v1/chat/completions").mock(side_effect=stub)
        if "await " in code:
            body = textwrap.indent(code + "\nreturn locals()", "    ")
            exec(f"async def __snippet(px):\n{body}", scope)
            scope = asyncio.run(scope["__snippet"](px))
        else:
            exec(code, scope)
    return scope, stub


@pytest.fixture
def ready(px: pertinent.Pertinent, monkeypatch: pytest.MonkeyPatch) -> pertinent.Pertinent:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    px.ingest({"id": "alice-note", "text": NOTE}, owner="alice", show_progress=False)
    return px


def test_llama_index_snippet(ready: pertinent.Pertinent) -> None:
    script = [tool_call("retriever_tool", {"input": "rotate API keys"}), answer("On Fridays.")]
    scope, llm = _run(_snippet("LlamaIndex"), ready, script)
    assert str(scope["answer"]) == "On Fridays."
    assert NOTE in llm.text_of(1, "tool")
    assert [e.kind for e in ready.store.read_events("alice")] == ["query"]


def test_langchain_snippet(ready: pertinent.Pertinent) -> None:
    script = [tool_call("search_docs", {"query": "rotate API keys"}), answer("On Fridays.")]
    scope, llm = _run(_snippet("LangChain"), ready, script)
    assert scope["out"]["messages"][-1].content == "On Fridays."
    assert NOTE in llm.text_of(1, "tool")
    assert [m.content for m in scope["history"].messages] == [
        "How do I rotate our API keys?",
        "On Fridays.",
    ]
