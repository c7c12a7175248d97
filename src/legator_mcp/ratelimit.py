"""A per-principal token-bucket rate limiter (in-process; each replica limits on its own)."""

import time
from collections.abc import Callable
from dataclasses import dataclass

from legator_mcp.errors import RateLimited

__all__ = ["RateLimiter"]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Allow ``per_minute`` requests a minute per key, with bursts of up to a tenth of that (at least 10)."""

    def __init__(
        self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self._rate = per_minute / 60.0
        self._capacity = float(max(10, per_minute // 10)) if per_minute else 0.0
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def check(self, key: str) -> None:
        """Take one token for ``key``.

        Raises:
            RateLimited: If the key has no token left; ``details.retry_after`` says when to retry.
        """
        if self._rate <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket(self._capacity, now)
        bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            retry = max(1, int((1.0 - bucket.tokens) / self._rate) + 1)
            raise RateLimited("rate limit exceeded", details={"retry_after": retry})
        bucket.tokens -= 1.0
