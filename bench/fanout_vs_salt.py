#!/usr/bin/env python
"""Fan-out latency: the same ``echo hi`` on N real Legator probes and on N real salt-minions, in one run.

1. **Salt**: a separate venv (``--salt-venv``, created with ``pip install <--salt-spec>`` when missing), one
   ``salt-master`` and N ``salt-minion`` processes on loopback, each with its own config, pki, cache, socket and log
   dirs in the work dir, running as the current user, ``auto_accept: True``, free publish/return ports; ready once
   every minion answers ``test.ping``.
2. **Legator**: ``legator serve`` on SQLite in the work dir and N real ``legator-probe run`` processes
   (``legator-probe init`` with a registration token, distinct ``LEGATOR_HOSTNAME``, tagged); ready once the
   control plane shows all N online.
3. **Rounds**: after ``--warmup`` untimed runs on each side, ``--rounds`` times, interleaved so that other load on
   the machine hits both alike:

   * Legator: ``POST /api/v1/fleet/by-tag/{tag}/command?wait=true`` with ``{"command": "echo hi"}`` (admin API key,
     kept-alive HTTP connection), timed until the JSON answer with the N per-host results is parsed; every round
     must report N ``ok`` results with the expected output;
   * Salt CLI: ``salt -L <ids> cmd.run 'echo hi' --out=json --static``, timed as a subprocess (what a user at a
     shell sees, including the CLI's start-up);
   * Salt LocalClient: ``LocalClient.cmd(ids, 'cmd.run', ['echo hi'], tgt_type='list')`` in one long-lived Python
     of the salt venv (Salt without its CLI start-up), timed here around the request and its answer.

   With several ``--probes`` values (``5,10,20``) the largest fleet is started once and smaller ones are its
   first N members (probes tagged ``fanout-n<N>``, minions targeted by list).
4. **Simulated** (``--simulated 1000``): another control plane and that many simulated probes in this process
   (``probe_swarm.SimProbe``: the real wire protocol, every signed ``command`` verified and answered with a
   ``command_result``) dialling at ``--sim-connect-rate`` a second, then the same fan-out ``--rounds`` times; the
   control plane's CPU seconds per fan-out are reported with each round (less exposed to other load than wall time).
5. ``--profile``: after the timed rounds, more rounds of the Legator fan-out (real and simulated) with ``py-spy``
   sampling the control plane (kept apart so that the sampler does not perturb the timed figures); the hottest
   frames are reported.

Prints medians and the Salt/Legator ratios; ``--json`` writes everything. No timing assertions; every wait is
bounded; every process started here is stopped by its id at the end.

Run with the project venv: ``.venv/bin/python bench/fanout_vs_salt.py --probes 5,10,20 --rounds 7 --simulated 1000``.
"""

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx
from _benchlib import (  # pyright: ignore[reportMissingImports]
    VENV_BIN,
    BenchError,
    ControlPlane,
    cpu_seconds,
    finish,
    free_port,
    machine_info,
    print_table,
    raise_fd_limit,
    start_group,
    stop_group,
    summarize,
    tune_gc_for_many_simulated_probes,
)
from probe_swarm import Swarm, register_all, wait_all_ready  # pyright: ignore[reportMissingImports]

DEFAULT_SALT_VENV = Path.home() / ".cache" / "legator-bench" / "salt-venv"
DEFAULT_SALT_SPEC = "salt==3007.16"
"""3007.17 pins ``certifi>=2026.10.23``, which the package index reachable here did not have yet."""
TAG = "fanout"
SIM_TAG = "swarm"
"""The tag ``probe_swarm`` registers its simulated probes with."""
NO_RATE_LIMIT = {"LEGATOR_RATE_LIMIT_PER_MINUTE": "1000000"}
"""All registrations come from 127.0.0.1; the per-IP limit would time the limiter, not the fan-out."""

_SALT_DIRS = """\
user: {user}
root_dir: {root}
pki_dir: {root}/pki
cachedir: {root}/cache
sock_dir: {root}/sock
pidfile: {root}/salt.pid
log_file: {root}/salt.log
"""
"""Everything a salt daemon writes, under its own ``root``; it runs as the current user."""

SALT_MASTER_CONF = (
    _SALT_DIRS
    + """\
id: bench-master
interface: 127.0.0.1
publish_port: {publish_port}
ret_port: {ret_port}
key_logfile: {root}/key.log
auto_accept: True
file_roots:
  base: [{root}/srv]
pillar_roots:
  base: [{root}/pillar]
"""
)

