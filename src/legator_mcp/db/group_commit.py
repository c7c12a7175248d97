"""Group commit: writes that arrive while a batch is being written are written together in the next one.

A probe fleet reports in bursts (a reconnect storm, 10,000 heartbeats every 30 s). One transaction per report
would serialise on the database's single writer; with :class:`GroupCommit` the first caller writes alone, the
callers that queue up meanwhile share the next transaction, and the cost per report falls as load rises. There
is no timer: an idle system writes at once, a busy one batches by itself.
"""

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

__all__ = ["GroupCommit"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


@dataclass
class _Batch(Generic[K, V, R]):
    items: dict[K, V] = field(default_factory=lambda: {})
    results: dict[K, R] = field(default_factory=lambda: {})
    done: bool = False
    error: BaseException | None = None


class GroupCommit(Generic[K, V, R]):
    """Feed items to ``write(items) -> results`` in batches, one batch at a time.

    ``write`` receives every item submitted since the previous batch began (a later item for the same key
    replaces an earlier one) and returns a result per key it wrote; a key it leaves out gets ``None``. A failed
    batch raises its error in every caller that was part of it. Writes are shielded from cancellation, because
    one caller leaving must not abandon the other callers' items half-written.
    """

    def __init__(self, write: Callable[[dict[K, V]], Awaitable[dict[K, R]]]) -> None:
        self._write = write
        self._open: _Batch[K, V, R] | None = None
        self._lock = anyio.Lock()

    async def submit(self, key: K, value: V) -> R | None:
        """Add ``value`` under ``key`` to the next batch and wait until that batch is written.

        Raises:
            BaseException: Whatever ``write`` raised for the batch.
        """
        batch = self._open
        if batch is None:
            batch = self._open = _Batch[K, V, R]()
        batch.items[key] = value
        async with self._lock:
            if not batch.done:
                if self._open is batch:
                    self._open = None
                with anyio.CancelScope(shield=True):
                    try:
                        batch.results = await self._write(batch.items)
                    except BaseException as exc:
                        batch.error = exc
                        raise
                    finally:
                        batch.done = True
        if batch.error is not None:
            raise batch.error
        return batch.results.get(key)
