"""Real ``legator-probe`` processes for end-to-end tests."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from tests.support.app import Running

PROBE = [sys.executable, "-m", "legator_probe.agent"]


@dataclass
class ProbeProcess:
    """A registered probe agent running as its own process."""

    probe_id: str
    config: Path
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the agent (a crashed host)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def terminate(self) -> int:
        """SIGTERM the agent and wait for it to exit; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


async def create_token(base_url: str, admin_key: str, *, level: str = "remediate", multi_use: bool = True) -> str:
    """Mint a registration token through the REST API."""
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}) as client:
        response = await client.post("/api/v1/tokens", json={"multi_use": multi_use, "policy_level": level})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def register_probe(base_url: str, admin_key: str, hostname: str) -> dict[str, Any]:
    """Register a probe over REST (no agent process): the registration answer (probe id, credential, key...)."""
    token = await create_token(base_url, admin_key)
    async with httpx.AsyncClient(base_url=base_url) as client:
        registered = await client.post("/api/v1/register", json={"token": token, "hostname": hostname})
    assert registered.status_code == 201, registered.text
    return dict(registered.json())


def probe_env(home: Path, hostname: str) -> dict[str, str]:
    """Environment for one agent: its own hostname and a quiet, fast test configuration."""
    return {
        **os.environ,
        "LEGATOR_HOSTNAME": hostname,
        "HOME": str(home),
        "LEGATOR_PROBE_LOG_LEVEL": "INFO",
    }


async def start_probe(base_url: str, token: str, workdir: Path, hostname: str, *, tags: str = "") -> ProbeProcess:
    """Register an agent with ``token`` and start ``legator-probe run`` for it."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "probe.json"
    env = probe_env(workdir, hostname)
    args = [*PROBE, "init", "--server", base_url, "--token", token, "--config", str(config)]
    if tags:
        args += ["--tags", tags]
    with anyio.fail_after(30):
        done = await anyio.run_process(args, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    probe_id = json.loads(config.read_text(encoding="utf-8"))["probe_id"]
    log = workdir / "probe.log"
    handle = log.open("wb")
    process = subprocess.Popen(
        [*PROBE, "run", "--config", str(config)], env=env, stdout=handle, stderr=subprocess.STDOUT
    )
    handle.close()
    return ProbeProcess(probe_id=probe_id, config=config, process=process, log=log)


@asynccontextmanager
async def running_probes(
    base_url: str, admin_key: str, workdir: Path, count: int = 1, *, level: str = "remediate", tags: str = ""
) -> AsyncIterator[list[ProbeProcess]]:
    """Start ``count`` agents and stop them afterwards."""
    token = await create_token(base_url, admin_key, level=level)
    probes: list[ProbeProcess] = []
    try:
        for index in range(count):
            probe = await start_probe(base_url, token, workdir / f"p{index}", f"host-{index}", tags=tags)
            probes.append(probe)
        yield probes
    finally:
        for probe in probes:
            if probe.process.poll() is None:
                probe.process.terminate()
        for probe in probes:
            try:
                probe.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                probe.process.kill()
                probe.process.wait(timeout=5)


@asynccontextmanager
async def online_probes(
    cp: Running, workdir: Path, count: int = 1, *, level: str = "remediate", tags: str = ""
) -> AsyncIterator[list[ProbeProcess]]:
    """Start ``count`` agents against ``cp`` and wait (bounded) until every one is online; sorted by probe id."""
    async with cp.app.services.events.subscribe("probe.online") as online:
        async with running_probes(cp.base_url, cp.admin_key, workdir, count, level=level, tags=tags) as probes:
            waiting = {p.probe_id for p in probes}
            with anyio.fail_after(60):
                async for event in online:
                    waiting.discard(event.probe_id or "")
                    if not waiting:
                        break
            yield sorted(probes, key=lambda p: p.probe_id)
