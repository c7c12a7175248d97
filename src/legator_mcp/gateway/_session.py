"""One probe's WebSocket connection: the I/O shell around ``ProbeProtocol(Side.GATEWAY)``.

Loop: read a frame → ``receive_text`` → handle ``events_received()`` → queue ``data_to_send()`` for the writer.
Frames leave through one writer task and a bounded queue; a probe that cannot keep up is disconnected.
Heartbeats and inventories are handed to the database writer without the reader waiting for them, so a busy
writer never stops a connection from being read (and its pings answered).
"""

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from legator_mcp.app_context import AppContext
from legator_mcp.db.base import utcnow
from legator_mcp.errors import LegatorError, NotFound, ProbeUnavailable
from legator_mcp.fleet.schemas import AuthenticatedProbe, InventoryReport
from legator_mcp.fleet.service import CLOSE_PROBE_DELETED
from legator_probe.protocol import (
    CLOSE_POLICY_VIOLATION,
    CommandResultMessage,
    ErrorMessage,
    ErrorPayload,
    Event,
    HeartbeatMessage,
    HelloMessage,
    Ignored,
    InventoryMessage,
    OutputChunkMessage,
    ProbeProtocol,
    ProtocolViolation,
    RejectionMessage,
    Side,
    SignedMessage,
    State,
    WelcomePayload,
)
from legator_probe.protocol.sanitize import sanitize

__all__ = ["ProbeSession"]

logger = logging.getLogger("legator.gateway")

CLOSE_TRY_AGAIN_LATER = 1013
"""WebSocket close code: the server is overloaded (a slow consumer, or shutting down)."""


HELLO_TIMEOUT_S = 30.0
"""How long an admitted connection may take to send its ``hello``."""

MAX_PENDING_REPORTS = 4
"""Heartbeats and inventories a connection hands to the database writer without waiting; past this the reader
waits for its own (backpressure on a probe that reports faster than the database takes it)."""


