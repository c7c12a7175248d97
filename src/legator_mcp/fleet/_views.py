"""Shape fleet rows into wire models: probes, inventories, fleet roll-ups and answers to fleet questions.

Pure functions over loaded rows, so the service keeps only the rules and the units of work.
"""

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from legator_mcp.fleet._health import Assessment, assess
from legator_mcp.fleet.models import Probe, ProbeInventory
from legator_mcp.fleet.schemas import (
    FleetInventory,
    FleetInventoryAggregates,
    FleetInventoryProbe,
    FleetQueryAnswer,
    InventoryRead,
    PolicyLevel,
    ProbeBrief,
    ProbeRead,
    ProbeStatus,
)

__all__ = ["STATUSES", "Timing", "answer_question", "assess_probe", "fleet_inventory", "inventory_read", "probe_read"]

STATUSES: tuple[ProbeStatus, ...] = ("pending", "online", "degraded", "offline")

_MAX_MATCHES = 50
_WORD = re.compile(r"[a-z0-9][a-z0-9_.:=/-]*")
_STATUS_WORDS: dict[str, ProbeStatus] = {
    "pending": "pending",
    "online": "online",
    "connected": "online",
    "degraded": "degraded",
    "unhealthy": "degraded",
    "offline": "offline",
    "down": "offline",
    "disconnected": "offline",
}
_STOP_WORDS = frozenset(
    "a an and any are all at be by do does for from has have how i in is it its list many me my of on or "
    "probe probes host hosts server servers show the there these this those to what which who with fleet "
    "machine machines node nodes count total number tagged tag tags".split()
)


@dataclass(frozen=True)
class Timing:
    """The heartbeat cadence health is judged against."""

    heartbeat_interval_s: float
    offline_after_s: float


def assess_probe(probe: Probe, *, now: datetime, timing: Timing) -> Assessment:
    """The probe's health now: its last heartbeat's metrics and how long ago that heartbeat was."""
    age = None if probe.last_seen_at is None else max(0.0, (now - probe.last_seen_at).total_seconds())
    return assess(
        probe.metrics,
        cpus=probe.cpus,
        heartbeat_age_s=age,
        heartbeat_interval_s=timing.heartbeat_interval_s,
        offline_after_s=timing.offline_after_s,
    )


def probe_read(probe: Probe, *, now: datetime, timing: Timing) -> ProbeRead:
    """A probe row as its wire model, with its health as of ``now``."""
    health = assess_probe(probe, now=now, timing=timing)
    return ProbeRead(
        id=probe.id,
        hostname=probe.hostname,
        os=probe.os,
        arch=probe.arch,
        version=probe.version,
        kernel=probe.kernel,
        status=cast(ProbeStatus, probe.status),
        status_changed_at=probe.status_changed_at,
        policy_level=cast(PolicyLevel, probe.policy_level),
        policy_id=probe.policy_id,
        policy_version=probe.policy_version,
        tags=probe.tags,
        labels={str(key): str(value) for key, value in (probe.labels or {}).items()},
        key_generation=probe.key_generation,
        key_rotated_at=probe.key_rotated_at,
        registered_at=probe.registered_at,
        last_seen_at=probe.last_seen_at,
        connected_at=probe.connected_at,
        cpus=probe.cpus,
        mem_total_bytes=probe.mem_total_bytes,
        disk_total_bytes=probe.disk_total_bytes,
        inventory_collected_at=probe.inventory_collected_at,
        health_score=None if probe.metrics is None else health.score,
        health_status=health.status,
    )


def inventory_read(row: ProbeInventory, *, max_items: int | None = None) -> InventoryRead:
    """An inventory row as its wire model, with each list section cut to ``max_items`` when given."""
    data: dict[str, Any] = dict(row.data)
    truncated: dict[str, int] = {}
    if max_items is not None:
        for section in ("disks", "interfaces", "packages", "services", "users"):
            items = cast(list[Any], data.get(section) or [])
            if len(items) > max_items:
                truncated[section] = len(items)
                data[section] = items[:max_items]
    disks = cast(list[dict[str, Any]], row.data.get("disks") or [])
    return InventoryRead.model_validate(
        {
            **data,
            "probe_id": row.probe_id,
            "disk_total_bytes": sum(int(disk.get("total_bytes", 0)) for disk in disks),
            "collected_at": row.collected_at,
            "received_at": row.received_at,
            "truncated": truncated,
        }
    )


