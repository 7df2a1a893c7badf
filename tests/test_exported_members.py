"""The public surface is `pertinent.__all__` and nothing else (httpx's pattern)."""

from __future__ import annotations

import pertinent


def test_all_is_sorted_and_complete() -> None:
    assert pertinent.__all__ == sorted(pertinent.__all__)
    public = {n for n in dir(pertinent) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(pertinent, n)).__name__ == "module"}
    assert set(pertinent.__all__) - {"__version__"} == public - modules


def test_every_error_is_a_pertinent_error() -> None:
    for name in pertinent.__all__:
        obj = getattr(pertinent, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, pertinent.PertinentError), name
