#!/usr/bin/env python
"""Probe swarm: N simulated probes in one process, each on its own WebSocket to one control-plane process.

Every simulated probe speaks the real wire protocol (``legator_probe.protocol``, agent side, with a ``Verifier``
holding the key it got at registration, so the signed ``policy_update`` the gateway pushes on connect is really
verified), sends its inventory after ``welcome`` like the real agent (``--inventory``), heartbeats every
``--heartbeat`` seconds, and reconnects with the real agent's ``Backoff`` (honouring ``503`` + ``Retry-After``).

Phases, each bounded in time:

1. start ``legator serve`` on a temp data dir (or attach to ``--server``), register N probes over REST with a
   bounded pool (cached in ``--work-dir`` between runs);
2. **connect**: all probes dial at once (at most ``--dial-concurrency`` handshakes in flight); time until every
   one is welcomed and has verified its signed policy; the gateway's admission bucket bounds this;
3. **hold**: ``--duration`` seconds of ordinary heartbeats; the control plane's RSS is sampled every second;
4. **flood**: ``--flood-seconds`` of heartbeats offered at ``--flood-rate`` a second in all; the heartbeats the
   control plane has *committed* are counted in its database (each heartbeat carries a sequence number in
   ``uptime_s``), which gives the throughput it sustains; then the backlog drains;
5. **storm**: every connection is aborted at once; time until all probes are back (``503`` answers honoured).
   Like the agent, a simulated probe does not resend an inventory the welcome says is on file; with
   ``--storm-inventory changed`` every host's inventory differs after the cut, so all of them are resent.

Run with the project venv, e.g. ``.venv/bin/python bench/probe_swarm.py --probes 10000 --json out.json``.
"""

