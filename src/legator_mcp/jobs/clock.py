"""The scheduler's sense of time, injectable so tests (and the benchmark) move time by hand.

:class:`SystemClock` is wall-clock UTC; :class:`ManualClock` only moves when :meth:`ManualClock.advance` or
:meth:`ManualClock.set` is called, and wakes every sleeper whose deadline has passed.
"""

from datetime import datetime, timedelta
from typing import Protocol

import anyio

from legator_mcp.db.base import utcnow

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Now, and a way to sleep until a moment (or until woken)."""

    def now(self) -> datetime: ...

    async def sleep_until(self, moment: datetime, *, wake: anyio.Event, max_idle_s: float) -> None:
        """Return at ``moment``, when ``wake`` is set, or after ``max_idle_s`` real seconds, whichever is first."""
        ...


class SystemClock:
    """Wall-clock UTC time."""

    def now(self) -> datetime:
        return utcnow()

    async def sleep_until(self, moment: datetime, *, wake: anyio.Event, max_idle_s: float) -> None:
        delay = min(max((moment - utcnow()).total_seconds(), 0.0), max_idle_s)
        if delay <= 0:
            return
        with anyio.move_on_after(delay):
            await wake.wait()


class ManualClock:
    """Time that only moves when told to; sleepers wake as soon as it passes their deadline.

    ``max_idle_s`` still bounds a sleep in real seconds, so a scheduler on a manual clock keeps noticing work
    another process wrote to the database.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("the clock needs an aware datetime")
        self._now = start
        self._moved = anyio.Event()

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        """Jump to ``moment`` (forward only) and wake sleepers."""
        if moment < self._now:
            raise ValueError("a manual clock only moves forward")
        self._now = moment
        moved, self._moved = self._moved, anyio.Event()
        moved.set()

    def advance(self, delta: timedelta) -> None:
        """Move forward by ``delta`` and wake sleepers."""
        self.set(self._now + delta)

    async def sleep_until(self, moment: datetime, *, wake: anyio.Event, max_idle_s: float) -> None:
        with anyio.move_on_after(max_idle_s):
            while self._now < moment and not wake.is_set():
                moved = self._moved
                async with anyio.create_task_group() as group:

                    async def _wait(event: anyio.Event) -> None:
                        await event.wait()
                        group.cancel_scope.cancel()

                    group.start_soon(_wait, moved)
                    group.start_soon(_wait, wake)
