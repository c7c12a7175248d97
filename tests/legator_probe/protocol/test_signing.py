import base64
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from legator_probe.protocol import _ed25519
from legator_probe.protocol.errors import SignatureRejected
from legator_probe.protocol.messages import (
    CancelMessage,
    CommandMessage,
    HeartbeatMessage,
    KeyRotationMessage,
    SignedMessage,
    dump_message,
    parse_message,
)
from legator_probe.protocol.payloads import CancelPayload, HeartbeatPayload, KeyRotationPayload
from legator_probe.protocol.signing import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_MAX_VALIDITY,
    SIGNED_TYPES,
    TrustedKey,
    Verifier,
    canonical_bytes,
    decode_public_key,
    derive_probe_keypair,
    encode_public_key,
    sign_envelope,
    signing_input,
)

MASTER = bytes(range(32))
PROBE = "prb-1"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def cancel(
    *, probe_id: str = PROBE, nonce: str = "nonce-0001", expires_at: datetime = NOW + timedelta(minutes=5)
) -> CancelMessage:
    payload = CancelPayload(probe_id=probe_id, nonce=nonce, expires_at=expires_at, request_id="req-1")
    return CancelMessage(id="env-1", ts=NOW, payload=payload)


def signed(message: SignedMessage, generation: int = 0) -> Any:
    key_id, key = derive_probe_keypair(MASTER, PROBE, generation)
    return sign_envelope(message, key_id=key_id, private_key=key)


def trusted(generation: int = 0, not_after: datetime | None = None) -> TrustedKey:
    key_id, key = derive_probe_keypair(MASTER, PROBE, generation)
    return TrustedKey(key_id, key.public_key(), not_after)


def verifier(clock: Clock | None = None, **kwargs: Any) -> Verifier:
    return Verifier(probe_id=PROBE, now=clock or Clock(), keys=[trusted()], **kwargs)


def rejection_reason(v: Verifier, message: Any) -> str:
    with pytest.raises(SignatureRejected) as info:
        v.verify(message)
    assert info.value.code == "signature_rejected"
    assert info.value.ref_id == message.id
    return info.value.reason


# --- canonical encoding -----------------------------------------------------------------------


def test_canonical_bytes_sort_keys_without_whitespace_in_utf8() -> None:
    data = canonical_bytes("command", {"b": [1, 2], "a": {"d": "é", "c": None}})
    assert data == '{"payload":{"a":{"c":null,"d":"é"},"b":[1,2]},"type":"command"}'.encode()


def test_canonical_bytes_write_datetimes_as_utc_with_z() -> None:
    plus_two = timezone(timedelta(hours=2))
    data = canonical_bytes("cancel", {"at": datetime(2026, 3, 1, 16, 0, 0, 250000, tzinfo=plus_two)})
    assert data == b'{"payload":{"at":"2026-03-01T14:00:00.250000Z"},"type":"cancel"}'


def test_canonical_bytes_refuse_values_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        canonical_bytes("x", {"n": float("nan")})
    with pytest.raises(TypeError, match="bytes"):
        canonical_bytes("x", {"raw": b"\x00"})


def test_signing_input_is_identical_after_a_trip_over_the_wire() -> None:
    message = cancel()
    received = parse_message(dump_message(message))
    assert isinstance(received, CancelMessage)
    assert signing_input(received) == signing_input(message)
    assert b'"expires_at":"2026-03-01T12:05:00Z"' in signing_input(message)


# --- keys -------------------------------------------------------------------------------------


def test_derived_keys_are_deterministic_and_differ_per_probe_and_generation() -> None:
    def raw(key: Ed25519PrivateKey) -> str:
        return encode_public_key(key.public_key())

    key_id, key = derive_probe_keypair(MASTER, PROBE, 0)
    again_id, again = derive_probe_keypair(MASTER, PROBE, 0)
    assert (key_id, raw(key)) == (again_id, raw(again))
    assert raw(derive_probe_keypair(MASTER, "prb-2", 0)[1]) != raw(key)
    next_id, next_key = derive_probe_keypair(MASTER, PROBE, 1)
    assert raw(next_key) != raw(key)
    assert re.fullmatch(r"g0-[A-Za-z0-9_-]{16}", key_id)
    assert next_id.startswith("g1-")