import argparse
import asyncio
import contextlib
import random
import resource
import shlex
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
from _benchlib import (  # pyright: ignore[reportMissingImports]
    BenchError,
    ControlPlane,
    ProcSample,
    machine_info,
    mib,
    print_table,
    proc_sample,
    raise_fd_limit,
    summarize,
    tune_gc_for_many_simulated_probes,
    write_json,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from legator_probe import __version__
from legator_probe.agent.backoff import Attempt, Backoff
from legator_probe.protocol import (
    BackoffMessage,
    CommandMessage,
    CommandPayload,
    CommandResultPayload,
    ErrorMessage,
    HeartbeatPayload,
    HelloPayload,
    InvalidState,
    InventoryPayload,
    OutputChunkPayload,
    PolicyUpdateMessage,
    ProbeProtocol,
    ProtocolViolation,
    Rejected,
    ShellCommand,
    Side,
    State,
    TrustedKey,
    Verifier,
    WelcomeMessage,
    decode_public_key,
    inventory_digest,
)

OPEN_TIMEOUT_S = 30.0
"""Handshake bound (the real agent's ``open_timeout_s``): TCP + upgrade, then ``welcome`` and the signed policy."""
ADMIT_PER_SECOND, ADMIT_BURST = 200.0, 500
"""The gateway's admission bucket (``Hub(admit_per_second=200, admit_burst=500)``), for the lower bound we print."""
PER_CONNECTION_FLOOD_CAP = 50.0
"""Heartbeats a second one simulated probe sends at most in the flood (the gateway allows 100 frames/s)."""
UPTIME_STRIDE = 1_000_000.0
"""Heartbeats carry ``uptime_s = run_tag * stride + seq``; the database then tells how many were committed."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- registrations --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """What ``POST /api/v1/register`` gave one simulated probe."""

    hostname: str
    probe_id: str
    credential: str
    key_id: str
    public_key: str


async def _register_one(client: httpx.AsyncClient, url: str, token: str, hostname: str) -> Registration:
    """Register one probe, honouring 429/503 ``Retry-After``; bounded to 15 minutes."""
    body = {"token": token, "hostname": hostname, "os": "linux", "arch": "x86_64", "version": __version__,
            "tags": ["swarm"]}  # fmt: skip
    deadline = time.monotonic() + 900
    failures = 0
    last = "no attempt"
    while time.monotonic() < deadline:
        try:
            answer = await client.post(url + "/api/v1/register", json=body)
        except httpx.HTTPError as exc:
            failures += 1
            last = type(exc).__name__
            await asyncio.sleep(min(8.0, 0.25 * 2**failures))
            continue
        if answer.status_code in (200, 201):
            data = answer.json()
            key = data["signing_key"]
            return Registration(hostname, data["probe_id"], data["credential"], key["key_id"], key["public_key"])
        last = f"HTTP {answer.status_code}"
        retry_after = answer.headers.get("Retry-After", "")
        if answer.status_code in (429, 503) and retry_after.strip().isdigit():
            await asyncio.sleep(float(retry_after) * random.uniform(1.0, 1.1))
            continue
        if answer.status_code >= 500:
            failures += 1
            await asyncio.sleep(min(8.0, 0.25 * 2**failures))
            continue
        raise BenchError(f"registering {hostname}: HTTP {answer.status_code} {answer.text[:300]}")
    raise BenchError(f"registering {hostname}: gave up after 15 minutes ({last})")


async def register_all(
    server: ControlPlane, *, count: int, prefix: str, cache: Path, cache_key: str, concurrency: int
) -> tuple[list[Registration], dict[str, Any]]:
    """Register ``count`` probes (or reuse those cached for the same server), ``concurrency`` requests at a time."""
    cached: list[Registration] = []
    if cache.exists():
        import json

        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("server") == cache_key and data.get("prefix") == prefix:
            cached = [Registration(**row) for row in data["probes"]]
    missing = [f"{prefix}-{i:05d}" for i in range(len(cached), count)]
    info: dict[str, Any] = {"cached": min(len(cached), count), "registered": len(missing), "concurrency": concurrency}
    if missing:
        token = server.create_token()
        sem = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        started = time.monotonic()
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:

            async def one(hostname: str) -> Registration:
                async with sem:
                    return await _register_one(client, server.url, token, hostname)

            fresh = await asyncio.gather(*(one(h) for h in missing))
        elapsed = time.monotonic() - started
        info |= {"seconds": round(elapsed, 2), "per_second": round(len(missing) / elapsed, 1)}
        cached += fresh
        import json

        cache.write_text(
            json.dumps({"server": cache_key, "prefix": prefix, "probes": [r.__dict__ for r in cached]}),
            encoding="utf-8",
        )
    return cached[:count], info


# -- reading what the control plane committed ----------------------------------------------------------------


class CommitCounter:
    """Counts, in the control plane's database, the heartbeats and inventories of this run that were committed.

    A probe's ``metrics.uptime_s`` is ``base + seq`` of the last heartbeat committed for it (a connection's frames
    are handled in order), so the sum over probes of ``uptime_s - base`` is the number committed so far.
    Inventories carry ``(swarm <tag>:<epoch>)`` in ``kernel``, copied onto the probe row.
    """

    def __init__(self, url: str, base: float) -> None:
        self.url = url
        self.base = base
        self._pg: Any = None

    async def _pg_fetch(self, query: str, *args: Any) -> Any:
        import asyncpg  # pyright: ignore[reportMissingTypeStubs]

        if self._pg is None:
            dsn = self.url.replace("postgresql+asyncpg://", "postgresql://", 1)
            self._pg = cast(Any, await asyncpg.connect(dsn))  # asyncpg ships no type information
        return await self._pg.fetchrow(query, *args)

    def _sqlite(self, query: str, args: tuple[Any, ...]) -> Any:
        path = self.url.split(":///", 1)[1]
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(query, args).fetchone()
        finally:
            conn.close()

    async def heartbeats(self) -> int | None:
        """Heartbeats of this run committed so far."""
        hi = self.base + UPTIME_STRIDE
        try:
            if self.url.startswith("sqlite"):
                q = (
                    "SELECT COALESCE(SUM(u - ?), 0) FROM (SELECT CAST(json_extract(metrics, '$.uptime_s') AS REAL)"
                    " AS u FROM probes WHERE metrics IS NOT NULL) WHERE u >= ? AND u < ?"
                )
                row = await asyncio.to_thread(self._sqlite, q, (self.base, self.base, hi))
            else:
                q = ("SELECT COALESCE(SUM(u - $1), 0) FROM (SELECT (metrics->>'uptime_s')::float8 AS u FROM probes"
                     " WHERE metrics IS NOT NULL) s WHERE u >= $1 AND u < $2")  # fmt: skip
                row = await self._pg_fetch(q, self.base, hi)
        except Exception as exc:  # a busy or missing database is a gap in the series, not a failed run
            print(f"  (database read failed: {type(exc).__name__}: {exc})", file=sys.stderr)
            return None
        return int(round(row[0]))

    async def inventories(self, marker: str) -> int | None:
        """Probes whose last committed inventory carries ``marker``."""
        try:
            if self.url.startswith("sqlite"):
                row = await asyncio.to_thread(
                    self._sqlite, "SELECT COUNT(*) FROM probes WHERE kernel LIKE ?", (f"%{marker}",)
                )
            else:
                row = await self._pg_fetch("SELECT COUNT(*) FROM probes WHERE kernel LIKE $1", f"%{marker}")
        except Exception as exc:
            print(f"  (database read failed: {type(exc).__name__}: {exc})", file=sys.stderr)
            return None
        return int(row[0])

    async def audit_seq(self) -> int | None:
        """The newest audit sequence number (phases are told apart by it)."""
        try:
            if self.url.startswith("sqlite"):
                row = await asyncio.to_thread(self._sqlite, "SELECT COALESCE(MAX(seq), 0) FROM audit_events", ())
            else:
                row = await self._pg_fetch("SELECT COALESCE(MAX(seq), 0) FROM audit_events")
        except Exception as exc:
            print(f"  (database read failed: {type(exc).__name__}: {exc})", file=sys.stderr)
            return None
        return int(row[0])

    async def transition_rows(self, after_seq: int) -> list[tuple[str, str, str]] | None:
        """``(ts, type, reason)`` of audited probe status transitions after ``after_seq``."""
        try:
            if self.url.startswith("sqlite"):
                q = ("SELECT ts, type, COALESCE(json_extract(detail, '$.reason'), '') FROM audit_events"
                     " WHERE seq > ? AND type LIKE 'probe.%'")  # fmt: skip
                rows = await asyncio.to_thread(self._sqlite_all, q, (after_seq,))
            else:
                q = ("SELECT ts::text, type, COALESCE(detail->>'reason', '') FROM audit_events"
                     " WHERE seq > $1 AND type LIKE 'probe.%'")  # fmt: skip
                await self._pg_fetch("SELECT 1")
                rows = await self._pg.fetch(q, after_seq)
        except Exception as exc:
            print(f"  (database read failed: {type(exc).__name__}: {exc})", file=sys.stderr)
            return None
        return [(str(r[0]), str(r[1]), str(r[2])[:100]) for r in rows]

    def _sqlite_all(self, query: str, args: tuple[Any, ...]) -> list[Any]:
        path = self.url.split(":///", 1)[1]
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(query, args).fetchall()
        finally:
            conn.close()

    async def close(self) -> None:
        if self._pg is not None:
            await self._pg.close()


# -- the swarm ----------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """Counters of the whole swarm (cumulative; phases report differences)."""

    dials: int = 0
    http_status: Counter[int] = field(default_factory=Counter[int])
    dial_errors: Counter[str] = field(default_factory=Counter[str])
    welcomes: int = 0
    handshake_timeouts: int = 0
    policies_verified: int = 0
    signature_rejections: int = 0
    server_errors: Counter[str] = field(default_factory=Counter[str])
    server_closes: Counter[str] = field(default_factory=Counter[str])
    violations: int = 0
    backoff_messages: int = 0
    heartbeats_sent: int = 0
    inventories_sent: int = 0
    inventories_skipped: int = 0
    inventories_delayed: int = 0
    closed: int = 0
    crashed: int = 0
    commands_answered: int = 0
    commands_refused: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "dials": self.dials, "http_status": dict(self.http_status), "dial_errors": dict(self.dial_errors),
            "welcomes": self.welcomes, "handshake_timeouts": self.handshake_timeouts,
            "policies_verified": self.policies_verified, "signature_rejections": self.signature_rejections,
            "server_errors": dict(self.server_errors), "server_closes": dict(self.server_closes),
            "violations": self.violations,
            "backoff_messages": self.backoff_messages, "heartbeats_sent": self.heartbeats_sent,
            "inventories_sent": self.inventories_sent, "inventories_skipped": self.inventories_skipped,
            "inventories_delayed": self.inventories_delayed,
            "closed": self.closed, "crashed": self.crashed,
            "commands_answered": self.commands_answered, "commands_refused": self.commands_refused,
        }  # fmt: skip


def diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """``after - before`` of two :meth:`Stats.snapshot` results."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, dict):
            prev: dict[Any, int] = before.get(key, {})
            delta = {k: v - prev.get(k, 0) for k, v in value.items() if v - prev.get(k, 0)}  # type: ignore[operator]
            out[key] = delta
        else:
            out[key] = value - before.get(key, 0)
    return out


