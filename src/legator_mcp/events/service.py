"""Publish/subscribe for lifecycle events (``probe.online``, ``command.completed``, …).

Delivery is in-process and best effort: a slow subscriber loses the oldest events rather than slowing the
publisher, and is told how many it missed. Durable history lives in the audit log, not here.
"""

import fnmatch
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import BaseModel, Field

from legator_mcp.db.base import new_id, utcnow

__all__ = ["Event", "EventBus", "Subscription"]


class Event(BaseModel):
    """One lifecycle event."""

    id: str = Field(default_factory=new_id)
    type: str
    ts: datetime = Field(default_factory=utcnow)
    probe_id: str | None = None
    summary: str
    detail: dict[str, Any] | None = None


class Subscription:
    """A subscriber's view: iterate it to receive matching events; ``dropped`` counts what overflowed."""

    def __init__(self, receive: MemoryObjectReceiveStream[Event]) -> None:
        self._receive = receive
        self.dropped = 0

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._receive.__aiter__()

    async def next(self, timeout: float) -> Event | None:
        """Wait up to ``timeout`` seconds for the next event; ``None`` when none came."""
        with anyio.move_on_after(timeout):
            return await self._receive.receive()
        return None


class EventBus:
    """Fan events out to every subscriber whose patterns match the event type."""

    def __init__(self, *, buffer: int = 1024, clock: Callable[[], datetime] = utcnow) -> None:
        self._buffer = buffer
        self._clock = clock
        self._subscribers: dict[int, tuple[tuple[str, ...], MemoryObjectSendStream[Event], Subscription]] = {}
        self._next = 0

    def publish(
        self,
        type: str,
        *,
        summary: str,
        probe_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> Event:
        """Deliver an event to current subscribers without waiting; returns the event."""
        event = Event(
            type=type, ts=self._clock(), probe_id=probe_id, summary=summary, detail=dict(detail or {}) or None
        )
        for patterns, send, subscription in list(self._subscribers.values()):
            if not any(fnmatch.fnmatchcase(type, pattern) for pattern in patterns):
                continue
            try:
                send.send_nowait(event)
            except anyio.WouldBlock:
                subscription.dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                continue
        return event

    @asynccontextmanager
    async def subscribe(self, *patterns: str) -> AsyncIterator[Subscription]:
        """Receive events whose type matches any glob pattern (default: all) until the block exits."""
        send, receive = anyio.create_memory_object_stream[Event](self._buffer)
        subscription = Subscription(receive)
        key = self._next
        self._next += 1
        self._subscribers[key] = (patterns or ("*",), send, subscription)
        try:
            yield subscription
        finally:
            del self._subscribers[key]
            send.close()
            receive.close()

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)
