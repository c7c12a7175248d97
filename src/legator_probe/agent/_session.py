"""One connection's life inside the daemon, and the outbox that carries command output to it.

:class:`Session` sends ``hello``, waits for ``welcome``, then runs the heartbeat and inventory loops
and dispatches verified instructions until the connection closes. :class:`Outbox` is the executor's
emitter: it writes to the live connection, or keeps results for the next one.
"""

import logging
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Final

import anyio

from legator_probe import __version__
from legator_probe.agent._connection import AgentConnection, ConnectionGone
from legator_probe.agent.backoff import Attempt
from legator_probe.agent.metrics import collect_heartbeat
from legator_probe.protocol.connection import Event, Ignored, ProbeProtocol, ProtocolViolation, Rejected
from legator_probe.protocol.errors import CLOSE_NORMAL
from legator_probe.protocol.messages import (
    BackoffMessage,
    CancelMessage,
    CommandMessage,
    ErrorMessage,
    KeyRotationMessage,
    PolicyUpdateMessage,
    UpdateMessage,
    WelcomeMessage,
)
from legator_probe.protocol.payloads import (
    CommandResultPayload,
    ErrorPayload,
    HelloPayload,
    OutputChunkPayload,
    RejectionPayload,
    inventory_digest,
)

if TYPE_CHECKING:
    from legator_probe.agent.daemon import ProbeDaemon

__all__ = ["MAX_PENDING_RESULTS", "Outbox", "Session"]

logger = logging.getLogger(__name__)

MAX_PENDING_RESULTS: Final = 256
"""Results kept while disconnected; the oldest are dropped beyond this."""


class Outbox:
    """The executor's :class:`~legator_probe.agent.executor.Emitter`: the live connection, or a buffer.

    Chunks and rejections produced while offline are dropped; results are kept (the last
    :data:`MAX_PENDING_RESULTS`) and sent by :meth:`attach` once a connection is welcomed.
    """

    def __init__(self) -> None:
        """Start without a connection."""
        self.connection: AgentConnection | None = None
        self.pending: deque[CommandResultPayload] = deque(maxlen=MAX_PENDING_RESULTS)

    async def _send(self, operation: Callable[[ProbeProtocol], object]) -> bool:
        connection = self.connection
        if connection is None:
            return False
        try:
            await connection.send(operation)
        except ConnectionGone:
            return False
        return True

    async def chunk(self, payload: OutputChunkPayload) -> None:
        """Send a chunk if connected."""
        await self._send(partial(ProbeProtocol.send_output_chunk, payload=payload))

    async def result(self, payload: CommandResultPayload) -> None:
        """Send a result, or keep it for the next connection."""
        if await self._send(partial(ProbeProtocol.send_result, payload=payload)):
            return
        if len(self.pending) == self.pending.maxlen:
            logger.warning("dropping the offline result of %s: buffer full", self.pending[0].request_id)
        self.pending.append(payload)

    async def rejection(self, payload: RejectionPayload) -> None:
        """Send a policy rejection if connected."""
        await self._send(partial(ProbeProtocol.send_rejection, payload=payload))

    async def error(self, payload: ErrorPayload) -> None:
        """Send an error message if connected."""
        await self._send(partial(ProbeProtocol.send_error, payload=payload))

    async def attach(self, connection: AgentConnection) -> None:
        """Use ``connection`` from now on and send the results kept while offline."""
        self.connection = connection
        while self.pending:
            payload = self.pending.popleft()
            if not await self._send(partial(ProbeProtocol.send_result, payload=payload)):
                self.pending.appendleft(payload)
                return

    def detach(self, connection: AgentConnection) -> None:
        """Stop using ``connection`` (if it is the current one)."""
        if self.connection is connection:
            self.connection = None