SALT_MINION_CONF = (
    _SALT_DIRS
    + """\
id: {minion_id}
master: 127.0.0.1
master_port: {ret_port}
publish_port: {publish_port}
acceptance_wait_time: 1
enable_fqdns_grains: False
"""
)
# enable_fqdns_grains: reverse DNS of every address at start-up; off so that a sandbox without DNS does not stall.

SALT_DRIVER = """\
import json, sys, time
import salt.client

client = salt.client.LocalClient(c_path=sys.argv[1])
print("@@" + json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    t0 = time.perf_counter()
    try:
        out = {"ret": client.cmd(req["tgt"], req["fun"], req["arg"], tgt_type="list", timeout=req["timeout"])}
    except Exception as exc:
        out = {"error": repr(exc)}
    out["seconds"] = time.perf_counter() - t0
    print("@@" + json.dumps(out, default=str), flush=True)
"""
"""A long-lived LocalClient: one JSON request a line on stdin, one ``@@``-prefixed JSON answer a line on stdout."""


# -- Salt -------------------------------------------------------------------------------------------------------


def ensure_salt_venv(venv: Path, spec: str) -> dict[str, Any]:
    """The salt venv's version, creating the venv and installing ``spec`` into it first when it has no salt.

    Raises:
        BenchError: If creating or installing fails.
    """
    info: dict[str, Any] = {"venv": str(venv), "spec": spec}
    if not (venv / "bin" / "salt-master").exists():
        print(f"creating {venv} and installing {spec} (once; takes a minute)")
        started = time.monotonic()
        venv.parent.mkdir(parents=True, exist_ok=True)
        for argv in ([sys.executable, "-m", "venv", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", spec]):  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
        info["installed_seconds"] = round(time.monotonic() - started, 1)
    done = subprocess.run([str(venv / "bin" / "python"), "-c", "import salt.version; print(salt.version.__version__)"],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"salt in {venv} does not import: {done.stderr.strip()[-800:]}")
    info["salt_version"] = done.stdout.strip()
    return info


class SaltCluster:
    """One ``salt-master`` and N ``salt-minion`` processes on loopback, all configured under ``root``."""

    def __init__(self, venv: Path, root: Path, count: int) -> None:
        self.bin = venv / "bin"
        self.root = root
        self.ids = [f"bench-minion-{i:02d}" for i in range(count)]
        self.publish_port = free_port()
        self.ret_port = free_port()
        self.conf_dir = root / "master" / "conf"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.driver: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Write the configs and start the master, then every minion."""
        user = getpass.getuser()
        master = self.root / "master"
        for sub in ("conf", "srv", "pillar"):
            (master / sub).mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "master").write_text(
            SALT_MASTER_CONF.format(root=master, user=user, publish_port=self.publish_port, ret_port=self.ret_port),
            encoding="utf-8",
        )
        self.procs.append(start_group([str(self.bin / "salt-master"), "-c", str(self.conf_dir), "-l", "warning"],
                                      log=master / "console.log"))  # fmt: skip
        for minion_id in self.ids:
            root = self.root / minion_id
            (root / "conf").mkdir(parents=True, exist_ok=True)
            (root / "conf" / "minion").write_text(
                SALT_MINION_CONF.format(root=root, user=user, minion_id=minion_id, publish_port=self.publish_port,
                                        ret_port=self.ret_port),
                encoding="utf-8",
            )  # fmt: skip
            self.procs.append(start_group([str(self.bin / "salt-minion"), "-c", str(root / "conf"), "-l", "warning"],
                                          log=root / "console.log"))  # fmt: skip

    def start_driver(self, *, timeout_s: float = 120.0) -> None:
        """Start the long-lived LocalClient (see :data:`SALT_DRIVER`)."""
        script = self.root / "driver.py"
        script.write_text(SALT_DRIVER, encoding="utf-8")
        log = open(self.root / "driver.log", "ab")  # the child keeps its own descriptor
        try:
            self.driver = subprocess.Popen(
                [str(self.bin / "python"), str(script), str(self.conf_dir / "master")], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        self._read(timeout_s)

    def _read(self, timeout_s: float) -> dict[str, Any]:
        driver = self.driver
        assert driver is not None and driver.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([driver.stdout], [], [], left)[0]:
                raise BenchError(f"the salt LocalClient did not answer within {timeout_s:g} s")
            line = driver.stdout.readline()
            if not line:
                raise BenchError(f"the salt LocalClient exited; see {self.root / 'driver.log'}")
            if line.startswith("@@"):
                return cast(dict[str, Any], json.loads(line[2:]))

    def client_cmd(self, ids: Sequence[str], fun: str, arg: Sequence[str], *, timeout_s: float) -> dict[str, Any]:
        """Run ``fun`` on ``ids`` through the LocalClient; ``ret`` maps minion id to its return."""
        driver = self.driver
        assert driver is not None and driver.stdin is not None
        driver.stdin.write(json.dumps({"tgt": list(ids), "fun": fun, "arg": list(arg), "timeout": timeout_s}) + "\n")
        driver.stdin.flush()
        return self._read(timeout_s + 60)

    def wait_ready(self, *, timeout_s: float) -> float:
        """Wait until every minion answers ``test.ping``; returns how long that took.

        Raises:
            BenchError: If a process exited or not all minions answered within ``timeout_s``.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        answered: set[str] = set()
        while time.monotonic() < deadline:
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead:
                raise BenchError(f"salt processes exited: {dead}; see the logs under {self.root}")
            answer = self.client_cmd(self.ids, "test.ping", [], timeout_s=5)
            ret = cast(dict[str, Any], answer.get("ret") or {})
            answered = {k for k, v in ret.items() if v is True}
            if answered >= set(self.ids):
                return time.monotonic() - started
            time.sleep(1)
        raise BenchError(f"{len(answered)}/{len(self.ids)} salt-minions answered test.ping within {timeout_s:g} s")

    def cli_cmd(self, ids: Sequence[str], command: str, *, timeout_s: float) -> tuple[float, dict[str, Any]]:
        """``salt -L ids cmd.run command``: wall time of the subprocess, and its JSON output."""
        argv = [str(self.bin / "salt"), "-c", str(self.conf_dir), "-L", ",".join(ids), "--out=json", "--static",
                "-t", str(int(timeout_s)), "cmd.run", command]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s + 60, check=False)
        elapsed = time.perf_counter() - started
        try:
            out = cast(dict[str, Any], json.loads(done.stdout or "{}"))
        except json.JSONDecodeError:
            out = {}
        if done.returncode != 0 or not out:
            out["_error"] = f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
        return elapsed, out

    def stop(self) -> None:
        """Stop the LocalClient, the minions and the master (each by its process group)."""
        if self.driver is not None and self.driver.poll() is None:
            assert self.driver.stdin is not None
            with contextlib.suppress(OSError):
                self.driver.stdin.close()
            try:
                self.driver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.driver.pid, signal.SIGKILL)
                self.driver.wait(timeout=10)
        stop_group(self.procs[1:], timeout_s=20)  # minions first: they would reconnect to a restarting master
        stop_group(self.procs[:1], timeout_s=20)


