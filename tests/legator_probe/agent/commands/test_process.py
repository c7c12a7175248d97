"""process list / inspect / signal against a child the test spawns."""

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from tests.legator_probe.agent._support import run_command

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def _child() -> AsyncIterator[anyio.abc.Process]:
    # `; :` keeps sh alive (no exec), so its command line, secret included, is what /proc shows
    argv = ["sh", "-c", "sleep 300; :", "sh", "password=hunter2"]
    process = await anyio.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()


async def test_process_list_finds_the_child_with_its_details_sanitised() -> None:
    with anyio.fail_after(10):
        async with _child() as child:
            result = await run_command("process", {"action": "list", "name_filter": "password="})
    assert result.status == "ok" and result.data is not None
    processes = result.data["processes"]
    assert isinstance(processes, list)
    mine = [p for p in processes if isinstance(p, dict) and p["pid"] == child.pid]
    assert len(mine) == 1
    entry = mine[0]
    assert (entry["ppid"], entry["name"], entry["user"]) == (
        os.getpid(),
        "sh",
        "root" if os.geteuid() == 0 else entry["user"],
    )
    assert "hunter2" not in str(entry["cmdline"]) and "sleep 300" in str(entry["cmdline"])
    assert isinstance(entry["rss_bytes"], int) and entry["rss_bytes"] > 0
    assert result.data["count"] == len(processes)


async def test_process_inspect_reports_children_and_links() -> None:
    with anyio.fail_after(10):
        async with _child() as child:
            result = await run_command("process", {"action": "inspect", "pid": child.pid})
    assert result.status == "ok" and result.data is not None
    assert result.data["pid"] == child.pid and result.data["exe"] is not None
    children = result.data["children"]
    assert isinstance(children, list) and len(children) == 1  # the sleep


async def test_process_signal_terminates_the_child() -> None:
    with anyio.fail_after(10):
        async with _child() as child:
            result = await run_command("process", {"action": "signal", "pid": child.pid, "signal": "TERM"})
            await child.wait()
    assert result.status == "ok" and result.data == {"pid": child.pid, "signal": "TERM", "sent": True}
    assert child.returncode == -signal.SIGTERM


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        pytest.param({"action": "signal", "pid": 1, "signal": "KILL"}, "protected_process", id="init"),
        pytest.param({"action": "signal", "pid": os.getpid(), "signal": "KILL"}, "protected_process", id="self"),
        pytest.param({"action": "inspect", "pid": 4_194_000}, "not_found", id="no-such-pid"),
        pytest.param({"action": "signal", "pid": 4_194_000, "signal": "TERM"}, "not_found", id="signal-no-such-pid"),
    ],
)
async def test_process_errors_have_stable_codes(spec: dict[str, object], code: str) -> None:
    with anyio.fail_after(10):
        result = await run_command("process", spec)
    assert (result.status, result.error_code) == ("error", code)
