"""Keep the long-running agent small: at most two glibc malloc arenas.

glibc gives each thread that allocates its own arena (up to 8 per core); the agent's few worker threads
(inventory, file writes, the status file) each kept one with its free space, about 1 MiB of the idle probe's
resident memory (measured with ``bench/probe_memory.py``: 42.2 → 41.2 MiB). Two arenas are plenty for a
process that runs one event loop and a handful of short-lived threads.
"""

import ctypes
import sys

__all__ = ["limit_malloc_arenas"]

_M_ARENA_MAX = -8
"""``M_ARENA_MAX`` of glibc's ``mallopt``."""


def limit_malloc_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas at ``count``; call before threads start. ``False`` where that is not possible
    (not Linux, or a C library without ``mallopt``, such as musl, which has no per-thread arenas anyway)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, count))
