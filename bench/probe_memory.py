#!/usr/bin/env python
"""Probe memory: the idle RSS of one real ``legator-probe run``, against baselines measured in the same run.

1. start ``legator serve`` on a temp data dir (or attach with ``--server URL --admin-key-file F``);
2. ``legator-probe init`` with a registration token, then ``legator-probe run``;
3. wait until the control plane shows the probe online with its first inventory committed, then ``--settle``
   seconds more (the inventory thread and its garbage are gone: the probe is idle, heartbeating);
4. sample ``VmRSS`` of the probe every ``--interval`` s for ``--window`` s (and its ``RssAnon``/``RssFile``
   split: file-backed pages are the shared libraries' code, shared with every other process mapping them),
   and in the same loop the RSS of ``python -c 'import time; time.sleep(...)'`` (bare interpreter) and of a
   Python that only imports the agent's modules (what the code alone costs), both started by this script with
   the same interpreter;
5. if ``salt-minion`` is on ``PATH``, the same for a masterless-configured minion; otherwise it says so;
6. unless ``--no-import-breakdown``, an import budget: one fresh interpreter imports what the agent imports, layer by
   layer (stdlib, pydantic, the wire protocol, anyio, websockets, the agent), and its RSS after each layer says
   what that layer adds on top of the ones before.

Before starting, ``legator_probe``'s bytecode is compiled into ``__pycache__`` (``--no-compile`` skips it), as
``pip install`` does for a wheel: a source tree run with ``PYTHONDONTWRITEBYTECODE=1`` otherwise compiles every
module at each start, and the compiler's garbage stays in the heap (about 1.2 MiB more).

Reports min / median / max and the probe's ratio to each baseline. No timing assertions; every wait is bounded.

Run with the project venv: ``.venv/bin/python bench/probe_memory.py --json out.json``.
"""

import argparse
import compileall
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from _benchlib import (
    VENV_BIN,
    BenchError,
    ControlPlane,
    machine_info,
    mib,
    print_table,
    summarize,
    vm_rss_bytes,
    write_json,
)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
    except OSError:
        return []
    out: list[int] = []
    for child in (int(c) for c in text.split()):
        out += [child, *_children(child)]
    return out


def tree_rss(pid: int) -> int | None:
    """RSS of ``pid`` plus all its descendants (salt-minion forks; the probe normally does not while idle)."""
    own = vm_rss_bytes(pid)
    if own is None:
        return None
    return own + sum(vm_rss_bytes(c) or 0 for c in _children(pid))


def _spawn(argv: list[str], *, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes] | None, *, timeout_s: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


_CONNECTED = ("online", "degraded")
"""Probe statuses that mean connected; ``degraded`` is a health verdict (e.g. a busy machine's load average)."""