class _RateLimit:
    """Frames per second a probe may send: steady ``rate`` with bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class ProbeSession:
    """A live, authenticated probe connection."""

    def __init__(
        self,
        websocket: WebSocket,
        *,
        probe: AuthenticatedProbe,
        services: AppContext,
        send_queue: int = 256,
        frames_per_second: float = 100.0,
        frame_burst: int = 500,
    ) -> None:
        self.probe_id = probe.probe.id
        self._probe = probe.probe
        self._rotation_pending = probe.key_rotation_pending
        self._previous_generation = probe.previous_key_generation
        self._redeliver_key = False
        self._untrusted_key_ids: list[str] | None = None
        self._inventory_digest = probe.inventory_digest
        self.signing_generation = probe.signing_generation
        """The key generation the probe trusts: what the hub signs this connection's instructions with."""
        self._ws = websocket
        self._services = services
        self._protocol = ProbeProtocol(Side.GATEWAY, max_frame_bytes=services.settings.max_frame_bytes)
        self._outbox: MemoryObjectSendStream[str]
        self._inbox: MemoryObjectReceiveStream[str]
        self._outbox, self._inbox = anyio.create_memory_object_stream[str](send_queue)
        self._rate = _RateLimit(frames_per_second, frame_burst)
        self._closing = anyio.Event()
        self._writer_done = anyio.Event()
        self.done = anyio.Event()
        """Set once the connection is closed and the hub no longer lists it."""
        self._close_code = 1000
        self._close_reason = ""
        self.registered = False
        self._handshaking = True
        self._last_frame = time.monotonic()
        self._handling = False
        """Whether a frame is being handled."""
        self._task_group: anyio.abc.TaskGroup | None = None
        self._pending_reports = 0

    # -- called by the hub ------------------------------------------------------------------------------------

    async def send_signed(self, message: SignedMessage) -> None:
        """Queue a signed instruction for the probe.

        Raises:
            ProbeUnavailable: If the connection is already closing (the probe went away meanwhile).
        """
        if self._closing.is_set() or self._protocol.state >= State.CLOSING:
            raise ProbeUnavailable(f"probe {self.probe_id} is disconnecting", details={"probe_id": self.probe_id})
        self._protocol.send_signed(message)
        self._flush()

    def heard_within(self, seconds: float) -> bool:
        """Whether a frame arrived in the last ``seconds``, or one is being handled now.

        While the reader is busy with a frame (a hello or a result waiting for the database writer), the probe's
        next frames wait in the socket: the silence is ours, not the probe's.
        """
        return self._handling or time.monotonic() - self._last_frame <= seconds

    def end_handshake(self) -> None:
        """Give back the admission slot this connection held while its handshake ran (once)."""
        if self._handshaking:
            self._handshaking = False
            self._services.hub.handshake_finished()

    async def close(self, *, code: int, reason: str) -> None:
        """Ask the session to close the connection with ``code``."""
        self._close_code, self._close_reason = code, reason
        self._closing.set()

    # -- the loop ---------------------------------------------------------------------------------------------

    def _flush(self) -> None:
        for frame in self._protocol.data_to_send():
            try:
                self._outbox.send_nowait(frame)
            except anyio.ClosedResourceError:
                return
            except anyio.WouldBlock:
                logger.warning("probe %s is not reading its frames; disconnecting", self.probe_id)
                self._close_code, self._close_reason = CLOSE_TRY_AGAIN_LATER, "send queue full"
                self._closing.set()
                return

    async def run(self) -> None:
        """Serve the connection until either side closes it."""
        hub = self._services.hub
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                tg.start_soon(self._writer)
                tg.start_soon(self._watch_close, tg.cancel_scope)
                tg.start_soon(self._hello_deadline)
                await self._reader()
                tg.cancel_scope.cancel()
        finally:
            self.end_handshake()
            self._protocol.receive_close()
            detached = hub.detach(self)
            self.done.set()
            if detached and self.registered:
                with anyio.CancelScope(shield=True):
                    await self._services.fleet.probe_disconnected(
                        probe_id=self.probe_id, reason=self._close_reason or "closed"
                    )

    async def _hello_deadline(self) -> None:
        # An admitted connection holds a handshake slot until its hello is handled; one that never says hello
        # must not keep it (64 silent sockets would otherwise lock every other probe out).
        await anyio.sleep(HELLO_TIMEOUT_S)
        if self._handshaking:
            await self.close(code=CLOSE_POLICY_VIOLATION, reason="no hello in time")

    async def _watch_close(self, scope: anyio.CancelScope) -> None:
        await self._closing.wait()
        # Let the writer drain what is queued (bounded), then close the transport.
        self._outbox.close()
        with anyio.move_on_after(2):
            await self._writer_done.wait()
        if self._ws.application_state is WebSocketState.CONNECTED:
            try:
                await self._ws.close(code=self._close_code, reason=self._close_reason[:120])
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass  # the probe is gone already
        scope.cancel()

    async def _writer(self) -> None:
        try:
            async with self._inbox:
                async for frame in self._inbox:
                    try:
                        await self._ws.send_text(frame)
                    except (WebSocketDisconnect, RuntimeError, OSError):
                        self._closing.set()
                        return
        finally:
            self._writer_done.set()

    def _parse(self, text: str) -> list[Event | InventoryReport]:
        """The frame's events; an inventory is reduced at once to what is stored (:class:`InventoryReport`).

        Parsing is synchronous, so frames are parsed one at a time; what a connection holds while its frame waits
        for the database is the report, about the frame's size (10,000 probes reconnecting at once each hold one).
        """
        self._protocol.receive_text(text)
        return [
            InventoryReport.of(event.payload) if isinstance(event, InventoryMessage) else event
            for event in self._protocol.events_received()
        ]

    async def _next_frame(self) -> str | None:
        """The next frame's text, or ``None`` once the connection is closed."""
        try:
            message = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError, OSError):
            return None
        if message["type"] == "websocket.disconnect":
            self._close_reason = self._close_reason or "probe disconnected"
            return None
        self._last_frame = time.monotonic()
        text = message.get("text")
        if text is None:
            data = message.get("bytes") or b""
            text = data.decode("utf-8", errors="replace")
        return text

    async def _reader(self) -> None:
        while not self._closing.is_set():
            text = await self._next_frame()
            if text is None:
                return
            if not self._rate.allow():
                self._protocol.send_error(ErrorPayload(code="rate_limited", message="too many frames; slow down"))
                self._protocol.strikes += 1
                if self._protocol.strikes >= 5:
                    self._protocol.close(CLOSE_POLICY_VIOLATION)
                self._flush()
            else:
                events = self._parse(text)
                del text  # not kept alive while the events are handled
                self._handling = True
                try:
                    await self._handle(events)
                except NotFound:
                    await self._probe_deleted()
                    return
                finally:
                    self._handling = False
                    self._last_frame = time.monotonic()
                self._flush()
            if self._protocol.state >= State.CLOSING:
                reason = str(self._protocol.protocol_exc) if self._protocol.protocol_exc else "protocol violation"
                await self._services.audit.record(
                    type="probe.protocol_violation",
                    actor=f"probe:{self.probe_id}",
                    probe_id=self.probe_id,
                    summary=f"closed probe connection after repeated protocol violations: {sanitize(reason)[:200]}",
                    detail={"close_code": self._protocol.close_code, "strikes": self._protocol.strikes},
                )
                await self.close(code=self._protocol.close_code or CLOSE_POLICY_VIOLATION, reason=reason)
                return

    async def _handle(self, events: list[Event | InventoryReport]) -> None:
        services = self._services
        for event in events:
            if isinstance(event, HelloMessage):
                await self._on_hello(event)
            elif isinstance(event, HeartbeatMessage):
                await self._report(
                    partial(services.fleet.record_heartbeat, probe_id=self.probe_id, heartbeat=event.payload)
                )
            elif isinstance(event, InventoryReport):
                await self._report(partial(services.fleet.record_inventory, probe_id=self.probe_id, inventory=event))
            elif isinstance(event, OutputChunkMessage):
                services.hub.on_chunk(self.probe_id, event.payload)
            elif isinstance(event, CommandResultMessage):
                await services.hub.on_result(self.probe_id, event.payload)
            elif isinstance(event, RejectionMessage):
                await services.audit.record(
                    type="probe.instruction_rejected",
                    actor=f"probe:{self.probe_id}",
                    probe_id=self.probe_id,
                    summary=f"probe rejected an instruction: {event.payload.reason}",
                    detail={
                        "ref_id": event.payload.ref_id,
                        "reason": event.payload.reason,
                        "detail": event.payload.detail,
                    },
                )
                services.events.publish(
                    "probe.instruction_rejected",
                    summary=f"probe {self.probe_id} rejected an instruction: {event.payload.reason}",
                    probe_id=self.probe_id,
                    detail={"ref_id": event.payload.ref_id, "reason": event.payload.reason},
                )
                await services.hub.on_rejection(self.probe_id, event.payload)
            elif isinstance(event, ErrorMessage):
                logger.info("probe %s reported an error: %s", self.probe_id, event.payload.code)
            elif isinstance(event, ProtocolViolation):
                logger.info("probe %s protocol violation %d: %s", self.probe_id, event.strikes, event.error.code)
            elif isinstance(event, Ignored):
                logger.debug("probe %s sent an unknown message type %r", self.probe_id, event.message_type)

    async def _report(self, write: Callable[[], Awaitable[object]]) -> None:
        """Have a heartbeat or inventory written, waiting for it only past :data:`MAX_PENDING_REPORTS`.

        While this connection's reader waits, nothing more is read from its socket (the server stops reading a
        connection until its last message was taken), so the probe's keepalive pings go unanswered and a busy
        database writer would make probes drop their connections. Reports are group-committed, so a later
        heartbeat queued behind an earlier one replaces it in the same batch.
        """
        if self._task_group is None or self._pending_reports >= MAX_PENDING_REPORTS:
            await self._settle(write)
            return
        self._pending_reports += 1
        self._task_group.start_soon(self._settle, write, True)

    async def _settle(self, write: Callable[[], Awaitable[object]], counted: bool = False) -> None:
        try:
            await write()
        except NotFound:
            await self._probe_deleted()
        except LegatorError as exc:
            logger.warning("a report of probe %s was not recorded: %s", self.probe_id, exc.message)
        finally:
            if counted:
                self._pending_reports -= 1

    async def _probe_deleted(self) -> None:
        # The probe was deleted while connected: its credential is gone, so is the connection.
        await self.close(code=CLOSE_PROBE_DELETED, reason="probe deleted")

    async def _on_hello(self, hello: HelloMessage) -> None:
        if hello.payload.probe_id != self.probe_id:
            self._protocol.send_error(ErrorPayload(code="wrong_probe", message="hello names another probe"))
            self._protocol.close(CLOSE_POLICY_VIOLATION)
            self._close_reason = "hello for another probe"
            return
        services = self._services
        self._choose_signing_key(hello.payload.trusted_key_ids)
        # The handshake completes from what authentication read: welcome, then the signed policy (every
        # (re)connection re-sends it, so a probe that missed an update converges). Neither waits for the
        # database's write queue, which a storm of inventories can make long.
        self._protocol.send_welcome(
            WelcomePayload(
                heartbeat_interval_s=services.settings.heartbeat_interval_s,
                server_time=utcnow(),
                policy_level=self._probe.policy_level,
                inventory_digest=self._inventory_digest,
                inventory_delay_s=services.hub.inventory_delay(),
            )
        )
        self._flush()
        try:
            await services.policy.push(self._probe)
        except ProbeUnavailable:
            logger.info("probe %s left before its policy could be sent", self.probe_id)
        finally:
            self.end_handshake()
        await services.fleet.probe_connected(probe_id=self.probe_id, hello=hello.payload)
        self.registered = True
        if self._untrusted_key_ids is not None:
            await services.fleet.record_untrusted_keys(
                probe_id=self.probe_id, generation=self.signing_generation, trusted_key_ids=self._untrusted_key_ids
            )
        if self._rotation_pending or self._redeliver_key:
            # A key rotation made while the probe was offline, or one it never received (read again: it may have
            # been delivered meanwhile).
            redeliver, self._rotation_pending, self._redeliver_key = self._redeliver_key, False, False
            try:
                await services.fleet.deliver_pending_key_rotation(probe_id=self.probe_id, redeliver=redeliver)
            except ProbeUnavailable:
                logger.info("probe %s left before its new key could be sent", self.probe_id)

    def _choose_signing_key(self, trusted: list[str] | None) -> None:
        """Sign with a key the probe trusts. A rotation is recorded as delivered once it was queued on a
        connection; if that connection dropped before the probe applied it, the probe still trusts only the key
        before, so sign with that one and send the rotation again (instead of every instruction being refused)."""
        if trusted is None:
            return
        keyring = self._services.fleet.keyring
        if keyring.key_id(self.probe_id, self.signing_generation) in trusted:
            return
        previous = self._previous_generation
        if previous is not None and keyring.key_id(self.probe_id, previous) in trusted:
            logger.warning(
                "probe %s never received key generation %d; signing with %d and sending the rotation again",
                self.probe_id, self.signing_generation, previous,
            )  # fmt: skip
            self.signing_generation, self._redeliver_key = previous, True
        else:
            logger.warning("probe %s trusts none of its current signing keys; it must re-register", self.probe_id)
            self._untrusted_key_ids = trusted