@pytest.mark.parametrize(
    ("master", "probe_id", "generation", "match"),
    [
        pytest.param(b"short", PROBE, 0, "at least 32 bytes", id="short-master"),
        pytest.param(MASTER, "", 0, "probe id", id="empty-probe"),
        pytest.param(MASTER, PROBE, -1, "negative", id="negative-generation"),
    ],
)
def test_key_derivation_refuses_bad_inputs(master: bytes, probe_id: str, generation: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        derive_probe_keypair(master, probe_id, generation)


def test_public_keys_round_trip_through_base64() -> None:
    public = derive_probe_keypair(MASTER, PROBE, 0)[1].public_key()
    text = encode_public_key(public)
    assert len(base64.b64decode(text)) == 32
    assert encode_public_key(decode_public_key(text)) == text


@pytest.mark.parametrize("text", [pytest.param("not base64!", id="alphabet"), pytest.param("AAAA", id="length")])
def test_decoding_a_bad_public_key_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        decode_public_key(text)


def test_sign_envelope_sets_key_id_and_unpadded_base64url_signature() -> None:
    message = signed(cancel())
    key_id = derive_probe_keypair(MASTER, PROBE, 0)[0]
    assert re.fullmatch(re.escape(key_id) + r"\.[A-Za-z0-9_-]{86}", message.sig)
    assert message.payload == cancel().payload


@pytest.mark.parametrize("key_id", [pytest.param("", id="empty"), pytest.param("a.b", id="dot")])
def test_sign_envelope_refuses_unusable_key_ids(key_id: str) -> None:
    with pytest.raises(ValueError, match="key id"):
        sign_envelope(cancel(), key_id=key_id, private_key=Ed25519PrivateKey.generate())


# --- verification: acceptance -----------------------------------------------------------------


def test_verify_accepts_a_valid_instruction_after_a_wire_round_trip() -> None:
    text = dump_message(signed(cancel()))
    message = parse_message(text)
    assert isinstance(message, CancelMessage)
    verifier().verify(message)


def test_verify_accepts_every_signed_type() -> None:
    command = parse_message(
        '{"id":"c","type":"command","ts":"2026-03-01T12:00:00Z","payload":{"kind":"systemd","request_id":"r",'
        '"spec":{"action":"status","unit":"nginx.service"},'
        '"probe_id":"prb-1","nonce":"n-cmd","expires_at":"2026-03-01T12:01:00Z"}}'
    )
    assert isinstance(command, CommandMessage)
    verifier().verify(signed(command))
    assert {"command", "cancel"} <= SIGNED_TYPES


def test_verify_tolerates_clock_skew_on_expiry() -> None:
    clock = Clock(NOW + timedelta(minutes=5) + DEFAULT_CLOCK_SKEW)
    verifier(clock).verify(signed(cancel()))


# --- verification: one test per rejection reason ----------------------------------------------


def test_rejects_a_missing_signature_as_malformed() -> None:
    assert rejection_reason(verifier(), cancel()) == "malformed"


@pytest.mark.parametrize(
    "sig",
    [
        pytest.param("no-separator", id="no-dot"),
        pytest.param(".", id="empty-parts"),
        pytest.param("g0-x." + "A" * 85, id="short-signature"),
        pytest.param("g0-x." + "A" * 85 + "=", id="padded"),
        pytest.param("g0-x." + "A" * 85 + "+", id="standard-alphabet"),
    ],
)
def test_rejects_a_garbled_signature_as_malformed(sig: str) -> None:
    assert rejection_reason(verifier(), cancel().model_copy(update={"sig": sig})) == "malformed"


def test_rejects_an_empty_nonce_as_malformed() -> None:
    assert rejection_reason(verifier(), signed(cancel(nonce=""))) == "malformed"


def test_rejects_an_unsigned_message_type_as_malformed() -> None:
    payload = HeartbeatPayload(
        uptime_s=1, load=(0, 0, 0), mem_total_bytes=1, mem_used_bytes=1, disk_total_bytes=1, disk_used_bytes=1
    )
    heartbeat = HeartbeatMessage(id="env-1", ts=NOW, payload=payload, sig="g0-x." + "A" * 86)
    assert rejection_reason(verifier(), cast(SignedMessage, heartbeat)) == "malformed"


def test_rejects_an_expiry_beyond_the_allowed_validity_as_malformed() -> None:
    late = NOW + DEFAULT_MAX_VALIDITY + DEFAULT_CLOCK_SKEW + timedelta(seconds=1)
    assert rejection_reason(verifier(), signed(cancel(expires_at=late))) == "malformed"


def test_rejects_an_unknown_key_id() -> None:
    assert rejection_reason(verifier(), signed(cancel(), generation=7)) == "unknown_key"


def test_rejects_a_key_past_its_not_after() -> None:
    retired = Verifier(
        probe_id=PROBE, now=Clock(), keys=[trusted(not_after=NOW - DEFAULT_CLOCK_SKEW - timedelta(seconds=1))]
    )
    assert rejection_reason(retired, signed(cancel())) == "unknown_key"


def test_accepts_a_key_within_its_not_after() -> None:
    Verifier(probe_id=PROBE, now=Clock(), keys=[trusted(not_after=NOW)]).verify(signed(cancel()))


def test_rejects_a_tampered_payload_as_bad_signature() -> None:
    message = signed(cancel())
    tampered = message.model_copy(update={"payload": message.payload.model_copy(update={"request_id": "req-2"})})
    assert rejection_reason(verifier(), tampered) == "bad_signature"


def test_rejects_a_signature_by_another_key_under_a_trusted_id_as_bad_signature() -> None:
    key_id = derive_probe_keypair(MASTER, PROBE, 0)[0]
    forged = sign_envelope(cancel(), key_id=key_id, private_key=Ed25519PrivateKey.generate())
    assert rejection_reason(verifier(), forged) == "bad_signature"


def test_verification_answers_the_same_through_the_cryptography_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ed25519, "_backend", _ed25519.verify_with_cryptography)
    verifier().verify(signed(cancel()))
    key_id = derive_probe_keypair(MASTER, PROBE, 0)[0]
    forged = sign_envelope(cancel(), key_id=key_id, private_key=Ed25519PrivateKey.generate())
    assert rejection_reason(verifier(), forged) == "bad_signature"


