"""Errors of the probe wire protocol.

Every error carries a stable machine ``code``; the connection state machine copies it into the
``error`` frame it sends back, and the shells log and audit it. Errors caused by the peer are
stored on :class:`~legator_probe.protocol.connection.ProbeProtocol` (``protocol_exc``) rather than
raised into the I/O shell; only misuse of the API by the local caller raises.

* ProtocolError
    * MalformedMessage        (peer: not JSON, not an envelope, or a payload failing its schema)
    * MessageTooLarge         (peer: frame longer than the configured limit; close code 1009)
    * UnexpectedMessage       (peer: a type that never travels in this direction)
    * OutOfOrderMessage       (peer: a message that breaks the hello/welcome handshake order)
    * SignatureRejected       (peer: a signed instruction failed verification; carries ``reason``)
    * InvalidState            (local caller: a send the current side or state does not allow)
"""

from typing import ClassVar

from legator_probe.protocol.types import RejectionReason

__all__ = [
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "InvalidState",
    "MalformedMessage",
    "MessageTooLarge",
    "OutOfOrderMessage",
    "ProtocolError",
    "SignatureRejected",
    "UnexpectedMessage",
]

CLOSE_NORMAL = 1000
"""WebSocket close code for an orderly close requested by the local side."""

CLOSE_POLICY_VIOLATION = 1008
"""WebSocket close code used when the peer kept violating the protocol."""

CLOSE_MESSAGE_TOO_BIG = 1009
"""WebSocket close code used when the peer sent a frame above the size limit."""


class ProtocolError(Exception):
    """Base class of every wire protocol error; raised directly only by subclasses."""

    code: ClassVar[str] = "protocol_error"
    """Stable machine-readable code, sent in ``error`` frames."""

    close_code: ClassVar[int] = CLOSE_POLICY_VIOLATION
    """WebSocket close code used when this error ends the connection."""

    def __init__(self, message: str, *, ref_id: str | None = None, message_type: str | None = None) -> None:
        """Build the error.

        Args:
            message: Human-readable explanation, safe to send to the peer (never echoes input values).
            ref_id: Envelope ``id`` of the offending frame, when it could be read.
            message_type: Envelope ``type`` of the offending frame, when it could be read.
        """
        super().__init__(message)
        self.message = message
        self.ref_id = ref_id
        self.message_type = message_type


class MalformedMessage(ProtocolError):
    """Raised when a frame is not JSON, is not an envelope, or its payload fails its schema."""

    code: ClassVar[str] = "malformed_message"


class MessageTooLarge(ProtocolError):
    """Raised when a frame is longer than the connection's ``max_frame_bytes``."""

    code: ClassVar[str] = "message_too_large"
    close_code: ClassVar[int] = CLOSE_MESSAGE_TOO_BIG


class UnexpectedMessage(ProtocolError):
    """Raised when a message arrives that never travels in that direction (e.g. a gateway receiving ``command``)."""

    code: ClassVar[str] = "unexpected_message"


class OutOfOrderMessage(ProtocolError):
    """Raised when a message arrives before the hello/welcome handshake completed, or repeats it."""

    code: ClassVar[str] = "out_of_order_message"


class SignatureRejected(ProtocolError):
    """Raised by :meth:`~legator_probe.protocol.signing.Verifier.verify` when a signed instruction must be refused."""

    code: ClassVar[str] = "signature_rejected"

    def __init__(
        self, reason: RejectionReason, detail: str, *, ref_id: str | None = None, message_type: str | None = None
    ) -> None:
        """Build the error.

        Args:
            reason: Machine-readable refusal reason, copied into the ``rejection`` frame.
            detail: Human-readable explanation.
            ref_id: Envelope ``id`` of the refused instruction.
            message_type: Envelope ``type`` of the refused instruction.
        """
        super().__init__(f"{reason}: {detail}", ref_id=ref_id, message_type=message_type)
        self.reason: RejectionReason = reason
        self.detail = detail


class InvalidState(ProtocolError):
    """Raised when the local caller sends a message its side or the connection state does not allow."""

    code: ClassVar[str] = "invalid_state"
