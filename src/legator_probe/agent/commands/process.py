"""The ``process`` command kind: list processes, inspect one, or signal one, straight from ``/proc``.

Blocking functions, run in a worker thread. Command lines are reported (sanitised by the executor);
environments never are. PID 1 and the probe itself cannot be signalled.
"""

import os
import pwd
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Final

from pydantic import JsonValue

from legator_probe.agent.commands._runner import Outcome
from legator_probe.protocol.commands import ProcessSpec

__all__ = ["MAX_PROCESSES", "run_process_command"]

MAX_PROCESSES: Final = 5000
"""Most processes a ``list`` returns."""

_PROC: Final = Path("/proc")
_STATES: Final = {
    "R": "running",
    "S": "sleeping",
    "D": "disk-sleep",
    "Z": "zombie",
    "T": "stopped",
    "t": "tracing-stop",
    "X": "dead",
    "I": "idle",
}


@lru_cache(maxsize=256)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _clock() -> tuple[float, float]:
    """Return ``(clock ticks per second, seconds since boot)``."""
    ticks = float(os.sysconf("SC_CLK_TCK"))
    uptime = float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])
    return ticks, uptime


def _describe(pid: int, ticks: float, uptime: float, page: int) -> dict[str, JsonValue] | None:
    base = _PROC / str(pid)
    try:
        raw = (base / "stat").read_text(encoding="utf-8", errors="replace")
        owner = os.stat(base).st_uid
        cmdline = (base / "cmdline").read_bytes()
    except OSError:
        return None  # the process exited while we looked
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks
    age_s = uptime - int(fields[19]) / ticks
    return {
        "pid": pid,
        "ppid": int(fields[1]),
        "pgid": int(fields[2]),
        "user": _user(owner),
        "uid": owner,
        "name": name,
        "cmdline": " ".join(part.decode("utf-8", "replace") for part in cmdline.split(b"\0") if part),
        "state": _STATES.get(fields[0], fields[0]),
        "threads": int(fields[17]),
        "rss_bytes": int(fields[21]) * page,
        "cpu_percent": round(100.0 * cpu_s / age_s, 1) if age_s > 0 else 0.0,
        "started_at": _iso(datetime.now(UTC).timestamp() - age_s),
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _pids() -> Iterator[int]:
    for entry in os.scandir(_PROC):
        if entry.name.isdigit():
            yield int(entry.name)


def _list(spec: ProcessSpec) -> Outcome:
    ticks, uptime = _clock()
    page = os.sysconf("SC_PAGE_SIZE")
    needle = (spec.name_filter or "").lower()
    processes: list[JsonValue] = []
    matched = 0
    for pid in sorted(_pids()):
        info = _describe(pid, ticks, uptime, page)
        if info is None:
            continue
        if needle and needle not in f"{info['name']} {info['cmdline']}".lower():
            continue
        matched += 1
        if len(processes) < MAX_PROCESSES:
            processes.append(info)
    return Outcome("ok", data={"processes": processes, "count": matched, "truncated": matched > len(processes)})


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _inspect(pid: int) -> Outcome:
    ticks, uptime = _clock()
    info = _describe(pid, ticks, uptime, os.sysconf("SC_PAGE_SIZE"))
    if info is None:
        return Outcome.failure("not_found", f"no process {pid}")
    base = _PROC / str(pid)
    try:
        info["open_fds"] = len(os.listdir(base / "fd"))
    except OSError:
        info["open_fds"] = None
    info["exe"] = _readlink(base / "exe")
    info["cwd"] = _readlink(base / "cwd")
    status: dict[str, JsonValue] = {}
    try:
        for line in (base / "status").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key in ("VmPeak", "VmSize", "VmRSS", "VmSwap", "voluntary_ctxt_switches", "Cpus_allowed_list"):
                status[key] = value.strip()
    except OSError:
        pass
    info["status"] = status
    children: list[JsonValue] = []
    for child in _pids():
        try:
            raw = (_PROC / str(child) / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
            children.append(child)
    info["children"] = children
    return Outcome("ok", data=info)


def _signal(pid: int, name: str) -> Outcome:
    if pid in (1, os.getpid()):
        return Outcome.failure("protected_process", f"process {pid} is protected (init or the probe itself)")
    signum = signal.Signals[f"SIG{name}"]
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return Outcome.failure("not_found", f"no process {pid}")
    except PermissionError:
        return Outcome.failure("permission_denied", f"not allowed to signal process {pid}")
    return Outcome("ok", data={"pid": pid, "signal": name, "sent": True})


def run_process_command(spec: ProcessSpec) -> Outcome:
    """Run a ``process`` command.

    Returns:
        ``list``: ``data`` = ``{processes: [{pid, ppid, pgid, user, uid, name, cmdline, state,
        threads, rss_bytes, cpu_percent, started_at}], count, truncated}`` (``cpu_percent`` is the
        average since the process started). ``inspect``: one such entry plus ``exe``, ``cwd``,
        ``open_fds``, ``status`` and ``children``. ``signal``: ``{pid, signal, sent}``. ``error``
        with ``not_found``, ``permission_denied`` or ``protected_process``.
    """
    if spec.action == "list":
        return _list(spec)
    assert spec.pid is not None  # the spec's validator requires a pid for inspect and signal
    if spec.action == "inspect":
        return _inspect(spec.pid)
    assert spec.signal is not None
    return _signal(spec.pid, spec.signal)
