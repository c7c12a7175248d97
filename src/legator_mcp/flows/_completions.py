"""Wait for many dispatched commands at once: their final runs as they complete, each bounded by its timeout.

One waiter per command (a task, a cancel scope and a timer each) costs more than the command itself once a fan-out
has hundreds in flight. :class:`Completions` has one stream the hub feeds as results land and one heap of
deadlines; the caller takes whatever finished together in one go.
"""

import heapq
import math
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

import anyio

from legator_mcp.commands.schemas import CommandRunRead, CommandStatus
from legator_mcp.errors import NotFound

__all__ = ["Completions", "ResultSource"]


class ResultSource(Protocol):
    """What :class:`Completions` needs from the hub."""

    def watch(self, request_id: str, callback: Callable[[CommandRunRead], None]) -> bool: ...

    def unwatch(self, request_id: str, callback: Callable[[CommandRunRead], None]) -> None: ...

    async def expire(
        self, request_id: str, *, status: CommandStatus, error_code: str, error: str
    ) -> CommandRunRead | None: ...


class RunReader(Protocol):
    """What :class:`Completions` needs from the command store: a run as stored."""

    async def get(self, request_id: str) -> CommandRunRead: ...


class Completions:
    """The final runs of commands handed to :meth:`add`, in the order they finish.

    A command without a result ``timeout_s + grace_s`` seconds after it was added is finished as ``timeout``
    (``result_timeout``), as a single waiter would. Use as a context manager: leaving it stops watching the
    commands still in flight (they keep running; cancel them separately if that is wanted).
    """

    def __init__(self, *, hub: ResultSource, runs: RunReader, grace_s: float) -> None:
        self._hub = hub
        self._runs = runs
        self._grace_s = grace_s
        self._send, self._receive = anyio.create_memory_object_stream[CommandRunRead](math.inf)
        self._deadlines: list[tuple[float, str]] = []
        self._waiting: dict[str, float] = {}
        """Request ids not returned yet, with how long each may take (its timeout plus the grace)."""
        self._untracked: list[str] = []

    def __enter__(self) -> "Completions":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for request_id in self._waiting:
            self._hub.unwatch(request_id, self._deliver)
        self._waiting.clear()
        self._send.close()
        self._receive.close()

    def __len__(self) -> int:
        """How many added commands have not been returned by :meth:`next` yet."""
        return len(self._waiting)

    @property
    def pending(self) -> list[str]:
        """The request ids still waited for."""
        return list(self._waiting)

    def add(self, run: CommandRunRead) -> None:
        """Wait for ``run`` (a dispatched command) too."""
        limit = run.timeout_s + self._grace_s
        self._waiting[run.request_id] = limit
        heapq.heappush(self._deadlines, (anyio.current_time() + limit, run.request_id))
        if not self._hub.watch(run.request_id, self._deliver):
            # Its result came in (and was stored) before anyone watched for it.
            self._untracked.append(run.request_id)

    def _deliver(self, run: CommandRunRead) -> None:
        self._send.send_nowait(run)

    async def next(self) -> dict[str, CommandRunRead | None]:
        """Wait until at least one command finished (or ran out of time) and return every one finished by then.

        Returns:
            Final runs by request id; ``None`` for a run that no longer exists (its probe was deleted meanwhile).
            Empty when nothing is waited for.
        """
        done: dict[str, CommandRunRead | None] = {}
        while self._waiting and not done:
            await self._read_untracked(done)
            if done:
                break
            with anyio.move_on_after(max(0.0, self._next_deadline() - anyio.current_time())):
                run = await self._receive.receive()
                self._take(run, done)
            if not done:
                await self._expire_overdue()
        while True:
            try:
                self._take(self._receive.receive_nowait(), done)
            except anyio.WouldBlock:
                break
        return done

    def _take(self, run: CommandRunRead, done: dict[str, CommandRunRead | None]) -> None:
        if self._waiting.pop(run.request_id, None) is not None:
            done[run.request_id] = run

    async def _read_untracked(self, done: dict[str, CommandRunRead | None]) -> None:
        while self._untracked:
            request_id = self._untracked.pop()
            if self._waiting.pop(request_id, None) is None:
                continue
            try:
                done[request_id] = await self._runs.get(request_id)
            except NotFound:
                done[request_id] = None

    def _next_deadline(self) -> float:
        while self._deadlines and self._deadlines[0][1] not in self._waiting:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else math.inf

    async def _expire_overdue(self) -> None:
        now = anyio.current_time()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, request_id = heapq.heappop(self._deadlines)
            limit = self._waiting.get(request_id)
            if limit is not None:
                # Finishes the run and wakes its watcher (this one), which delivers it to the stream.
                await self._hub.expire(
                    request_id, status=CommandStatus.TIMEOUT, error_code="result_timeout",
                    error=f"no result from the probe within {limit:.0f}s",
                )  # fmt: skip