class Session:
    """One connection's life: handshake, telemetry and instruction dispatch."""

    def __init__(self, daemon: "ProbeDaemon", connection: AgentConnection) -> None:
        """Bind the session to its daemon and a freshly opened connection."""
        self.daemon = daemon
        self.connection = connection
        self.welcomed = anyio.Event()
        self.welcome: WelcomeMessage | None = None
        self.retry_after_s: float | None = None

    async def run(self) -> Attempt:
        """Run until the connection closes; return how the attempt ended, for the backoff."""
        daemon, connection = self.daemon, self.connection
        config = daemon.state.config
        started = daemon.clock()
        hello = HelloPayload(
            probe_id=config.probe_id, version=__version__, hostname=daemon.hostname, capabilities=daemon.capabilities(),
            trusted_key_ids=[key.key_id for key in daemon.state.verifier.keys][:8],
        )  # fmt: skip
        async with anyio.create_task_group() as task_group:

            async def read() -> None:
                await connection.run(self.on_event)
                task_group.cancel_scope.cancel()

            task_group.start_soon(read)
            task_group.start_soon(self._stop_when_asked)
            try:
                await connection.send(partial(ProbeProtocol.send_hello, payload=hello))
                with anyio.move_on_after(daemon.settings.open_timeout_s):
                    await self.welcomed.wait()
                if not self.welcomed.is_set():
                    logger.warning("no welcome from the control plane within %g s", daemon.settings.open_timeout_s)
                    await connection.close(CLOSE_NORMAL)
                else:
                    await self._connected()
                    task_group.start_soon(self._heartbeats)
                    task_group.start_soon(self._inventories)
            except ConnectionGone:
                task_group.cancel_scope.cancel()
        daemon.mark_disconnected()
        daemon.outbox.detach(connection)
        if not self.welcomed.is_set():
            return Attempt("failed")
        lived = daemon.clock() - started
        logger.info("connection closed (code %s) after %.0f s", connection.close_code, lived)
        if self.retry_after_s is not None:
            return Attempt("retry_after", lived_s=lived, retry_after_s=self.retry_after_s)
        return Attempt("closed", lived_s=lived)

    async def _connected(self) -> None:
        daemon = self.daemon
        await daemon.outbox.attach(self.connection)
        await daemon.mark_connected()
        welcome = self.welcome
        if welcome is not None and welcome.payload.policy_level != daemon.state.policy.level:
            logger.warning(
                "the control plane lists this probe at %s but its local policy is %s; the local policy applies",
                welcome.payload.policy_level,
                daemon.state.policy.level,
            )

    async def _heartbeats(self) -> None:
        daemon = self.daemon
        welcome = self.welcome
        interval = welcome.payload.heartbeat_interval_s if welcome else daemon.state.config.heartbeat_interval_s
        try:
            while True:
                payload = collect_heartbeat(running_commands=daemon.executor.running_count)
                await self.connection.send(partial(ProbeProtocol.send_heartbeat, payload=payload))
                await anyio.sleep(interval)
        except ConnectionGone:
            return

    async def _inventories(self) -> None:
        # The welcome names the inventory the control plane has on file: an unchanged host does not resend it on
        # connecting, so a control-plane restart does not bring every probe's inventory at once. It also gives
        # this connection a slot for its inventory (later ones during a reconnect storm), waited for before
        # collecting. The periodic ones are always sent (they refresh what the digest leaves out, such as disk
        # usage).
        welcome = self.welcome.payload if self.welcome is not None else None
        on_file = welcome.inventory_digest if welcome is not None else None
        try:
            if welcome is not None and welcome.inventory_delay_s:
                logger.info("inventory in %.1f s, the slot the control plane gave", welcome.inventory_delay_s)
                await anyio.sleep(welcome.inventory_delay_s)
            while True:
                await self._send_inventory(unless_digest=on_file)
                on_file = None
                await anyio.sleep(self.daemon.state.config.inventory_interval_s)
        except ConnectionGone:
            return

    async def _send_inventory(self, *, unless_digest: str | None = None) -> None:
        # A method of its own so that the payload (thousands of packages on some hosts) is not kept alive
        # through the sleep between two inventories.
        from legator_probe.agent.inventory import collect_inventory

        try:
            payload = await anyio.to_thread.run_sync(partial(collect_inventory, hostname=self.daemon.hostname))
        except Exception:  # telemetry boundary: a broken source must not end the session
            logger.exception("inventory collection failed")
            return
        if unless_digest is not None and inventory_digest(payload) == unless_digest:
            logger.info("inventory unchanged since the control plane's copy; not resent")
            return
        await self.connection.send(partial(ProbeProtocol.send_inventory, payload=payload))

    async def _stop_when_asked(self) -> None:
        daemon = self.daemon
        await daemon.stop_requested.wait()
        await daemon.executor.drain(daemon.settings.drain_timeout_s)
        await self.connection.close(CLOSE_NORMAL)

    async def _send_error(self, code: str, message: str, ref_id: str | None) -> None:
        payload = ErrorPayload(code=code, message=message, ref_id=ref_id)
        try:
            await self.connection.send(partial(ProbeProtocol.send_error, payload=payload))
        except ConnectionGone:
            pass

    async def on_event(self, event: Event) -> None:
        """Act on one protocol event (called by the connection's reader, in order)."""
        daemon = self.daemon
        if isinstance(event, WelcomeMessage):
            self.welcome = event
            self.welcomed.set()
            daemon.outbox.connection = self.connection  # results from now on go out directly
        elif isinstance(event, CommandMessage):
            daemon.executor.submit(event)
        elif isinstance(event, CancelMessage):
            if not daemon.executor.cancel(event.payload.request_id):
                await self._send_error("unknown_request", "no such command is running", event.id)
        elif isinstance(event, PolicyUpdateMessage):
            await daemon.state.apply_policy_update(event.payload)
        elif isinstance(event, KeyRotationMessage):
            await daemon.state.apply_key_rotation(event.payload)
        elif isinstance(event, UpdateMessage):
            message = "this probe does not update itself; upgrade the legator package instead"
            await self._send_error("update_unsupported", message, event.id)
        elif isinstance(event, BackoffMessage):
            self.retry_after_s = event.payload.retry_after_s
            logger.warning("the control plane asked to reconnect after %g s", self.retry_after_s)
            await self.connection.close(CLOSE_NORMAL)
        elif isinstance(event, ErrorMessage):
            payload = event.payload
            logger.warning("error from the control plane: %s: %s", payload.code, payload.message)
        elif isinstance(event, Rejected):
            logger.warning("refused a %s instruction: %s", event.message.type, event.error.message)
        elif isinstance(event, ProtocolViolation):
            logger.warning("protocol violation by the control plane: %s", event.error.message)
        elif isinstance(event, Ignored):
            logger.debug("ignored a message of unknown type %r", event.message_type)
