"""Heartbeat metrics read from ``/proc`` and the root file system: cheap enough to run on the event loop."""

import os
from pathlib import Path
from typing import Final

from legator_probe.protocol.payloads import HeartbeatPayload

__all__ = ["collect_heartbeat", "disk_usage", "memory", "uptime_s"]

_PROC: Final = Path("/proc")


def uptime_s(proc: Path = _PROC) -> float:
    """Seconds since boot (0.0 when ``/proc/uptime`` cannot be read)."""
    try:
        return max(float((proc / "uptime").read_text(encoding="ascii").split()[0]), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def memory(proc: Path = _PROC) -> tuple[int, int]:
    """Return ``(total, used)`` bytes, where used = MemTotal - MemAvailable (zeros when unknown)."""
    values: dict[str, int] = {}
    try:
        for line in (proc / "meminfo").read_text(encoding="ascii").splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable", "MemFree"):
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable", values.get("MemFree", total))
    return total, max(total - available, 0)


def disk_usage(path: str = "/") -> tuple[int, int]:
    """Return ``(total, used)`` bytes of the file system holding ``path`` (zeros when unknown)."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return 0, 0
    total = stats.f_blocks * stats.f_frsize
    return total, max(total - stats.f_bfree * stats.f_frsize, 0)


def _load() -> tuple[float, float, float]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return 0.0, 0.0, 0.0
    return max(one, 0.0), max(five, 0.0), max(fifteen, 0.0)


def collect_heartbeat(*, running_commands: int = 0) -> HeartbeatPayload:
    """Build a heartbeat with real metrics: uptime, load averages, memory and root disk usage."""
    mem_total, mem_used = memory()
    disk_total, disk_used = disk_usage("/")
    return HeartbeatPayload(
        uptime_s=uptime_s(),
        load=_load(),
        mem_total_bytes=mem_total,
        mem_used_bytes=mem_used,
        disk_total_bytes=disk_total,
        disk_used_bytes=disk_used,
        running_commands=running_commands,
    )
