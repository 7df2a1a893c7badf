"""LLM adapters and the fact extractor, with the providers faked at the HTTP boundary
(respx): the real httpx client, the real LlamaIndex and LangChain OpenAI classes."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from pertinent.errors import ConfigurationError, InvalidInput
from pertinent.memory.extractors import (
    ExtractedFact,
    ExtractionError,
    FactExtractor,
    KnownFact,
    LLMError,
    LLMTimeout,
    OpenAICompatibleLLM,
    from_langchain,
    from_llama_index,
    normalize_fact_key,
)

BASE = "https://llm.test/v1"
URL = f"{BASE}/chat/completions"


def completion(content: str) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "cmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        },
    )


@respx.mock
def test_openai_compatible_sends_prompt_key_and_model() -> None:
    route = respx.post(URL).mock(return_value=completion("hello"))
    llm = OpenAICompatibleLLM(BASE + "/", "my-model", api_key="sk-secret", system="Be brief.")
    assert llm("Say hello") == "hello"
    request = route.calls.last.request
    body = json.loads(request.content)
    assert body["model"] == "my-model"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]
    assert request.headers["authorization"] == "Bearer sk-secret"
    assert "sk-secret" not in repr(llm)


@respx.mock
def test_openai_compatible_timeout_is_typed() -> None:
    respx.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(LLMTimeout, match="timeout_s"):
        OpenAICompatibleLLM(BASE, "m", timeout_s=0.5)("hi")


@respx.mock
def test_openai_compatible_error_status_and_bad_body() -> None:
    respx.post(URL).mock(
        side_effect=[
            httpx.Response(429, json={"error": {"message": "quota"}}),
            httpx.Response(200, text="<html>proxy</html>"),
            httpx.Response(200, json={"choices": []}),
        ]
    )
    llm = OpenAICompatibleLLM(BASE, "m")
    with pytest.raises(LLMError, match="HTTP 429"):
        llm("a")
    with pytest.raises(LLMError, match="not a chat completion"):
        llm("b")
    with pytest.raises(LLMError, match="not a chat completion"):
        llm("c")


@respx.mock
def test_openai_compatible_unreachable() -> None:
    respx.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(LLMError, match="cannot be reached") as info:
        OpenAICompatibleLLM(BASE, "m")("hi")
    assert not isinstance(info.value, LLMTimeout)


def test_openai_compatible_rejects_bad_config() -> None:
    with pytest.raises(InvalidInput, match="http"):
        OpenAICompatibleLLM("llm.test/v1", "m")
    with pytest.raises(InvalidInput, match="model"):
        OpenAICompatibleLLM(BASE, " ")
    with pytest.raises(InvalidInput, match="timeout_s"):
        OpenAICompatibleLLM(BASE, "m", timeout_s=0)


@respx.mock
def test_llama_index_adapter_drives_the_real_openai_llm() -> None:
    from llama_index.llms.openai import OpenAI

    route = respx.post(URL).mock(return_value=completion("from llama"))
    llm = from_llama_index(
        OpenAI(model="gpt-4o-mini", api_key="sk-x", api_base=BASE, max_retries=0)
    )
    assert llm("What is the capital?") == "from llama"
    sent = json.loads(route.calls.last.request.content)["messages"]
    assert sent[-1]["content"] == "What is the capital?"


@respx.mock
def test_langchain_adapter_drives_the_real_chat_model() -> None:
    from langchain_openai import ChatOpenAI

    route = respx.post(URL).mock(return_value=completion("from langchain"))
    llm = from_langchain(
        ChatOpenAI(model="gpt-4o-mini", api_key="sk-x", base_url=BASE, max_retries=0)
    )
    assert llm("Name a colour") == "from langchain"
    sent = json.loads(route.calls.last.request.content)["messages"]
    assert sent[-1]["content"] == "Name a colour"


@respx.mock
def test_framework_timeouts_become_llm_timeout() -> None:
    from langchain_openai import ChatOpenAI
    from llama_index.llms.openai import OpenAI

    respx.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    lc = from_langchain(ChatOpenAI(model="m", api_key="sk-x", base_url=BASE, max_retries=0))
    li = from_llama_index(OpenAI(model="gpt-4o-mini", api_key="sk-x", api_base=BASE, max_retries=0))
    with pytest.raises(LLMTimeout):
        lc("hi")
    with pytest.raises(LLMTimeout):
        li("hi")


def test_adapters_refuse_objects_of_the_wrong_kind() -> None:
    with pytest.raises(ConfigurationError, match="complete"):
        from_llama_index(object())
    with pytest.raises(ConfigurationError, match="invoke"):
        from_langchain("not a model")
    with pytest.raises(ConfigurationError, match="callable"):
        FactExtractor("not callable")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- parsing


def extractor() -> FactExtractor:
    def never(prompt: str) -> str:
        raise AssertionError("parse tests do not call the LLM")

    return FactExtractor(never)


def test_parse_tolerates_fences_and_prose_but_checks_shape() -> None:
    ex = extractor()
    fenced = '```json\n{"facts": [{"key": "Ann / Pet", "text": "Ann  has a\\ncat."}]}\n```'
    assert ex.parse(fenced) == [ExtractedFact(key="ann_pet", text="Ann has a cat.")]
    prose = 'Sure! Here you go: {"facts": []} Hope that helps.'
    assert ex.parse(prose) == []
    twice = json.dumps(
        {"facts": [{"key": "a.job", "text": "Old."}, {"key": "A.JOB", "text": "New."}]}
    )
    assert ex.parse(twice) == [ExtractedFact(key="a.job", text="New.")]


@pytest.mark.parametrize(
    "raw",
    [
        "I could not find any facts.",
        '{"fact": []}',
        '{"facts": {"key": "a", "text": "b"}}',
        '{"facts": ["Ann has a cat"]}',
        '{"facts": [{"key": "a.b", "text": "  "}]}',
        '{"facts": [{"key": "!!!", "text": "x"}]}',
        '{"facts": [{"key": 3, "text": "x"}]}',
    ],
)
def test_parse_rejects_malformed_output(raw: str) -> None:
    with pytest.raises(ExtractionError):
        extractor().parse(raw)


def test_extractor_shows_known_facts_and_wraps_foreign_errors() -> None:
    seen: list[str] = []

    def llm(prompt: str) -> str:
        seen.append(prompt)
        return '{"facts": [{"key": "ann.city", "text": "Ann lives in Oslo."}]}'

    ex = FactExtractor(llm)
    out = ex(["[2023-05-08] Ann: I moved to Oslo."], [KnownFact("ann.city", "Ann lives in Rome.")])
    assert out == [ExtractedFact("ann.city", "Ann lives in Oslo.")]
    assert "ann.city: Ann lives in Rome." in seen[0]
    assert "[2023-05-08] Ann: I moved to Oslo." in seen[0]

    def broken(prompt: str) -> str:
        raise RuntimeError("socket closed")

    with pytest.raises(LLMError, match="socket closed"):
        FactExtractor(broken)(["x"], [])


def test_normalize_fact_key() -> None:
    assert normalize_fact_key("  Caroline / Relationship status ") == "caroline_relationship_status"
    assert normalize_fact_key("melanie.kids") == "melanie.kids"
    assert len(normalize_fact_key("k" * 500)) == 80
    with pytest.raises(ExtractionError):
        normalize_fact_key("???")