def wait_idle(server: ControlPlane, probe_id: str, *, since: datetime, timeout_s: float) -> dict[str, Any]:
    """Poll the control plane until the probe is connected and an inventory collected after ``since`` is committed.

    ``since`` matters when attaching to a server that knew this host before: a re-registered probe keeps its id,
    so the last run's status and inventory are still there until the new process replaces them.

    Raises:
        BenchError: If that does not happen within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    last: Any = None
    while time.monotonic() < deadline:
        last = server.get_json(f"/api/v1/probes/{probe_id}", timeout_s=10)
        probe = cast(dict[str, Any], last) if isinstance(last, dict) else {}
        collected = probe.get("inventory_collected_at")
        fresh = isinstance(collected, str) and datetime.fromisoformat(collected) >= since
        if fresh and probe.get("status") in _CONNECTED:
            return {"seconds_to_online_with_inventory": round(time.monotonic() - started, 2), "probe": last}
        time.sleep(0.5)
    raise BenchError(f"the probe was not connected with an inventory within {timeout_s:g} s (last: {last})")


SALT_MINION_CONF = """\
master: 127.0.0.1
master_port: {port}
file_client: local
pki_dir: {root}/pki
cachedir: {root}/cache
sock_dir: {root}/sock
log_file: {root}/minion.log
id: bench-minion
"""


IMPORT_LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stdlib the agent needs", ("asyncio", "ssl", "logging", "json", "argparse", "subprocess")),
    ("pydantic (import only)", ("pydantic", "pydantic.main")),
    ("pydantic's plugin loader (importlib.metadata)", ("pydantic.plugin._loader",)),
    ("hmac, hashlib, ctypes (Ed25519 in libcrypto)", ("hmac", "hashlib", "ctypes")),
    ("wire protocol: pydantic models, signing", ("legator_probe.protocol",)),
    ("anyio + asyncio backend", ("anyio", "anyio.to_thread", "anyio._backends._asyncio")),
    ("websockets asyncio client", ("websockets.asyncio.client",)),
    (
        "agent code + CLI",
        (
            "legator_probe.agent.cli",
            "legator_probe.agent.daemon",
            "legator_probe.agent.inventory",
            *(f"legator_probe.agent.commands.{name}" for name in ("files", "kubectl", "process", "shell", "systemd")),
        ),
    ),
)
"""What the agent imports, in layers: each one's cost is measured on top of the ones before it, in one fresh
interpreter, so the rows add up to what the agent's code costs before it runs (shared modules counted once)."""


_BUDGET = """\
import gc, importlib, json, sys
def rss():
    with open('/proc/self/status', encoding='ascii') as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith('VmRSS:'))
out = [["interpreter running this script", rss()]]
for label, modules in json.loads(sys.argv[1]):
    for module in modules:
        importlib.import_module(module)
    gc.collect()
    out.append([label, rss()])
print(json.dumps(out))
"""


def import_budget() -> list[dict[str, object]]:
    """RSS of one fresh interpreter after each of :data:`IMPORT_LAYERS`: ``{"layer", "adds_mib", "total_mib"}``."""
    done = subprocess.run(
        [str(VENV_BIN / "python"), "-c", _BUDGET, json.dumps(IMPORT_LAYERS)],
        capture_output=True, text=True, encoding="utf-8", timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"the import budget failed: {done.stderr.strip()[-500:]}")
    steps = cast(list[tuple[str, int]], json.loads(done.stdout))
    out: list[dict[str, object]] = []
    previous = 0
    for label, kib in steps:
        out.append({"layer": label, "adds_mib": round((kib - previous) / 1024, 1), "total_mib": round(kib / 1024, 1)})
        previous = kib
    return out


def precompile_probe() -> bool:
    """Compile the bytecode of the ``legator_probe`` this interpreter imports (the probe's) into ``__pycache__``."""
    import legator_probe

    return bool(compileall.compile_dir(Path(legator_probe.__file__).parent, quiet=1))