@pytest.mark.skipif(_ed25519.load_libcrypto() is None, reason="no libcrypto with Ed25519: cryptography verifies")
def test_the_probe_verifies_signed_instructions_without_importing_cryptography() -> None:
    public_key = encode_public_key(derive_probe_keypair(MASTER, PROBE, 0)[1].public_key())
    good = dump_message(signed(cancel()))
    forged = good.replace('"req-1"', '"req-2"')
    code = f"""
import sys
from datetime import datetime
from legator_probe.protocol.errors import SignatureRejected
from legator_probe.protocol.messages import parse_message
from legator_probe.protocol.signing import TrustedKey, Verifier, decode_public_key

key = TrustedKey({trusted().key_id!r}, decode_public_key({public_key!r}))
verifier = Verifier(probe_id={PROBE!r}, now=lambda: datetime.fromisoformat({NOW.isoformat()!r}), keys=[key])
verifier.verify(parse_message({good!r}))
try:
    verifier.verify(parse_message({forged!r}))
except SignatureRejected as exc:
    assert exc.reason == "bad_signature", exc.reason
else:
    raise AssertionError("a tampered instruction was accepted")
loaded = sorted(name for name in sys.modules if name.partition(".")[0] == "cryptography")
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", check=False)
    assert done.returncode == 0, done.stderr


def test_rejects_an_instruction_for_another_probe_as_wrong_probe() -> None:
    assert rejection_reason(verifier(), signed(cancel(probe_id="prb-2"))) == "wrong_probe"


def test_rejects_an_expired_instruction() -> None:
    clock = Clock(NOW + timedelta(minutes=5) + DEFAULT_CLOCK_SKEW + timedelta(microseconds=1))
    assert rejection_reason(verifier(clock), signed(cancel())) == "expired"


def test_rejects_a_replayed_nonce() -> None:
    v = verifier()
    v.verify(signed(cancel()))
    assert rejection_reason(v, signed(cancel())) == "replayed"


def test_rejects_a_replayed_nonce_even_with_a_different_payload() -> None:
    v = verifier()
    v.verify(signed(cancel()))
    assert rejection_reason(v, signed(cancel(expires_at=NOW + timedelta(minutes=9)))) == "replayed"


def test_rejected_instructions_do_not_consume_their_nonce() -> None:
    v = verifier()
    rejection_reason(v, signed(cancel(probe_id="prb-2")))
    v.verify(signed(cancel()))


# --- replay cache -----------------------------------------------------------------------------


def test_replay_cache_forgets_nonces_once_they_expire() -> None:
    clock = Clock()
    v = verifier(clock)
    v.verify(signed(cancel(nonce="first", expires_at=NOW + timedelta(minutes=1))))
    v.verify(signed(cancel(nonce="second", expires_at=NOW + timedelta(minutes=10))))
    clock.now = NOW + timedelta(minutes=2)
    v.verify(signed(cancel(nonce="third", expires_at=NOW + timedelta(minutes=10))))
    assert set(v._seen) == {"second", "third"}


def test_replay_cache_evicts_the_soonest_expiring_nonce_when_full() -> None:
    v = verifier(replay_cache_size=2)
    v.verify(signed(cancel(nonce="late", expires_at=NOW + timedelta(minutes=9))))
    v.verify(signed(cancel(nonce="soon", expires_at=NOW + timedelta(minutes=1))))
    v.verify(signed(cancel(nonce="mid", expires_at=NOW + timedelta(minutes=5))))
    assert set(v._seen) == {"late", "mid"}
    assert rejection_reason(v, signed(cancel(nonce="late", expires_at=NOW + timedelta(minutes=9)))) == "replayed"


def test_replay_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        verifier(replay_cache_size=0)


# --- key management ---------------------------------------------------------------------------


def test_trust_and_distrust_change_the_accepted_keys() -> None:
    v = Verifier(probe_id=PROBE, now=Clock())
    assert v.keys == ()
    v.trust(trusted(3))
    v.verify(signed(cancel(nonce="a"), generation=3))
    v.distrust(trusted(3).key_id)
    v.distrust("never-trusted")
    assert rejection_reason(v, signed(cancel(nonce="b"), generation=3)) == "unknown_key"


def test_key_rotation_trusts_the_new_key_and_retires_the_old_after_the_overlap() -> None:
    clock = Clock()
    v = verifier(clock)
    new_id, new_key = derive_probe_keypair(MASTER, PROBE, 1)
    rotation = KeyRotationPayload(
        probe_id=PROBE,
        nonce="rot",
        expires_at=NOW + timedelta(minutes=1),
        new_key_id=new_id,
        new_public_key=encode_public_key(new_key.public_key()),
        overlap_s=600,
    )
    rotation_message = signed(KeyRotationMessage(id="env-r", ts=NOW, payload=rotation))
    v.verify(rotation_message)
    v.apply_key_rotation(rotation)
    assert {key.key_id for key in v.keys} == {trusted(0).key_id, new_id}

    v.verify(signed(cancel(nonce="old-key-in-overlap")))
    v.verify(signed(cancel(nonce="new-key"), generation=1))
    clock.now = NOW + timedelta(seconds=600) + DEFAULT_CLOCK_SKEW + timedelta(seconds=1)
    late = NOW + timedelta(minutes=20)
    assert rejection_reason(v, signed(cancel(nonce="old-key-late", expires_at=late))) == "unknown_key"
    v.verify(signed(cancel(nonce="new-key-late", expires_at=late), generation=1))


def test_key_rotation_keeps_an_earlier_retirement_deadline() -> None:
    early = NOW + timedelta(seconds=10)
    v = Verifier(probe_id=PROBE, now=Clock(), keys=[trusted(0, not_after=early)])
    new_id, new_key = derive_probe_keypair(MASTER, PROBE, 1)
    v.apply_key_rotation(
        KeyRotationPayload(
            probe_id=PROBE,
            nonce="rot",
            expires_at=NOW,
            new_key_id=new_id,
            new_public_key=encode_public_key(new_key.public_key()),
            overlap_s=3600,
        )
    )
    deadlines = {key.key_id: key.not_after for key in v.keys}
    assert deadlines == {trusted(0).key_id: early, new_id: None}
