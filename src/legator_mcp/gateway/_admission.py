"""Admission of new probe connections, so that a reconnect storm is served at the pace the server can keep.

Two limits. A token bucket bounds the rate of new connections. A cap on handshakes in progress (connect →
``welcome`` and the signed policy) bounds the work queued behind them; a connection waits for a handshake slot
in a FIFO queue, before its credential is even looked up, for a bounded time. Waiting costs an idle socket;
refusing costs the probe a redial, and a storm of redials is what collapses a slow server, because probes whose
handshake took too long time out and dial again while nothing completes. A connection that waited too long is
told to come back later (``503`` + ``Retry-After``), and the delay it is given grows with the queue it left, so
the herd spreads out instead of returning at once.
"""

import random
import time
from collections import deque
from collections.abc import Callable

import anyio

__all__ = ["Admission", "InventoryPacer"]

MAX_RETRY_AFTER_S = 120
"""The longest delay a refused probe is told to wait."""
_RATE_WINDOW_S = 10.0


class Admission:
    """The gateway's door: a rate bucket and a queue for a bounded number of handshake slots."""

    def __init__(
        self,
        *,
        per_second: float,
        burst: int,
        max_handshakes: int,
        queue_wait_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._rate = per_second
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._slots = anyio.Semaphore(max_handshakes)
        self._queue_wait_s = queue_wait_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._updated = clock()
        self._waiting = 0
        self._finished: deque[float] = deque()

    @property
    def saturated(self) -> bool:
        """Whether every handshake slot is taken (a new connection would queue)."""
        return self._slots.value == 0

    async def wait_for_slot(self) -> float:
        """Queue for a handshake slot: 0 once holding one, else the seconds the caller should be told to wait."""
        self._waiting += 1
        try:
            with anyio.move_on_after(self._queue_wait_s):
                await self._slots.acquire()
                return 0.0
        finally:
            self._waiting -= 1
        return self._retry_after()

    def take_token(self) -> float:
        """Take a token from the rate bucket: 0 when one was there, else the seconds until there is one."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens < 1:
            return (1 - self._tokens) / self._rate
        self._tokens -= 1
        return 0.0

    def release_slot(self) -> None:
        """Give back a handshake slot (the handshake finished, or the connection ended before it did)."""
        self._slots.release()
        now = self._clock()
        self._finished.append(now)
        while self._finished and self._finished[0] < now - _RATE_WINDOW_S:
            self._finished.popleft()

    def _retry_after(self) -> float:
        # How long the probes still queued would take at the pace handshakes finished lately; a refused probe
        # is given a random point in that span, so a thousand refused probes do not all return in one second.
        pace = max(len(self._finished) / _RATE_WINDOW_S, 1.0)
        span = min(max(self._waiting / pace, 2.0), MAX_RETRY_AFTER_S)
        return self._rng.uniform(1.0, span)


class InventoryPacer:
    """Slots for connect-time inventories, so that a reconnect storm's inventories arrive at a bounded rate.

    Each ``welcome`` tells the probe how long to wait before it collects and sends its inventory: the next free
    slot, one every ``1 / per_second`` seconds, at most ``max_delay_s`` away. A probe connecting alone is told 0.
    In a storm the handshakes then do not queue behind the parsing of every probe's inventory (about 50 KB of JSON
    each), and the inventories wait on their hosts, not yet collected, instead of in this process.
    """

    def __init__(self, *, per_second: float, max_delay_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / per_second
        self._max_delay_s = max_delay_s
        self._clock = clock
        self._next = clock()

    def delay(self) -> float:
        """Take the next slot: the seconds until it (0 when the pacer is idle)."""
        now = self._clock()
        slot = min(max(self._next, now), now + self._max_delay_s)
        self._next = slot + self._interval
        return slot - now
