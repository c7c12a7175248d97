import ctypes

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from legator_probe.protocol import _ed25519

RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
ORDER = 2**252 + 27742317777372353535851937790883648493
"""The order L of the Ed25519 base point; a signature's S must be below it."""

LIBCRYPTO = _ed25519.load_libcrypto()
needs_libcrypto = pytest.mark.skipif(LIBCRYPTO is None, reason="no libcrypto with Ed25519 on this machine")

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key().public_bytes_raw()
MESSAGE = b'{"payload":{"nonce":"n"},"type":"cancel"}'
SIGNATURE = KEY.sign(MESSAGE)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def non_canonical(signature: bytes) -> bytes:
    """The same signature with S replaced by S + L: the same point, an encoding RFC 8032 forbids."""
    s = int.from_bytes(signature[32:], "little")
    return signature[:32] + (s + ORDER).to_bytes(32, "little")


CASES = [
    pytest.param(PUBLIC, SIGNATURE, MESSAGE, True, id="valid"),
    pytest.param(PUBLIC, KEY.sign(b""), b"", True, id="valid-empty-message"),
    pytest.param(PUBLIC, KEY.sign(b"x" * 100_000), b"x" * 100_000, True, id="valid-long-message"),
    pytest.param(PUBLIC, flip(SIGNATURE, 0), MESSAGE, False, id="signature-R-flipped"),
    pytest.param(PUBLIC, flip(SIGNATURE, 40), MESSAGE, False, id="signature-S-flipped"),
    pytest.param(PUBLIC, SIGNATURE, flip(MESSAGE, 3), False, id="message-flipped"),
    pytest.param(flip(PUBLIC, 5), SIGNATURE, MESSAGE, False, id="key-flipped"),
    pytest.param(
        Ed25519PrivateKey.generate().public_key().public_bytes_raw(), SIGNATURE, MESSAGE, False, id="other-key"
    ),
    pytest.param(PUBLIC, non_canonical(SIGNATURE), MESSAGE, False, id="S-not-reduced"),
    pytest.param(PUBLIC, SIGNATURE[:63], MESSAGE, False, id="signature-short"),
    pytest.param(PUBLIC, SIGNATURE + b"\x00", MESSAGE, False, id="signature-long"),
    pytest.param(PUBLIC, b"", MESSAGE, False, id="signature-empty"),
    pytest.param(PUBLIC[:31], SIGNATURE, MESSAGE, False, id="key-short"),
    pytest.param(PUBLIC + b"\x00", SIGNATURE, MESSAGE, False, id="key-long"),
    pytest.param(bytes(32), SIGNATURE, MESSAGE, False, id="key-zero"),
    # OpenSSL does not refuse small-order keys: with the identity as the key, R = identity and S = 0 verify any
    # message. Both backends share that; a probe trusts only keys the control plane derived, never a peer's.
    pytest.param(b"\x01" + bytes(31), b"\x01" + bytes(63), MESSAGE, True, id="identity-key-as-openssl-does"),
    pytest.param(b"\xff" * 32, SIGNATURE, MESSAGE, False, id="key-not-on-curve"),
]


@pytest.mark.parametrize(("public_key", "signature", "data", "valid"), CASES)
def test_the_cryptography_backend_answers_as_rfc8032_says(
    public_key: bytes, signature: bytes, data: bytes, valid: bool
) -> None:
    assert _ed25519.verify_with_cryptography(public_key, signature, data) is valid


@needs_libcrypto
@pytest.mark.parametrize(("public_key", "signature", "data", "valid"), CASES)
def test_the_libcrypto_backend_answers_as_the_cryptography_backend(
    public_key: bytes, signature: bytes, data: bytes, valid: bool
) -> None:
    assert LIBCRYPTO is not None
    assert LIBCRYPTO(public_key, signature, data) is valid


@needs_libcrypto
def test_the_libcrypto_backend_agrees_with_cryptography_on_random_keys_and_messages() -> None:
    assert LIBCRYPTO is not None
    for size in range(0, 300, 7):
        key = Ed25519PrivateKey.generate()
        public, message = key.public_key().public_bytes_raw(), bytes(range(256))[:size] * 3
        signature = key.sign(message)
        for candidate in (signature, flip(signature, size % 64)):
            assert LIBCRYPTO(public, candidate, message) is _ed25519.verify_with_cryptography(
                public, candidate, message
            )


@needs_libcrypto
def test_a_refused_signature_leaves_no_error_in_the_openssl_queue_the_ssl_module_shares() -> None:
    assert LIBCRYPTO is not None
    lib = ctypes.CDLL(_ed25519.LIBCRYPTO_SONAMES[0])
    lib.ERR_peek_error.restype = ctypes.c_ulong
    assert not LIBCRYPTO(PUBLIC[:31], SIGNATURE, MESSAGE)
    assert not LIBCRYPTO(PUBLIC, SIGNATURE[:10], MESSAGE)
    assert lib.ERR_peek_error() == 0


@needs_libcrypto
def test_the_libcrypto_backend_raises_memory_error_when_openssl_cannot_allocate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = _ed25519.load_libcrypto()
    assert isinstance(backend, _ed25519._Libcrypto)
    monkeypatch.setattr(backend, "_new_ctx", lambda: None)
    with pytest.raises(MemoryError):
        backend(PUBLIC, SIGNATURE, MESSAGE)


def test_no_libcrypto_backend_without_a_library_that_provides_ed25519() -> None:
    assert _ed25519.load_libcrypto(("libno-such-library.so.9",)) is None
    assert _ed25519.load_libcrypto(("libc.so.6",)) is None  # loads, but has no EVP_* functions


@needs_libcrypto
def test_no_libcrypto_backend_when_it_fails_the_self_test(monkeypatch: pytest.MonkeyPatch) -> None:
    public, signature, message = _ed25519._RFC8032_TEST_1
    monkeypatch.setattr(_ed25519, "_RFC8032_TEST_1", (public, flip(signature, 1), message))
    assert _ed25519.load_libcrypto() is None


def test_the_self_test_vector_is_rfc8032_test_1() -> None:
    public, signature, message = _ed25519._RFC8032_TEST_1
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET)
    assert (public, signature) == (key.public_key().public_bytes_raw(), key.sign(message))


def test_verify_picks_a_backend_once_and_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ed25519, "_backend", None)
    assert _ed25519.verify(PUBLIC, SIGNATURE, MESSAGE)
    chosen = _ed25519._backend
    if LIBCRYPTO is None:
        assert chosen is _ed25519.verify_with_cryptography
    else:
        assert isinstance(chosen, _ed25519._Libcrypto)
    assert not _ed25519.verify(PUBLIC, flip(SIGNATURE, 9), MESSAGE)
    assert _ed25519._backend is chosen


def test_verify_falls_back_to_cryptography_without_libcrypto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ed25519, "_backend", None)
    monkeypatch.setattr(_ed25519, "load_libcrypto", lambda: None)
    assert _ed25519.verify(PUBLIC, SIGNATURE, MESSAGE)
    assert not _ed25519.verify(PUBLIC, flip(SIGNATURE, 9), MESSAGE)
    assert _ed25519._backend is _ed25519.verify_with_cryptography
