import pytest

from legator_probe.protocol.errors import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    InvalidState,
    MalformedMessage,
    MessageTooLarge,
    OutOfOrderMessage,
    ProtocolError,
    SignatureRejected,
    UnexpectedMessage,
)


@pytest.mark.parametrize(
    ("error", "code", "close_code"),
    [
        pytest.param(ProtocolError("x"), "protocol_error", CLOSE_POLICY_VIOLATION, id="base"),
        pytest.param(MalformedMessage("x"), "malformed_message", CLOSE_POLICY_VIOLATION, id="malformed"),
        pytest.param(MessageTooLarge("x"), "message_too_large", CLOSE_MESSAGE_TOO_BIG, id="too-large"),
        pytest.param(UnexpectedMessage("x"), "unexpected_message", CLOSE_POLICY_VIOLATION, id="unexpected"),
        pytest.param(OutOfOrderMessage("x"), "out_of_order_message", CLOSE_POLICY_VIOLATION, id="out-of-order"),
        pytest.param(SignatureRejected("expired", "x"), "signature_rejected", CLOSE_POLICY_VIOLATION, id="signature"),
        pytest.param(InvalidState("x"), "invalid_state", CLOSE_POLICY_VIOLATION, id="invalid-state"),
    ],
)
def test_every_error_has_a_stable_code_and_close_code(error: ProtocolError, code: str, close_code: int) -> None:
    assert isinstance(error, ProtocolError)
    assert (error.code, error.close_code) == (code, close_code)


def test_errors_carry_the_offending_envelope() -> None:
    error = MalformedMessage("bad payload", ref_id="env-1", message_type="command")
    assert (error.message, error.ref_id, error.message_type, str(error)) == (
        "bad payload",
        "env-1",
        "command",
        "bad payload",
    )


def test_signature_rejected_carries_reason_and_detail() -> None:
    error = SignatureRejected("replayed", "nonce was already used", ref_id="env-2", message_type="cancel")
    assert (error.reason, error.detail, error.ref_id) == ("replayed", "nonce was already used", "env-2")
    assert str(error) == "replayed: nonce was already used"
