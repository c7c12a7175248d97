"""Giving freed heap memory back: measured in a fresh interpreter, so this process's heap does not matter."""

import logging
import subprocess
import sys

import pytest

from legator_mcp._heap import release_free_heap, trim_heap

pytestmark = pytest.mark.anyio

# Interleave 50 KB buffers (an inventory frame's size) with small long-lived allocations, free the buffers, and
# report the resident size before and after a trim. Without the trim glibc keeps the freed space.
_CHILD = """
import os, sys
from legator_mcp._heap import release_free_heap
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
keep, frames = [], []
for i in range(4000):
    frames.append(bytearray(50_000))
    keep.append(bytearray(600))
frames.clear()
before = rss()
released = release_free_heap()
print(f"{released} {before:.1f} {rss():.1f}")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_a_trim_returns_memory_freed_below_live_allocations() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, encoding="utf-8", check=True, timeout=60
    ).stdout.split()
    released, before, after = out[0] == "True", float(out[1]), float(out[2])
    assert released
    assert before - after > 100, f"resident {before} -> {after} MiB: ~190 MiB of freed buffers should go back"


async def test_trim_heap_logs_what_it_did(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="legator.memory"):
        await trim_heap()
    assert any("heap trimmed: resident" in r.getMessage() for r in caplog.records)
    assert isinstance(release_free_heap(), bool)
