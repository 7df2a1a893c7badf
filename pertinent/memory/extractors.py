"""LLM providers for memory: one callable protocol, three thin adapters, one fact extractor.

Long-term memory works without any LLM (every turn is stored and searched as it is). An
LLM is optional and used for two things: turning a conversation into short facts
(`FactExtractor`, used by `LongTermMemory.extract`) and summarising the turns a session
window lets go (`SessionMemory`). Both take an `LLMCallable`, a plain ``prompt -> text``
function, so any provider fits:

    from_llama_index(llm)            # any LlamaIndex LLM (llm.complete)
    from_langchain(chat_model)       # any LangChain chat model (model.invoke)
    OpenAICompatibleLLM(base_url, model, api_key=...)   # any /chat/completions endpoint

The adapters only translate: no framework is imported here (they are called by duck
typing), and provider failures become `LLMError` / `LLMTimeout`, so memory code handles
every provider's failure the same way (and never loses the turn it was extracting from).

    PertinentError
    ├── LLMError                  the provider failed: unreachable, error status, bad body
    │   └── LLMTimeout            it did not answer within the timeout
    └── ExtractionError           it answered, but not in the format asked for
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pertinent.errors import ConfigurationError, InvalidInput, MissingDependency, PertinentError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ExtractedFact",
    "ExtractionError",
    "Extractor",
    "FactExtractor",
    "KnownFact",
    "LLMCallable",
    "LLMError",
    "LLMTimeout",
    "OpenAICompatibleLLM",
    "from_langchain",
    "from_llama_index",
    "normalize_fact_key",
]


class LLMError(PertinentError):
    """The LLM provider failed (unreachable, an error status, an unreadable body).

    Memory code catches it: the raw turns are stored before any LLM is called, so a
    failing provider costs the facts or the summary, never the conversation.
    """


class LLMTimeout(LLMError):
    """The LLM provider did not answer in time; raise the adapter's timeout or retry later."""


class ExtractionError(PertinentError):
    """The LLM answered, but its text is not the JSON the extraction prompt asked for."""


@runtime_checkable
class LLMCallable(Protocol):
    """Any ``prompt -> completion text`` function. Raise `LLMError` on provider failure
    (the adapters here do); other exceptions are wrapped into `LLMError` by the callers."""

    def __call__(self, prompt: str) -> str: ...


# --------------------------------------------------------------------------- adapters


def _wrap_failure(provider: str, exc: Exception) -> LLMError:
    if isinstance(exc, LLMError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, TimeoutError) or "timeout" in name.lower():
        return LLMTimeout(f"{provider} timed out ({name}: {exc}). Raise its timeout or retry.")
    return LLMError(f"{provider} failed ({name}: {exc}).")


class _LlamaIndexLLM:
    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __call__(self, prompt: str) -> str:
        try:
            response = self._llm.complete(prompt)
        except Exception as exc:
            raise _wrap_failure(f"LlamaIndex LLM {type(self._llm).__name__}", exc) from exc
        text = getattr(response, "text", None)
        if not isinstance(text, str):
            raise LLMError(
                f"LlamaIndex LLM {type(self._llm).__name__} returned {type(response).__name__} "
                "without a text; pass an LLM whose complete() returns a CompletionResponse."
            )
        return text


class _LangChainChatModel:
    def __init__(self, model: Any) -> None:
        self._model = model

    def __call__(self, prompt: str) -> str:
        try:
            message = self._model.invoke(prompt)
        except Exception as exc:
            raise _wrap_failure(f"LangChain model {type(self._model).__name__}", exc) from exc
        content = getattr(message, "content", message)
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # content blocks: keep the text ones
            parts = [
                b if isinstance(b, str) else str(b.get("text", ""))
                for b in content
                if isinstance(b, str) or (isinstance(b, Mapping) and b.get("type") == "text")
            ]
            return "".join(parts)
        raise LLMError(
            f"LangChain model {type(self._model).__name__} returned {type(message).__name__}; "
            "expected a message with text content."
        )


