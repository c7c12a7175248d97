"""The probe daemon: connect, handshake, report, execute, reconnect; shut down gracefully.

Shaped like uvicorn's ``Server``: :meth:`ProbeDaemon.serve` runs ``startup → main loop → shutdown``.

* **Main loop** — dial ``/ws/probe`` with the credential, send ``hello``, wait for ``welcome``, then
  send ``inventory`` at once (unless the welcome's ``inventory_digest`` shows the control plane has this
  host's inventory already) and every ``inventory_interval_s``, and a ``heartbeat`` every
  ``heartbeat_interval_s`` while executing signed instructions. When the connection ends, wait as
  :class:`~legator_probe.agent.backoff.Backoff` says and dial again.
* **Shutdown** — the first SIGTERM/SIGINT (or :meth:`request_stop`) stops new commands, gives
  running ones ``drain_timeout_s`` to finish, cancels the rest (their process groups are killed),
  sends their results and closes the WebSocket with 1000. A second signal forces exit at once
  (running process groups still get SIGKILL).

Commands survive a dropped connection: results produced while offline are kept (up to
:data:`MAX_PENDING_RESULTS`) and sent after the next ``welcome``; output chunks are not.
"""

import logging
import os
import random
import signal
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from legator_probe import __version__
from legator_probe.agent._connection import AgentConnection
from legator_probe.agent._session import MAX_PENDING_RESULTS, Outbox, Session
from legator_probe.agent._state import ProbeState
from legator_probe.agent.backoff import Attempt, Backoff
from legator_probe.agent.commands._runner import ExecEnv, find_program
from legator_probe.agent.executor import Executor
from legator_probe.agent.settings import ProbeConfig, ProbeSettings, is_loopback_url, websocket_url
from legator_probe.agent.status import ConnectionOutcome, ConnectionStatus, status_path, write_status
from legator_probe.protocol.connection import ProbeProtocol, Side
from legator_probe.protocol.errors import CLOSE_NORMAL

__all__ = ["MAX_PENDING_RESULTS", "ProbeDaemon"]

logger = logging.getLogger(__name__)