def _check_salt(ret: dict[str, Any], ids: Sequence[str], expected: str) -> str | None:
    """Why a Salt answer is not N successes of ``expected`` (``None`` when it is)."""
    if "_error" in ret or "error" in ret:
        return str(ret.get("_error") or ret.get("error"))
    wrong = {i: ret.get(i) for i in ids if ret.get(i) != expected}
    return (
        f"{len(wrong)}/{len(ids)} minions did not return {expected!r}: {dict(list(wrong.items())[:3])}"
        if wrong
        else None
    )


# -- Legator ----------------------------------------------------------------------------------------------------


def fan_out_body(args: argparse.Namespace, targets: int) -> dict[str, Any]:
    """The fan-out request: the shell form of the command, all targets in flight at once (up to the API's cap)."""
    return {"command": args.command, "timeout_s": args.timeout, "stream": args.stream,
            "max_concurrency": min(targets, args.max_concurrency)}  # fmt: skip


def _check_legator(answer: httpx.Response, count: int, expected: str) -> str | None:
    """Why a fan-out answer is not ``count`` successes with ``expected`` output (``None`` when it is)."""
    if answer.status_code != 200:
        return f"HTTP {answer.status_code}: {answer.text[:300]}"
    data = cast(dict[str, Any], answer.json())
    summary = cast(dict[str, Any], data.get("summary") or {})
    results = cast(list[dict[str, Any]], data.get("results") or [])
    good = [r for r in results if r.get("status") == "ok" and r.get("exit_code") == 0 and r.get("stdout") == expected]
    if summary.get("succeeded") != count or len(good) != count:
        statuses = Counter(str(r.get("status")) for r in results)
        return f"{len(good)}/{count} ok with {expected!r}; summary {summary}; statuses {dict(statuses)}"
    return None