def from_llama_index(llm: Any) -> LLMCallable:
    """Wrap a LlamaIndex LLM (``llama_index.core.llms.LLM``): prompts go to `llm.complete`."""
    if not callable(getattr(llm, "complete", None)):
        raise ConfigurationError(
            f"{type(llm).__name__} has no complete() method; pass a LlamaIndex LLM "
            "(e.g. llama_index.llms.openai.OpenAI)."
        )
    return _LlamaIndexLLM(llm)


def from_langchain(model: Any) -> LLMCallable:
    """Wrap a LangChain chat model (``BaseChatModel``): prompts go to `model.invoke`."""
    if not callable(getattr(model, "invoke", None)):
        raise ConfigurationError(
            f"{type(model).__name__} has no invoke() method; pass a LangChain chat model "
            "(e.g. langchain_openai.ChatOpenAI)."
        )
    return _LangChainChatModel(model)


class OpenAICompatibleLLM:
    """A ``/chat/completions`` endpoint over HTTP (OpenAI, vLLM, llama.cpp server, Ollama,
    LiteLLM ...), without the provider's SDK.

    `base_url` is the API root (``https://api.openai.com/v1``); the API key is sent as a
    bearer token and never appears in messages or reprs. Every call has `timeout_s`;
    a timeout raises `LLMTimeout`, any other failure `LLMError`. Needs ``httpx``
    (extra ``llm``). Pass `client` to share a connection pool or set proxies.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        temperature: float = 0.0,
        max_tokens: int | None = 1024,
        system: str | None = None,
        headers: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - httpx ships with the dev extras
            raise MissingDependency("httpx", "llm") from exc
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidInput(
                f"base_url must be an http(s) URL such as 'https://api.openai.com/v1', "
                f"got {base_url!r}."
            )
        if not isinstance(model, str) or not model.strip():
            raise InvalidInput("model must name the model the endpoint serves.")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise InvalidInput(f"timeout_s must be a positive number, got {timeout_s!r}.")
        self._httpx = httpx
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout_s = float(timeout_s)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.system = system
        self._headers = {"content-type": "application/json", **dict(headers or {})}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._client = client

    def __repr__(self) -> str:
        return f"OpenAICompatibleLLM(url={self.url!r}, model={self.model!r})"

    def __call__(self, prompt: str) -> str:
        httpx = self._httpx
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": prompt})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        try:
            if self._client is not None:
                response = self._client.post(
                    self.url, json=body, headers=self._headers, timeout=self.timeout_s
                )
            else:
                response = httpx.post(
                    self.url, json=body, headers=self._headers, timeout=self.timeout_s
                )
        except httpx.TimeoutException as exc:
            raise LLMTimeout(
                f"{self.url} did not answer within {self.timeout_s:g} s ({type(exc).__name__}). "
                "Raise timeout_s or retry later."
            ) from exc
        except httpx.HTTPError as exc:
            raise LLMError(f"{self.url} cannot be reached: {type(exc).__name__}: {exc}.") from exc
        if response.status_code >= 400:
            raise LLMError(
                f"{self.url} answered HTTP {response.status_code}: {response.text[:300]!r}. "
                "Check the model name, the API key and the endpoint's quota."
            )
        try:
            payload = response.json()
            content = payload["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMError(
                f"{self.url} answered a body that is not a chat completion: "
                f"{response.text[:300]!r}."
            ) from exc
        if not isinstance(content, str):
            raise LLMError(f"{self.url} answered a completion without text content.")
        return content


# --------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class KnownFact:
    """A fact already in memory, shown to the extractor so it can update instead of add."""

    key: str
    text: str


@dataclass(frozen=True)
class ExtractedFact:
    """One fact from a conversation. `key` names what the fact is about (a stable slot such
    as ``"caroline.relationship_status"``): a fact with a known key supersedes the old one."""

    key: str
    text: str


class Extractor(Protocol):
    """Turns conversation lines into facts; `FactExtractor` does it with an LLM. Raise
    `ExtractionError` (or `LLMError`) when it cannot; the turns are kept either way."""

    def __call__(
        self, conversation: Sequence[str], known: Sequence[KnownFact]
    ) -> Sequence[ExtractedFact]: ...


_KEY_CHARS = re.compile(r"[^a-z0-9_.\-]+")
_FENCE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$", re.IGNORECASE)


def normalize_fact_key(key: str) -> str:
    """Lower-case ``a-z0-9_.-`` with runs of anything else as ``_``, at most 80 characters,
    so that ``"Caroline / Relationship status"`` and ``"caroline_relationship_status"`` meet.
    Raises `ExtractionError` for a key with nothing left."""
    out = _KEY_CHARS.sub("_", key.strip().lower()).strip("_.-")[:80]
    if not out:
        raise ExtractionError(f"Fact key {key!r} has no letters or digits.")
    return out


_PROMPT = """You maintain a long-term memory of facts about the people in a conversation.

