"""Ed25519 signatures on control-plane instructions.

The control plane derives one Ed25519 key pair per probe and key generation from its master key
(:func:`derive_probe_keypair`, HKDF-SHA256) and gives the probe only the public key. It signs every
message whose type is in :data:`SIGNED_TYPES` with :func:`sign_envelope`. The probe checks each one
with a :class:`Verifier` before acting on it.

The signature covers :func:`canonical_bytes` of the message type and the whole payload, which
includes the target ``probe_id``, a single-use ``nonce`` and an ``expires_at`` deadline. The envelope
``id`` and ``ts`` are transport metadata and are not covered. Both sides compute the canonical bytes
from the validated payload model, never from the raw frame, so the probe verifies exactly what it
will act on.

Only the control plane's side (:func:`derive_probe_keypair`, :func:`sign_envelope`) imports
``cryptography``, when first called. The probe holds raw public keys (:func:`decode_public_key`) and
verifies through the interpreter's own OpenSSL where it can (:mod:`._ed25519`), which keeps
``cryptography``'s 14 MB extension out of an idle probe.
"""

import base64
import hashlib
import heapq
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from legator_probe.protocol import _ed25519
from legator_probe.protocol.errors import SignatureRejected
from legator_probe.protocol.messages import SIGNED_TYPES, SignedMessage
from legator_probe.protocol.payloads import KeyRotationPayload
from legator_probe.protocol.types import RejectionReason

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_MAX_VALIDITY",
    "DEFAULT_REPLAY_CACHE_SIZE",
    "MIN_MASTER_KEY_BYTES",
    "SIGNED_TYPES",
    "PublicKey",
    "TrustedKey",
    "Verifier",
    "canonical_bytes",
    "decode_public_key",
    "derive_probe_keypair",
    "encode_public_key",
    "sign_envelope",
    "signing_input",
]

MIN_MASTER_KEY_BYTES: Final = 32
"""Shortest master key :func:`derive_probe_keypair` accepts."""

DEFAULT_CLOCK_SKEW: Final = timedelta(seconds=30)
"""Clock difference between control plane and probe tolerated when checking ``expires_at``."""

DEFAULT_MAX_VALIDITY: Final = timedelta(hours=1)
"""Furthest in the future an ``expires_at`` may lie; bounds how long nonces must be remembered."""

DEFAULT_REPLAY_CACHE_SIZE: Final = 10_000
"""Nonces a :class:`Verifier` remembers at most; must exceed the instructions sent per validity window."""

_HKDF_SALT: Final = b"legator/probe-signing/v1"
_SIGNATURE_RE: Final = re.compile(r"[A-Za-z0-9_-]{86}")  # 64 bytes, unpadded base64url

_PUBLIC_KEY_BYTES: Final = 32

_SignedT = TypeVar("_SignedT", bound=SignedMessage)


class PublicKey(Protocol):
    """An Ed25519 public key: anything that gives its 32 raw bytes, e.g. ``cryptography``'s ``Ed25519PublicKey``."""

    def public_bytes_raw(self) -> bytes:
        """Return the key's 32 raw bytes."""
        ...


@dataclass(frozen=True, slots=True)
class _RawPublicKey:
    raw: bytes

    def public_bytes_raw(self) -> bytes:
        return self.raw


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot encode {type(value).__name__} canonically")


def canonical_bytes(message_type: str, payload: Mapping[str, object]) -> bytes:
    """Return the bytes a signature covers.

    The encoding is JSON of ``{"payload": payload, "type": message_type}`` with sorted keys, no
    whitespace, non-ASCII characters kept as UTF-8, and datetimes as ISO-8601 UTC with a ``Z`` suffix.

    Args:
        message_type: The envelope ``type``.
        payload: The payload as plain data (nested dicts, lists, strings, numbers, datetimes).

    Raises:
        TypeError: The payload holds a value JSON cannot represent.
        ValueError: The payload holds a non-finite float or a string with lone surrogates.
    """
    document = {"payload": payload, "type": message_type}
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
    )
    return text.encode("utf-8")


def signing_input(message: SignedMessage) -> bytes:
    """Return :func:`canonical_bytes` of a signed message's type and validated payload."""
    return canonical_bytes(message.type, message.payload.model_dump(mode="python"))


