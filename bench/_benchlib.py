"""Shared pieces of the ``bench/`` scripts: the machine, ``/proc`` readings, and a control plane in a subprocess.

Not a test helper: nothing here asserts a timing. Every wait is bounded.
"""

import contextlib
import gc
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

__all__ = [
    "REPO",
    "BenchError",
    "VENV_BIN",
    "ControlPlane",
    "ProcSample",
    "cpu_seconds",
    "finish",
    "free_port",
    "machine_info",
    "mib",
    "print_table",
    "proc_sample",
    "raise_fd_limit",
    "source_info",
    "start_group",
    "stop_group",
    "summarize",
    "vm_rss_bytes",
    "write_json",
]

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
"""The scripts are run with the project's ``.venv/bin/python``; ``legator`` and ``legator-probe`` sit beside it."""

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark cannot go on (the message says why); what was measured so far is still reported."""


def mib(value: float | None) -> float | None:
    """Bytes to MiB, one decimal."""
    return None if value is None else round(value / 2**20, 1)


# -- /proc ----------------------------------------------------------------------------------------------------


def _status_field(pid: int, name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def vm_rss_bytes(pid: int) -> int | None:
    """``VmRSS`` of ``pid`` in bytes, or ``None`` if it is gone."""
    return _status_field(pid, "VmRSS")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used so far."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14 and 15 of stat(5))


def fd_count(pid: int) -> int | None:
    """Open file descriptors of ``pid``."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


@dataclass(frozen=True)
class ProcSample:
    """One reading of a process."""

    t: float
    rss: int | None
    hwm: int | None
    cpu_s: float | None
    fds: int | None


def proc_sample(pid: int, *, t0: float, fds: bool = True) -> ProcSample:
    """Read RSS, peak RSS, CPU time and (optionally) the fd count of ``pid``."""
    return ProcSample(
        t=round(time.monotonic() - t0, 2),
        rss=vm_rss_bytes(pid),
        hwm=_status_field(pid, "VmHWM"),
        cpu_s=cpu_seconds(pid),
        fds=fd_count(pid) if fds else None,
    )


def summarize(values: Sequence[float]) -> dict[str, float] | None:
    """min / median / max of ``values`` (``None`` when empty)."""
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


# -- the machine ---------------------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except OSError:
        return None


