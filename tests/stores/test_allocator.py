"""The malloc settings (pertinent/stores/allocator.py) take effect, and only where they may.

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


# ------------------------------------------------------------- the fixed mmap threshold

_MMAPPED_AFTER_A_BIG_FREE = textwrap.dedent(
    """
    import ctypes
    {setup}
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = Mallinfo2
    libc.free(libc.malloc(8 << 20))  # glibc's own rule: raise the threshold to 8 MiB
    before = libc.mallinfo2().hblks  # blocks served by their own mmap
    block = libc.malloc(4 << 20)
    print(libc.mallinfo2().hblks - before)
    libc.free(block)
    """
)


def _mmapped(setup: str, env: dict[str, str] | None = None) -> int:
    code = _MMAPPED_AFTER_A_BIG_FREE.format(setup=textwrap.dedent(setup))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_without_a_fixed_threshold_a_freed_block_moves_big_ones_into_the_heap() -> None:
    # The control, and the cause of the growth: after an 8 MiB block is freed, glibc
    # serves 4 MiB from the heap, where it fragments.
    assert _mmapped("") == 0


def test_a_fixed_threshold_keeps_big_blocks_in_their_own_mmap() -> None:
    setup = """
        from pertinent.stores.allocator import fix_mmap_threshold
        assert fix_mmap_threshold(1 << 20)
    """
    assert _mmapped(setup) == 1


def test_opening_the_embedded_store_fixes_the_threshold_by_default(tmp_path: object) -> None:
    setup = f"""
        from pertinent.stores.lancedb import LanceDBStore
        LanceDBStore({str(tmp_path)!r}, model_id="m", dim=4).close()
    """
    assert _mmapped(setup) == 1
    off = f"""
        from pertinent.stores.lancedb import LanceDBStore
        LanceDBStore({str(tmp_path)!r}, model_id="m", dim=4, malloc_mmap_threshold=None).close()
    """
    assert _mmapped(off) == 0


def test_the_operators_threshold_wins() -> None:
    setup = """
        from pertinent.stores.allocator import fix_mmap_threshold
        assert not fix_mmap_threshold(1 << 20)
    """
    # 16 MiB from the environment: the 4 MiB block stays in the heap.
    assert _mmapped(setup, {"MALLOC_MMAP_THRESHOLD_": str(16 << 20)}) == 0


@pytest.mark.parametrize("n_bytes", [0, -1, (32 << 20) + 1])
def test_a_threshold_out_of_glibcs_range_is_refused(n_bytes: int) -> None:
    from pertinent.stores.allocator import fix_mmap_threshold

    with pytest.raises(ValueError, match="between 1 byte and 32 MiB"):
        fix_mmap_threshold(n_bytes)
