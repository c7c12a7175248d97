"""One probe's WebSocket connection: the I/O shell around ``ProbeProtocol(Side.GATEWAY)``.

Loop: read a frame → ``receive_text`` → handle ``events_received()`` → queue ``data_to_send()`` for the writer.
Frames leave through one writer task and a bounded queue; a probe that cannot keep up is disconnected.
"""

import logging
import time

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from legator_mcp.app_context import AppContext
from legator_mcp.db.base import utcnow
from legator_mcp.errors import NotFound, ProbeUnavailable
from legator_mcp.fleet.schemas import ProbeRead
from legator_mcp.fleet.service import CLOSE_PROBE_DELETED
from legator_mcp.gateway.hub import LARGE_FRAME_BYTES
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
        probe: ProbeRead,
        services: AppContext,
        send_queue: int = 256,
        frames_per_second: float = 100.0,
        frame_burst: int = 500,
    ) -> None:
        self.probe_id = probe.id
        self._probe = probe
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
        self._reading: str | None = None
        """The frame being handled, if any."""

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

        While the reader is busy with a frame (an inventory queued for the database), the probe's next frames
        wait in the socket: the silence is ours, not the probe's.
        """
        return self._reading is not None or time.monotonic() - self._last_frame <= seconds

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

    async def _receive(self, text: str) -> None:
        self._reading = text
        try:
            self._protocol.receive_text(text)
            await self._handle(self._protocol.events_received())
        finally:
            self._reading = None
            self._last_frame = time.monotonic()

    async def _reader(self) -> None:
        hub = self._services.hub
        while not self._closing.is_set():
            try:
                message = await self._ws.receive()
            except (WebSocketDisconnect, RuntimeError, OSError):
                return
            if message["type"] == "websocket.disconnect":
                self._close_reason = self._close_reason or "probe disconnected"
                return
            self._last_frame = time.monotonic()
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                text = data.decode("utf-8", errors="replace")
            if not self._rate.allow():
                self._protocol.send_error(ErrorPayload(code="rate_limited", message="too many frames; slow down"))
                self._protocol.strikes += 1
                if self._protocol.strikes >= 5:
                    self._protocol.close(CLOSE_POLICY_VIOLATION)
                self._flush()
            else:
                try:
                    if len(text) >= LARGE_FRAME_BYTES:
                        self._reading = text  # queued behind other large frames: still heard
                        async with hub.large_frames:
                            await self._receive(text)
                    else:
                        await self._receive(text)
                except NotFound:
                    # The probe was deleted while connected: its credential is gone, so is the connection.
                    await self.close(code=CLOSE_PROBE_DELETED, reason="probe deleted")
                    return
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

    async def _handle(self, events: list[Event]) -> None:
        services = self._services
        for event in events:
            if isinstance(event, HelloMessage):
                await self._on_hello(event)
            elif isinstance(event, HeartbeatMessage):
                await services.fleet.record_heartbeat(probe_id=self.probe_id, heartbeat=event.payload)
            elif isinstance(event, InventoryMessage):
                await services.fleet.record_inventory(probe_id=self.probe_id, inventory=event.payload)
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

    async def _on_hello(self, hello: HelloMessage) -> None:
        if hello.payload.probe_id != self.probe_id:
            self._protocol.send_error(ErrorPayload(code="wrong_probe", message="hello names another probe"))
            self._protocol.close(CLOSE_POLICY_VIOLATION)
            self._close_reason = "hello for another probe"
            return
        services = self._services
        probe = await services.fleet.probe_connected(probe_id=self.probe_id, hello=hello.payload)
        self._protocol.send_welcome(
            WelcomePayload(
                heartbeat_interval_s=services.settings.heartbeat_interval_s,
                server_time=utcnow(),
                policy_level=probe.policy_level,
            )
        )
        self.registered = True
        self._flush()
        # Every (re)connection re-sends the probe its policy, signed, so a probe that missed an update converges,
        # and delivers a key rotation made while it was offline.
        try:
            await services.policy.push(probe)
            await services.fleet.deliver_pending_key_rotation(probe_id=self.probe_id)
        except ProbeUnavailable:
            # The probe hung up while its hello was being recorded; the next connection gets both again.
            logger.info("probe %s left before its policy could be sent", self.probe_id)
        finally:
            self.end_handshake()
