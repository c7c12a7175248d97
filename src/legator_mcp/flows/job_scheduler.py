"""The job scheduler: one per database, it fires due jobs, sends due runs and follows active ones.

A process first takes the scheduler lock (:class:`~legator_mcp.jobs.leader.SchedulerLock`); one that cannot is a
standby and tries again every ``standby_retry_s``. The leader:

* on taking over, reconciles every run left ``pending`` or ``running`` (a crash or restart): a command that
  finished meanwhile gives the run its result; one whose result can no longer come fails the run, which is then
  retried per its policy. Runs left ``queued`` are simply sent (their command is adopted if it already exists);
* loops: fire due jobs, send due runs in batches (at most ``max_concurrency`` batches at once), then sleep until
  the next fire or retry, a change (a new job, a run-now), or ``max_idle_s``;
* follows commands of job runs on the event bus, and sweeps active runs every ``sweep_interval_s`` in case an
  event was missed.
"""

import logging
from datetime import timedelta

import anyio
from anyio.abc import TaskGroup

from legator_mcp.events.service import EventBus, Subscription
from legator_mcp.flows.jobs import JobFlow
from legator_mcp.jobs.leader import SchedulerLock
from legator_mcp.jobs.schemas import RunStatus
from legator_mcp.jobs.service import JobService

__all__ = ["JobScheduler"]

logger = logging.getLogger("legator.jobs")

_BUSY_RECHECK = timedelta(milliseconds=200)


class JobScheduler:
    """The loop that makes jobs happen on time.

    Args:
        jobs: The job service (its clock is the scheduler's clock).
        flow: Sends and follows runs.
        events: The bus the commands' state changes arrive on.
        lock: Leadership among processes sharing the database.
        max_concurrency: Sends (batches) in flight at once.
        batch_size: The most due runs one send takes; each is sent per job in one batch through the command flow.
        max_idle_s: Longest real-time sleep between passes (bounds how late work written by another process,
            or a clock moved by hand, is noticed).
        sweep_interval_s: How often active runs are reconciled with their commands.
        standby_retry_s: How often a standby tries to take the lock.
    """

    def __init__(
        self,
        *,
        jobs: JobService,
        flow: JobFlow,
        events: EventBus,
        lock: SchedulerLock,
        max_concurrency: int = 64,
        batch_size: int = 1000,
        max_idle_s: float = 1.0,
        sweep_interval_s: float = 5.0,
        standby_retry_s: float = 5.0,
    ) -> None:
        self._jobs = jobs
        self._flow = flow
        self._events = events
        self.lock = lock
        self._limit = anyio.CapacityLimiter(max_concurrency)
        self._batch_size = max(batch_size, 1)
        self._max_idle_s = max_idle_s
        self._sweep_interval_s = sweep_interval_s
        self._standby_retry_s = standby_retry_s
        self._sending: set[str] = set()
        self.leading = anyio.Event()
        """Set once this process holds the lock and has reconciled (tests wait for it)."""
        self.passes = 0
        """Completed scheduling passes (tests and the benchmark read it)."""
        self.passed = anyio.Event()
        """Set (and replaced) after each pass: wait on it to know the scheduler has seen the present."""

    async def run(self) -> None:
        """Lead when possible, forever; a failed pass is logged and the loop goes on."""
        try:
            while True:
                if await self.lock.try_acquire():
                    try:
                        await self._lead()
                    finally:
                        self._flow.attach(None)
                        with anyio.CancelScope(shield=True):
                            await self.lock.release()
                        self.leading = anyio.Event()
                await anyio.sleep(self._standby_retry_s)
        finally:
            with anyio.CancelScope(shield=True):
                await self.lock.release()

    async def _lead(self) -> None:
        logger.info("this process now runs the job scheduler")
        async with anyio.create_task_group() as group, self._events.subscribe("command.*") as commands:
            self._flow.attach(lambda job: group.start_soon(job))
            await self._reconcile_all()
            self.leading.set()
            group.start_soon(self._follow, commands)
            group.start_soon(self._sweep)
            while await self.lock.still_held():
                try:
                    await self.tick(group)
                except Exception:
                    # One failed pass (a restarting database) must not stop scheduling; the traceback is logged.
                    logger.exception("a job scheduling pass failed")
                await self._sleep()
            logger.warning("lost the job scheduler lock; standing by")
            group.cancel_scope.cancel()

    async def _sleep(self) -> None:
        wake = self._jobs.changed
        upcoming = await self._jobs.next_wakeup()
        clock = self._jobs.clock
        now = clock.now()
        moment = upcoming if upcoming is not None else now + timedelta(days=1)
        if moment <= now:
            # Due work is already being sent (it stays queued until its send finishes): look again shortly.
            moment = now + _BUSY_RECHECK
        await clock.sleep_until(moment, wake=wake, max_idle_s=self._max_idle_s)

    async def tick(self, group: TaskGroup) -> None:
        """One pass: record due fires, then start sending every due run not already being sent."""
        while len(await self._jobs.fire_due(limit=100)) >= 100:
            pass
        due = [run.id for run in await self._jobs.due_runs(limit=5000) if run.id not in self._sending]
        self._sending.update(due)
        for start in range(0, len(due), self._batch_size):
            group.start_soon(self._send, due[start : start + self._batch_size])
        self.passes += 1
        passed, self.passed = self.passed, anyio.Event()
        passed.set()

    async def _send(self, run_ids: list[str]) -> None:
        try:
            async with self._limit:
                await self._flow.dispatch_many(run_ids)
        except Exception:
            # A send that fails unexpectedly leaves its runs queued for the next pass (which adopts any command
            # already recorded for them); the traceback is logged.
            logger.exception("sending %d job run(s) (first %s) failed", len(run_ids), run_ids[0])
        finally:
            self._sending.difference_update(run_ids)

    async def _reconcile_all(self) -> None:
        for run in await self._jobs.active_runs(limit=100_000):
            if run.status is RunStatus.QUEUED or self._flow.following(run.id):
                continue
            try:
                await self._flow.reconcile(run.id)
            except Exception:
                # One run that cannot be reconciled must not block the others; the next sweep tries again.
                logger.exception("reconciling job run %s failed", run.id)

    async def _follow(self, commands: Subscription) -> None:
        async for event in commands:
            try:
                await self._flow.on_command_event(event)
            except Exception:
                # The sweep catches up with a run whose event could not be followed; the traceback is logged.
                logger.exception("following command event %s failed", event.type)

    async def _sweep(self) -> None:
        while True:
            await anyio.sleep(self._sweep_interval_s)
            await self._reconcile_all()
