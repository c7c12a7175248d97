"""Reconnect delays: exponential backoff with full jitter, a steady delay after auth failures.

* After an ordinary failure the n-th delay is uniform in ``[0, min(cap, base * 2**n))`` ("full
  jitter"), so a fleet that lost its control plane at the same instant does not come back in step.
* A connection that lived at least ``reset_after_s`` resets ``n`` to 0: it was a real session, not
  a flapping handshake.
* An auth failure (the control plane answered 401/403) waits a steady ``auth_delay_s`` ±20 %: more
  attempts will not fix a revoked credential, and an operator fixing it wants a predictable retry.
* The control plane asking for ``retry_after_s`` (HTTP 429/503, or a ``backoff`` message) is
  obeyed, plus up to 10 % jitter so the storm it is shedding does not return at once.
"""

import random
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = ["Attempt", "AttemptKind", "Backoff"]

AttemptKind: TypeAlias = Literal["closed", "failed", "auth_failed", "retry_after"]
"""How a connection attempt ended: a session that closed, a failure, a refused credential, or an
explicit request to come back later."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One connection attempt as the backoff sees it."""

    kind: AttemptKind
    lived_s: float = 0.0
    """How long the connection was established (0 when it never was)."""
    retry_after_s: float | None = None
    """What the control plane asked for, with ``kind="retry_after"``."""


class Backoff:
    """Computes the delay before the next connection attempt."""

    def __init__(
        self,
        *,
        base_s: float = 1.0,
        cap_s: float = 300.0,
        reset_after_s: float = 60.0,
        auth_delay_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        """Build the backoff.

        Args:
            base_s: First ceiling of the jittered delay.
            cap_s: Largest ceiling.
            reset_after_s: A connection that lived this long resets the exponent.
            auth_delay_s: Steady delay after an auth failure (±20 % jitter).
            rng: Source of jitter; inject a seeded or fake one in tests.
        """
        self.base_s = base_s
        self.cap_s = cap_s
        self.reset_after_s = reset_after_s
        self.auth_delay_s = auth_delay_s
        self._rng = rng or random.SystemRandom()
        self.failures = 0

    def reset(self) -> None:
        """Forget earlier failures."""
        self.failures = 0

    def next_delay(self, attempt: Attempt) -> float:
        """Return the seconds to wait after ``attempt`` and update the failure count."""
        if attempt.lived_s >= self.reset_after_s:
            self.failures = 0
        if attempt.kind == "auth_failed":
            return self.auth_delay_s * self._rng.uniform(0.8, 1.2)
        if attempt.kind == "retry_after" and attempt.retry_after_s is not None:
            self.failures += 1
            return attempt.retry_after_s * self._rng.uniform(1.0, 1.1)
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(self.failures, 64))
        self.failures += 1
        return self._rng.uniform(0.0, ceiling)