def run(args: argparse.Namespace, results: dict[str, Any]) -> None:
    results["machine"] = machine_info()
    results["bytecode_precompiled"] = precompile_probe() if args.compile else False
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="legator-probe-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.server:
        server = ControlPlane(data_dir=None, url=args.server, admin_key_file=Path(args.admin_key_file))
    else:
        server = ControlPlane(data_dir=work / "data", log_path=work / "server.log")
    probe: subprocess.Popen[bytes] | None = None
    baselines: dict[str, subprocess.Popen[bytes]] = {}
    salt: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        results["server"] = {"url": server.url, "owned": server.owned}
        token = server.create_token(level="observe")
        config = work / "probe.json"
        config.unlink(missing_ok=True)
        env = {"LEGATOR_HOSTNAME": args.hostname}
        init = subprocess.run(
            [str(VENV_BIN / "legator-probe"), "init", "--server", server.url, "--token", token, "--config",
             str(config)],
            capture_output=True, text=True, encoding="utf-8", timeout=60, env={**os.environ, **env}, check=False,
        )  # fmt: skip
        if init.returncode != 0:
            raise BenchError(f"legator-probe init failed ({init.returncode}): {init.stderr.strip()[-500:]}")
        probe_id = json.loads(config.read_text(encoding="utf-8"))["probe_id"]
        t_start, since = time.monotonic(), datetime.now(UTC)
        probe = _spawn([str(VENV_BIN / "legator-probe"), "run", "--config", str(config)], log=work / "probe.log",
                       env=env)  # fmt: skip
        idle = wait_idle(server, probe_id, since=since, timeout_s=args.connect_timeout)
        results["probe"] = {"pid": probe.pid, "probe_id": probe_id, **idle}
        print(f"probe {probe_id} (pid {probe.pid}) online with inventory after {time.monotonic() - t_start:.1f} s")

        # Baselines start now so that they are as old as the sampling window needs; same interpreter as the probe.
        sleep_s = str(int(args.settle + args.window + 30))
        python = str(VENV_BIN / "python")
        baselines["bare_python"] = _spawn([python, "-c", f"import time; time.sleep({sleep_s})"],
                                          log=work / "baseline.log")  # fmt: skip
        baselines["python_with_agent_imports"] = _spawn(
            [python, "-c", "import legator_probe.agent.cli, legator_probe.agent.daemon, legator_probe.agent.inventory"
             f", websockets.asyncio.client, time; time.sleep({sleep_s})"],
            log=work / "baseline.log",
        )  # fmt: skip
        salt_path = shutil.which("salt-minion")
        if salt_path:
            root = work / "salt"
            (root / "conf").mkdir(parents=True, exist_ok=True)
            (root / "conf" / "minion").write_text(
                SALT_MINION_CONF.format(root=root, port=args.salt_master_port), encoding="utf-8"
            )
            salt = _spawn([salt_path, "-c", str(root / "conf"), "-l", "warning"], log=work / "salt.log")
            results["salt_minion"] = {"path": salt_path, "note": "no master listening; the minion idles retrying"}
        else:
            results["salt_minion"] = {"installed": False, "note": "salt-minion is not installed on this machine"}
        time.sleep(args.settle)

        samples: dict[str, list[float]] = {"probe": [], "probe_anon": [], "probe_file": [], "probe_tree": []}
        for name in baselines:
            samples[name] = []
        if salt is not None:
            samples["salt_minion_tree"] = []
        t_end = time.monotonic() + args.window
        while time.monotonic() < t_end:
            if probe.poll() is not None:
                raise BenchError(f"the probe exited with {probe.returncode}; see {work / 'probe.log'}")
            rss = vm_rss_bytes(probe.pid)
            if rss is not None:
                samples["probe"].append(rss)
            for field, name in (("RssAnon", "probe_anon"), ("RssFile", "probe_file")):
                value = _status_bytes(probe.pid, field)
                if value is not None:
                    samples[name].append(value)
            tree = tree_rss(probe.pid)
            if tree is not None:
                samples["probe_tree"].append(tree)
            for name, proc in baselines.items():
                value = vm_rss_bytes(proc.pid)
                if value is not None:
                    samples[name].append(value)
            if salt is not None:
                value = tree_rss(salt.pid)
                if value is not None:
                    samples["salt_minion_tree"].append(value)
            time.sleep(args.interval)
        results["probe"]["VmHWM_bytes"] = _status_bytes(probe.pid, "VmHWM")
        after = server.get_json(f"/api/v1/probes/{probe_id}")
        results["probe"]["status_after_window"] = after.get("status") if isinstance(after, dict) else None
        results["rss"] = {name: summarize(values) for name, values in samples.items()}
        probe_median = results["rss"]["probe"]["median"] if results["rss"]["probe"] else None
        ratios: dict[str, float | None] = {}
        for name in (*baselines, "salt_minion_tree"):
            base = results["rss"].get(name)
            ratios[f"probe/{name}"] = round(probe_median / base["median"], 2) if base and probe_median else None
        results["ratios"] = ratios
        if args.import_breakdown:
            results["import_budget"] = import_budget()
    finally:
        _stop(probe)
        for proc in baselines.values():
            _stop(proc, timeout_s=5)
        _stop(salt)
        server.stop()
        if not args.work_dir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _status_bytes(pid: int, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM``, ``RssAnon``…) in bytes; ``None`` if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def report(results: dict[str, Any]) -> None:
    rss: dict[str, dict[str, float] | None] = results.get("rss") or {}
    probe: dict[str, Any] = results.get("probe") or {}
    salt: dict[str, Any] = results.get("salt_minion") or {}
    ratios: dict[str, float | None] = results.get("ratios") or {}
    budget: list[dict[str, object]] = results.get("import_budget") or []

    def fmt(name: str) -> str:
        s = rss.get(name)
        if not s:
            return "-"
        return f"min {mib(s['min'])}  median {mib(s['median'])}  max {mib(s['max'])} MiB  (n={s['n']:g})"

    rows: list[tuple[str, object]] = [
        ("legator-probe run (VmRSS)", fmt("probe")),
        ("  of which anonymous (RssAnon)", fmt("probe_anon")),
        ("  of which file-backed (RssFile)", fmt("probe_file")),
        ("legator-probe + children", fmt("probe_tree")),
        ("legator-probe peak (VmHWM)", f"{mib(probe.get('VmHWM_bytes'))} MiB"),
        ("bare python sleep", fmt("bare_python")),
        ("python + agent imports", fmt("python_with_agent_imports")),
        ("salt-minion (tree)", fmt("salt_minion_tree") if "salt_minion_tree" in rss else salt.get("note")),
        ("legator_probe bytecode precompiled", results.get("bytecode_precompiled")),
    ]
    rows += [(f"ratio {name}", ratio) for name, ratio in ratios.items()]
    rows += [(f"import budget: {step['layer']}", f"+{step['adds_mib']} = {step['total_mib']} MiB") for step in budget]
    print_table("probe memory (idle, after first inventory)", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=20.0, help="sampling window, s (default 20)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    parser.add_argument("--settle", type=float, default=5.0, help="wait after the first inventory, s (default 5)")
    parser.add_argument("--connect-timeout", type=float, default=120.0, help="bound on reaching idle, s")
    parser.add_argument("--hostname", default="bench-memory-probe", help="LEGATOR_HOSTNAME of the probe")
    parser.add_argument("--salt-master-port", type=int, default=4506, help="port a salt-minion (if any) is pointed at")
    parser.add_argument(
        "--no-import-breakdown",
        dest="import_breakdown",
        action="store_false",
        help="skip the layer-by-layer import budget",
    )
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="do not compile legator_probe's bytecode first (measure the tree as it is)",
    )
    parser.add_argument("--server", help="attach to this control plane instead of starting one")
    parser.add_argument("--admin-key-file", help="admin API key file of --server")
    parser.add_argument("--work-dir", help="keep the data dir, probe config and logs here")
    parser.add_argument("--keep", action="store_true", help="keep the temp work dir")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.server and not args.admin_key_file:
        parser.error("--server needs --admin-key-file")
    results: dict[str, Any] = {"benchmark": "probe_memory", "command": " ".join(sys.argv), "params": vars(args)}
    failed: BaseException | None = None
    try:
        run(args, results)
    except (Exception, KeyboardInterrupt) as exc:  # report what was measured before the failure
        failed = exc
        results["error"] = f"{type(exc).__name__}: {exc}"
    report(results)
    if args.json:
        write_json(Path(args.json), results)
        print(f"\nwrote {args.json}")
    if failed is not None:
        raise SystemExit(f"failed: {results.get('error')}")


if __name__ == "__main__":
    main()
