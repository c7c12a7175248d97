"""Reconnect delays: full jitter, cap, reset after a long connection, steady auth delay, retry-after."""

import random

from legator_probe.agent.backoff import Attempt, Backoff


class _Top(random.Random):
    def random(self) -> float:
        return 0.999999


def test_full_jitter_ceilings_double_up_to_the_cap() -> None:
    backoff = Backoff(base_s=1, cap_s=10, rng=_Top())
    delays = [round(backoff.next_delay(Attempt("failed"))) for _ in range(6)]
    assert delays == [1, 2, 4, 8, 10, 10]


def test_delays_are_random_below_the_ceiling() -> None:
    backoff = Backoff(base_s=1, cap_s=300, rng=random.Random(7))
    delays = [backoff.next_delay(Attempt("failed")) for _ in range(12)]
    assert all(0 <= d < min(300, 2**n) for n, d in enumerate(delays))
    assert len(set(delays)) == len(delays)


def test_a_long_lived_connection_resets_the_backoff() -> None:
    backoff = Backoff(base_s=1, cap_s=300, reset_after_s=60, rng=_Top())
    for _ in range(5):
        backoff.next_delay(Attempt("failed"))
    assert backoff.next_delay(Attempt("closed", lived_s=5)) > 16
    assert backoff.next_delay(Attempt("closed", lived_s=61)) < 1


def test_auth_failures_wait_a_steady_jittered_delay() -> None:
    backoff = Backoff(auth_delay_s=60, rng=random.Random(1))
    delays = [backoff.next_delay(Attempt("auth_failed")) for _ in range(20)]
    assert all(48 <= d <= 72 for d in delays) and backoff.failures == 0


def test_retry_after_is_obeyed_with_a_little_jitter() -> None:
    backoff = Backoff(rng=random.Random(3))
    delay = backoff.next_delay(Attempt("retry_after", retry_after_s=30))
    assert 30 <= delay <= 33