class Swarm:
    """All simulated probes, the phase they are in and what they have counted."""

    def __init__(self, args: argparse.Namespace, server: ControlPlane, regs: list[Registration]) -> None:
        self.args = args
        self.server = server
        self.rng = random.Random(args.seed)
        self.stats = Stats()
        self.stopping = False
        self.dial_slots = asyncio.Semaphore(args.dial_concurrency)
        self.hb_interval: float = args.heartbeat
        self.run_tag = self.rng.randint(1, 9_000)
        self.uptime_base = self.run_tag * UPTIME_STRIDE
        self.inventory_epoch = 0
        self._phase_changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self.ready_count = 0
        self.epoch = 0
        self.fresh_ready = 0
        self.all_ready = asyncio.Event()
        self.ready_marks: list[float] = []  # monotonic time of each ready transition in the current phase
        self.probes = [SimProbe(self, r) for r in regs]
        self._inventory = _template_inventory() if args.inventory == "real" else None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def inventory_marker(self) -> str:
        return f"(swarm {self.run_tag}:{self.inventory_epoch})"

    def inventory_for(self, probe: "SimProbe") -> InventoryPayload | None:
        if self._inventory is None:
            return None
        kernel = f"{self._inventory.kernel} {self.inventory_marker}"
        return self._inventory.model_copy(update={"hostname": probe.reg.hostname, "kernel": kernel,
                                                  "collected_at": _utcnow()})  # fmt: skip

    def heartbeat(self, seq: int) -> HeartbeatPayload:
        # Healthy, fixed metrics: a probe flapping to "degraded" would add audit writes that are not heartbeats.
        return HeartbeatPayload(
            uptime_s=self.uptime_base + seq, load=(0.05, 0.05, 0.05), mem_total_bytes=8 * 2**30,
            mem_used_bytes=2 * 2**30, disk_total_bytes=100 * 2**30, disk_used_bytes=30 * 2**30,
        )  # fmt: skip

    def set_heartbeat_interval(self, seconds: float) -> None:
        """Change every probe's heartbeat cadence now (each re-phases at random within the new interval)."""
        self.hb_interval = seconds
        fut, self._phase_changed = self._phase_changed, asyncio.get_running_loop().create_future()
        fut.set_result(None)

    async def wait_phase_change(self, timeout: float) -> bool:
        fut = self._phase_changed
        await asyncio.wait([fut], timeout=max(0.0, timeout))
        return fut.done()

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    def new_epoch(self) -> None:
        """Start counting afresh: :attr:`all_ready` is set once every probe got ready again since now."""
        self.epoch += 1
        self.fresh_ready = 0
        self.ready_marks = []
        self.all_ready.clear()

    def mark_ready(self, probe: "SimProbe", ready: bool) -> None:
        if not ready:
            self.ready_count -= 1
            return
        self.ready_count += 1
        if probe.ready_epoch != self.epoch:
            probe.ready_epoch = self.epoch
            self.fresh_ready += 1
            self.ready_marks.append(time.monotonic())
            if self.fresh_ready == len(self.probes):
                self.all_ready.set()

    def start(self, rate: float = 0.0) -> None:
        """Start every probe: all at once, or the i-th after ``i / rate`` seconds (a paced roll-out)."""
        self.new_epoch()
        self._tasks = [asyncio.create_task(p.life(i / rate if rate > 0 else 0.0)) for i, p in enumerate(self.probes)]
        for task in self._tasks:
            task.add_done_callback(self._on_done)

    def _on_done(self, task: "asyncio.Task[None]") -> None:
        if not task.cancelled() and task.exception() is not None:
            self.stats.crashed += 1
            if self.stats.crashed == 1:
                print(f"a simulated probe crashed: {task.exception()!r}", file=sys.stderr)

    def abort_all(self) -> int:
        """Drop every open connection at once (no close handshake, like a network cut); returns how many."""
        dropped = 0
        for probe in self.probes:
            ws = probe.ws
            if ws is not None:
                ws.transport.abort()
                dropped += 1
        return dropped

    async def stop(self) -> None:
        self.stopping = True
        self._stop.set()
        self.abort_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), timeout=60)


def _template_inventory() -> InventoryPayload:
    from legator_probe.agent.inventory import collect_inventory

    return collect_inventory(hostname="swarm-template")


