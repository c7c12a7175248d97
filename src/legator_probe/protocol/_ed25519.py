"""Ed25519 signature checks without importing ``cryptography`` when the interpreter's OpenSSL can do them.

A probe only ever *verifies* signatures. ``cryptography`` can, but importing it maps its 14 MB Rust extension:
about 9 MiB of resident memory, a fifth of an idle probe. The same OpenSSL primitive (``EVP_DigestVerify`` with
an ``ED25519`` key, which ``cryptography`` calls too) is in the ``libcrypto`` that Python's ``ssl`` and
``hashlib`` modules link against, usually already mapped into the process. :func:`verify` reaches it through
:mod:`ctypes`, and falls back to ``cryptography`` when there is no usable ``libcrypto``: a Python with OpenSSL
linked statically, an OpenSSL older than 1.1.1, or one (e.g. a FIPS build) that does not pass the RFC 8032 test
vector checked before first use.

Both backends answer as OpenSSL does: a signature is valid or it is not; nothing here raises for bad input.
"""

import ctypes
from collections.abc import Callable
from typing import Final

__all__ = ["Backend", "load_libcrypto", "verify", "verify_with_cryptography"]

Backend = Callable[[bytes, bytes, bytes], bool]
"""``(public_key, signature, data) -> valid``: a raw 32-byte key, a 64-byte signature, the signed bytes."""

LIBCRYPTO_SONAMES: Final = ("libcrypto.so.3", "libcrypto.so.1.1")
"""OpenSSL releases with raw Ed25519 keys; the dynamic loader hands back the copy already loaded, if any."""

_EVP_PKEY_ED25519: Final = 1087
"""``EVP_PKEY_ED25519`` (``NID_ED25519`` in OpenSSL's ``obj_mac.h``), unchanged since OpenSSL 1.1.1."""

_RFC8032_TEST_1: Final = (
    bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
    bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
        "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    ),
    b"",
)
"""Public key, signature and message of RFC 8032 section 7.1, TEST 1."""


class _Libcrypto:
    """``EVP_DigestVerify`` with a raw Ed25519 public key, called through ctypes."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        """Bind the six functions used.

        Raises:
            AttributeError: ``lib`` lacks one of them (an OpenSSL before 1.1.1, or not OpenSSL).
        """
        self._new_key = lib.EVP_PKEY_new_raw_public_key
        self._new_key.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t)
        self._new_key.restype = ctypes.c_void_p
        self._free_key = lib.EVP_PKEY_free
        self._free_key.argtypes = (ctypes.c_void_p,)
        self._free_key.restype = None
        self._new_ctx = lib.EVP_MD_CTX_new
        self._new_ctx.argtypes = ()
        self._new_ctx.restype = ctypes.c_void_p
        self._free_ctx = lib.EVP_MD_CTX_free
        self._free_ctx.argtypes = (ctypes.c_void_p,)
        self._free_ctx.restype = None
        self._init = lib.EVP_DigestVerifyInit
        self._init.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
        self._init.restype = ctypes.c_int
        self._verify = lib.EVP_DigestVerify
        self._verify.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t)
        self._verify.restype = ctypes.c_int
        self._clear_errors = lib.ERR_clear_error
        self._clear_errors.argtypes = ()
        self._clear_errors.restype = None

    def __call__(self, public_key: bytes, signature: bytes, data: bytes) -> bool:
        key = self._new_key(_EVP_PKEY_ED25519, None, public_key, len(public_key))
        if not key:
            self._clear_errors()
            return False
        ctx = self._new_ctx()
        try:
            if not ctx:
                raise MemoryError("EVP_MD_CTX_new failed")
            valid = self._init(ctx, None, None, None, key) == 1
            valid = valid and self._verify(ctx, signature, len(signature), data, len(data)) == 1
        finally:
            self._free_ctx(ctx)  # both accept NULL
            self._free_key(key)
        if not valid:
            self._clear_errors()  # the thread's OpenSSL error queue is shared with the ssl module
        return valid


def load_libcrypto(sonames: tuple[str, ...] = LIBCRYPTO_SONAMES) -> Backend | None:
    """Return the ``libcrypto`` backend, or ``None`` when no library in ``sonames`` loads and passes the self-test.

    The self-test verifies RFC 8032's first test vector and refuses it with one bit flipped.
    """
    for soname in sonames:
        try:
            backend = _Libcrypto(ctypes.CDLL(soname))
        except (OSError, AttributeError):
            continue
        public_key, signature, message = _RFC8032_TEST_1
        if backend(public_key, signature, message) and not backend(public_key, signature, b"\x00"):
            return backend
    return None


def verify_with_cryptography(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """The fallback backend: ``cryptography``'s ``Ed25519PublicKey.verify``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


_backend: Backend | None = None


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Say whether ``signature`` is a valid Ed25519 signature of ``data`` under the raw 32-byte ``public_key``.

    The backend is chosen on the first call (see the module docstring) and kept.
    """
    global _backend
    if _backend is None:
        _backend = load_libcrypto() or verify_with_cryptography
    return _backend(public_key, signature, data)
