"""``legator serve``, ``legator demo`` and ``legator mcp``: processes that run the control plane."""

import argparse
import contextlib
import gc
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import uvicorn

from legator_mcp._heap import TRIM_INTERVAL_S, trim_heap
from legator_mcp._periodic import every
from legator_mcp.app import LegatorApp, build_app
from legator_mcp.auth.schemas import ApiKeyCreate
from legator_mcp.auth.service import ADMIN_KEY_FILE, write_secret_file
from legator_mcp.cli import _stdio
from legator_mcp.cli._common import CliError, add_settings_flags, settings_from_args
from legator_mcp.db.migrate import SchemaTooNew
from legator_mcp.errors import Unauthenticated
from legator_mcp.fleet.schemas import TokenCreate
from legator_mcp.observability import configure_logging
from legator_mcp.principal import Permission, Principal
from legator_mcp.settings import Settings

__all__ = ["add_commands"]

logger = logging.getLogger("legator")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``serve``, ``demo`` and ``mcp``."""
    serve = sub.add_parser("serve", help="run the control plane (REST, /mcp, /ws/probe, /ui) on one port")
    add_settings_flags(serve)
    serve.add_argument("--no-auth", action="store_true", help="disable authentication (local experiments only)")
    serve.set_defaults(handler=_serve)

    demo = sub.add_parser("demo", help="run the control plane on embedded SQLite and print how to connect")
    add_settings_flags(demo)
    demo.set_defaults(handler=_demo)

    mcp = sub.add_parser("mcp", help="serve MCP over stdio (bridge to --server, or an embedded control plane)")
    add_settings_flags(mcp)
    mcp.add_argument("--server", help="base URL of a running control plane (API key from LEGATOR_API_KEY)")
    mcp.set_defaults(handler=_mcp)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}", exit_code=1) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _warn_exposure(settings: Settings) -> None:
    if settings.host in LOOPBACK:
        return
    tls = (settings.public_url or "").startswith("https://")
    if not settings.auth_enabled:
        logger.warning(
            "listening on %s WITHOUT authentication: anyone who can reach it controls the fleet", settings.listen_addr
        )
    if not tls:
        logger.warning(
            "listening on %s without TLS: API keys and probe credentials cross the network in clear text; "
            "put a TLS reverse proxy in front and set LEGATOR_PUBLIC_URL=https://…", settings.listen_addr,
        )  # fmt: skip


async def _run(app: LegatorApp, sock: socket.socket, on_ready: Callable[[], Awaitable[None]] | None) -> None:
    config = app.server_config(timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)

    async def announce() -> None:
        await app.started.wait()
        # What exists once started (modules, services, the app) lives as long as the process: keep it out of
        # every full collection from here on.
        gc.freeze()
        if on_ready is not None:
            await on_ready()

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        tg.start_soon(partial(every, TRIM_INTERVAL_S, trim_heap, what="the heap trim", wait_first=True))
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()
    if not server.started:
        raise CliError("the control plane failed to start; see the log above", exit_code=1)


GC_THRESHOLDS = (50_000, 50, 100)
"""Cyclic garbage collection thresholds of a serving process (CPython's defaults are 700, 10, 10).

With a thousand probes connected the heap holds ~450,000 tracked objects. At the defaults the collector ran ~150
times per 1,000-target fan-out and took a quarter of its CPU time (0.7-0.85 s of ~3 s, measured with gc.callbacks);
at these thresholds it stays below 1 %. Most garbage is freed by reference counting; this only delays cycles.
"""


def _start(settings: Settings, on_ready: Callable[[LegatorApp, str], Awaitable[None]] | None) -> int:
    gc.set_threshold(*GC_THRESHOLDS)
    configure_logging(settings.log_level, settings.log_format)
    _warn_exposure(settings)
    sock = _bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{shown_host}:{port}"
    if settings.port == 0:
        settings = settings.model_copy(update={"listen_addr": f"{shown_host}:{port}"})
    app = build_app(settings)

    async def ready() -> None:
        if on_ready is not None:
            await on_ready(app, base_url)
        else:
            logger.info("control plane listening on %s (MCP at %s/mcp)", base_url, base_url)

    try:
        anyio.run(_run, app, sock, ready)
    except SchemaTooNew as exc:
        raise CliError(exc.message, exit_code=2) from None
    finally:
        sock.close()
    return 0


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    return _start(settings, None)


async def _demo_key(app: LegatorApp) -> str:
    path = app.settings.data_dir / ADMIN_KEY_FILE
    if path.exists():
        key = path.read_text(encoding="utf-8").strip()
        with contextlib.suppress(Unauthenticated):
            await app.services.auth.authenticate_api_key(key)
            return key
    created = await app.services.auth.create_api_key(
        actor=Principal.system("legator-demo"),
        request=ApiKeyCreate(name="demo-admin", permissions=[Permission.ADMIN]),
    )
    write_secret_file(path, created.plain_key)
    return created.plain_key


PROBE_COMMAND = [sys.executable, "-m", "legator_probe.agent"]


async def _demo_probe_registered(app: LegatorApp, base_url: str, config: Path) -> str:
    """Register the demo's local probe once (its config lives in the data dir); describe it in one line."""
    if not await anyio.Path(config).exists():
        token = await app.services.fleet.create_token(
            actor=Principal.system("legator-demo"),
            request=TokenCreate(policy_level="diagnose", tags=["local", "demo"]),
            base_url=base_url,
        )
        env = {**os.environ, "LEGATOR_PROBE_TOKEN": token.token}
        done = await anyio.run_process(
            [*PROBE_COMMAND, "init", "--server", base_url, "--config", str(config), "--tags", "local,demo"],
            env=env,
            check=False,
        )
        if done.returncode != 0:
            return f"could not register the local probe: {done.stderr.decode(errors='replace').strip()[-300:]}"
    probe_id = json.loads(await anyio.Path(config).read_text(encoding="utf-8")).get("probe_id", "?")
    return f"{probe_id} (this machine, level diagnose; log in {config.parent / 'probe.log'})"


async def _run_demo_probe(app: LegatorApp, config: Path) -> None:
    """Run ``legator-probe run`` for the demo until the control plane stops; restart it if it exits."""
    if not await anyio.Path(config).exists():
        return
    log_path = config.parent / "probe.log"
    for _attempt in range(5):
        with open(log_path, "ab") as log:  # noqa: ASYNC230 - opened once per probe start
            process = await anyio.open_process([*PROBE_COMMAND, "run", "--config", str(config)], stdout=log, stderr=log)
        try:
            await process.wait()
        finally:
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(10, shield=True):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
        logger.warning("the demo probe exited with code %s; restarting it", process.returncode)
        await anyio.sleep(2)


def _claude_config(base_url: str, key: str) -> dict[str, Any]:
    command = shutil.which("legator") or str(Path(sys.executable).with_name("legator"))
    return {
        "mcpServers": {
            "legator": {"command": command, "args": ["mcp", "--server", base_url], "env": {"LEGATOR_API_KEY": key}}
        }
    }


def _demo(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.listen is None and os.environ.get("LEGATOR_LISTEN_ADDR") is None:
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", 8080))
            port = 8080
        except OSError:
            port = 0
        finally:
            probe.close()
        settings = settings.model_copy(update={"listen_addr": f"127.0.0.1:{port}"})

    async def ready(app: LegatorApp, base_url: str) -> None:
        key = await _demo_key(app)
        probe_config = app.settings.data_dir / "probe" / "probe.json"
        probe_line = await _demo_probe_registered(app, base_url, probe_config)
        lines = [
            "",
            "Legator demo control plane is running (embedded SQLite).",
            f"  Data dir:  {app.settings.data_dir}",
            f"  MCP URL:   {base_url}/mcp",
            f"  API key:   {key}",
            f"  REST API:  {base_url}/api/v1   (curl -H 'Authorization: Bearer {key[:12]}…' {base_url}/api/v1/me)",
            f"  Probe:     {probe_line}",
            "  Claude Desktop config (claude_desktop_config.json):",
            json.dumps(_claude_config(base_url, key), indent=2),
            "Press Ctrl-C to stop.",
            "",
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        await _run_demo_probe(app, probe_config)

    return _start(settings, ready)


def _mcp(args: argparse.Namespace) -> int:
    if args.server:
        key = os.environ.get("LEGATOR_API_KEY", "").strip()
        if not key:
            raise CliError("set LEGATOR_API_KEY to an API key of the control plane at --server", exit_code=2)
        anyio.run(_stdio.bridge, args.server, key)
        return 0
    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)
    try:
        anyio.run(_stdio.embedded, settings)
    except SchemaTooNew as exc:
        raise CliError(exc.message, exit_code=2) from None
    return 0