def _init_probe(server: ControlPlane, token: str, work: Path, index: int, tags: list[str]) -> Path:
    hostname = f"bench-fan-{index:02d}"
    config = work / "probes" / f"{hostname}.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.unlink(missing_ok=True)
    done = subprocess.run(
        [str(VENV_BIN / "legator-probe"), "init", "--server", server.url, "--token", token, "--tags", ",".join(tags),
         "--hostname", hostname, "--config", str(config)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "LEGATOR_HOSTNAME": hostname}, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"legator-probe init {hostname} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return config


def start_probes(server: ControlPlane, work: Path, sizes: Sequence[int]) -> list[subprocess.Popen[bytes]]:
    """``legator-probe init`` (four at a time) and ``run`` for the largest of ``sizes``; probe i carries ``fanout``
    and ``fanout-n<N>`` for every N in ``sizes`` above i."""
    token = server.create_token(level="observe")
    count = max(sizes)

    def init(i: int) -> Path:
        return _init_probe(server, token, work, i, [TAG, *(f"{TAG}-n{n}" for n in sizes if i < n)])

    with ThreadPoolExecutor(max_workers=4) as pool:
        configs = list(pool.map(init, range(count)))
    return [
        start_group(
            [str(VENV_BIN / "legator-probe"), "run", "--config", str(c)],
            log=c.with_suffix(".log"),
            env={"LEGATOR_HOSTNAME": c.stem},
        )  # fmt: skip
        for c in configs
    ]


def wait_online(
    server: ControlPlane, procs: Sequence[subprocess.Popen[bytes]], count: int, *, timeout_s: float
) -> float:
    """Wait until the control plane shows ``count`` probes tagged :data:`TAG` online; returns how long it took.

    Raises:
        BenchError: If a probe exited or they were not all online within ``timeout_s``.
    """
    started = time.monotonic()
    online = 0
    while time.monotonic() - started < timeout_s:
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            raise BenchError(f"legator-probe exited: {dead[:3]}")
        view = server.get_json(f"/api/v1/fleet/by-tag/{TAG}", timeout_s=10)
        probes = cast(list[dict[str, Any]], view.get("probes") or []) if isinstance(view, dict) else []
        online = sum(1 for p in probes if p.get("status") == "online")
        if online >= count:
            return time.monotonic() - started
        time.sleep(0.5)
    raise BenchError(f"{online}/{count} probes online within {timeout_s:g} s")


# -- py-spy -------------------------------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` (on-CPU samples, collapsed stacks) of one process, from :meth:`start` to :meth:`stop`."""

    def __init__(self, py_spy: str, pid: int, out: Path) -> None:
        self.argv = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--output", str(out)]
        self.out = out
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Attach, and give py-spy a moment to do so before the profiled work starts."""
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True)  # fmt: skip
        time.sleep(1.5)

    def stop(self) -> dict[str, Any]:
        """Stop sampling (SIGINT makes py-spy write its output); the hottest frames."""
        spy = self._proc
        if spy is None:
            return {"error": "not started"}
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate(timeout=10)
        if not self.out.exists():
            return {"error": f"py-spy wrote nothing ({spy.returncode}): {err.decode(errors='replace')[-400:]}"}
        return collapse_profile(self.out.read_text(encoding="utf-8", errors="replace"))


def profiler_for(args: argparse.Namespace, pid: int | None, out: Path) -> Profiler | None:
    """A :class:`Profiler` of ``pid`` if ``--profile`` was asked for and py-spy is there."""
    py_spy = args.py_spy or shutil.which("py-spy")
    if not args.profile or not py_spy or pid is None:
        return None
    return Profiler(py_spy, pid, out)


IDLE_LEAVES = ("aiosqlite/core.py:59)", "Condition.wait (", "Queue.get (", "EpollSelector.select (", "select.poll (")
"""Leaf frames of threads that are only waiting (py-spy cannot tell a blocked ``queue.get`` from work)."""


_PACKAGE_RE = re.compile(r"\(([A-Za-z_]\w*)(?:/|\.py:)")
"""The package (or stdlib module) of a py-spy frame ``name (path/to/file.py:line)``."""


def collapse_profile(raw: str, top: int = 20) -> dict[str, Any]:
    """Where the busy samples of py-spy's collapsed stacks (``frame;frame;... count`` lines) are.

    Samples whose leaf is a wait (:data:`IDLE_LEAVES`) are dropped. Returns the leaf frames (self), the deepest
    Legator frame of each sample (the Legator line that spent it), Legator's frames (inclusive) and the share of
    samples each package or stdlib module appears in (inclusive). SQLAlchemy's async layer runs ORM code on
    greenlets, which py-spy shows as stacks of their own: their Legator callers are missing.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    deepest: Counter[str] = Counter()
    busy = idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        if any(mark in frames[-1] for mark in IDLE_LEAVES):
            idle += count
            continue
        busy += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        for package in {m.group(1) for m in map(_PACKAGE_RE.search, frames) if m}:
            packages[package] += count
        ours = [f for f in frames if "legator_mcp/" in f or "legator_probe/" in f]
        deepest[ours[-1] if ours else f"(no Legator frame: greenlet or thread) {frames[0]}"] += count

    def share(counter: Counter[str], keep: Callable[[str], bool] = lambda _f: True) -> list[tuple[str, float]]:
        return [(f, round(100 * c / busy, 1)) for f, c in counter.most_common() if keep(f)][:top]

    if not busy:
        return {"busy_samples": 0, "idle_samples": idle}
    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "self_pct": share(own),
        "deepest_legator_frame_pct": share(deepest),
        "inclusive_pct_legator": share(inclusive, lambda f: "legator_mcp" in f or "legator_probe" in f),
        "inclusive_pct_packages": share(packages),
    }


