"""Every example runs offline as a user would run it (``python examples/X.py``), with no
API key, so each falls back to its stub model and says so; the checks read what it
prints. The three run as concurrent subprocesses: each loads the model on its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = ("llamaindex_agent", "langchain_agent", "copilot_personalization")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LANCEDB_LOG="error")
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py")],
            cwd=tmp_path_factory.mktemp(name),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in NAMES
    }
    out: dict[str, str] = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name} failed:\n{stdout}\n{stderr}"
        out[name] = stdout
    return out


def _block(text: str, header: str) -> str:
    """The lines printed under `header` (up to the next blank line)."""
    start = text.index(header)
    end = text.find("\n\n", start)
    return text[start : end if end != -1 else None]


def test_llamaindex_agent_example(outputs: dict[str, str]) -> None:
    out = outputs["llamaindex_agent"]
    assert "LLM: stub model (OPENAI_API_KEY is not set)" in out
    question = "How do I rotate the payment API keys?"
    alice, bob = _block(out, f"[alice] {question}"), _block(out, f"[bob] {question}")
    assert "alice/keys#0" in alice and "alice/keys#0" not in bob  # private to alice
    assert "keys#0" in bob
    assert "answer: (stub) The top passage:" in alice
    memory = _block(out, "What alice's memory block puts in the prompt:")
    assert "- My team's payment API keys live in the vault at secret/payments" in memory
    # The first exchange was flushed from short-term memory into pertinent.
    assert "session turns" in out
    assert "  user: How do I rotate the payment API keys?" in out
    assert re.search(r"pertinent knows about alice: [1-9]\d* query events, 2 session turns", out)


def test_langchain_agent_example(outputs: dict[str, str]) -> None:
    out = outputs["langchain_agent"]
    assert "LLM: stub model (OPENAI_API_KEY is not set)" in out
    question = "How do I rotate my API keys?"
    bob, alice = _block(out, f"[bob/s1] {question}"), _block(out, f"[alice/s1] {question}")
    assert "bob/staging#0" in bob and "bob/staging#0" not in alice
    # carol's vague follow-up is ranked by her session: the Rust passage, session gate > 0.
    follow_up = _block(out, "[carol/s1] What should I use instead?")
    first = follow_up.splitlines()[1]
    assert "borrow#0" in first
    gate = re.search(r"session=[\d.]+x([\d.]+)", first)
    assert gate is not None and float(gate.group(1)) > 0
    history = _block(out, "carol's conversation, as stored (4 messages):")
    assert "human: I keep fighting the borrow checker in Rust." in history
    assert "human: What should I use instead?" in history


def test_copilot_personalization_example(outputs: dict[str, str]) -> None:
    out = outputs["copilot_personalization"]
    assert "LLM: stub model (OPENAI_API_KEY is not set)" in out
    before = _block(out, "Before any activity")
    ana_before = before.split("  ben:")[0]
    assert "gate 0.00" in ana_before  # a new developer gets plain search
    assert "ana's top: src/payments/errors.rs   ben's top: services/billing/errors.py" in out
    assert out.count("-> accepted") == 2
    after = _block(out, "After, the same question")
    assert re.search(r"src/payments/errors\.rs .* user=1\.00 \(gate 0\.[1-9]", after)