def fleet_inventory(probes: Sequence[Probe], *, limit: int | None = None) -> FleetInventory:
    """Inventory rows of ``probes`` (the first ``limit``) and aggregates over all of them."""
    rows = [
        FleetInventoryProbe(
            id=p.id,
            hostname=p.hostname,
            status=cast(ProbeStatus, p.status),
            os=p.os,
            arch=p.arch,
            kernel=p.kernel,
            policy_level=cast(PolicyLevel, p.policy_level),
            tags=p.tags,
            last_seen=p.last_seen_at,
            collected_at=p.inventory_collected_at,
            cpus=p.cpus or 0,
            ram_bytes=p.mem_total_bytes or 0,
            disk_bytes=p.disk_total_bytes or int((p.metrics or {}).get("disk_total_bytes", 0)),
        )
        for p in (probes if limit is None else probes[:limit])
    ]
    tags = Counter(tag for p in probes for tag in p.tags)
    aggregates = FleetInventoryAggregates(
        total_probes=len(probes),
        online=sum(1 for p in probes if p.status == "online"),
        total_cpus=sum(p.cpus or 0 for p in probes),
        total_ram_bytes=sum(p.mem_total_bytes or 0 for p in probes),
        probes_by_os=dict(sorted(Counter(p.os or "unknown" for p in probes).items())),
        tag_distribution=dict(sorted(tags.items())),
    )
    return FleetInventory(probes=rows, aggregates=aggregates, truncated=limit is not None and len(probes) > limit)


def _tag_matches(word: str, tag: str) -> bool:
    return word == tag or word == re.split(r"[=:/]", tag)[-1]


def answer_question(question: str, probes: Sequence[Probe], *, now: datetime) -> FleetQueryAnswer:
    """Answer a question from fleet data: totals, plus the probes its words name (hostname, tag, status).

    A probe matches when some word names its hostname (exactly, or a 3+ character part of it) or one of its
    tags (``prod`` also matches ``env=prod``); status words (``offline``, ``down``, ``degraded`` …) narrow the
    matches, or select by status alone when no host or tag is named.
    """
    words = [w for w in _WORD.findall(question.lower()) if w not in _STOP_WORDS and len(w) >= 2]
    wanted_status = {_STATUS_WORDS[w] for w in words if w in _STATUS_WORDS}
    terms = [w for w in words if w not in _STATUS_WORDS]
    matches: list[ProbeBrief] = []
    for probe in probes:
        reasons: list[str] = []
        for word in terms:
            if word == probe.hostname or (len(word) >= 3 and word in probe.hostname):
                reasons.append(f"hostname:{word}")
            reasons.extend(f"tag:{tag}" for tag in probe.tags if _tag_matches(word, tag))
        if terms and not reasons:
            continue
        if wanted_status:
            if probe.status not in wanted_status:
                continue
            reasons.append(f"status:{probe.status}")
        if reasons:
            brief = ProbeBrief(
                id=probe.id,
                hostname=probe.hostname,
                status=cast(ProbeStatus, probe.status),
                tags=probe.tags,
                matched_on=sorted(set(reasons)),
            )
            matches.append(brief)
    by_status = dict.fromkeys(STATUSES, 0) | Counter(p.status for p in probes)
    tags = dict(sorted(Counter(tag for p in probes for tag in p.tags).items()))
    total_cpus = sum(p.cpus or 0 for p in probes)
    total_ram = sum(p.mem_total_bytes or 0 for p in probes)
    counts = ", ".join(f"{by_status[s]} {s}" for s in STATUSES)
    noun = "probe" if len(probes) == 1 else "probes"
    text = f"{len(probes)} {noun} ({counts}); {total_cpus} CPUs and {total_ram} bytes of RAM reported."
    if terms or wanted_status:
        named = ", ".join(m.hostname for m in matches[:10]) + (" …" if len(matches) > 10 else "")
        verb = "matches" if len(matches) == 1 else "match"
        text += f" {len(matches)} {verb} the question" + (f": {named}." if matches else ".")
    text += f" (as of {now.isoformat(timespec='seconds')})"
    return FleetQueryAnswer(
        question=question,
        answer=text,
        total_probes=len(probes),
        by_status=dict(by_status),
        tags=tags,
        total_cpus=total_cpus,
        total_ram_bytes=total_ram,
        matches=matches[:_MAX_MATCHES],
        matches_total=len(matches),
    )
