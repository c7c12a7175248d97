"""Give heap memory the process has freed back to the operating system.

glibc's ``free`` returns memory to the system only from the top of a heap. After a burst, the space the burst
freed stays in the process wherever longer-lived allocations sit above it: 10,000 probes connecting at once each
send a ~50 KB inventory, and the control plane holding those 10,000 connections measured 1,401 MiB resident
afterwards, 871 MiB after one ``malloc_trim(0)`` (``bench/probe_swarm.py``, docs/performance.md). A serving
process therefore trims its heap once a minute: the call walks the free lists and releases whole free pages, in a
worker thread, but holds the allocator's lock meanwhile (about 0.3 s for a fragmented 800 MiB heap) and the pages
it gives back are faulted in again when reused: trimming every 10 s slowed the 10,000-probe bench's connections
(docs/performance.md, 2026-12-07).
"""

import ctypes
import logging
import os
import sys
import time
from collections.abc import Callable

import anyio.to_thread

__all__ = ["TRIM_INTERVAL_S", "release_free_heap", "trim_heap"]

logger = logging.getLogger("legator.memory")

TRIM_INTERVAL_S = 60.0
"""How often a serving process trims its heap (every 10 s held 10,000 probes at about the same resident size as
every 60 s, and connected them slower: docs/performance.md)."""


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None  # a C library without it (musl): nothing to do
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_heap() -> bool:
    """Release the heap's free pages to the system (``malloc_trim(0)``); ``False`` where the C library has no such
    call or nothing was released. Blocking: ctypes drops the GIL for the call, so run it in a worker thread."""
    return _TRIM is not None and bool(_TRIM(0))


def _resident_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def trim_heap() -> None:
    """One trim, off the event loop, logged at debug level with the resident size before and after."""
    if _TRIM is None:
        return
    before, started = _resident_mib(), time.perf_counter()
    await anyio.to_thread.run_sync(release_free_heap)
    logger.debug(
        "heap trimmed: resident %.0f -> %.0f MiB in %.0f ms",
        before, _resident_mib(), (time.perf_counter() - started) * 1000,
    )  # fmt: skip
