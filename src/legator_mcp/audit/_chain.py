"""The hash chain, without I/O: canonical encoding, event hashes, and a verifier fed rows in ``seq`` order.

An event's hash is ``sha256`` over the canonical JSON (sorted keys, no whitespace, UTF-8) of every stored field
except ``hash`` itself, so it covers ``seq`` and ``prev_hash`` and therefore the event's place in the chain.
"""

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from pydantic_core import to_jsonable_python

from legator_mcp.audit.models import AuditEvent
from legator_mcp.audit.schemas import PURGED_EVENT_TYPE, BrokenLink

__all__ = ["GENESIS_HASH", "ChainVerifier", "Checkpoint", "HashedFields", "event_hash", "to_json_value"]

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first event ever written."""

HASHED_FIELDS = (
    "seq",
    "id",
    "ts",
    "type",
    "actor",
    "principal_kind",
    "via",
    "probe_id",
    "summary",
    "detail",
    "before",
    "after",
    "request_id",
    "prev_hash",
)
"""Every stored column of an event except ``hash``."""


class HashedFields(Protocol):
    """Anything carrying an event's stored fields: an ORM row or a read model."""

    @property
    def seq(self) -> int: ...
    @property
    def id(self) -> str: ...
    @property
    def ts(self) -> datetime: ...
    @property
    def type(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def principal_kind(self) -> str: ...
    @property
    def via(self) -> str | None: ...
    @property
    def probe_id(self) -> str | None: ...
    @property
    def summary(self) -> str: ...
    @property
    def detail(self) -> dict[str, Any] | None: ...
    @property
    def before(self) -> dict[str, Any] | None: ...
    @property
    def after(self) -> dict[str, Any] | None: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def prev_hash(self) -> str: ...
    @property
    def hash(self) -> str: ...


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        # PostgreSQL text cannot hold NUL, and no UTF-8 can hold a lone surrogate: keep the record rather
        # than lose it to an encoding error.
        return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(key): _clean(item) for key, item in cast(dict[Any, Any], value).items()}
    if isinstance(value, list):
        return [_clean(item) for item in cast(list[Any], value)]
    return value


def to_json_value(value: Any) -> Any:
    """Return ``value`` as plain JSON data (dicts, lists, str, int, finite float, bool, None).

    Datetimes, enums, UUIDs, dataclasses and pydantic models become their JSON form, so what is hashed is
    exactly what the database hands back.
    """
    return _clean(to_jsonable_python(value, fallback=str))


def canonical_json(value: Any) -> str:
    """Serialise plain JSON data deterministically."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_ts(ts: datetime) -> str:
    """The hashed form of a timestamp: UTC, microsecond precision (what both backends store)."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def event_hash(fields: Mapping[str, Any]) -> str:
    """Return the hex SHA-256 of an event's hashed fields (``hash`` itself is ignored if present)."""
    payload = {name: fields[name] for name in HASHED_FIELDS}
    payload["ts"] = canonical_ts(payload["ts"])
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def row_hash(row: HashedFields | AuditEvent) -> str:
    """Return the hash an event row should carry, recomputed from its content."""
    return event_hash({name: getattr(row, name) for name in HASHED_FIELDS})


@dataclass(frozen=True)
class Checkpoint:
    """The part of a retention checkpoint the verifier needs."""

    id: str
    upto_seq: int
    upto_hash: str


class ChainVerifier:
    """Check events fed in ascending ``seq`` order; remember the first broken link.

    Call :meth:`feed` with each batch of rows, stop as soon as it returns a :class:`BrokenLink`, and otherwise
    call :meth:`finish` with the chain head once every row has been fed.
    """

    def __init__(self, checkpoint: Checkpoint | None) -> None:
        self.checkpoint = checkpoint
        self.checked = 0
        self._expected_seq = checkpoint.upto_seq + 1 if checkpoint else 1
        self._expected_prev = checkpoint.upto_hash if checkpoint else GENESIS_HASH
        self._checkpoint_acknowledged = checkpoint is None
        self._last_id: str | None = None

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last row accepted (the checkpoint's, or 0, before any)."""
        return self._expected_seq - 1

    def feed(self, rows: Sequence[HashedFields] | Sequence[AuditEvent]) -> BrokenLink | None:
        """Check ``rows`` (objects with the hashed fields); return the first broken link, if any.

        The caller must not feed more rows once a broken link was returned.
        """
        for row in rows:
            broken = self._check(row)
            if broken is not None:
                return broken
            self.checked += 1
            self._expected_seq = row.seq + 1
            self._expected_prev = row.hash
            self._last_id = row.id
            if not self._checkpoint_acknowledged and self._vouches_for_checkpoint(row):
                self._checkpoint_acknowledged = True
        return None

    def _vouches_for_checkpoint(self, row: HashedFields | AuditEvent) -> bool:
        if self.checkpoint is None or row.type != PURGED_EVENT_TYPE or row.detail is None:
            return False
        return (
            row.detail.get("checkpoint_id") == self.checkpoint.id
            and row.detail.get("upto_seq") == self.checkpoint.upto_seq
            and row.detail.get("upto_hash") == self.checkpoint.upto_hash
        )

    def _check(self, row: HashedFields | AuditEvent) -> BrokenLink | None:
        first = self.checked == 0
        if row.seq != self._expected_seq:
            # A row the checkpoint claims was purged is the checkpoint's inconsistency, not a hole.
            reason = "checkpoint_mismatch" if first and self.checkpoint and row.seq < self._expected_seq else "gap"
            return BrokenLink(
                seq=row.seq, id=row.id, reason=reason, expected=str(self._expected_seq), found=str(row.seq)
            )
        if row.prev_hash != self._expected_prev:
            reason = "checkpoint_mismatch" if first and self.checkpoint else "prev_hash_mismatch"
            return BrokenLink(seq=row.seq, id=row.id, reason=reason, expected=self._expected_prev, found=row.prev_hash)
        computed = row_hash(row)
        if computed != row.hash:
            return BrokenLink(seq=row.seq, id=row.id, reason="hash_mismatch", expected=computed, found=row.hash)
        return None

    def finish(self, *, head_seq: int | None, head_hash: str | None) -> BrokenLink | None:
        """Check the end of the chain against the head row and the checkpoint's own purge event.

        A tail that was cut off leaves the head pointing past the last row; a forged checkpoint has no
        ``audit.purged`` event in the chain naming it.
        """
        if head_seq is not None and head_seq != self.last_seq:
            return BrokenLink(seq=head_seq, id=None, reason="gap", expected=str(head_seq), found=str(self.last_seq))
        if head_seq is None and self.checked:
            return BrokenLink(seq=self.last_seq + 1, id=None, reason="gap", expected="audit head", found="none")
        if head_hash is not None and head_hash != self._expected_prev:
            return BrokenLink(
                seq=self.last_seq,
                id=self._last_id,
                reason="hash_mismatch",
                expected=head_hash,
                found=self._expected_prev,
            )
        if not self._checkpoint_acknowledged and self.checkpoint is not None:
            return BrokenLink(
                seq=self.checkpoint.upto_seq,
                id=self.checkpoint.id,
                reason="checkpoint_mismatch",
                expected=f"{PURGED_EVENT_TYPE} event naming the checkpoint",
                found="none",
            )
        return None