def _key_id(public_key: PublicKey, generation: int) -> str:
    raw = public_key.public_bytes_raw()
    fingerprint = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode("ascii")
    return f"g{generation}-{fingerprint}"


def derive_probe_keypair(master_key: bytes, probe_id: str, generation: int) -> tuple[str, "Ed25519PrivateKey"]:
    """Derive a probe's signing key pair for one key generation.

    The same inputs always give the same key, so the control plane stores only its master key and
    each probe's current generation; rotating a probe's key means bumping the generation.

    Args:
        master_key: The control plane's secret master key (at least 32 bytes).
        probe_id: The probe the key signs for.
        generation: Key generation, starting at 0.

    Returns:
        ``(key_id, private_key)``; ``key_id`` is ``"g<generation>-<public key fingerprint>"``.

    Raises:
        ValueError: The master key is too short, the probe id is empty, or the generation is negative.
    """
    if len(master_key) < MIN_MASTER_KEY_BYTES:
        raise ValueError(f"master key must be at least {MIN_MASTER_KEY_BYTES} bytes")
    if not probe_id:
        raise ValueError("probe id must not be empty")
    if generation < 0:
        raise ValueError("key generation must not be negative")
    # Imported here: only the control plane derives keys, and a probe is spared cryptography's ~9 MiB.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    probe = probe_id.encode("utf-8")
    info = b"probe-signing-key" + len(probe).to_bytes(4, "big") + probe + generation.to_bytes(8, "big")
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=info).derive(master_key)
    private_key = Ed25519PrivateKey.from_private_bytes(seed)
    return _key_id(private_key.public_key(), generation), private_key


def encode_public_key(public_key: PublicKey) -> str:
    """Return a public key as standard base64 of its 32 raw bytes (the ``new_public_key`` format)."""
    return base64.b64encode(public_key.public_bytes_raw()).decode("ascii")


def decode_public_key(text: str) -> PublicKey:
    """Load a public key from standard base64 of its 32 raw bytes.

    Like ``cryptography``'s ``Ed25519PublicKey.from_public_bytes``, this checks the length only; a key that is
    not a curve point simply never verifies a signature.

    Raises:
        ValueError: The text is not base64 of exactly 32 bytes.
    """
    raw = base64.b64decode(text, validate=True)
    if len(raw) != _PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {_PUBLIC_KEY_BYTES} bytes, not {len(raw)}")
    return _RawPublicKey(raw)


