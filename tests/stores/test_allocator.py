"""The malloc arena cap (pertinent/stores/allocator.py) takes effect, and only where it may.

The cap is process-wide, so each case runs in a fresh interpreter. glibc's malloc_info
lists one <heap> per arena; threads that allocate at once each get a new arena until
the cap is reached.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the arena cap is a glibc feature",
)

_COUNT_ARENAS = textwrap.dedent(
    """
    import ctypes, os, sys, tempfile, threading
    {setup}
    barrier = threading.Barrier(12)
    held = []
    def work():
        barrier.wait()
        held.append([bytearray(4096) for _ in range(200)])  # malloc'd, not pymalloc
        barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads: t.start()
    for t in threads: t.join()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    path = tempfile.mktemp()
    fp = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    xml = open(path).read()
    os.unlink(path)
    print(xml.count("<heap nr="))
    """
)


def _arenas(setup: str, env: dict[str, str] | None = None) -> int:
    code = _COUNT_ARENAS.format(setup=textwrap.dedent(setup))
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    environ.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_without_a_cap_concurrent_threads_spread_over_many_arenas() -> None:
    # The control: if this were 1-2 already, the next test would prove nothing.
    assert _arenas("") > 3


def test_the_cap_bounds_the_arenas_of_threads_started_after_it() -> None:
    setup = """
        from pertinent.stores.allocator import limit_malloc_arenas
        assert limit_malloc_arenas(2)
    """
    assert _arenas(setup) <= 2


def test_opening_the_embedded_store_applies_the_setting(tmp_path: object) -> None:
    setup = f"""
        from pertinent.stores.lancedb import LanceDBStore
        LanceDBStore({str(tmp_path)!r}, model_id="m", dim=4, malloc_arena_max=1).close()
    """
    # LanceDB's own threads may have taken an arena before the cap (arenas are never
    # given back), but the twelve threads started afterwards share what exists.
    assert _arenas(setup) <= 3


def test_none_leaves_malloc_alone(tmp_path: object) -> None:
    setup = f"""
        from pertinent.stores.lancedb import LanceDBStore
        LanceDBStore({str(tmp_path)!r}, model_id="m", dim=4, malloc_arena_max=None).close()
    """
    assert _arenas(setup) > 3


def test_the_operators_environment_wins() -> None:
    setup = """
        from pertinent.stores.allocator import limit_malloc_arenas
        assert not limit_malloc_arenas(1)
    """
    # glibc applies MALLOC_ARENA_MAX=4 itself; the call must not lower it to 1.
    n = _arenas(setup, {"MALLOC_ARENA_MAX": "4"})
    assert 1 < n <= 4


def test_a_cap_below_one_is_refused() -> None:
    from pertinent.stores.allocator import limit_malloc_arenas

    with pytest.raises(ValueError, match="at least 1"):
        limit_malloc_arenas(0)