class SimProbe:
    """One simulated probe: its identity, its verifier (kept across connections, like the agent's) and backoff."""

    def __init__(self, swarm: Swarm, reg: Registration) -> None:
        self.swarm = swarm
        self.reg = reg
        self.verifier = Verifier(
            probe_id=reg.probe_id, now=_utcnow, keys=[TrustedKey(reg.key_id, decode_public_key(reg.public_key))]
        )
        self.backoff = Backoff(rng=swarm.rng)
        self.ws: ClientConnection | None = None
        self.ready = False
        self.ready_epoch = -1
        self.hb_seq = 0

    async def life(self, first_delay: float = 0.0) -> None:
        swarm = self.swarm
        if first_delay > 0:
            await swarm.sleep(first_delay)
        while not swarm.stopping:
            attempt = await self._connect_once()
            if swarm.stopping:
                return
            await swarm.sleep(self.backoff.next_delay(attempt))

    async def _dial(self) -> ClientConnection | Attempt:
        swarm = self.swarm
        async with swarm.dial_slots:
            if swarm.stopping:
                return Attempt("failed")
            swarm.stats.dials += 1
            try:
                return await connect(
                    swarm.server.ws_url,
                    additional_headers={"Authorization": f"Bearer {self.reg.credential}"},
                    open_timeout=OPEN_TIMEOUT_S, ping_interval=30, ping_timeout=30, close_timeout=5,
                    max_size=4 * 2**20, compression=None, user_agent_header=f"legator-bench-swarm/{__version__}",
                )  # fmt: skip
            except InvalidStatus as exc:
                status = exc.response.status_code
                swarm.stats.http_status[status] += 1
                if status in (401, 403):
                    return Attempt("auth_failed")
                retry_after = exc.response.headers.get("Retry-After", "")
                if status in (429, 503) and retry_after.strip().isdigit():
                    return Attempt("retry_after", retry_after_s=max(float(retry_after), 1.0))
                return Attempt("failed")
            except (OSError, TimeoutError, WebSocketException) as exc:
                swarm.stats.dial_errors[type(exc).__name__] += 1
                return Attempt("failed")

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self.swarm.mark_ready(self, ready)

    async def _connect_once(self) -> Attempt:
        dialed = await self._dial()
        if isinstance(dialed, Attempt):
            return dialed
        ws = dialed
        swarm = self.swarm
        protocol = ProbeProtocol(Side.AGENT, verifier=self.verifier)
        started = time.monotonic()
        self.ws = ws
        welcomed = False
        hb_task: asyncio.Task[None] | None = None
        inventory_task: asyncio.Task[None] | None = None
        retry_after: float | None = None

        def handshake_timeout() -> None:
            # The agent gives up on a connection whose welcome has not come within open_timeout_s (30 s).
            if not welcomed:
                swarm.stats.handshake_timeouts += 1
                ws.transport.abort()

        watchdog = asyncio.get_running_loop().call_later(OPEN_TIMEOUT_S, handshake_timeout)
        try:
            protocol.send_hello(HelloPayload(probe_id=self.reg.probe_id, version=__version__,
                                             hostname=self.reg.hostname, capabilities=["shell"]))  # fmt: skip
            await _flush(ws, protocol)
            async for raw in ws:
                protocol.receive_text(raw if isinstance(raw, str) else raw.decode("utf-8", "replace"))
                for event in protocol.events_received():
                    if isinstance(event, WelcomeMessage):
                        welcomed = True
                        watchdog.cancel()
                        swarm.stats.welcomes += 1
                        inventory = swarm.inventory_for(self)
                        if inventory is None:
                            pass
                        elif event.payload.inventory_digest == inventory_digest(inventory):
                            # Like the agent: the control plane has this inventory already.
                            swarm.stats.inventories_skipped += 1
                        else:
                            delay = 0.0 if swarm.args.ignore_inventory_delay else event.payload.inventory_delay_s or 0.0
                            inventory_task = asyncio.create_task(self._send_inventory(ws, protocol, inventory, delay))
                        hb_task = asyncio.create_task(self._heartbeats(ws, protocol))
                    elif isinstance(event, PolicyUpdateMessage):
                        swarm.stats.policies_verified += 1
                        if welcomed:
                            self._set_ready(True)
                    elif isinstance(event, CommandMessage):
                        self._answer(protocol, event.payload)
                    elif isinstance(event, Rejected):
                        swarm.stats.signature_rejections += 1
                    elif isinstance(event, BackoffMessage):
                        swarm.stats.backoff_messages += 1
                        retry_after = event.payload.retry_after_s
                        protocol.close()
                    elif isinstance(event, ErrorMessage):
                        swarm.stats.server_errors[event.payload.code] += 1
                    elif isinstance(event, ProtocolViolation):
                        swarm.stats.violations += 1
                await _flush(ws, protocol)
                if protocol.state >= State.CLOSING:
                    await ws.close(protocol.close_code or 1000)
                    break
        except (ConnectionClosed, OSError, InvalidState):
            pass
        finally:
            watchdog.cancel()
            received = ws.protocol.close_rcvd
            if received is not None and not swarm.stopping:
                # Closed by the control plane (a replaced connection, the offline sweep, a full send queue...).
                swarm.stats.server_closes[f"{received.code} {received.reason}".strip()] += 1
            self._set_ready(False)
            self.ws = None
            swarm.stats.closed += 1
            for task in (hb_task, inventory_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            ws.transport.abort()
        lived = time.monotonic() - started
        if not welcomed:
            return Attempt("failed")
        if retry_after is not None:
            return Attempt("retry_after", lived_s=lived, retry_after_s=retry_after)
        return Attempt("closed", lived_s=lived)

    async def _send_inventory(
        self, ws: ClientConnection, protocol: ProbeProtocol, inventory: InventoryPayload, delay: float
    ) -> None:
        # Like the agent: wait for the slot the welcome gave (``--ignore-inventory-delay``: like an older agent).
        if delay > 0:
            self.swarm.stats.inventories_delayed += 1
            await asyncio.sleep(delay)
        protocol.send_inventory(inventory)
        self.swarm.stats.inventories_sent += 1
        await _flush(ws, protocol)

    def _answer(self, protocol: ProbeProtocol, command: CommandPayload) -> None:
        """Answer a ``command`` (its signature already verified by the protocol) without running anything.

        ``echo`` (argv or a plain script) gets its output, streamed first when asked, like the agent; anything else
        is refused: a simulated probe has no shell.
        """
        output = _echo_output(command)
        if output is None:
            self.swarm.stats.commands_refused += 1
            refusal = "a simulated probe only echoes"
            protocol.send_result(
                CommandResultPayload(request_id=command.request_id, status="refused", error_code="sim", error=refusal)
            )
            return
        if command.stream and output:
            protocol.send_output_chunk(
                OutputChunkPayload(request_id=command.request_id, seq=0, stream="stdout", data=output)
            )
        protocol.send_result(
            CommandResultPayload(
                request_id=command.request_id, status="ok", exit_code=0, stdout=output,
                stdout_bytes=len(output.encode("utf-8")),
            )
        )  # fmt: skip
        self.swarm.stats.commands_answered += 1

    async def _heartbeats(self, ws: ClientConnection, protocol: ProbeProtocol) -> None:
        """Like the agent: one at once, then every interval; re-phased at random when the interval changes."""
        swarm = self.swarm
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                now = loop.time()
                if now < next_at:
                    if await swarm.wait_phase_change(next_at - now):
                        next_at = loop.time() + swarm.rng.uniform(0, swarm.hb_interval)
                    continue
                self.hb_seq += 1
                protocol.send_heartbeat(swarm.heartbeat(self.hb_seq))
                await _flush(ws, protocol)
                swarm.stats.heartbeats_sent += 1
                next_at = max(next_at + swarm.hb_interval, loop.time())
        except (ConnectionClosed, OSError, InvalidState):
            return


def _echo_output(command: CommandPayload) -> str | None:
    """What ``echo`` would print for a shell command that is only an ``echo`` of plain words, else ``None``."""
    if not isinstance(command, ShellCommand):
        return None
    if command.spec.argv is not None:
        words = command.spec.argv
    else:
        script = command.spec.script or ""
        if any(c in script for c in "\\$`;&|<>(){}*?[]~#\n"):
            return None
        try:
            words = shlex.split(script)
        except ValueError:
            return None
    if not words or words[0] not in ("echo", "/bin/echo", "/usr/bin/echo"):
        return None
    return " ".join(words[1:]) + "\n"


async def _flush(ws: ClientConnection, protocol: ProbeProtocol) -> None:
    for frame in protocol.data_to_send():
        await ws.send(frame)


# -- measurement --------------------------------------------------------------------------------------------


class Sampler:
    """Samples the control plane and this process every ``interval`` seconds, tagging each with the phase."""

    def __init__(self, server_pid: int | None, swarm: Swarm, t0: float, interval: float = 1.0) -> None:
        self.server_pid = server_pid
        self.swarm = swarm
        self.t0 = t0
        self.interval = interval
        self._phase = "start"
        self.phase_starts: list[tuple[str, datetime]] = []
        self.rows: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._tick = 0

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, name: str) -> None:
        if name != self._phase:
            self._phase = name
            self.phase_starts.append((name, _utcnow()))

    def phase_of(self, when: datetime) -> str:
        current = "before"
        for name, started in self.phase_starts:
            if started <= when:
                current = name
        return current

    def sample(self) -> dict[str, Any]:
        import os

        self._tick += 1
        row: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 2), "phase": self.phase,
                               "ready": self.swarm.ready_count,
                               "hb_sent": self.swarm.stats.heartbeats_sent}  # fmt: skip
        if self.server_pid is not None:
            s: ProcSample = proc_sample(self.server_pid, t0=self.t0, fds=self._tick % 5 == 1)
            row |= {"server_rss": s.rss, "server_hwm": s.hwm, "server_cpu_s": s.cpu_s}
            if s.fds is not None:
                row["server_fds"] = s.fds
        me = proc_sample(os.getpid(), t0=self.t0, fds=False)
        row |= {"swarm_rss": me.rss, "swarm_cpu_s": me.cpu_s}
        self.rows.append(row)
        return row

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def of(self, phase: str, key: str) -> list[float]:
        return [r[key] for r in self.rows if r["phase"] == phase and r.get(key) is not None]

    def cpu_share(self, phase: str, key: str = "server_cpu_s") -> float | None:
        """CPU used by the process during ``phase``, as a fraction of one core."""
        rows = [r for r in self.rows if r["phase"] == phase and r.get(key) is not None]
        if len(rows) < 2 or rows[-1]["t"] <= rows[0]["t"]:
            return None
        return round((rows[-1][key] - rows[0][key]) / (rows[-1]["t"] - rows[0]["t"]), 2)


