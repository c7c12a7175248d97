"""The agent caps glibc's malloc arenas: threads that allocate share them instead of each reserving its own."""

import subprocess
import sys

_PROGRAM = """
import sys, threading
from legator_probe.agent._memory import limit_malloc_arenas

def arena_heaps():
    # A glibc thread arena is a heap reserved in 64 MiB: its unused part is a large inaccessible mapping.
    count = 0
    for line in open("/proc/self/maps", encoding="ascii"):
        fields = line.split()
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if fields[1] == "---p" and len(fields) == 5 and end - start > 1 << 20:
            count += 1
    return count

applied = limit_malloc_arenas(1) if sys.argv[1] == "capped" else None
before = arena_heaps()
kept = []
def work():
    kept.append([bytearray(8192) for _ in range(500)])
threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(applied, arena_heaps() - before)
"""


def _printed(program: str, mode: str) -> list[str]:
    """Run ``program`` with ``mode`` in a fresh interpreter and return the words it printed."""
    result = subprocess.run(
        [sys.executable, "-c", program, mode],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _measure(program: str, mode: str) -> tuple[str, int]:
    """Whether the setting applied, and the figure ``program`` printed."""
    applied, figure = _printed(program, mode)
    return applied, int(figure)


def _new_arenas(mode: str) -> tuple[str, int]:
    return _measure(_PROGRAM, mode)


def test_capped_arenas_are_shared_by_threads() -> None:
    # Each in a fresh interpreter, so the cap applies before any thread exists (as in `legator-probe run`).
    applied, grown = _new_arenas("capped")
    assert applied == "True" and grown == 0
    # The control: without the cap, the same allocating threads do get arenas of their own.
    assert _new_arenas("uncapped")[1] >= 1


_STRING_CACHE_PROGRAM = """
import sys, uuid
import pydantic_core
from legator_probe.protocol.messages import parse_message

def rss_kib():
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

def frame():
    ids = [str(uuid.uuid4()) for _ in range(3)]
    return (
        '{"id": "%s", "type": "error", "ts": "2026-01-01T00:00:00Z", '
        '"payload": {"code": "c", "message": "%s", "ref_id": "%s"}}' % tuple(ids)
    )

if sys.argv[1] == "probe":
    parse = parse_message
else:
    parse = lambda text: pydantic_core.from_json(text, cache_strings=True)
for _ in range(200):
    parse(frame())
before = rss_kib()
for _ in range(20_000):
    parse(frame())
print(rss_kib() - before)
"""


def _growth_kib(mode: str) -> int:
    (growth,) = _printed(_STRING_CACHE_PROGRAM, mode)
    return int(growth)


def test_parsing_frames_keeps_no_strings_alive() -> None:
    # pydantic-core's JSON string cache is process-wide: with it, every distinct short string (ids, nonces)
    # stays referenced until 16,384 slots are full, about 1.7 MiB for a probe that has run for a while.
    assert _growth_kib("probe") < 512
    # The control: the same frames through the cache do grow the process.
    assert _growth_kib("cached") > 1024


_THRESHOLD_PROGRAM = """
import sys
from legator_probe.agent._memory import fix_mmap_threshold

def rss_kib():
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

applied = fix_mmap_threshold() if sys.argv[1] == "fixed" else None
before = rss_kib()
frame = "x" * (16 << 20)  # one large frame, freed again
del frame
buffers = ["y" * ((1 << 20) - 64) + str(i) for i in range(12)]  # later output buffers, freed again
del buffers
print(applied, rss_kib() - before)
"""


def _kept_kib(mode: str) -> tuple[str, int]:
    return _measure(_THRESHOLD_PROGRAM, mode)


def test_freed_large_buffers_leave_after_a_large_frame() -> None:
    applied, kept = _kept_kib("fixed")
    assert applied == "True" and kept < 4096
    # The control: glibc's moving threshold keeps the freed buffers in the heap.
    assert _kept_kib("moving")[1] > 8192