def sign_envelope(message: _SignedT, *, key_id: str, private_key: "Ed25519PrivateKey") -> _SignedT:
    """Return a copy of ``message`` with ``sig`` set to ``"<key_id>.<base64url signature>"``.

    Args:
        message: A message whose type is in :data:`SIGNED_TYPES`; an existing ``sig`` is replaced.
        key_id: Id of the key pair, as returned by :func:`derive_probe_keypair`.
        private_key: The probe's private signing key.

    Raises:
        ValueError: ``key_id`` is empty or contains ``"."``.
    """
    if not key_id or "." in key_id:
        raise ValueError("key id must be non-empty and must not contain '.'")
    signature = private_key.sign(signing_input(message))
    encoded = base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii")
    return message.model_copy(update={"sig": f"{key_id}.{encoded}"})


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key the probe accepts signatures from, until ``not_after`` when set."""

    key_id: str
    public_key: PublicKey
    not_after: datetime | None = None


class Verifier:
    """Probe-side check of signed instructions: key, signature, target probe, expiry and replay.

    The verifier holds no clock of its own; ``now`` is called once per :meth:`verify`. Nonces of
    accepted instructions are remembered until their ``expires_at`` (plus skew) has passed, up to
    ``replay_cache_size`` entries; when full, the soonest-expiring nonce is forgotten first.
    """

    def __init__(
        self,
        *,
        probe_id: str,
        now: Callable[[], datetime],
        keys: Iterable[TrustedKey] = (),
        max_clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
        max_validity: timedelta = DEFAULT_MAX_VALIDITY,
        replay_cache_size: int = DEFAULT_REPLAY_CACHE_SIZE,
    ) -> None:
        """Build a verifier.

        Args:
            probe_id: This probe's id; instructions for any other probe are rejected.
            now: Returns the current time (timezone-aware).
            keys: Initially trusted keys.
            max_clock_skew: Tolerance applied to ``expires_at`` and key ``not_after``.
            max_validity: How far in the future ``expires_at`` may lie.
            replay_cache_size: Most nonces remembered at once (at least 1).

        Raises:
            ValueError: ``replay_cache_size`` is less than 1.
        """
        if replay_cache_size < 1:
            raise ValueError("replay cache size must be at least 1")
        self.probe_id = probe_id
        self._now = now
        self._keys: dict[str, TrustedKey] = {key.key_id: key for key in keys}
        self._skew = max_clock_skew
        self._max_validity = max_validity
        self._cache_size = replay_cache_size
        self._seen: dict[str, datetime] = {}
        self._expiries: list[tuple[datetime, str]] = []

    @property
    def keys(self) -> tuple[TrustedKey, ...]:
        """The currently trusted keys."""
        return tuple(self._keys.values())

    def trust(self, key: TrustedKey) -> None:
        """Trust ``key``, replacing any key with the same id."""
        self._keys[key.key_id] = key

    def distrust(self, key_id: str) -> None:
        """Stop trusting the key ``key_id`` at once; unknown ids are ignored."""
        self._keys.pop(key_id, None)

    def apply_key_rotation(self, payload: KeyRotationPayload) -> None:
        """Trust the rotated-in key and let every other key expire after the overlap window.

        Call this only after the ``key_rotation`` message itself passed :meth:`verify`.

        Raises:
            ValueError: ``new_public_key`` is not a valid key.
        """
        deadline = self._now() + timedelta(seconds=payload.overlap_s)
        for key in list(self._keys.values()):
            if key.not_after is None or key.not_after > deadline:
                self._keys[key.key_id] = replace(key, not_after=deadline)
        self.trust(TrustedKey(payload.new_key_id, decode_public_key(payload.new_public_key)))

    def verify(self, message: SignedMessage) -> None:
        """Check a signed instruction and remember its nonce.

        Checks run in this order: signature format and nonce present, key trusted, signature valid,
        addressed to this probe, not expired, nonce not seen before. The nonce is remembered only
        once every other check passed, so forged frames cannot fill the replay cache.

        Raises:
            SignatureRejected: The instruction must not be acted on; ``reason`` says why
                (``malformed``, ``unknown_key``, ``bad_signature``, ``wrong_probe``, ``expired``
                or ``replayed``).
        """

        def reject(reason: RejectionReason, detail: str) -> SignatureRejected:
            return SignatureRejected(reason, detail, ref_id=message.id, message_type=message.type)

        if message.type not in SIGNED_TYPES:
            raise reject("malformed", f"{message.type!r} messages are not signed")
        if not message.sig:
            raise reject("malformed", "missing signature")
        key_id, _, encoded = message.sig.rpartition(".")
        if not key_id or not _SIGNATURE_RE.fullmatch(encoded):
            raise reject("malformed", "signature is not '<key_id>.<base64url Ed25519 signature>'")
        payload = message.payload
        if not payload.nonce:
            raise reject("malformed", "missing nonce")
        now = self._now()
        key = self._keys.get(key_id)
        if key is None:
            raise reject("unknown_key", "signing key is not trusted")
        if key.not_after is not None and now > key.not_after + self._skew:
            raise reject("unknown_key", "signing key was retired")
        signature = base64.urlsafe_b64decode(encoded + "==")
        if not _ed25519.verify(key.public_key.public_bytes_raw(), signature, signing_input(message)):
            raise reject("bad_signature", "signature does not match the payload")
        if payload.probe_id != self.probe_id:
            raise reject("wrong_probe", "instruction is addressed to another probe")
        if now > payload.expires_at + self._skew:
            raise reject("expired", "instruction expired")
        if payload.expires_at > now + self._skew + self._max_validity:
            raise reject("malformed", "expiry lies further ahead than the allowed validity")
        self._forget_expired(now)
        if payload.nonce in self._seen:
            raise reject("replayed", "nonce was already used")
        self._remember(payload.nonce, payload.expires_at + self._skew)

    def _forget_expired(self, now: datetime) -> None:
        while self._expiries and self._expiries[0][0] < now:
            _, nonce = heapq.heappop(self._expiries)
            del self._seen[nonce]

    def _remember(self, nonce: str, until: datetime) -> None:
        self._seen[nonce] = until
        heapq.heappush(self._expiries, (until, nonce))
        if len(self._seen) > self._cache_size:
            _, oldest = heapq.heappop(self._expiries)
            del self._seen[oldest]
