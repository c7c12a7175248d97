"""Keep the long-running agent small: at most two glibc malloc arenas, and large blocks given back when freed.

glibc gives each thread that allocates its own arena (up to 8 per core); the agent's few worker threads
(inventory, file writes, the status file) each kept one with its free space, about 1 MiB of the idle probe's
resident memory (measured with ``bench/probe_memory.py``: 42.2 → 41.2 MiB). Two arenas are plenty for a
process that runs one event loop and a handful of short-lived threads.

glibc also serves blocks of 128 KiB and more with ``mmap`` (unmapped when freed), but raises that threshold to
the size of each such block freed, up to 32 MiB, and the heap's trim threshold to twice as much. After one large
frame (a 16 MiB ``file_write``, an 8 MiB ``file_read`` result) every later buffer below that size comes from
the heap, which is then no longer trimmed: an idle probe kept about 39 MiB more after one 8 MiB ``file_read``
instead of 7. A fixed threshold keeps glibc's first behaviour.
"""

import ctypes
import sys

__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold", "limit_malloc_arenas"]

_M_MMAP_THRESHOLD = -3
"""``M_MMAP_THRESHOLD`` of glibc's ``mallopt``."""

_M_ARENA_MAX = -8
"""``M_ARENA_MAX`` of glibc's ``mallopt``."""

MMAP_THRESHOLD = 128 * 1024
"""glibc's initial ``mmap`` threshold, in bytes."""


def _mallopt(param: int, value: int) -> bool:
    """Call glibc's ``mallopt``; ``False`` where that is not possible (not Linux, or a C library without
    ``mallopt``, such as musl, which has neither per-thread arenas nor a moving threshold)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(param, value))


def limit_malloc_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas at ``count``; call before threads start. ``False`` where that is not possible."""
    return _mallopt(_M_ARENA_MAX, count)


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Serve blocks of ``size`` bytes and more with ``mmap`` from now on, whatever was freed before (this also
    keeps the heap's trim threshold at its default). ``False`` where that is not possible."""
    return _mallopt(_M_MMAP_THRESHOLD, size)