Read the new conversation lines and write down the durable facts they state: preferences,
plans, relationships, events with their dates, possessions, opinions. One short,
self-contained sentence per fact, naming the person (never "he"/"she"/"I"). Turn relative
dates into absolute ones using the date of the line ("yesterday" on [2023-05-08] is
2023-05-07).

Each fact has a key: a short snake_case name of what it is about, prefixed with the person,
such as "caroline.relationship_status" or "melanie.kids". When a new line changes one of
the known facts below, reuse that fact's key and write the new version: it replaces the
old one. Do not repeat a known fact that did not change. Skip greetings and small talk.

Known facts:
{known}

New conversation lines:
{conversation}

Answer with JSON only, no prose, in this shape (an empty list when there is nothing new):
{{"facts": [{{"key": "caroline.relationship_status", "text": "Caroline is single."}}]}}"""


class FactExtractor:
    """An `Extractor` that asks an LLM for facts as JSON and checks what comes back.

    At most `max_facts` facts are kept per call. Output that is not the asked-for JSON
    raises `ExtractionError` (with the start of the text, to log); a fence around the JSON
    (```json ... ```) or prose before it is tolerated, a wrong shape is not.
    """

    def __init__(self, llm: LLMCallable, *, max_facts: int = 20, max_fact_chars: int = 500):
        if not callable(llm):
            raise ConfigurationError(
                f"FactExtractor needs a callable prompt -> text, got {type(llm).__name__}; "
                "wrap a framework model with from_llama_index() or from_langchain()."
            )
        self.llm = llm
        self.max_facts = max_facts
        self.max_fact_chars = max_fact_chars

    def prompt(self, conversation: Sequence[str], known: Sequence[KnownFact]) -> str:
        known_text = "\n".join(f"- {k.key}: {k.text}" for k in known) or "(none yet)"
        return _PROMPT.format(known=known_text, conversation="\n".join(conversation))

    def __call__(
        self, conversation: Sequence[str], known: Sequence[KnownFact]
    ) -> list[ExtractedFact]:
        try:
            raw = self.llm(self.prompt(conversation, known))
        except LLMError:
            raise
        except Exception as exc:
            raise _wrap_failure(f"LLM {type(self.llm).__name__}", exc) from exc
        return self.parse(raw)

    def parse(self, raw: str) -> list[ExtractedFact]:
        """The facts in an LLM answer; `ExtractionError` when it is not the asked-for JSON."""
        if not isinstance(raw, str):
            raise ExtractionError(f"The LLM returned {type(raw).__name__}, not text.")
        data = _first_json_object(_FENCE.sub("", raw.strip()))
        if data is None:
            raise ExtractionError(f"The LLM answer holds no JSON object: {raw[:200]!r}.")
        facts = data.get("facts")
        if not isinstance(facts, list):
            raise ExtractionError(
                f"The LLM answer has no 'facts' list: {json.dumps(data)[:200]!r}."
            )
        out: dict[str, ExtractedFact] = {}
        for n, item in enumerate(facts):
            if not isinstance(item, Mapping):
                raise ExtractionError(f"Fact #{n} is {type(item).__name__}, not an object.")
            key, text = item.get("key"), item.get("text")
            if not isinstance(key, str) or not isinstance(text, str) or not text.strip():
                raise ExtractionError(
                    f"Fact #{n} needs a string 'key' and a non-empty string 'text', got "
                    f"{json.dumps(item)[:200]!r}."
                )
            fact = ExtractedFact(
                key=normalize_fact_key(key), text=" ".join(text.split())[: self.max_fact_chars]
            )
            out[fact.key] = fact  # a key twice in one answer: the later version wins
        return list(out.values())[: self.max_facts]


def _first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (models like to put a sentence before it)."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None