def _percentile_times(marks: list[float], t0: float, total: int) -> dict[str, float | None]:
    """Seconds after ``t0`` until 50 / 90 / 99 / 100 % of ``total`` ready transitions happened."""
    marks = sorted(marks)
    out: dict[str, float | None] = {}
    for label, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("all", 1.0)):
        need = max(1, int(total * fraction + 0.999999))
        out[label] = round(marks[need - 1] - t0, 2) if len(marks) >= need else None
    return out


async def wait_all_ready(swarm: Swarm, timeout: float) -> bool:
    try:
        await asyncio.wait_for(swarm.all_ready.wait(), timeout=timeout)
    except TimeoutError:
        return False
    return True


async def wait_until(predicate: Callable[[], Any], *, timeout: float, every: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(every)
    return False


def fleet_view(server: ControlPlane) -> dict[str, Any] | None:
    summary = server.get_json("/api/v1/fleet/summary")
    if not isinstance(summary, dict):
        return None
    return {"by_status": summary.get("by_status"), "connected_total": summary.get("connected_total"),
            "total_probes": summary.get("total_probes")}  # fmt: skip


async def run(args: argparse.Namespace, results: dict[str, Any]) -> None:
    n = args.probes
    results["machine"] = machine_info()
    soft, hard = raise_fd_limit(n + 2048)  # per process: ours, and the server we start inherits it
    results["fd_limit"] = {"soft": soft, "hard": hard}
    print(f"fd limit {soft} (hard {hard}); {n} probes")

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="legator-swarm-"))
    work.mkdir(parents=True, exist_ok=True)
    results["work_dir"] = str(work)
    if args.server:
        data_dir = Path(args.data_dir) if args.data_dir else None
        server = ControlPlane(data_dir=data_dir, url=args.server, admin_key_file=Path(args.admin_key_file),
                              pid=args.server_pid)  # fmt: skip
        cache_key = args.server
    else:
        data_dir = work / "data"
        server = ControlPlane(
            data_dir=data_dir, log_path=work / "server.log", database_url=args.database_url,
            env={
                "LEGATOR_HEARTBEAT_INTERVAL_S": str(args.heartbeat),
                # Every simulated probe registers from 127.0.0.1, so the per-IP registration limit (20/s) would
                # time the limiter, not the control plane; real probes register from their own addresses.
                "LEGATOR_RATE_LIMIT_PER_MINUTE": str(args.server_rate_limit),
            },
        )  # fmt: skip
        cache_key = f"own:{data_dir.resolve()}:{args.database_url or 'sqlite'}"
    db_url = args.database_url or (f"sqlite+aiosqlite:///{data_dir / 'legator.db'}" if data_dir else None)
    t0 = time.monotonic()
    swarm: Swarm | None = None
    sampler: Sampler | None = None
    counter: CommitCounter | None = None
    # With our own SQLite server, the registration cache is a copy of the data dir taken right after registering
    # (server stopped), restored before each run: every run starts from the same database, probes registered.
    pristine = work / "pristine-data" if server.owned and not args.database_url else None
    cache = work / "registrations.json"
    if pristine is not None and data_dir is not None:
        shutil.rmtree(data_dir, ignore_errors=True)
        if pristine.exists() and cache.exists():
            shutil.copytree(pristine, data_dir)
        else:
            cache.unlink(missing_ok=True)
    try:
        server.start()
        results["server"] = {
            "url": server.url,
            "pid": server.pid,
            "owned": server.owned,
            "database": "postgresql" if db_url and db_url.startswith("postgres") else "sqlite",
        }
        print(f"control plane {server.url} (pid {server.pid})")
        regs, reg_info = await register_all(
            server, count=n, prefix=args.hostname_prefix, cache=cache, cache_key=cache_key,
            concurrency=args.register_concurrency,
        )  # fmt: skip
        results["registration"] = reg_info
        print(f"registration: {reg_info}")
        if pristine is not None and data_dir is not None and reg_info["registered"]:
            server.terminate()
            shutil.rmtree(pristine, ignore_errors=True)
            shutil.copytree(data_dir, pristine)
            server.start()
            results["server"]["pid"] = server.pid

        if args.register_only:
            return
        swarm = Swarm(args, server, regs)
        counter = CommitCounter(db_url, swarm.uptime_base) if db_url else None
        sampler = Sampler(server.pid, swarm, t0)
        audit_seq0 = await counter.audit_seq() if counter else None
        sampler.phase = "idle-empty"
        for _ in range(3):
            sampler.sample()
            await asyncio.sleep(1)
        base_rss = sampler.of("idle-empty", "server_rss")

        # -- connect ------------------------------------------------------------------------------------------
        sampler.phase = "connect"
        sampler.start()
        before = swarm.stats.snapshot()
        t_connect = time.monotonic()
        swarm.start(args.connect_rate)
        ok = await wait_all_ready(swarm, args.connect_timeout)
        connect_s = time.monotonic() - t_connect
        results["connect"] = {
            "all_connected": ok, "connected": swarm.ready_count, "seconds": round(connect_s, 2),
            "progress_s": _percentile_times(swarm.ready_marks, t_connect, n),
            "admission_lower_bound_s": round(max(0.0, (n - ADMIT_BURST) / ADMIT_PER_SECOND), 2),
            "paced_dials_per_s": args.connect_rate or None,
            "counters": diff(swarm.stats.snapshot(), before),
            "server_cpu_cores": sampler.cpu_share("connect"),
            "swarm_cpu_cores": sampler.cpu_share("connect", "swarm_cpu_s"),
        }  # fmt: skip
        print(f"connect: {swarm.ready_count}/{n} in {connect_s:.1f} s")

        # -- settle: inventories sent on connect are written ------------------------------------------------
        sampler.phase = "settle"
        settle: dict[str, Any] = {}
        if counter is not None and args.inventory == "real":
            t_settle = time.monotonic()
            marker = swarm.inventory_marker

            async def inventories_done() -> bool:
                got = await counter.inventories(marker) if counter else None
                return got is not None and got >= swarm.ready_count

            settle["inventories_committed"] = await wait_until(inventories_done, timeout=args.drain_timeout)
            settle["inventories_seconds_after_connect"] = round(time.monotonic() - t_settle, 2)
        await asyncio.sleep(3)
        settle["fleet"] = await asyncio.to_thread(fleet_view, server)
        results["settle"] = settle

        # -- hold: ordinary heartbeats ----------------------------------------------------------------------
        sampler.phase = "hold"
        hb_before = await counter.heartbeats() if counter else None
        sent_before = swarm.stats.heartbeats_sent
        t_hold = time.monotonic()
        await asyncio.sleep(args.duration)
        hold_s = time.monotonic() - t_hold
        hb_after = await counter.heartbeats() if counter else None
        sent = swarm.stats.heartbeats_sent - sent_before
        hold_rss = sampler.of("hold", "server_rss")
        results["hold"] = {
            "seconds": round(hold_s, 1), "connected_min": min(sampler.of("hold", "ready"), default=None),
            "connected_end": swarm.ready_count, "heartbeat_interval_s": args.heartbeat,
            "heartbeats_sent": sent, "sent_per_s": round(sent / hold_s, 1),
            "committed_per_s": round((hb_after - hb_before) / hold_s, 1) if hb_after is not None and hb_before is not None else None,  # noqa: E501
            "server_rss": summarize(hold_rss), "server_cpu_cores": sampler.cpu_share("hold"),
            "server_fds": summarize(sampler.of("hold", "server_fds")),
            "swarm_rss": summarize(sampler.of("hold", "swarm_rss")),
        }  # fmt: skip
        print(
            f"hold: {swarm.ready_count} connected, server RSS median "
            f"{mib((summarize(hold_rss) or {}).get('median') if hold_rss else None)} MiB"
        )

        # -- flood: heartbeat throughput ----------------------------------------------------------------------
        if args.flood_seconds > 0 and counter is not None:
            await _flood(args, swarm, sampler, counter, results)

        # -- storm ------------------------------------------------------------------------------------------
        if args.storm:
            await _storm(args, swarm, sampler, counter, results)

        sampler.phase = "end"
        sampler.sample()
        if counter is not None and audit_seq0 is not None:
            rows = await counter.transition_rows(audit_seq0)
            if rows is not None:
                by_phase: dict[str, Counter[str]] = {}
                for ts, kind, reason in rows:
                    when = datetime.fromisoformat(ts.replace(" ", "T"))
                    when = when if when.tzinfo else when.replace(tzinfo=UTC)
                    by_phase.setdefault(sampler.phase_of(when), Counter())[f"{kind}: {reason}"] += 1
                results["audited_transitions_by_phase"] = {k: dict(v) for k, v in by_phase.items()}
        results["fleet_end"] = await asyncio.to_thread(fleet_view, server)
        results["rss_summary"] = {
            "server_baseline_empty": summarize(base_rss),
            "server_hold": summarize(hold_rss),
            "server_flood": summarize(sampler.of("flood", "server_rss")),
            "server_storm": summarize(sampler.of("storm", "server_rss")),
            "server_peak_hwm": max(sampler.of("end", "server_hwm") or sampler.of("storm", "server_hwm") or [0]),
        }
        if base_rss and hold_rss:
            results["rss_summary"]["server_per_connection_bytes"] = round(
                (summarize(hold_rss)["median"] - summarize(base_rss)["median"]) / max(1, n)  # type: ignore[index]
            )
    finally:
        if sampler is not None:
            await sampler.stop()
            results["samples"] = sampler.rows
        if swarm is not None:
            results["counters_total"] = swarm.stats.snapshot()
            with contextlib.suppress(Exception):
                await swarm.stop()
        if counter is not None:
            await counter.close()
        if server.owned:
            results["server_shutdown_s"] = server.terminate()
            server.stop()
            if not args.work_dir and not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        results["total_seconds"] = round(time.monotonic() - t0, 1)


