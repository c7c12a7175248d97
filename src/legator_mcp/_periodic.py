"""Background passes: one loop for every "do this every N seconds, forever" of the control plane."""

import logging
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["every"]

logger = logging.getLogger("legator.background")


async def every(
    interval_s: float, work: Callable[[], Awaitable[object]], *, what: str, wait_first: bool = False
) -> None:
    """Run ``work`` now (or after one interval with ``wait_first``) and then every ``interval_s`` seconds, forever.

    Each pass is shielded from cancellation (stopping the app must not cut a write transaction half-way); a pass
    that raises is logged with its traceback as ``<what> failed`` and the next one runs on schedule, so a
    restarting database does not end the loop.
    """
    if wait_first:
        await anyio.sleep(interval_s)
    while True:
        try:
            with anyio.CancelScope(shield=True):
                await work()
        except Exception:
            # A background loop outlives one bad pass; the traceback is logged.
            logger.exception("%s failed", what)
        await anyio.sleep(interval_s)
