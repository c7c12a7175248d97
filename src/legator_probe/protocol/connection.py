"""Sans-I/O state machine of one probe connection, shared by the gateway and the agent.

:class:`ProbeProtocol` turns incoming text frames into events and queues outgoing text frames. It
does no I/O: the shell (``legator_mcp.gateway`` or ``legator_probe.agent``) reads a frame, calls
:meth:`~ProbeProtocol.receive_text`, then drains :meth:`~ProbeProtocol.events_received` and
:meth:`~ProbeProtocol.data_to_send`, and closes the transport once :attr:`~ProbeProtocol.state`
reaches ``CLOSING``.

Handshake: the agent sends ``hello``; the gateway answers ``welcome`` and both sides are then
``REGISTERED``. Before that only ``error`` (either way) and ``backoff`` (to the agent) may flow.

Peer misbehaviour never raises. A malformed frame, a message in the wrong direction, or one that
breaks the handshake order is answered with an ``error`` frame (a ``rejection`` when the agent gets
a malformed signed instruction) and counts a strike; at ``max_strikes`` the connection moves to
``CLOSING`` with :attr:`~ProbeProtocol.protocol_exc` and :attr:`~ProbeProtocol.close_code` set. A
frame over ``max_frame_bytes`` closes at once with code 1009. Envelopes of unknown types become
:class:`Ignored` events and cost nothing.

On the agent side every signed instruction passes the :class:`~legator_probe.protocol.signing.Verifier`
before it becomes an event; a refused one is reported to the gateway with a ``rejection`` frame and
surfaces as a :class:`Rejected` event for the audit trail.
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypeAlias

from legator_probe.protocol.errors import (
    CLOSE_NORMAL,
    InvalidState,
    MalformedMessage,
    MessageTooLarge,
    OutOfOrderMessage,
    ProtocolError,
    SignatureRejected,
    UnexpectedMessage,
)
from legator_probe.protocol.messages import (
    AGENT_MESSAGE_TYPES,
    GATEWAY_MESSAGE_TYPES,
    SIGNED_MESSAGE_CLASSES,
    SIGNED_TYPES,
    BackoffMessage,
    CommandMessage,
    CommandResultMessage,
    ErrorMessage,
    HeartbeatMessage,
    HelloMessage,
    InventoryMessage,
    Message,
    OutputChunkMessage,
    RejectionMessage,
    SignedMessage,
    UnknownMessage,
    WelcomeMessage,
    dump_message,
    new_message_id,
    parse_message,
)
from legator_probe.protocol.payloads import (
    BackoffPayload,
    CommandResultPayload,
    ErrorPayload,
    HeartbeatPayload,
    HelloPayload,
    InventoryPayload,
    OutputChunkPayload,
    RejectionPayload,
    WelcomePayload,
)
from legator_probe.protocol.signing import Verifier

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_STRIKES",
    "Event",
    "Ignored",
    "ProbeProtocol",
    "ProtocolViolation",
    "Rejected",
    "Side",
    "State",
]

DEFAULT_MAX_STRIKES: Final = 5
"""Protocol violations tolerated on one connection before it is closed."""

DEFAULT_MAX_FRAME_BYTES: Final = 32 * 1024 * 1024
"""Largest text frame accepted, in UTF-8 bytes; room for a capped ``command_result`` of a 16 MiB read."""

_ALWAYS_ALLOWED: Final = frozenset({"error", "backoff"})


class Side(enum.Enum):
    """Which end of the connection this state machine runs on."""

    GATEWAY = "gateway"
    AGENT = "agent"


class State(enum.IntEnum):
    """Connection state; values only grow."""

    CONNECTING = 0
    REGISTERED = 1
    CLOSING = 2
    CLOSED = 3


@dataclass(frozen=True, slots=True)
class Ignored:
    """An envelope of a type this version does not know was skipped."""

    message_type: str
    ref_id: str | None


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol; an error frame was queued and ``strikes`` counts violations so far."""

    error: ProtocolError
    strikes: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """Agent side: a signed instruction failed verification; a ``rejection`` frame was queued."""

    message: SignedMessage
    error: SignatureRejected


