"""The audit log service: record sanitised events onto the hash chain, search, export, verify and purge.

Event types are ``<domain>.<verb>`` in snake case (``auth.key_created``, ``command.sent``), with more dotted
parts where a domain has sub-entities (``job.run.started``); see :data:`schemas.EVENT_TYPE_PATTERN`.
"""

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.audit import store
from legator_mcp.audit._chain import ChainVerifier, Checkpoint, to_json_value
from legator_mcp.audit._redact import redact_item, redact_json, redact_text
from legator_mcp.audit.schemas import (
    EVENT_TYPE_PATTERN,
    PURGED_EVENT_TYPE,
    AuditEventRead,
    AuditPage,
    AuditQuery,
    AuditVerification,
    PurgeResult,
)
from legator_mcp.db._errors import map_db_errors
from legator_mcp.db.base import utcnow
from legator_mcp.db.session import Database
from legator_mcp.errors import InvalidRequest
from legator_mcp.observability import request_id_var
from legator_mcp.principal import Principal, PrincipalKind

__all__ = ["AuditEntry", "AuditService"]

DEFAULT_BATCH_SIZE = 1000
"""Rows fetched per round trip by export and verify; memory stays bounded by one batch."""


def _clean_text(value: str) -> str:
    cleaned: str = to_json_value(redact_text(value))
    return cleaned


SharedValues = dict[tuple[str, int], tuple[Any, Any]]
"""Within one batch: ``(key, id(value))`` of a nested dict or list → ``(value, its cleaned form)``. A fan-out's
events carry the same spec and rationale objects; each is converted and redacted once per batch (the value is
kept alongside so that its id cannot be reused while the batch is being built)."""


def _clean_mapping(value: Mapping[str, Any] | None, shared: SharedValues | None = None) -> dict[str, Any] | None:
    if value is None:
        return None
    # Callers outside the type checker may hand over anything: only a mapping with text keys takes the shared path.
    untyped = cast(object, value)
    if (
        shared is None
        or not isinstance(untyped, Mapping)
        or not all(isinstance(k, str) for k in cast(Mapping[object, Any], untyped))
    ):
        plain = to_json_value(value)
        if not isinstance(plain, dict):
            raise InvalidRequest("audit detail, before and after must be JSON objects")
        # Already plain JSON: redaction only replaces text, so what it returns needs no second conversion.
        return redact_json(cast(dict[str, Any], plain))
    cleaned: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict | list):
            slot = (key, id(cast(object, item)))
            hit: tuple[Any, Any] | None = shared.get(slot)
            if hit is None:
                hit = shared[slot] = (cast(object, item), redact_item(key, to_json_value(item)))
            cleaned[key] = hit[1]
        else:
            cleaned[key] = redact_item(key, to_json_value(item))
    return cleaned


@dataclass(frozen=True)
class AuditEntry:
    """One event for :meth:`AuditService.record_many`; the fields mean what :meth:`AuditService.record`'s
    arguments of the same names mean."""

    type: str
    actor: Principal | str
    summary: str
    probe_id: str | None = None
    detail: Mapping[str, Any] | None = None
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    request_id: str | None = None
    principal_kind: PrincipalKind = PrincipalKind.ANONYMOUS


def _fields(entry: AuditEntry, shared: SharedValues | None = None) -> dict[str, Any]:
    """The stored columns of ``entry`` (except its place in the chain), sanitised.

    Raises:
        InvalidRequest: If ``type`` is not ``<domain>.<verb>`` or a mapping is not a JSON object.
    """
    if not EVENT_TYPE_PATTERN.fullmatch(entry.type):
        raise InvalidRequest(f"audit event type must look like 'domain.verb', got {entry.type!r}")
    if isinstance(entry.actor, Principal):
        # Minted by us and looked up verbatim; redaction would mangle ``api_key:<name>``.
        actor_name, kind, via = entry.actor.actor, entry.actor.kind.value, entry.actor.via
    else:
        actor_name, kind, via = _clean_text(entry.actor), entry.principal_kind.value, None
    return {
        "type": entry.type,
        "actor": actor_name,
        "principal_kind": kind,
        "via": via,
        "probe_id": to_json_value(entry.probe_id),
        "summary": _clean_text(entry.summary),
        "detail": _clean_mapping(entry.detail, shared),
        "before": _clean_mapping(entry.before, shared),
        "after": _clean_mapping(entry.after, shared),
        "request_id": to_json_value(entry.request_id if entry.request_id is not None else request_id_var.get()),
    }