def _run(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (the same facts ``docs/performance.md`` quotes)."""
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "free_g": _run(["free", "-g"]),
        "uname_r": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": _read("/proc/loadavg"),
        "ulimit_n": {"soft": soft, "hard": hard},
        "ip_local_port_range": _read("/proc/sys/net/ipv4/ip_local_port_range"),
        "tcp_tw_reuse": _read("/proc/sys/net/ipv4/tcp_tw_reuse"),
        "somaxconn": _read("/proc/sys/net/core/somaxconn"),
        "source": source_info(),
    }


def source_info() -> dict[str, Any]:
    """Which legator code is measured: the tree ``legator_probe`` is imported from, and its commit.

    Run against a fixed snapshot with ``PYTHONPATH=<tree>/src`` (the control plane we start inherits it); a
    snapshot made with ``git archive`` carries its commit in a ``COMMIT`` file.
    """
    import legator_probe

    root = Path(legator_probe.__file__).resolve().parents[2]
    info: dict[str, Any] = {"tree": str(root)}
    if (root / ".git").exists():
        info["commit"] = _run(["git", "-C", str(root), "rev-parse", "HEAD"])
        info["src_modified"] = bool(_run(["git", "-C", str(root), "status", "--porcelain", "--", "src"]))
    elif (root / "COMMIT").exists():
        info["commit"] = (root / "COMMIT").read_text(encoding="ascii").strip()
        info["src_modified"] = False
    return info


def tune_gc_for_many_simulated_probes() -> None:
    """Give this process the control plane's collector thresholds (``legator serve`` sets the same).

    One process here stands in for thousands of probe processes. At CPython's default thresholds its own full
    collections (over every simulated probe's objects) took 1-2 s of each 15 s at 4,000 probes, stalling all of
    them at once: the server would be blamed for handshakes this process was too busy to finish.
    """
    from legator_mcp.cli._serve import GC_THRESHOLDS

    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise ``RLIMIT_NOFILE`` (soft to hard, and hard too when root) so ``needed`` descriptors fit.

    Child processes (the control plane we start) inherit the raised limit.

    Raises:
        BenchError: If the limit cannot be raised far enough.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, needed)
    if want > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        raise BenchError(
            f"need {needed} file descriptors but `ulimit -n` is {soft} (hard {hard}); raise it (ulimit -n {needed})"
        )
    return soft, hard


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- processes we start ---------------------------------------------------------------------------------------


def start_group(argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the leader of a new session (so :func:`stop_group` reaches its children), output to ``log``."""
    with open(log, "ab") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )  # fmt: skip


def stop_group(procs: Sequence[subprocess.Popen[bytes]], *, timeout_s: float = 15.0) -> None:
    """SIGTERM the process groups of ``procs`` (started by :func:`start_group`) at once, then SIGKILL what is left.

    A group is signalled only while its leader has not been reaped, so its id cannot belong to someone else.
    """
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in live:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# -- a control plane in a subprocess ------------------------------------------------------------------------


class ControlPlane:
    """``legator serve`` on loopback in a subprocess (its own session), logging to a file.

    With ``url`` given instead, it is a server someone else runs: nothing is started or stopped, and ``pid``
    (for RSS) is whatever the caller passes.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None,
        log_path: Path | None = None,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
        url: str | None = None,
        admin_key_file: Path | None = None,
        pid: int | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.database_url = database_url
        self.env = dict(env or {})
        self.owned = url is None
        self.port = port or free_port()
        self.url = (url or f"http://127.0.0.1:{self.port}").rstrip("/")
        self.admin_key_file = admin_key_file or (data_dir / "admin-api-key" if data_dir else None)
        self.pid = pid
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None
        self.starts = 0

    @property
    def ws_url(self) -> str:
        """The gateway's WebSocket URL."""
        return self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws/probe"

    def admin_key(self) -> str:
        """The admin API key the server wrote on first start."""
        if self.admin_key_file is None:
            raise BenchError("attaching to a server needs --admin-key-file")
        return self.admin_key_file.read_text(encoding="ascii").strip()

    def start(self, *, timeout_s: float = 90.0) -> None:
        """Start ``legator serve`` and wait until ``/readyz`` answers and the admin key exists.

        Raises:
            BenchError: If it exits or is not ready within ``timeout_s``.
        """
        if not self.owned:
            self._wait_ready(timeout_s)
            return
        assert self.data_dir is not None and self.log_path is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [str(VENV_BIN / "legator"), "serve", "--data-dir", str(self.data_dir), "--listen",
                f"127.0.0.1:{self.port}"]  # fmt: skip
        if self.database_url:
            argv += ["--database-url", self.database_url]
        if self._log is None:
            self._log = open(self.log_path, "a", encoding="utf-8")  # closed in stop()
        self._log.write(f"\n=== {datetime.now(UTC).isoformat()} {' '.join(argv)}\n")
        self._log.flush()
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env}, start_new_session=True,
        )  # fmt: skip
        self.pid = self._proc.pid
        self.starts += 1
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: str = "no answer"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BenchError(f"the control plane exited with {self._proc.returncode}; see {self.log_path}")
            try:
                answer = httpx.get(self.url + "/readyz", timeout=5)
                if answer.status_code == 200 and (self.admin_key_file is None or self.admin_key_file.exists()):
                    return
                last = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise BenchError(f"the control plane at {self.url} was not ready within {timeout_s:g} s ({last})")

    def terminate(self, *, timeout_s: float = 30.0) -> float | None:
        """SIGTERM the server we started and wait (then SIGKILL); returns how long it took to exit."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        return round(time.monotonic() - started, 2)

    def stop(self) -> None:
        """Stop the server we started (no-op when attached) and close its log."""
        self.terminate()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def create_token(self, *, level: str = "observe", expires_in: str = "2h") -> str:
        """A multi-use registration token, issued with the admin key."""
        answer = httpx.post(
            self.url + "/api/v1/tokens",
            headers={"Authorization": f"Bearer {self.admin_key()}"},
            json={"multi_use": True, "policy_level": level, "expires_in": expires_in},
            timeout=30,
        )
        answer.raise_for_status()
        return str(answer.json()["token"])

    def get_json(self, path: str, *, timeout_s: float = 60.0) -> Any:
        """GET an admin REST resource as JSON (``None`` if it failed)."""
        try:
            answer = httpx.get(
                self.url + path, headers={"Authorization": f"Bearer {self.admin_key()}"}, timeout=timeout_s
            )
        except httpx.HTTPError:
            return None
        return answer.json() if answer.status_code == 200 else None


# -- output ---------------------------------------------------------------------------------------------------


def print_table(title: str, rows: Sequence[tuple[str, object]]) -> None:
    """Print two aligned columns."""
    width = max((len(name) for name, _ in rows), default=0)
    print(f"\n{title}")
    print("-" * len(title))
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def finish(
    results: dict[str, Any],
    *,
    report: Callable[[dict[str, Any]], None],
    json_path: str | None,
    failed: BaseException | None,
) -> None:
    """End a bench script: print the report, write ``--json``, and exit non-zero if the run failed.

    Raises:
        SystemExit: If ``failed`` (what was measured before the failure is reported and written first).
    """
    report(results)
    if json_path:
        write_json(Path(json_path), results)
        print(f"\nwrote {json_path}")
    if failed is not None:
        raise SystemExit(f"failed: {results.get('error')}")