async def _flood(
    args: argparse.Namespace, swarm: Swarm, sampler: Sampler, counter: CommitCounter, results: dict[str, Any]
) -> None:
    n = len(swarm.probes)
    # At most 50 heartbeats/s per connection: half the gateway's per-connection frame limit (100/s), so the flood
    # measures heartbeat handling, not the rate limiter closing connections.
    interval = max(1 / PER_CONNECTION_FLOOD_CAP, n / args.flood_rate)
    sampler.phase = "flood"
    series: list[tuple[float, int]] = []
    start_count = await counter.heartbeats()
    sent_before = swarm.stats.heartbeats_sent
    t_flood = time.monotonic()
    swarm.set_heartbeat_interval(interval)
    while time.monotonic() - t_flood < args.flood_seconds:
        await asyncio.sleep(1.0)
        got = await counter.heartbeats()
        if got is not None:
            series.append((time.monotonic() - t_flood, got))
    flood_s = time.monotonic() - t_flood
    swarm.set_heartbeat_interval(args.heartbeat)
    sent = swarm.stats.heartbeats_sent - sent_before
    end_count = series[-1][1] if series else None
    # per-second committed rates; the first quarter is ramp-up
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(series, series[1:], strict=False) if b[0] > a[0]]
    steady = rates[len(rates) // 4 :] if len(rates) >= 4 else rates
    sampler.phase = "drain"
    t_drain = time.monotonic()
    target = swarm.stats.heartbeats_sent - sent_before

    async def drained() -> bool:
        got = await counter.heartbeats()
        return got is not None and start_count is not None and got - start_count >= target

    drained_ok = await wait_until(drained, timeout=args.drain_timeout, every=0.5)
    results["flood"] = {
        "seconds": round(flood_s, 1), "offered_target_per_s": args.flood_rate,
        "per_probe_interval_s": round(interval, 3), "heartbeats_sent": sent, "sent_per_s": round(sent / flood_s, 1),
        "committed_in_window": (end_count - start_count) if end_count is not None and start_count is not None else None,
        "committed_per_s_overall": round((end_count - start_count) / flood_s, 1) if end_count is not None and start_count is not None else None,  # noqa: E501
        "committed_per_s_steady": summarize([round(r, 1) for r in steady]),
        "backlog_drained": drained_ok, "drain_seconds": round(time.monotonic() - t_drain, 2),
        "server_cpu_cores": sampler.cpu_share("flood"), "swarm_cpu_cores": sampler.cpu_share("flood", "swarm_cpu_s"),
        "server_rss": summarize(sampler.of("flood", "server_rss")),
        "connected_min": min(sampler.of("flood", "ready"), default=None),
    }  # fmt: skip
    print(f"flood: sent {sent / flood_s:.0f}/s, committed {results['flood']['committed_per_s_overall']}/s")
    sampler.phase = "hold2"
    await asyncio.sleep(3)


async def _storm(
    args: argparse.Namespace, swarm: Swarm, sampler: Sampler, counter: CommitCounter | None, results: dict[str, Any]
) -> None:
    n = len(swarm.probes)
    for probe in swarm.probes:
        probe.backoff.reset()  # these connections lived long (>= reset_after_s); the agent resets then too
    if args.storm_inventory == "changed":
        swarm.inventory_epoch += 1  # every host's inventory differs from the stored one: all are resent
    marker = swarm.inventory_marker
    sampler.phase = "storm"
    before = swarm.stats.snapshot()
    swarm.new_epoch()
    t_storm = time.monotonic()
    dropped = swarm.abort_all()
    ok = await wait_all_ready(swarm, args.storm_timeout)
    storm_s = time.monotonic() - t_storm
    storm: dict[str, Any] = {
        "dropped": dropped, "all_back": ok, "connected": swarm.ready_count, "seconds": round(storm_s, 2),
        "progress_s": _percentile_times(swarm.ready_marks, t_storm, n),
        "admission_lower_bound_s": round(max(0.0, (n - ADMIT_BURST) / ADMIT_PER_SECOND), 2),
        "counters": diff(swarm.stats.snapshot(), before),
        "server_cpu_cores": sampler.cpu_share("storm"), "swarm_cpu_cores": sampler.cpu_share("storm", "swarm_cpu_s"),
    }  # fmt: skip
    print(f"storm: {swarm.ready_count}/{n} back in {storm_s:.1f} s")
    if counter is not None and args.inventory == "real" and args.storm_inventory == "changed":
        sampler.phase = "storm-settle"
        t_settle = time.monotonic()

        async def inventories_done() -> bool:
            got = await counter.inventories(marker)
            return got is not None and got >= n

        storm["inventories_committed"] = await wait_until(inventories_done, timeout=args.drain_timeout)
        storm["inventories_seconds_after_all_back"] = round(time.monotonic() - t_settle, 2)
    sampler.phase = "storm-settle"
    await asyncio.sleep(5)
    storm["fleet_after"] = await asyncio.to_thread(fleet_view, swarm.server)
    results["storm"] = storm


# -- report -------------------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    def g(path: str) -> Any:
        node: Any = results
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]  # pyright: ignore[reportUnknownVariableType]
        return node  # pyright: ignore[reportUnknownVariableType]

    def med_mib(path: str) -> str:
        s = g(path)
        return f"{mib(s['median'])} MiB (max {mib(s['max'])})" if s else "-"

    rows: list[tuple[str, object]] = [
        ("probes", g("params.probes")),
        ("registration", g("registration")),
        ("connected after connect phase", f"{g('connect.connected')} in {g('connect.seconds')} s "
                                          f"(admission bound >= {g('connect.admission_lower_bound_s')} s)"),
        ("connect progress", g("connect.progress_s")),
        ("connect 503s", (g("connect.counters.http_status") or {}).get(503, 0)),
        ("server RSS, empty", med_mib("rss_summary.server_baseline_empty")),
        ("server RSS, holding + heartbeats", med_mib("rss_summary.server_hold")),
        ("server RSS per connection", f"{round((g('rss_summary.server_per_connection_bytes') or 0) / 1024, 1)} KiB"),
        ("server RSS during flood", med_mib("rss_summary.server_flood")),
        ("server peak (VmHWM)", f"{mib(g('rss_summary.server_peak_hwm'))} MiB"),
        ("held during hold (min)", g("hold.connected_min")),
        ("hold heartbeats sent / committed per s", f"{g('hold.sent_per_s')} / {g('hold.committed_per_s')}"),
        ("hold server CPU (cores)", g("hold.server_cpu_cores")),
        ("flood sent / committed per s", f"{g('flood.sent_per_s')} / {g('flood.committed_per_s_overall')}"),
        ("flood committed per s (steady)", g("flood.committed_per_s_steady")),
        ("flood server CPU (cores)", g("flood.server_cpu_cores")),
        ("flood drain", f"{g('flood.drain_seconds')} s (drained: {g('flood.backlog_drained')})"),
        ("storm: all back", f"{g('storm.connected')} in {g('storm.seconds')} s (all: {g('storm.all_back')})"),
        ("storm progress", g("storm.progress_s")),
        ("storm 503s / dials", f"{(g('storm.counters.http_status') or {}).get(503, 0)} / {g('storm.counters.dials')}"),
        ("storm server CPU (cores)", g("storm.server_cpu_cores")),
        (
            "storm inventories sent / skipped / waited for a slot",
            f"{g('storm.counters.inventories_sent')} / {g('storm.counters.inventories_skipped')}"
            f" / {g('storm.counters.inventories_delayed')}",
        ),
        ("server RSS during storm", med_mib("rss_summary.server_storm")),
        ("fleet view at end", g("fleet_end")),
        ("signature rejections", g("counters_total.signature_rejections")),
        ("total seconds", g("total_seconds")),
    ]  # fmt: skip
    print_table("probe swarm", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=1000, help="simulated probes (default 1000)")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="heartbeat interval, s (default 30)")
    parser.add_argument("--duration", type=float, default=60.0, help="hold phase, s (default 60)")
    parser.add_argument("--flood-seconds", type=float, default=20.0, help="heartbeat flood, s (0 skips; default 20)")
    parser.add_argument("--flood-rate", type=float, default=10_000.0, help="heartbeats/s offered in the flood")
    parser.add_argument("--no-storm", dest="storm", action="store_false", help="skip the reconnect storm")
    parser.add_argument(
        "--inventory",
        choices=["real", "none"],
        default="real",
        help="send this host's real inventory after each welcome, like the agent (default), or none",
    )
    parser.add_argument(
        "--storm-inventory",
        choices=["unchanged", "changed"],
        default="unchanged",
        help="in the storm, hosts whose inventory did not change (default: the agent does not resend it, the"
        " welcome names the stored one) or changed on every host (each probe resends it: the worst case)",
    )
    parser.add_argument(
        "--ignore-inventory-delay",
        action="store_true",
        help="send each inventory at once, ignoring the slot the welcome gives (what agents before the"
        " welcome's inventory_delay_s do)",
    )
    parser.add_argument(
        "--connect-rate",
        type=float,
        default=0.0,
        help="pace the first connection of each probe at this many a second (default 0: all at once;"
        " reconnects are never paced)",
    )
    parser.add_argument("--register-only", action="store_true", help="register (and cache in --work-dir), then stop")
    parser.add_argument("--dial-concurrency", type=int, default=1000, help="WebSocket handshakes in flight at most")
    parser.add_argument("--register-concurrency", type=int, default=16, help="registrations in flight at most")
    parser.add_argument("--connect-timeout", type=float, default=300.0, help="bound on the connect phase, s")
    parser.add_argument("--storm-timeout", type=float, default=300.0, help="bound on the storm phase, s")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="bound on each backlog drain, s")
    parser.add_argument("--max-runtime", type=float, default=1500.0, help="hard bound on the whole run, s")
    parser.add_argument("--server", help="attach to this control plane instead of starting one")
    parser.add_argument("--admin-key-file", help="admin API key file of --server")
    parser.add_argument("--server-pid", type=int, help="pid of --server, to read its RSS")
    parser.add_argument("--data-dir", help="data dir of --server (its SQLite file is read to count commits)")
    parser.add_argument("--database-url", help="PostgreSQL URL for the server we start (or of --server)")
    parser.add_argument(
        "--server-rate-limit",
        type=int,
        default=1_000_000,
        help="LEGATOR_RATE_LIMIT_PER_MINUTE of the server we start (registrations all come from "
        "127.0.0.1; default 1000000, i.e. out of the way)",
    )
    parser.add_argument("--work-dir", help="keep the data dir and the registration cache here between runs")
    parser.add_argument("--keep", action="store_true", help="keep the temp work dir")
    parser.add_argument("--hostname-prefix", default="swarm")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.server and not args.admin_key_file:
        parser.error("--server needs --admin-key-file")
    results: dict[str, Any] = {"benchmark": "probe_swarm", "command": " ".join(sys.argv), "params": vars(args)}

    tune_gc_for_many_simulated_probes()

    async def bounded() -> None:
        async with asyncio.timeout(args.max_runtime):
            await run(args, results)

    failed: BaseException | None = None
    try:
        asyncio.run(bounded())
    except (Exception, KeyboardInterrupt) as exc:  # report what was measured before the failure
        failed = exc
        results["error"] = f"{type(exc).__name__}: {exc}"
    results["swarm_ru_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report(results)
    if args.json:
        write_json(Path(args.json), results)
        print(f"\nwrote {args.json}")
    if failed is not None:
        raise SystemExit(f"failed: {results['error']}")


if __name__ == "__main__":
    main()
