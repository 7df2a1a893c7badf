"""A scripted OpenAI-compatible chat-completions endpoint for agent-loop tests.

Mounted with respx, so the frameworks' real OpenAI classes (and the `openai` SDK under
them) run unchanged and only the HTTP exchange is faked. Each request takes the next
scripted assistant message; streamed requests (``"stream": true``, as LlamaIndex's
agents send) get server-sent events, others a plain JSON completion. Every request
body is kept, so a test can read exactly what the model was shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import respx

BASE_URL = "https://llm.test/v1"


def tool_call(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }


def answer(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


class ScriptedOpenAI:
    def __init__(self, script: list[dict[str, Any]]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if not self.script:
            return httpx.Response(500, json={"error": {"message": "script exhausted"}})
        return _reply(body, self.script.pop(0))

    def messages(self, n: int) -> list[dict[str, Any]]:
        """The messages of the n-th request (0-based)."""
        messages: list[dict[str, Any]] = self.requests[n]["messages"]
        return messages

    def text_of(self, n: int, role: str) -> str:
        """All the text that messages of `role` carried in the n-th request."""
        parts: list[str] = []
        for m in self.messages(n):
            if m.get("role") != role:
                continue
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(c.get("text", "")) for c in content if isinstance(c, dict))
        return "\n".join(parts)


@contextmanager
def scripted_openai(script: list[dict[str, Any]]) -> Iterator[ScriptedOpenAI]:
    """Serve `script` at BASE_URL; any other HTTP request fails the test."""
    stub = ScriptedOpenAI(script)
    with respx.mock(assert_all_called=True) as router:
        router.post(f"{BASE_URL}/chat/completions").mock(side_effect=stub)
        yield stub


def _reply(body: dict[str, Any], message: dict[str, Any]) -> httpx.Response:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    base = {"id": "chatcmpl-stub", "created": 0, "model": body.get("model", "stub")}
    if not body.get("stream"):
        return httpx.Response(
            200,
            json={
                **base,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            },
        )
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{**tc, "index": i} for i, tc in enumerate(message["tool_calls"])]
    chunks = [
        {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        },
        {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
        },
    ]
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return httpx.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
