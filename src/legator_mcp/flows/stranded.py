"""Finish what an approval left behind when the process that should have acted on it stopped.

Approving a request releases its commands in the same process, right after the decision commits
(:meth:`CommandFlow.execute_approved`). If that process dies in between, nothing else would ever look at the runs
again: they would wait for approval forever although the approval was given (or consumed). A pass over the runs
still waiting for approval settles each by its approval's state:

* ``approved`` for longer than ``stranded_after`` (the release never happened): released now if every target
  probe is connected here, so the approved action runs exactly once, late; if the probes stay away for
  ``release_window`` after the decision, the runs fail with ``approval_not_released`` (nobody approved running
  it an hour later);
* ``consumed`` for longer than ``stranded_after`` but the runs never dispatched: the release was cut short
  before they were sent; they are ``lost`` (``released_not_sent``) and are not sent again;
* ``denied`` or ``expired``: the runs finish as ``denied`` (as reading them would settle them);
* ``pending``, or decided moments ago: left alone.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from legator_mcp._periodic import every
from legator_mcp.approval.schemas import ApprovalRead, ApprovalStatus
from legator_mcp.approval.service import ApprovalService
from legator_mcp.commands.schemas import CommandRunRead, CommandStatus
from legator_mcp.commands.service import CommandService
from legator_mcp.db.base import utcnow
from legator_mcp.errors import LegatorError, NotFound
from legator_mcp.flows.run_command import CommandFlow

__all__ = ["Settled", "StrandedApprovals"]

logger = logging.getLogger(__name__)

STRANDED_AFTER = timedelta(seconds=30)
"""How long after a decision (or a release) its runs may still be waiting before they count as stranded."""

RELEASE_WINDOW = timedelta(minutes=15)
"""How long after its approval a stranded command may still be sent (the default approval lifetime)."""


class ProbeLinks(Protocol):
    """What settling needs from the hub: whether a probe is connected here."""

    def is_connected(self, probe_id: str) -> bool: ...


@dataclass
class Settled:
    """What one pass did, by approval."""

    released: list[str]
    lapsed: list[str]
    lost: list[str]
    closed: list[str]


class StrandedApprovals:
    """Settle runs whose approval was decided but whose release never happened (see the module docstring)."""

    def __init__(
        self,
        *,
        flow: CommandFlow,
        commands: CommandService,
        approvals: ApprovalService,
        links: ProbeLinks,
        clock: Callable[[], datetime] = utcnow,
        stranded_after: timedelta = STRANDED_AFTER,
        release_window: timedelta = RELEASE_WINDOW,
    ) -> None:
        self._flow = flow
        self._commands = commands
        self._approvals = approvals
        self._links = links
        self._clock = clock
        self._stranded_after = stranded_after
        self._release_window = release_window

    async def settle(self) -> Settled:
        """One pass over the runs waiting for approval."""
        settled = Settled(released=[], lapsed=[], lost=[], closed=[])
        waiting: dict[str, list[CommandRunRead]] = {}
        for run in await self._commands.awaiting_any_approval():
            if run.approval_id is not None:
                waiting.setdefault(run.approval_id, []).append(run)
        for approval_id, runs in waiting.items():
            try:
                approval = await self._approvals.get(approval_id)
            except NotFound:
                await self._fail(runs, CommandStatus.DENIED, "approval_missing", f"approval {approval_id} is gone")
                settled.closed.append(approval_id)
                continue
            try:
                await self._settle_one(approval, runs, settled)
            except LegatorError as exc:
                # One approval that cannot be settled now (its probe went away mid-release) waits for the next pass.
                logger.warning("settling approval %s failed: %s", approval_id, exc.message)
        return settled

    async def _settle_one(self, approval: ApprovalRead, runs: list[CommandRunRead], settled: Settled) -> None:
        now = self._clock()
        status = approval.status
        if status in (ApprovalStatus.DENIED, ApprovalStatus.EXPIRED):
            await self._fail(
                runs, CommandStatus.DENIED, f"approval_{status.value}", f"approval {approval.id} was {status.value}"
            )
            settled.closed.append(approval.id)
        elif status is ApprovalStatus.APPROVED and approval.decided_at is not None:
            since = now - approval.decided_at
            if since < self._stranded_after:
                return
            if all(self._links.is_connected(run.probe_id) for run in runs):
                logger.warning("approval %s was approved %ds ago but never released; releasing it now",
                               approval.id, since.total_seconds())  # fmt: skip
                await self._flow.execute_approved(approval)
                settled.released.append(approval.id)
            elif since > self._release_window:
                await self._fail(
                    runs, CommandStatus.ERROR, "approval_not_released",
                    f"approved at {approval.decided_at.isoformat()}, but the control plane stopped before sending it "
                    f"and its probes were not back within {self._release_window.total_seconds() / 60:.0f} min",
                )  # fmt: skip
                settled.lapsed.append(approval.id)
        elif status is ApprovalStatus.CONSUMED and approval.consumed_at is not None:
            if now - approval.consumed_at >= self._stranded_after:
                await self._fail(
                    runs, CommandStatus.LOST, "released_not_sent",
                    "the approval was used, but the control plane stopped before this command was sent; not sent",
                )  # fmt: skip
                settled.lost.append(approval.id)

    async def _fail(self, runs: list[CommandRunRead], status: CommandStatus, code: str, error: str) -> None:
        for run in runs:
            await self._commands.fail(request_id=run.request_id, status=status, error_code=code, error=error)

    async def run(self, *, interval_s: float = 30.0) -> None:
        """Run :meth:`settle` every ``interval_s`` forever; a failed pass is logged."""
        await every(interval_s, self.settle, what="settling stranded approvals")
