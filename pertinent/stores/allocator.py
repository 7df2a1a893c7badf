"""Bound glibc's malloc arenas in a process that writes to LanceDB.

A process committing to LanceDB steadily grew without limit: about 20 KiB per commit,
+336 MiB over 12,000 single-row commits, and faster the longer it ran. Python's heap
did not grow (tracemalloc), LanceDB's caches were bounded, and reconnecting did not
help: the memory is freed, but left fragmented across glibc's per-thread arenas (up to
8 per core) by Lance's writer threads. With the arenas capped at 1 or 2, the same run
stays within 105-137 MiB of its start (docs/reliability.md, "Long soak"). glibc reads
`MALLOC_ARENA_MAX` only at start-up, so the cap is set through `mallopt`, which governs
every arena created afterwards; arenas created before it stay, which is why
`LanceDBStore` sets it when it opens, before its own threads start.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import threading

_log = logging.getLogger("pertinent")

# From glibc's malloc.h; not exported by Python's ctypes.
_M_ARENA_MAX = -8

_lock = threading.Lock()
_applied: int | None = None


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc malloc arenas at `n` for the rest of the process; True if this call
    (or an earlier one with the same `n`) set it.

    Does nothing, and returns False, off glibc (macOS, Windows, musl have other
    allocators) or when the operator set `MALLOC_ARENA_MAX`, whose choice wins. Set once
    per process: the smallest cap asked for is kept.
    """
    global _applied
    if n < 1:
        raise ValueError(f"a malloc arena cap must be at least 1, got {n}")
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    with _lock:
        if _applied is not None and _applied <= n:
            return True
        try:
            libc = ctypes.CDLL(None)
            ok = bool(libc.mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(n)))
        except (OSError, AttributeError):  # a Python not linked against glibc's malloc
            ok = False
        if ok:
            _applied = n
            _log.debug("malloc arenas capped at %d", n)
        return ok
