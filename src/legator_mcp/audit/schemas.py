"""Wire shapes of the audit log: events, search queries and pages, chain verification, purge results."""

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CSV_COLUMNS",
    "EVENT_TYPE_PATTERN",
    "PURGED_EVENT_TYPE",
    "AuditEventRead",
    "AuditPage",
    "AuditQuery",
    "AuditVerification",
    "BrokenLink",
    "BrokenLinkReason",
    "PurgeResult",
]

EVENT_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
"""Event types are ``<domain>.<verb>`` in snake case, optionally with sub-parts: ``auth.key_created``,
``job.run.started``."""

PURGED_EVENT_TYPE = "audit.purged"
"""The event a retention purge records about itself; its detail names the checkpoint it wrote."""

CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "timestamp",
    "type",
    "probe_id",
    "actor",
    "summary",
    "seq",
    "principal_kind",
    "via",
    "request_id",
    "prev_hash",
    "hash",
)
"""Header of the CSV export: Legator's six columns first, in its order, then the chain columns."""

BrokenLinkReason = Literal["hash_mismatch", "prev_hash_mismatch", "gap", "checkpoint_mismatch"]
"""Why a link of the chain is broken:

* ``hash_mismatch``: the row's content does not hash to its stored ``hash`` (it was edited), or the head row
  names a different last hash.
* ``prev_hash_mismatch``: the row's ``prev_hash`` is not the previous row's ``hash``.
* ``gap``: a ``seq`` is missing (a row was deleted), including rows cut off the end of the chain.
* ``checkpoint_mismatch``: the oldest remaining row does not chain onto the latest retention checkpoint, or no
  ``audit.purged`` event vouches for that checkpoint.
"""


def _blank_to_none(value: Any) -> Any:
    return None if value == "" else value


class AuditEventRead(BaseModel):
    """One audit event as stored, including its place in the hash chain."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    seq: int
    ts: datetime
    type: str
    actor: str
    principal_kind: str
    via: str | None = None
    """The surface the principal came through (``rest``, ``mcp``, ``cli``, ``console``), when known."""
    probe_id: str | None = None
    summary: str
    detail: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    request_id: str | None = None
    prev_hash: str
    hash: str

    def csv_row(self) -> dict[str, str]:
        """Return this event as a CSV row keyed by :data:`CSV_COLUMNS` (empty string for a missing value)."""
        values: dict[str, Any] = {
            "id": self.id,
            "timestamp": self.ts.isoformat(),
            "type": self.type,
            "probe_id": self.probe_id,
            "actor": self.actor,
            "summary": self.summary,
            "seq": self.seq,
            "principal_kind": self.principal_kind,
            "via": self.via,
            "request_id": self.request_id,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }
        return {column: "" if values[column] is None else str(values[column]) for column in CSV_COLUMNS}


class AuditPage(BaseModel):
    """One page of search results, newest first; pass ``next_cursor`` back to get the next (older) page."""

    events: list[AuditEventRead]
    next_cursor: str | None = None
    has_more: bool = False


class AuditQuery(BaseModel):
    """Search filters, as adapters parse them from query parameters or tool arguments.

    ``since`` is inclusive and ``until`` exclusive. Export ignores ``limit`` and ``cursor``.
    """

    type: str | None = None
    actor: str | None = None
    probe_id: str | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = None

    _blank = field_validator("type", "actor", "probe_id", "since", "until", "cursor", mode="before")(_blank_to_none)


class BrokenLink(BaseModel):
    """The first place the chain does not hold.

    ``seq``/``id`` name the offending row; for a missing tail or an unvouched checkpoint ``id`` may be the
    checkpoint's id or ``None``. ``expected``/``found`` are the hashes or sequence numbers compared.
    """

    seq: int
    id: str | None
    reason: BrokenLinkReason
    expected: str
    found: str


class AuditVerification(BaseModel):
    """The outcome of walking the chain: ``checked`` rows verified before ``first_broken`` (if any)."""

    ok: bool
    checked: int
    first_broken: BrokenLink | None = None
    checkpoint_seq: int | None = None
    """The ``upto_seq`` of the checkpoint the walk started from, when old events were purged."""


class PurgeResult(BaseModel):
    """How many events a retention purge deleted, and the checkpoint it wrote (``None`` if none deleted)."""

    deleted: int
    checkpoint_seq: int | None = None