# -- the real fleets ----------------------------------------------------------------------------------------------


def run_real(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    sizes = sorted(set(args.probes))
    count = sizes[-1]
    expected = args.expected_output
    server = ControlPlane(data_dir=work / "legator", log_path=work / "legator.log", env=NO_RATE_LIMIT)
    probes: list[subprocess.Popen[bytes]] = []
    salt: SaltCluster | None = None
    try:
        if not args.no_salt:
            results["salt"] = ensure_salt_venv(Path(args.salt_venv).expanduser(), args.salt_spec)
            salt = SaltCluster(Path(args.salt_venv).expanduser(), work / "salt", count)
            salt.start()  # minions authenticate while the Legator side starts
            results["salt"] |= {"minions": count, "pids": [p.pid for p in salt.procs],
                                "ports": [salt.publish_port, salt.ret_port]}  # fmt: skip
        t_start = time.monotonic()
        server.start()
        probes = start_probes(server, work, sizes)
        results["legator"] = {"server_pid": server.pid, "probe_pids": [p.pid for p in probes],
                              "seconds_to_online": round(wait_online(server, probes, count,
                                                                     timeout_s=args.connect_timeout), 1)}  # fmt: skip
        print(f"legator: {count} probes online after {time.monotonic() - t_start:.1f} s (server pid {server.pid})")
        if salt is not None:
            salt.start_driver()
            results["salt"]["seconds_to_ready"] = round(salt.wait_ready(timeout_s=args.connect_timeout), 1)
            print(f"salt: {count} minions answer test.ping (master pid {salt.procs[0].pid})")

        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key()}"},
                              timeout=args.timeout + 60)  # fmt: skip
        try:
            server_cpu: list[float] = []

            def legator_once(n: int) -> float:
                cpu_before = cpu_seconds(server.pid) if server.pid else None
                started = time.perf_counter()
                answer = client.post(f"/api/v1/fleet/by-tag/{TAG}-n{n}/command", params={"wait": "true"},
                                     json=fan_out_body(args, n))  # fmt: skip
                problem = _check_legator(answer, n, expected)
                elapsed = time.perf_counter() - started
                cpu_after = cpu_seconds(server.pid) if server.pid else None
                if problem:
                    raise BenchError(f"legator fan-out to {n}: {problem}")
                if cpu_before is not None and cpu_after is not None:
                    server_cpu.append(round(cpu_after - cpu_before, 3))
                return elapsed

            def salt_cli_once(n: int) -> float:
                assert salt is not None
                elapsed, out = salt.cli_cmd(salt.ids[:n], args.command, timeout_s=args.timeout)
                problem = _check_salt(out, salt.ids[:n], expected.rstrip("\n"))
                if problem:
                    raise BenchError(f"salt CLI to {n}: {problem}")
                return elapsed

            def salt_client_once(n: int) -> float:
                assert salt is not None
                started = time.perf_counter()
                answer = salt.client_cmd(salt.ids[:n], "cmd.run", [args.command], timeout_s=args.timeout)
                elapsed = time.perf_counter() - started
                problem = _check_salt(cast(dict[str, Any], answer.get("ret") or answer), salt.ids[:n],
                                      expected.rstrip("\n"))  # fmt: skip
                if problem:
                    raise BenchError(f"salt LocalClient to {n}: {problem}")
                return elapsed

            sides: dict[str, Callable[[int], float]] = {"legator": legator_once}
            if salt is not None:
                sides |= {"salt_cli": salt_cli_once, "salt_client": salt_client_once}
            warm = {name: [round(once(count), 4) for _ in range(args.warmup)] for name, once in sides.items()}
            results["warmup_s"] = warm
            print(f"warm-up at N={count}: {warm}")
            per_n: dict[str, Any] = {}
            results["by_n"] = per_n
            for n in sizes:
                times: dict[str, list[float]] = {name: [] for name in sides}
                load: list[float] = []
                for r in range(args.rounds):
                    for name, once in sides.items():
                        times[name].append(round(once(n), 4))
                    load.append(os.getloadavg()[0])
                    print(f"  N={n} round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.3f} s"
                                                                               for k, v in times.items())
                          + f" (load {load[-1]:.1f})")  # fmt: skip
                per_n[str(n)] = _summarise_round(times) | {
                    "loadavg_1m": load,
                    "legator_server_cpu_s": server_cpu[-args.rounds :],  # includes its heartbeats meanwhile
                }
            profiler = profiler_for(args, server.pid, work / "legator-profile.txt")
            if profiler is not None:
                profiler.start()
                try:
                    for _ in range(args.profile_rounds):
                        legator_once(count)
                finally:
                    results["profile"] = {"n": count, "rounds": args.profile_rounds, **profiler.stop()}
        finally:
            client.close()
        results["legator"]["server_cpu_s"] = cpu_seconds(server.pid) if server.pid else None
    finally:
        if salt is not None:
            salt.stop()
        stop_group(probes, timeout_s=15)
        server.stop()


