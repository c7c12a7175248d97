"""The control plane's master key and the per-probe Ed25519 signing keys derived from it.

Only the master key is secret state: a probe's key pair for a key generation is re-derived on demand
(:func:`legator_probe.protocol.signing.derive_probe_keypair`), so the database stores just each probe's
generation. The master key comes from ``LEGATOR_MASTER_KEY`` (base64) or, when that is unset, from
``<data_dir>/master.key``, which is created once with 32 random bytes (base64 text, mode 0600).
"""

import base64
import binascii
import logging
import os
import secrets
import stat
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from legator_mcp.settings import Settings
from legator_probe.protocol.signing import MIN_MASTER_KEY_BYTES, derive_probe_keypair, encode_public_key

__all__ = ["MASTER_KEY_FILE", "KeyRing", "MasterKeyError", "load_or_create_master_key"]

logger = logging.getLogger("legator.fleet")

MASTER_KEY_FILE = "master.key"
"""File in the data dir holding the generated master key (base64 of 32 random bytes, mode 0600)."""

_CACHE_SIZE = 16_384


class MasterKeyError(ValueError):
    """Raised at start-up when the configured or stored master key is not base64 of at least 32 bytes."""


def _decode(text: str, *, source: str) -> bytes:
    # Standard or URL-safe alphabet, padding optional: whatever a key generator printed.
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        raw = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{source} is not valid base64") from None
    if len(raw) < MIN_MASTER_KEY_BYTES:
        raise MasterKeyError(f"{source} must decode to at least {MIN_MASTER_KEY_BYTES} bytes, got {len(raw)}")
    return raw


def _create(path: Path) -> None:
    """Publish a new key file atomically: write a private temp file, then hard-link it into place.

    ``os.link`` fails when ``path`` exists, so two processes starting together agree on one key and no reader
    ever sees a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(32)).decode("ascii") + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
    finally:
        temp.unlink(missing_ok=True)


def load_or_create_master_key(settings: Settings) -> bytes:
    """Return the master key: ``settings.master_key`` if set, else ``<data_dir>/master.key`` (created once).

    Raises:
        MasterKeyError: If the configured value or the stored file is not base64 of at least 32 bytes.
        OSError: If the key file cannot be created or read.
    """
    if settings.master_key is not None and settings.master_key.get_secret_value().strip():
        return _decode(settings.master_key.get_secret_value(), source="LEGATOR_MASTER_KEY")
    path = settings.data_dir / MASTER_KEY_FILE
    if not path.exists():
        _create(path)
        logger.info("generated a new master key in %s", path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("%s is readable by group or others (mode %o); it should be 0600", path, mode)
    return _decode(path.read_text(encoding="ascii"), source=str(path))


class KeyRing:
    """Derives and caches per-probe signing key pairs by ``(probe_id, generation)``.

    Args:
        master_key: The master key, or a function that returns it; a function is called once, on first use
            (or by :meth:`load`), so building the ring does no I/O.
        cache_size: Key pairs kept in memory (least recently used are dropped first).
    """

    def __init__(self, master_key: bytes | Callable[[], bytes], *, cache_size: int = _CACHE_SIZE) -> None:
        self._loader = master_key if callable(master_key) else None
        self._master: bytes | None = None if callable(master_key) else master_key
        if self._master is not None and len(self._master) < MIN_MASTER_KEY_BYTES:
            raise MasterKeyError(f"the master key must be at least {MIN_MASTER_KEY_BYTES} bytes")
        self._cache: OrderedDict[tuple[str, int], tuple[str, Ed25519PrivateKey]] = OrderedDict()
        self._cache_size = cache_size

    def load(self) -> None:
        """Load the master key now (at start-up), so a bad key fails early rather than on first use.

        Raises:
            MasterKeyError: If the key is malformed.
        """
        self._master_key()

    def _master_key(self) -> bytes:
        if self._master is None:
            assert self._loader is not None
            master = self._loader()
            if len(master) < MIN_MASTER_KEY_BYTES:
                raise MasterKeyError(f"the master key must be at least {MIN_MASTER_KEY_BYTES} bytes")
            self._master = master
        return self._master

    def _pair(self, probe_id: str, generation: int) -> tuple[str, Ed25519PrivateKey]:
        key = (probe_id, generation)
        pair = self._cache.get(key)
        if pair is not None:
            self._cache.move_to_end(key)
            return pair
        pair = derive_probe_keypair(self._master_key(), probe_id, generation)
        self._cache[key] = pair
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return pair

    def key_id(self, probe_id: str, generation: int) -> str:
        """The id of the probe's key pair for ``generation`` (``g<generation>-<fingerprint>``)."""
        return self._pair(probe_id, generation)[0]

    def private_key(self, probe_id: str, generation: int) -> Ed25519PrivateKey:
        """The private key the control plane signs the probe's instructions with."""
        return self._pair(probe_id, generation)[1]

    def public_key(self, probe_id: str, generation: int) -> Ed25519PublicKey:
        """The public key the probe verifies instructions with."""
        return self._pair(probe_id, generation)[1].public_key()

    def encoded_public_key(self, probe_id: str, generation: int) -> str:
        """:meth:`public_key` as standard base64 of its 32 raw bytes (the wire format)."""
        return encode_public_key(self.public_key(probe_id, generation))

    def forget(self, probe_id: str) -> None:
        """Drop the cached key pairs of a deleted probe."""
        for key in [k for k in self._cache if k[0] == probe_id]:
            del self._cache[key]
