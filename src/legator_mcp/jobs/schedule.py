"""Schedules and backoff: when a job fires next, and how long a failed attempt waits before the next one.

A schedule is either an interval (``30s``, ``5m``, ``1h30m``) or a cron expression (five fields ``min hour dom
mon dow``, or ``@hourly``/``@daily``/``@weekly``/``@monthly``/``@yearly``), evaluated in UTC by ``croniter``.

Fire times are computed from the previous *scheduled* time, never from "now", so a slow tick does not make a
job drift. After downtime the missed fires collapse into one: :func:`next_fire` skips to the first scheduled
time after "now" (the run for the backlog is made once, at the tick that notices it).
"""

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

from legator_mcp._duration import parse_duration

__all__ = ["RetryPolicy", "Schedule", "backoff_delay", "parse_schedule"]

MIN_INTERVAL = timedelta(seconds=1)
"""The shortest interval a job may run at."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: ``kind`` is ``interval`` (``every`` is set) or ``cron`` (``expression`` is set)."""

    kind: Literal["interval", "cron"]
    text: str
    every: timedelta | None = None
    expression: str | None = None

    def first_fire(self, anchor: datetime) -> datetime:
        """The first fire time strictly after ``anchor`` (a job's creation or re-enabling)."""
        return self._after(anchor)

    def next_fire(self, scheduled: datetime, now: datetime) -> datetime:
        """The fire after the one scheduled at ``scheduled``, skipping every fire at or before ``now``.

        Skipping is the missed-fire policy: a job that was due several times while the control plane was down
        runs once, then continues on its grid.
        """
        following = self._after(scheduled)
        if following > now:
            return following
        if self.every is not None:
            # Stay on the interval grid anchored at the original schedule (no drift after a backlog).
            steps = math.floor((now - scheduled) / self.every) + 1
            return scheduled + self.every * steps
        return self._after(now)

    def _after(self, moment: datetime) -> datetime:
        if self.every is not None:
            return moment + self.every
        assert self.expression is not None
        start = moment.astimezone(UTC)
        fire = croniter(self.expression, start).get_next(datetime)
        return fire.replace(tzinfo=UTC) if fire.tzinfo is None else fire.astimezone(UTC)


def parse_schedule(text: str) -> Schedule:
    """Parse an interval (checked first) or a cron expression.

    Raises:
        ValueError: If ``text`` is neither, or the interval is shorter than one second.
    """
    value = " ".join(text.split())
    if not value:
        raise ValueError("the schedule is empty")
    if " " not in value and not value.startswith("@"):
        try:
            every = parse_duration(value)
        except ValueError as exc:
            if value[0].isdigit():
                raise ValueError(f"not a valid interval (e.g. 30s, 5m, 1h30m) or cron expression: {value!r}") from exc
        else:
            if every < MIN_INTERVAL:
                raise ValueError("an interval schedule must be at least 1s")
            return Schedule(kind="interval", text=value, every=every)
    if value.startswith("@every "):
        return parse_schedule(value.removeprefix("@every "))
    if len(value.split(" ")) != 5 and not value.startswith("@"):
        raise ValueError("a cron schedule has five fields: minute hour day-of-month month day-of-week")
    try:
        croniter(value, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, ValueError, KeyError) as exc:
        raise ValueError(f"not a valid cron expression or interval: {value!r}") from exc
    return Schedule(kind="cron", text=value, expression=value)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a failed run is retried; ``max_attempts`` counts the first attempt."""

    max_attempts: int
    initial_backoff_s: float
    multiplier: float
    max_backoff_s: float | None


def backoff_delay(policy: RetryPolicy, attempt: int) -> timedelta:
    """How long to wait after failed attempt ``attempt`` (1-based): initial × multiplier^(attempt−1), capped."""
    seconds = policy.initial_backoff_s * policy.multiplier ** max(attempt - 1, 0)
    if policy.max_backoff_s is not None:
        seconds = min(seconds, policy.max_backoff_s)
    return timedelta(seconds=seconds)
