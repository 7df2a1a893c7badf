"""Tune glibc malloc in a process that writes to LanceDB, so its memory stays bounded.

A process committing to LanceDB steadily grew without limit: +233 MiB over 8,000
single-row commits, faster the longer it ran. Python's heap did not grow (tracemalloc),
LanceDB's caches were bounded and reconnecting did not help: the memory was freed but
not returned. glibc raises its mmap threshold each time a large mmapped block is freed
(up to 32 MiB), so after Lance frees its first write buffers, later ones come from the
heap instead, where they fragment it between long-lived small allocations. A fixed
threshold turns that adjustment off: after the first 1,000 commits (caches filling),
the same run grew ~1 MiB per 1,000 instead of 17 and rising, at the same commit speed
with 1 or 8 MiB
(docs/reliability.md, "Memory under writes"). Capping the arenas (one heap per thread
by default, up to 8 per core) halves the growth on its own and is offered as well.

glibc reads `MALLOC_MMAP_THRESHOLD_` and `MALLOC_ARENA_MAX` only at start-up, so these
go through `mallopt`, which governs every allocation after the call; `LanceDBStore`
calls them when it opens, before its writer threads start. An operator's environment
variable always wins.
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
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# glibc refuses thresholds above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit).
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024

_lock = threading.Lock()
_applied: dict[int, int] = {}


def _mallopt(param: int, value: int, env: str) -> bool:
    """Set one glibc malloc parameter for the rest of the process; False where glibc's
    malloc is not in use or the operator set `env`."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if os.environ.get(env):
        return False
    with _lock:
        if _applied.get(param) == value:
            return True
        try:
            ok = bool(ctypes.CDLL(None).mallopt(ctypes.c_int(param), ctypes.c_int(value)))
        except (OSError, AttributeError):  # a Python not linked against glibc's malloc
            ok = False
        if ok:
            _applied[param] = value
            _log.debug("mallopt(%d, %d)", param, value)
        return ok


def fix_mmap_threshold(n_bytes: int) -> bool:
    """Serve every allocation of `n_bytes` or more with its own mmap, returned to the
    system when freed, and stop glibc from raising that threshold by itself.

    True if set; False off glibc (macOS, Windows and musl have other allocators) or
    when `MALLOC_MMAP_THRESHOLD_` is set in the environment.
    """
    if not 0 < n_bytes <= _MAX_MMAP_THRESHOLD:
        raise ValueError(
            f"an mmap threshold must be between 1 byte and 32 MiB, got {n_bytes} bytes"
        )
    return _mallopt(_M_MMAP_THRESHOLD, n_bytes, "MALLOC_MMAP_THRESHOLD_")


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc malloc arenas at `n` for the rest of the process (arenas created
    before stay). True if set; False off glibc or when `MALLOC_ARENA_MAX` is set."""
    if n < 1:
        raise ValueError(f"a malloc arena cap must be at least 1, got {n}")
    return _mallopt(_M_ARENA_MAX, n, "MALLOC_ARENA_MAX")