class AuditService:
    """The tamper-evident audit log shared by every adapter and domain.

    Args:
        database: Where the chain is stored.
        clock: Source of event timestamps and of "now" for retention.
        batch_size: Rows per round trip for :meth:`export` and :meth:`verify`.
    """

    def __init__(
        self,
        *,
        database: Database,
        clock: Callable[[], datetime] = utcnow,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self._database = database
        self._clock = clock
        self._batch_size = batch_size

    async def record(
        self,
        *,
        type: str,
        actor: Principal | str,
        summary: str,
        probe_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        principal_kind: PrincipalKind = PrincipalKind.ANONYMOUS,
        session: AsyncSession | None = None,
    ) -> AuditEventRead:
        """Append an event to the chain; credentials in the text and mappings are redacted first.

        Args:
            type: ``<domain>.<verb>``, e.g. ``auth.key_created``.
            actor: The principal acting, or a bare actor string for a caller with none (a failed login's
                submitted username, ``"anonymous"``); then ``principal_kind`` says what it is. A bare string
                may come from the caller's input, so it is redacted like ``summary``; a principal's
                ``actor`` is stored verbatim, so pass the :class:`Principal` whenever there is one.
            summary: One human-readable line.
            probe_id: The probe the event concerns, if any.
            detail: Structured context (JSON object).
            before: The entity's state before a change (JSON object).
            after: The entity's state after a change (JSON object).
            request_id: The HTTP/MCP request the event belongs to; defaults to the one being served
                (:data:`legator_mcp.observability.request_id_var`).
            principal_kind: The kind recorded for a bare actor string; ignored for a :class:`Principal`.
            session: A write session (from :meth:`Database.write`) to record inside, so the event commits or
                rolls back with the caller's change. It locks the chain head until that transaction ends,
                so record last. Without it the event is committed in its own transaction; never omit it
                while holding a write session, or the two transactions wait on each other.

        Returns:
            The stored event.

        Raises:
            InvalidRequest: If ``type`` is not ``<domain>.<verb>`` or a mapping is not a JSON object.
            ServiceUnavailable: If the database cannot be written.
        """
        fields = _fields(
            AuditEntry(
                type=type, actor=actor, summary=summary, probe_id=probe_id, detail=detail, before=before, after=after,
                request_id=request_id, principal_kind=principal_kind,
            )
        )  # fmt: skip
        with map_db_errors():
            if session is not None:
                event = await store.append(session, clock=self._clock, **fields)
            else:
                async with self._database.write() as own:
                    event = await store.append(own, clock=self._clock, **fields)
        return AuditEventRead.model_validate(event)

    async def record_many(self, entries: Sequence[AuditEntry], *, session: AsyncSession) -> int:
        """Append several events to the chain inside the caller's write transaction, in order, with one lock of the
        chain head and one insert: what a batch of commands or results costs in audit, whatever its size.

        Args:
            entries: The events, each as :meth:`record` would take it.
            session: A write session (from :meth:`Database.write`); the events commit or roll back with it. As
                with :meth:`record`, the chain head stays locked until that transaction ends.

        Returns:
            How many events were appended.

        Raises:
            InvalidRequest: If an event's ``type`` is not ``<domain>.<verb>`` or a mapping is not a JSON object
                (then none is appended).
            ServiceUnavailable: If the database cannot be written.
        """
        if not entries:
            return 0
        shared: SharedValues = {}
        batch = [_fields(entry, shared) for entry in entries]
        with map_db_errors():
            await store.append_many(session, clock=self._clock, events=batch)
        return len(batch)

    async def search(self, query: AuditQuery) -> AuditPage:
        """Return one page of matching events, newest first.

        Raises:
            InvalidRequest: If ``query.cursor`` is not a cursor this service issued.
            ServiceUnavailable: If the database cannot be read.
        """
        with map_db_errors():
            async with self._database.read() as session:
                rows, next_cursor = await store.search(session, query)
                events = [AuditEventRead.model_validate(row) for row in rows]
        return AuditPage(events=events, next_cursor=next_cursor, has_more=next_cursor is not None)

    async def export(self, query: AuditQuery) -> AsyncIterator[AuditEventRead]:
        """Yield every event matching ``query``'s filters, oldest first (chain order).

        ``limit`` and ``cursor`` are ignored. Rows are fetched in batches, each in its own short read
        transaction, so nothing is held open while the consumer is slow and memory stays flat. Events
        recorded during the export are included if they match.

        Raises:
            ServiceUnavailable: If the database cannot be read.
        """
        after_seq = 0
        while True:
            with map_db_errors():
                async with self._database.read() as session:
                    rows = await store.export_batch(session, query, after_seq=after_seq, limit=self._batch_size)
                    batch = [AuditEventRead.model_validate(row) for row in rows]
            for event in batch:
                yield event
            if len(batch) < self._batch_size:
                return
            after_seq = batch[-1].seq

    async def verify(self) -> AuditVerification:
        """Walk the whole chain in ``seq`` order and report the first broken link.

        The walk reads one snapshot, from the latest retention checkpoint when old events were purged. Each
        event must follow its predecessor's ``seq``, carry its hash as ``prev_hash`` and hash to its own
        ``hash``; the last must match the chain head.

        Raises:
            ServiceUnavailable: If the database cannot be read.
        """
        with map_db_errors():
            async with self._database.read() as session:
                await store.begin_snapshot(session)
                latest = await store.latest_checkpoint(session)
                checkpoint = None if latest is None else Checkpoint(latest.id, latest.upto_seq, latest.upto_hash)
                verifier = ChainVerifier(checkpoint)
                after_seq = 0
                broken = None
                while broken is None:
                    rows = await store.chain_batch(session, after_seq=after_seq, limit=self._batch_size)
                    if not rows:
                        break
                    broken = verifier.feed(rows)
                    after_seq = rows[-1].seq
                    session.expunge_all()
                if broken is None:
                    head = await store.read_head(session)
                    head_seq, head_hash = (None, None) if head is None else head
                    broken = verifier.finish(head_seq=head_seq, head_hash=head_hash)
        return AuditVerification(
            ok=broken is None,
            checked=verifier.checked,
            first_broken=broken,
            checkpoint_seq=None if checkpoint is None else checkpoint.upto_seq,
        )

    async def purge(self, *, older_than: timedelta, actor: Principal) -> PurgeResult:
        """Delete events older than ``older_than`` and record an ``audit.purged`` event.

        A checkpoint keeps the chain verifiable: it holds the hash of the last deleted event, which the
        oldest remaining event chains onto. Only a prefix of the chain is deleted.

        Raises:
            InvalidRequest: If ``older_than`` is negative.
            ServiceUnavailable: If the database cannot be written.
        """
        if older_than < timedelta(0):
            raise InvalidRequest("older_than must not be negative")
        with map_db_errors():
            async with self._database.write() as session:
                now = self._clock()
                cutoff = now - older_than
                checkpoint = await store.purge_before(session, cutoff=cutoff, actor=actor.actor, now=now)
                deleted = 0 if checkpoint is None else checkpoint.purged_count
                detail: dict[str, Any] = {
                    "cutoff": cutoff.isoformat(),
                    "older_than_seconds": older_than.total_seconds(),
                    "deleted": deleted,
                }
                if checkpoint is not None:
                    detail |= {
                        "checkpoint_id": checkpoint.id,
                        "upto_seq": checkpoint.upto_seq,
                        "upto_hash": checkpoint.upto_hash,
                    }
                await self.record(
                    type=PURGED_EVENT_TYPE,
                    actor=actor,
                    summary=f"Purged {deleted} audit events older than {cutoff.isoformat()}",
                    detail=detail,
                    session=session,
                )
        return PurgeResult(deleted=deleted, checkpoint_seq=None if checkpoint is None else checkpoint.upto_seq)

    async def count(self, query: AuditQuery | None = None) -> int:
        """Return how many events are stored, or match ``query``'s filters.

        Raises:
            ServiceUnavailable: If the database cannot be read.
        """
        with map_db_errors():
            async with self._database.read() as session:
                return await store.count(session, query)
