"""``kill -9`` of a real ``legator serve`` (SQLite) while a job run executes on a real probe, then a restart: the
run is neither lost nor run twice, and scheduled fires are not duplicated.
"""

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from tests.support.probes import running_probes

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(150)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _server(data: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "LEGATOR_DATA_DIR": str(data),
        "LEGATOR_LISTEN_ADDR": f"127.0.0.1:{port}",
        "LEGATOR_LOG_FORMAT": "text",
        "LEGATOR_HEARTBEAT_INTERVAL_S": "1",
    }
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "legator_mcp", "serve"], env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


async def _until(condition: Callable[[], Any], timeout: float = 30) -> Any:
    """Poll an external process's state (bounded): the control plane runs in another process here."""
    with anyio.fail_after(timeout):
        while True:
            value = await condition()
            if value:
                return value
            await anyio.sleep(0.2)


async def _ready(base_url: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
            return (await client.get("/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_kill_9_mid_run_then_restart_neither_loses_nor_duplicates_runs(tmp_path: Path) -> None:
    data, port = tmp_path / "data", _free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with _server(data, port, log) as first:
        await _until(lambda: _ready(base_url))
        key = (data / "admin-api-key").read_text(encoding="utf-8").strip()
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            running_probes(base_url, key, tmp_path / "probes") as probes,
            httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client,
        ):
            probe = probes[0]
            home = probe.config.parent

            async def online() -> bool:
                return (await client.get(f"/api/v1/probes/{probe.probe_id}")).json().get("status") == "online"

            await _until(online)
            # Each execution leaves start.<pid> and end.<pid>: two executions would leave two of each.
            script = 'touch "$HOME/start.$$"; sleep 4; touch "$HOME/end.$$"; echo finished'
            job = (
                await client.post(
                    "/api/v1/jobs",
                    json={
                        "name": "long",
                        "command": script,
                        "target": {"kind": "probe", "value": probe.probe_id},
                        "timeout_s": 60,
                        "retry_policy": {"max_attempts": 2, "initial_backoff": 1},
                    },
                )  # fmt: skip
            ).json()
            ticking = (
                await client.post(
                    "/api/v1/jobs",
                    json={"name": "tick", "command": "true", "schedule": "2s", "target": {"kind": "all"}},
                )
            ).json()
            run = (await client.post(f"/api/v1/jobs/{job['id']}/run")).json()["runs"][0]

            async def running() -> bool:
                current = (await client.get(f"/api/v1/jobs/{job['id']}/runs")).json()["runs"][0]
                return current["status"] == "running" and any(home.glob("start.*"))

            await _until(running)
            first.kill()  # SIGKILL: no shutdown, no cleanup
            first.wait(timeout=10)

            with _server(data, port, log):
                await _until(lambda: _ready(base_url))

                async def finished() -> dict[str, Any] | None:
                    page = (await client.get(f"/api/v1/jobs/{job['id']}/runs")).json()
                    done = [r for r in page["runs"] if r["terminal"]]
                    return page if done and not [r for r in page["runs"] if r["active"]] else None

                page = await _until(finished, timeout=60)
                # The run that was executing during the crash kept its identity and took the probe's result.
                assert [(r["id"], r["attempt"], r["status"]) for r in page["runs"]] == [(run["id"], 1, "success")]
                assert page["runs"][0]["output"] == "finished\n"
                started, ended = (
                    sorted(p.suffix for p in home.glob("start.*")),
                    sorted(p.suffix for p in home.glob("end.*")),
                )
                assert len(started) == 1 and started == ended

                async def ticked_after_restart() -> bool:
                    runs = (await client.get(f"/api/v1/jobs/{ticking['id']}/runs", params={"limit": 500})).json()
                    return runs["counts"]["success"] >= 3

                await _until(ticked_after_restart)
                ticks = (await client.get(f"/api/v1/jobs/{ticking['id']}/runs", params={"limit": 500})).json()["runs"]
                fires = [r["scheduled_for"] for r in ticks]
                assert len(fires) == len(set(fires)), "a scheduled fire was recorded twice"
