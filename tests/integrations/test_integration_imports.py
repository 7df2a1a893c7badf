"""Adapters are leaves: the core and `pertinent.integrations` load no framework, each
adapter loads only its own, and a missing framework is a `MissingDependency` naming the
extra. Each check runs in a fresh interpreter: this one has imported everything."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("langchain", "langchain_core", "llama_index")
LOADED = f"""
def loaded():
    names = {{m.split(".")[0] for m in sys.modules}} & set({FRAMEWORKS!r})
    print("loaded:", ",".join(sorted(names)) or "-")
"""


def _run(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n" + LOADED + code],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_core_loads_no_framework_and_an_adapter_only_its_own() -> None:
    llama = "import pertinent, pertinent.integrations\nloaded()\n"
    llama += "import pertinent.integrations.llama_index\nloaded()\n"
    assert _run(llama) == ["loaded: -", "loaded: llama_index"]
    assert _run("import pertinent.integrations.langchain\nloaded()\n") == ["loaded: langchain_core"]


def test_missing_framework_names_the_extra() -> None:
    code = """
sys.modules["llama_index"] = None
sys.modules["langchain_core"] = None
import pertinent
for module in ("llama_index", "langchain"):
    try:
        __import__(f"pertinent.integrations.{module}")
    except pertinent.MissingDependency as exc:
        print(exc.extra, "|", exc)
"""
    lines = _run(code)
    assert [line.split(" | ")[0] for line in lines] == ["llama-index", "langchain"]
    assert "pip install 'pertinent[llama-index]'" in lines[0]
    assert "pip install 'pertinent[langchain]'" in lines[1]