Event: TypeAlias = Message | Ignored | ProtocolViolation | Rejected
"""What :meth:`ProbeProtocol.events_received` returns: accepted messages, or notes for logs and audit."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ProbeProtocol:
    """Sans-I/O implementation of one probe connection, for either side.

    Attributes:
        side: Which end this is.
        state: Current :class:`State`.
        protocol_exc: The violation that made the connection fail, once it has.
        close_code: WebSocket close code the shell must use once ``state`` is ``CLOSING``.
        strikes: Protocol violations seen so far.
        hello: The ``hello`` payload sent (agent) or received (gateway), once there is one.
        welcome: The ``welcome`` payload received (agent) or sent (gateway), once there is one.
    """

    def __init__(
        self,
        side: Side,
        *,
        verifier: Verifier | None = None,
        max_strikes: int = DEFAULT_MAX_STRIKES,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        now: Callable[[], datetime] = _utcnow,
        new_id: Callable[[], str] = new_message_id,
    ) -> None:
        """Build the state machine in ``CONNECTING``.

        Args:
            side: Which end of the connection this is.
            verifier: Agent side only, and required there: checks every signed instruction.
            max_strikes: Violations after which the connection closes with 1008.
            max_frame_bytes: Frames longer than this (UTF-8 bytes) close the connection with 1009.
            now: Clock for envelope ``ts``.
            new_id: Generator of envelope ids.

        Raises:
            ValueError: ``verifier`` is missing on the agent side or given on the gateway side,
                or a limit is not positive.
        """
        if (side is Side.AGENT) != (verifier is not None):
            raise ValueError("the agent side requires a verifier and the gateway side takes none")
        if max_strikes < 1 or max_frame_bytes < 1:
            raise ValueError("max_strikes and max_frame_bytes must be positive")
        self.side = side
        self.state = State.CONNECTING
        self.protocol_exc: ProtocolError | None = None
        self.close_code: int | None = None
        self.strikes = 0
        self.hello: HelloPayload | None = None
        self.welcome: WelcomePayload | None = None
        self._verifier = verifier
        self._max_strikes = max_strikes
        self._max_frame_bytes = max_frame_bytes
        self._now = now
        self._new_id = new_id
        self._inbound = AGENT_MESSAGE_TYPES if side is Side.GATEWAY else GATEWAY_MESSAGE_TYPES
        self._outbound = GATEWAY_MESSAGE_TYPES if side is Side.GATEWAY else AGENT_MESSAGE_TYPES
        self._events: list[Event] = []
        self._outgoing: list[str] = []

    # --- inputs ---------------------------------------------------------------------------------

    def receive_text(self, text: str) -> None:
        """Receive one text frame from the network.

        Frames received once the connection is ``CLOSING`` or ``CLOSED`` are discarded.

        After calling this method:

        - You must call :meth:`data_to_send` and send the frames to the network.
        - You should call :meth:`events_received` and process the resulting events.
        - If :attr:`state` is ``CLOSING``, you must close the transport with :attr:`close_code`
          after sending those frames.
        """
        if self.state >= State.CLOSING:
            return
        if len(text) > self._max_frame_bytes or (
            len(text) * 4 > self._max_frame_bytes and len(text.encode("utf-8", "surrogatepass")) > self._max_frame_bytes
        ):
            self._violation(MessageTooLarge(f"frame exceeds {self._max_frame_bytes} bytes"))
            return
        try:
            message = parse_message(text)
        except MalformedMessage as exc:
            self._violation(exc)
            return
        if isinstance(message, UnknownMessage):
            self._events.append(Ignored(message.type, message.id))
            return
        try:
            self._admit(message)
        except ProtocolError as exc:
            self._violation(exc)
            return
        if isinstance(message, SIGNED_MESSAGE_CLASSES):
            assert self._verifier is not None  # the agent side always has one (see __init__)
            try:
                self._verifier.verify(message)
            except SignatureRejected as exc:
                self._queue(RejectionMessage(id=self._new_id(), ts=self._now(), payload=_rejection(message.id, exc)))
                self._events.append(Rejected(message, exc))
                return
        self._events.append(message)

    def receive_close(self) -> None:
        """Record that the transport closed (either side initiated it).

        After calling this method the connection is ``CLOSED``: queued frames are dropped and no
        further frames or events are produced. You must stop using this object and release the
        transport; :attr:`protocol_exc` tells whether the close followed a protocol failure.
        """
        self.state = State.CLOSED
        self._outgoing.clear()

    def close(self, code: int = CLOSE_NORMAL) -> None:
        """Start closing the connection from the local side; does nothing if already closing.

        After calling this method you must send :meth:`data_to_send` and then close the transport
        with :attr:`close_code`. Any send now raises :class:`InvalidState`.
        """
        if self.state < State.CLOSING:
            self.state = State.CLOSING
            self.close_code = code

    # --- outputs --------------------------------------------------------------------------------

    def events_received(self) -> list[Event]:
        """Return the events produced since the last call, oldest first, and forget them."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[str]:
        """Return the text frames queued since the last call, in order, and forget them."""
        frames, self._outgoing = self._outgoing, []
        return frames

    # --- agent senders --------------------------------------------------------------------------

    def send_hello(self, payload: HelloPayload) -> HelloMessage:
        """Agent: open the handshake; call once, right after connecting, then wait for ``welcome``.

        Raises:
            InvalidState: Not the agent side, or ``hello`` was already sent, or the connection is closing.
        """
        message = HelloMessage(id=self._new_id(), ts=self._now(), payload=payload)
        self._send(message)
        self.hello = payload
        return message

    def send_heartbeat(self, payload: HeartbeatPayload) -> HeartbeatMessage:
        """Agent: report liveness and metrics.

        Raises:
            InvalidState: Not the agent side, or not ``REGISTERED``.
        """
        message = HeartbeatMessage(id=self._new_id(), ts=self._now(), payload=payload)
        self._send(message)
        return message

    def send_inventory(self, payload: InventoryPayload) -> InventoryMessage:
        """Agent: report the host inventory.

        Raises:
            InvalidState: Not the agent side, or not ``REGISTERED``.
        """
        message = InventoryMessage(id=self._new_id(), ts=self._now(), payload=payload)
        self._send(message)
        return message

    def send_output_chunk(self, payload: OutputChunkPayload) -> OutputChunkMessage:
        """Agent: stream a piece of a command's output.

        Raises:
            InvalidState: Not the agent side, or not ``REGISTERED``.
        """
        message = OutputChunkMessage(id=self._new_id(), ts=self._now(), payload=payload)
        self._send(message)
        return message

    def send_result(self, payload: CommandResultPayload) -> CommandResultMessage:
        """Agent: report a command's final outcome.

        Raises:
            InvalidState: Not the agent side, or not ``REGISTERED``.
        """
        message = CommandResultMessage(id=self._new_id(), ts=self._now(), payload=payload)
        self._send(message)
        return message

    def send_rejection(self, payload: RejectionPayload) -> RejectionMessage:
        """Agent: report a signed instruction refused after verification (e.g. by local policy).

        Signature failures are reported automatically; use this for ``reason="policy"``.

        Raises:
            InvalidState: Not the agent side, or not ``REGISTERED``.
        """
        message = RejectionMessage(id=self._new_id(), ts=self._now(), payload=payload)
        self._send(message)
        return message

    # --- gateway senders ------------------------------------------------------------------------

    def send_welcome(self, payload: WelcomePayload) -> WelcomeMessage:
        """Gateway: accept the agent's ``hello``; the connection is ``REGISTERED`` afterwards.

        Raises:
            InvalidState: Not the gateway side, no ``hello`` received yet, or already welcomed.
        """
        message = WelcomeMessage(id=self._new_id(), ts=self._now(), payload=payload)
        self._send(message)
        self.welcome = payload
        self.state = State.REGISTERED
        return message

    def send_signed(self, message: SignedMessage) -> None:
        """Gateway: send an already signed instruction (see :func:`~legator_probe.protocol.signing.sign_envelope`).

        Raises:
            InvalidState: Not the gateway side, or not ``REGISTERED``.
            ValueError: ``message.sig`` is not set.
        """
        if message.sig is None:
            raise ValueError(f"refusing to send an unsigned {message.type!r} message")
        self._send(message)

    def send_command(self, message: CommandMessage) -> None:
        """Gateway: send an already signed ``command``; same as :meth:`send_signed`.

        Raises:
            InvalidState: Not the gateway side, or not ``REGISTERED``.
            ValueError: ``message.sig`` is not set.
        """
        self.send_signed(message)

    def send_backoff(self, payload: BackoffPayload) -> BackoffMessage:
        """Gateway: tell the agent to reconnect later; usually followed by :meth:`close`.

        Raises:
            InvalidState: Not the gateway side, or the connection is closing.
        """
        message = BackoffMessage(id=self._new_id(), ts=self._now(), payload=payload)
        self._send(message)
        return message

    # --- either side ----------------------------------------------------------------------------

    def send_error(self, payload: ErrorPayload) -> ErrorMessage:
        """Report an error to the peer; allowed in any state before closing.

        Raises:
            InvalidState: The connection is closing.
        """
        message = ErrorMessage(id=self._new_id(), ts=self._now(), payload=payload)
        self._send(message)
        return message

    # --- internals ------------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self._check_send(message.type)
        self._queue(message)

    def _check_send(self, message_type: str) -> None:
        if self.state >= State.CLOSING:
            raise InvalidState(f"cannot send {message_type!r}: connection is {self.state.name}")
        if message_type not in self._outbound:
            raise InvalidState(f"the {self.side.value} side never sends {message_type!r}")
        if message_type == "hello":
            allowed = self.hello is None
        elif message_type == "welcome":
            allowed = self.hello is not None and self.state is State.CONNECTING
        else:
            allowed = message_type in _ALWAYS_ALLOWED or self.state is State.REGISTERED
        if not allowed:
            raise InvalidState(f"cannot send {message_type!r} at this point of the handshake")

    def _admit(self, message: Message) -> None:
        """Enforce direction and handshake order, recording handshake payloads."""
        kind = message.type
        if kind not in self._inbound:
            raise UnexpectedMessage(
                f"the {self.side.value} side does not accept {kind!r}", ref_id=message.id, message_type=kind
            )
        if isinstance(message, HelloMessage):
            if self.hello is not None:
                raise OutOfOrderMessage("duplicate hello", ref_id=message.id, message_type=kind)
            self.hello = message.payload
        elif isinstance(message, WelcomeMessage):
            if self.hello is None or self.state is not State.CONNECTING:
                raise OutOfOrderMessage("welcome without a pending hello", ref_id=message.id, message_type=kind)
            self.welcome = message.payload
            self.state = State.REGISTERED
        elif kind not in _ALWAYS_ALLOWED and self.state is not State.REGISTERED:
            raise OutOfOrderMessage(f"{kind!r} before the handshake completed", ref_id=message.id, message_type=kind)

    def _violation(self, exc: ProtocolError) -> None:
        self.strikes += 1
        self._events.append(ProtocolViolation(exc, self.strikes))
        if (
            self.side is Side.AGENT
            and isinstance(exc, MalformedMessage)
            and exc.message_type in SIGNED_TYPES
            and exc.ref_id is not None
        ):
            reply: Message = RejectionMessage(id=self._new_id(), ts=self._now(), payload=_rejection(exc.ref_id, exc))
        else:
            reply = ErrorMessage(
                id=self._new_id(),
                ts=self._now(),
                payload=ErrorPayload(code=exc.code, message=exc.message, ref_id=exc.ref_id),
            )
        self._queue(reply)
        if isinstance(exc, MessageTooLarge) or self.strikes >= self._max_strikes:
            self.protocol_exc = exc
            self.close_code = exc.close_code
            self.state = State.CLOSING

    def _queue(self, message: Message) -> None:
        self._outgoing.append(dump_message(message))


def _rejection(ref_id: str, exc: ProtocolError) -> RejectionPayload:
    if isinstance(exc, SignatureRejected):
        return RejectionPayload(ref_id=ref_id, reason=exc.reason, detail=exc.detail)
    return RejectionPayload(ref_id=ref_id, reason="malformed", detail=exc.message)