_PRIVATE_ENV = frozenset({"LEGATOR_PROBE_TOKEN"})
"""Variables of the probe's own environment that commands never inherit."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ProbeDaemon:
    """A running probe. Build it with settings and a loaded config, then ``await serve()``.

    In-process use (tests, ``legator demo``)::

        daemon = ProbeDaemon(settings, config)
        async with daemon.running():      # serve() in the background, stopped gracefully on exit
            await daemon.wait_connected()
            ...

    Attributes:
        settings: Process settings.
        state: Config, local policy and trusted keys.
        hostname: Host name reported to the control plane.
        attempts: Recent connection attempts, newest last (for ``status`` and tests).
        should_exit: Set once a graceful stop was requested.
        force_exit: Set when a second signal cut the drain short.
    """

    def __init__(
        self,
        settings: ProbeSettings,
        config: ProbeConfig,
        *,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        """Build the daemon; nothing runs until :meth:`serve`.

        Args:
            settings: Process settings.
            config: The probe config (identity, server, credential, keys, policy).
            config_path: Where policy and key changes are persisted and the status file lives;
                ``None`` keeps changes in memory.
            env: Base environment of commands (default: this process's environment).
            rng: Jitter source of the reconnect backoff.
            sleep: Waits between connection attempts (inject to drive backoff in tests).
            clock: Monotonic clock for connection lifetimes.
            now: Wall clock for signature expiry.
        """
        self.settings = settings
        self.state = ProbeState(config, config_path=config_path, now=now, default_cwd=str(settings.command_cwd))
        self.hostname = settings.hostname or socket.gethostname()
        self.backoff = Backoff(
            base_s=settings.backoff_base_s,
            cap_s=settings.backoff_cap_s,
            reset_after_s=settings.backoff_reset_after_s,
            auth_delay_s=settings.auth_failure_delay_s,
            rng=rng,
        )
        base_env = {
            key: value for key, value in (os.environ if env is None else env).items() if key not in _PRIVATE_ENV
        }
        self.exec_env = ExecEnv(base_env, default_cwd=str(settings.command_cwd))
        self.attempts: deque[Attempt] = deque(maxlen=100)
        self.should_exit = False
        self.force_exit = False
        self.clock = clock
        self.outbox = Outbox()
        self.stop_requested = anyio.Event()
        self._sleep = sleep
        self._connected = anyio.Event()
        self._interruptible: anyio.CancelScope | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._executor: Executor | None = None
        self._last_connected_at: datetime | None = None
        self._ssl: ssl.SSLContext | None = None

    # --- public API ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the handshake with the control plane is complete right now."""
        return self._connected.is_set()

    @property
    def executor(self) -> Executor:
        """The command executor (only while :meth:`serve` runs)."""
        if self._executor is None:
            raise RuntimeError("the daemon is not running")
        return self._executor

    async def wait_connected(self) -> None:
        """Wait until the next (or current) handshake completes."""
        await self._connected.wait()

    def request_stop(self) -> None:
        """Stop gracefully: drain commands, send their results, close with 1000, return from :meth:`serve`."""
        self.should_exit = True
        self.stop_requested.set()
        if self._interruptible is not None:
            self._interruptible.cancel()

    async def serve(self, *, handle_signals: bool = True) -> None:
        """Run until stopped: ``startup``, the connect loop, then ``shutdown``.

        Args:
            handle_signals: Install SIGTERM/SIGINT handling (leave on for the CLI, off in tests).
        """
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            if handle_signals:
                task_group.start_soon(self._watch_signals)
            await self.startup()
            try:
                async with Executor(
                    emitter=self.outbox,
                    policy=lambda: self.state.policy,
                    exec_env=self.exec_env,
                    max_concurrent=self.settings.max_concurrent_commands or self.state.config.max_concurrent_commands,
                    max_frame_bytes=self.settings.max_frame_bytes,
                ) as executor:
                    self._executor = executor
                    await self._main_loop()
                    await executor.drain(self.settings.drain_timeout_s)
            finally:
                self._executor = None
                with anyio.CancelScope(shield=True):
                    await self.shutdown()
            task_group.cancel_scope.cancel()

    @asynccontextmanager
    async def running(self) -> AsyncIterator["ProbeDaemon"]:
        """Run :meth:`serve` (without signal handling) in the background; stop gracefully on exit."""
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(partial(self.serve, handle_signals=False))
            try:
                yield self
            finally:
                self.request_stop()

    async def startup(self) -> None:
        """Log what is about to happen and warn about plain-text transport."""
        config = self.state.config
        logger.info("legator-probe %s: probe %s, server %s", __version__, config.probe_id, config.server_url)
        if config.server_url.startswith("http://") and not is_loopback_url(config.server_url):
            logger.warning("the control plane URL is plain http:// to a non-loopback host: traffic is not encrypted")

    async def shutdown(self) -> None:
        """Record that the probe stopped."""
        await self._record("stopped", "the probe stopped", None)
        logger.info("legator-probe stopped")

    # --- connect loop --------------------------------------------------------------------------

    async def _main_loop(self) -> None:
        while not self.should_exit:
            attempt = await self._connect_once()
            self.attempts.append(attempt)
            if self.should_exit:
                break
            delay = self.backoff.next_delay(attempt)
            outcome: ConnectionOutcome = "disconnected" if attempt.kind == "closed" else attempt.kind
            await self._record(outcome, self._describe(attempt), delay)
            logger.info("reconnecting in %.1f s", delay)
            with anyio.CancelScope() as scope:
                self._interruptible = scope
                await self._sleep(delay)
            self._interruptible = None

    @staticmethod
    def _describe(attempt: Attempt) -> str:
        if attempt.kind == "auth_failed":
            return "the control plane refused the credential; re-register with 'legator-probe init --force'"
        if attempt.kind == "retry_after":
            return f"the control plane asked to retry after {attempt.retry_after_s:g} s"
        if attempt.kind == "closed":
            return f"connection closed after {attempt.lived_s:.0f} s"
        return "could not connect"

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:  # built once: loading the CA bundle on every reconnect costs CPU and memory
            ca_file = self.state.config.ca_file
            self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        return self._ssl

    async def _dial(self) -> Attempt | AgentConnection:
        config = self.state.config
        url = websocket_url(config.server_url)
        try:
            websocket = await connect(
                url,
                additional_headers={"Authorization": f"Bearer {config.credential.get_secret_value()}"},
                ssl=self._ssl_context() if url.startswith("wss://") else None,
                open_timeout=self.settings.open_timeout_s,
                ping_interval=self.settings.ping_interval_s,
                ping_timeout=self.settings.ping_timeout_s,
                close_timeout=self.settings.close_timeout_s,
                max_size=self.settings.max_frame_bytes,
                compression="deflate" if self.settings.compression else None,
                user_agent_header=f"legator-probe/{__version__}",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                logger.warning("the control plane refused the probe credential (HTTP %d)", status)
                return Attempt("auth_failed")
            retry_after = exc.response.headers.get("Retry-After", "")
            if status in (429, 503) and retry_after.strip().isdigit():
                logger.warning("the control plane is busy (HTTP %d), retry after %s s", status, retry_after)
                return Attempt("retry_after", retry_after_s=max(float(retry_after), 1.0))
            logger.warning("the control plane answered HTTP %d to the WebSocket upgrade", status)
            return Attempt("failed")
        except (OSError, TimeoutError, WebSocketException, ssl.SSLError) as exc:
            logger.warning("cannot connect to %s: %s", url, exc or type(exc).__name__)
            return Attempt("failed")
        protocol = ProbeProtocol(
            Side.AGENT, verifier=self.state.verifier, max_frame_bytes=self.settings.max_frame_bytes
        )
        return AgentConnection(
            websocket,
            protocol,
            send_queue_size=self.settings.send_queue_size,
            close_timeout_s=self.settings.close_timeout_s,
        )

    async def _connect_once(self) -> Attempt:
        await self._record("connecting", "", None)
        dialed: Attempt | AgentConnection = Attempt("closed")
        with anyio.CancelScope() as scope:
            self._interruptible = scope
            dialed = await self._dial()
        self._interruptible = None
        if isinstance(dialed, Attempt):
            return dialed
        if self.should_exit:
            await dialed.close(CLOSE_NORMAL)
            return Attempt("closed")
        return await Session(self, dialed).run()

    async def _record(self, outcome: ConnectionOutcome, detail: str, delay: float | None) -> None:
        if outcome == "connected":
            self._last_connected_at = _utcnow()
        path = self.state.config_path
        if path is None:
            return
        status = ConnectionStatus(
            outcome=outcome,
            detail=detail,
            updated_at=_utcnow(),
            last_connected_at=self._last_connected_at,
            next_attempt_in_s=delay,
        )
        await anyio.to_thread.run_sync(write_status, status_path(path), status)

    async def mark_connected(self) -> None:
        """Called by the session once the handshake completed."""
        self._connected.set()
        await self._record("connected", f"connected to {self.state.config.server_url}", None)
        logger.info("connected to %s", self.state.config.server_url)

    def mark_disconnected(self) -> None:
        """Called by the session when its connection ended."""
        self._connected = anyio.Event()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self.should_exit:
                    logger.warning("second %s: exiting without waiting for commands", signal.Signals(signum).name)
                    self.force_exit = True
                    assert self._task_group is not None
                    self._task_group.cancel_scope.cancel()
                    return
                logger.info("%s received: finishing running commands, then exiting", signal.Signals(signum).name)
                self.request_stop()

    def capabilities(self) -> list[str]:
        """Command kinds this probe can run (``systemd``/``kubectl`` only when their tools are installed)."""
        kinds = ["shell", "file_read", "file_write", "process"]
        if find_program("systemctl", self.exec_env):
            kinds.append("systemd")
        if find_program("kubectl", self.exec_env):
            kinds.append("kubectl")
        return kinds
