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


def _new_arenas(mode: str) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    applied, grown = result.stdout.split()
    return applied, int(grown)


def test_capped_arenas_are_shared_by_threads() -> None:
    # Each in a fresh interpreter, so the cap applies before any thread exists (as in `legator-probe run`).
    applied, grown = _new_arenas("capped")
    assert applied == "True" and grown == 0
    # The control: without the cap, the same allocating threads do get arenas of their own.
    assert _new_arenas("uncapped")[1] >= 1