def _summarise_round(times: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {name: {"runs_s": values, **(summarize(values) or {})} for name, values in times.items()}
    legator = times.get("legator", [])
    for name in ("salt_cli", "salt_client"):
        other = times.get(name, [])
        if legator and other:
            out[f"ratio_{name}_over_legator"] = round(statistics.median(other) / statistics.median(legator), 1)
            # Each round's two figures were taken seconds apart: their ratio is less exposed to load that drifts.
            paired = [o / lg for o, lg in zip(other, legator, strict=True) if lg > 0]
            out[f"paired_ratio_{name}_over_legator"] = round(statistics.median(paired), 1) if paired else None
    return out


# -- simulated probes ---------------------------------------------------------------------------------------------


async def run_simulated(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    n = args.simulated
    soft, _hard = raise_fd_limit(n + 2048)
    data_dir = work / "sim-legator"
    server = ControlPlane(data_dir=data_dir, log_path=work / "sim-legator.log", env=NO_RATE_LIMIT)
    swarm: Any = None
    sim: dict[str, Any] = {"probes": n, "fd_limit": soft}
    results["simulated"] = sim
    try:
        server.start()
        regs, reg_info = await register_all(server, count=n, prefix="fansim", cache=work / "sim-registrations.json",
                                            cache_key=f"own:{data_dir.resolve()}", concurrency=16)  # fmt: skip
        sim["registration"] = reg_info
        swarm_args = argparse.Namespace(seed=None, dial_concurrency=200, heartbeat=30.0, inventory="none")
        swarm = Swarm(swarm_args, server, regs)
        t_connect = time.monotonic()
        swarm.start(args.sim_connect_rate)  # paced: the connect storm is probe_swarm's subject, not this one's
        if not await wait_all_ready(swarm, args.connect_timeout):
            raise BenchError(f"{swarm.ready_count}/{n} simulated probes connected within {args.connect_timeout:g} s")
        sim["seconds_to_connect"] = round(time.monotonic() - t_connect, 1)
        print(f"simulated: {n} probes connected in {sim['seconds_to_connect']} s (server pid {server.pid})")
        await asyncio.sleep(2)  # the connect burst's writes settle
        headers = {"Authorization": f"Bearer {server.admin_key()}"}
        times: list[float] = []
        cpu: list[dict[str, float | None]] = []
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=args.timeout + 60) as client:

            async def once() -> float:
                started = time.perf_counter()
                answer = await client.post(f"/api/v1/fleet/by-tag/{SIM_TAG}/command", params={"wait": "true"},
                                           json=fan_out_body(args, n))  # fmt: skip
                problem = _check_legator(answer, n, args.expected_output)
                elapsed = time.perf_counter() - started
                if problem:
                    raise BenchError(f"fan-out to {n} simulated probes: {problem}")
                return elapsed

            for i in range(args.warmup + args.rounds):
                cpu_before = (cpu_seconds(server.pid) if server.pid else None, cpu_seconds(os.getpid()))
                elapsed = await once()
                label = "warm-up" if i < args.warmup else f"round {i - args.warmup + 1}/{args.rounds}"
                print(f"  simulated N={n} {label}: {elapsed:.3f} s")
                if i >= args.warmup:
                    times.append(round(elapsed, 4))
                    cpu.append(_cpu_delta(cpu_before, server.pid) | {"loadavg_1m": os.getloadavg()[0]})
            profiler = profiler_for(args, server.pid, work / "sim-legator-profile.txt")
            if profiler is not None:
                await asyncio.to_thread(profiler.start)
                try:
                    for _ in range(args.profile_rounds_simulated):
                        await once()
                finally:
                    sim["profile"] = {"rounds": args.profile_rounds_simulated, **await asyncio.to_thread(profiler.stop)}
        sim["fan_out_s"] = {"runs_s": times, **(summarize(times) or {})}
        sim["cpu_s_per_round"] = cpu
        sim["commands_answered"] = swarm.stats.commands_answered
        sim["signature_rejections"] = swarm.stats.signature_rejections
    finally:
        if swarm is not None:
            with contextlib.suppress(Exception):
                await swarm.stop()
        server.stop()


def _cpu_delta(before: tuple[float | None, float | None], server_pid: int | None) -> dict[str, float | None]:
    server_now = cpu_seconds(server_pid) if server_pid else None
    me_now = cpu_seconds(os.getpid())
    return {
        "server": round(server_now - before[0], 3) if server_now is not None and before[0] is not None else None,
        "bench_and_sims": round(me_now - before[1], 3) if me_now is not None and before[1] is not None else None,
    }


# -- report -------------------------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    machine = cast(dict[str, Any], results.get("machine") or {})
    params = cast(dict[str, Any], results.get("params") or {})
    rows: list[tuple[str, object]] = [
        ("date (UTC)", machine.get("date_utc")),
        ("machine", f"{machine.get('nproc')} cores, {machine.get('cpu_model')}, load at start "
                    f"{machine.get('loadavg_at_start')}"),
        ("legator source", machine.get("source")),
        ("salt", (results.get("salt") or {}).get("salt_version")),
        ("command", f"{params.get('command')!r}, stream={params.get('stream')}"),
        ("rounds (after warm-up)", f"{params.get('rounds')} ({params.get('warmup')} warm-up)"),
    ]  # fmt: skip

    def med(node: Any) -> str:
        if not isinstance(node, dict) or "median" not in node:
            return "-"
        stats = cast(dict[str, Any], node)
        return f"{stats['median'] * 1000:.0f} ms (min {stats['min'] * 1000:.0f}, max {stats['max'] * 1000:.0f})"

    for n, row in cast(dict[str, Any], results.get("by_n") or {}).items():
        rows += [
            (f"N={n} Legator fan-out (HTTP, wait=true)", med(row.get("legator"))),
            (f"N={n} salt CLI", med(row.get("salt_cli"))),
            (f"N={n} salt LocalClient", med(row.get("salt_client"))),
            (
                f"N={n} ratio salt CLI / Legator",
                f"{row.get('ratio_salt_cli_over_legator')} (of medians); "
                f"{row.get('paired_ratio_salt_cli_over_legator')} (median per round)",
            ),
            (
                f"N={n} ratio salt LocalClient / Legator",
                f"{row.get('ratio_salt_client_over_legator')} (of medians); "
                f"{row.get('paired_ratio_salt_client_over_legator')} "
                "(median per round)",
            ),
            (
                f"N={n} load average (1 min) per round",
                [round(x, 1) for x in cast(list[float], row.get("loadavg_1m") or [])],
            ),
            (f"N={n} Legator server CPU s per fan-out", row.get("legator_server_cpu_s")),
        ]
    sim = cast(dict[str, Any], results.get("simulated") or {})
    if sim:
        rows.append((f"{sim.get('probes')} simulated probes, fan-out", med(sim.get("fan_out_s"))))
        rows.append(("  server CPU s per round", [c.get("server") for c in sim.get("cpu_s_per_round", [])]))
    rows += _targets(results)
    for label, prof in (("N=max", results.get("profile")), ("simulated", sim.get("profile"))):
        for frame, pct in cast(list[tuple[str, float]], (prof or {}).get("deepest_legator_frame_pct") or [])[:10]:
            rows.append((f"profile {label}: {pct}% of busy samples in", frame))
    if results.get("error"):
        rows.append(("error", results["error"]))
    print_table("fan-out: Legator vs Salt", rows)


def _targets(results: dict[str, Any]) -> list[tuple[str, object]]:
    """Issue 4's targets: Salt CLI / Legator >= 20 at N=20, and 1,000 simulated probes answered in under 1 s."""
    rows: list[tuple[str, object]] = []
    at_20 = cast(dict[str, Any], (results.get("by_n") or {}).get("20") or {})
    if "paired_ratio_salt_cli_over_legator" in at_20:
        ratio = at_20["paired_ratio_salt_cli_over_legator"]
        rows.append(("target: >= 20x Salt CLI at N=20", f"{'met' if ratio >= 20 else 'NOT met'} ({ratio}x)"))
    sim = cast(dict[str, Any], results.get("simulated") or {})
    median = cast(dict[str, Any], sim.get("fan_out_s") or {}).get("median")
    if sim.get("probes") == 1000 and median is not None:
        rows.append(("target: 1,000 simulated < 1 s", f"{'met' if median < 1 else 'NOT met'} ({median:.2f} s)"))
    return rows


def _sizes(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("sizes are >= 0")
    return [v for v in values if v > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=_sizes, default=[20],
                        help="real probes and minions, comma-separated sizes (default 20; 0 skips)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per size and side (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--simulated", type=int, default=1000, help="simulated probes (default 1000; 0 skips)")
    parser.add_argument("--sim-connect-rate", type=float, default=50.0,
                        help="simulated probes dial at this many a second (default 50; 0: all at once)")  # fmt: skip
    parser.add_argument("--command", default="echo hi", help="the shell command (default 'echo hi')")
    parser.add_argument("--expected-output", default=None, help="its stdout (default: derived from an echo)")
    parser.add_argument("--stream", action="store_true", help="ask Legator to stream output chunks too")
    parser.add_argument("--timeout", type=float, default=60.0, help="command timeout, s (default 60)")
    parser.add_argument("--max-concurrency", type=int, default=500,
                        help="Legator's max_concurrency is min(N, this); default 500, the API's maximum")  # fmt: skip
    parser.add_argument("--connect-timeout", type=float, default=300.0, help="bound on each fleet getting ready, s")
    parser.add_argument("--no-salt", action="store_true", help="Legator only")
    parser.add_argument("--salt-venv", default=str(DEFAULT_SALT_VENV), help=f"default {DEFAULT_SALT_VENV}")
    parser.add_argument(
        "--salt-spec", default=DEFAULT_SALT_SPEC, help=f"pip spec if created (default {DEFAULT_SALT_SPEC})"
    )
    parser.add_argument("--profile", action="store_true", help="then profile the control plane with py-spy")
    parser.add_argument("--profile-rounds", type=int, default=30, help="fan-outs to real probes profiled (default 30)")
    parser.add_argument("--profile-rounds-simulated", type=int, default=5,
                        help="fan-outs to the simulated probes profiled (default 5)")  # fmt: skip
    parser.add_argument("--py-spy", help="py-spy executable (default: on PATH)")
    parser.add_argument("--work-dir", help="keep configs, data dirs and logs here")
    parser.add_argument("--keep", action="store_true", help="keep the temp work dir")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.expected_output is None:
        if not args.command.startswith("echo "):
            parser.error("--expected-output is needed for a command other than echo")
        args.expected_output = args.command.split(None, 1)[1] + "\n"
    results: dict[str, Any] = {"benchmark": "fanout_vs_salt", "command": " ".join(sys.argv), "params": vars(args)}
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="legator-fanout-"))
    work.mkdir(parents=True, exist_ok=True)
    results["work_dir"] = str(work)
    failed: BaseException | None = None
    try:
        results["machine"] = machine_info()
        if args.probes:
            run_real(args, work, results)
        if args.simulated > 0:
            tune_gc_for_many_simulated_probes()
            asyncio.run(run_simulated(args, work, results))
    except (Exception, KeyboardInterrupt) as exc:  # report what was measured before the failure
        failed = exc
        results["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if not args.work_dir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    finish(results, report=report, json_path=args.json, failed=failed)


if __name__ == "__main__":
    main()
