"""Running a child process under a deadline and a cancel switch, and what a command kind returns.

Every process starts in a new session, so it leads its own process group; on timeout or cancel the
whole group gets SIGTERM, then SIGKILL once the leader has exited and its pipes closed or after the
kill grace (2 s), so no grandchild outlives the command. After a normal exit, output still held
open by a background grandchild is read for at most the pipe grace (1 s) and the grandchild is
left alone: it was started on purpose.
"""

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Self, TypeVar

import anyio
import anyio.abc
from pydantic import JsonValue

from legator_probe.agent.commands._output import CommandOutput
from legator_probe.protocol.types import CommandStatus, OutputStream

__all__ = [
    "KILL_GRACE_S",
    "PIPE_GRACE_S",
    "ExecEnv",
    "Outcome",
    "RunControl",
    "StopReason",
    "call_in_thread",
    "find_program",
    "run_process",
    "stopped",
]

KILL_GRACE_S: Final = 2.0
"""Time between SIGTERM and SIGKILL of a command's process group."""

PIPE_GRACE_S: Final = 1.0
"""After a command exits, how long output held open by its background children is still read."""

StopReason = Literal["timeout", "canceled"]
"""Why a command was stopped before it finished."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ExecEnv:
    """Where commands run: the base environment, the default working directory and the kill timings."""

    env: Mapping[str, str]
    default_cwd: str = "/"
    kill_grace_s: float = KILL_GRACE_S
    pipe_grace_s: float = PIPE_GRACE_S

    @property
    def path(self) -> str:
        """The ``PATH`` programs are looked up in."""
        return self.env.get("PATH", os.defpath)


@dataclass(slots=True)
class Outcome:
    """What a command kind reports; the executor turns it into a ``command_result``.

    ``stdout``/``stdout_bytes``/``truncated`` are set by kinds that produce their output themselves
    (``file_read``), already sanitised; otherwise the captured process output is used.
    """

    status: CommandStatus
    exit_code: int | None = None
    error_code: str | None = None
    error: str | None = None
    data: dict[str, JsonValue] | None = None
    stdout: str | None = None
    stdout_bytes: int | None = None
    truncated: bool = False

    @classmethod
    def failure(cls, error_code: str, error: str, **data: JsonValue) -> Self:
        """An ``error`` outcome with a stable code and a message."""
        return cls("error", error_code=error_code, error=error, data=dict(data) or None)


class RunControl:
    """The deadline and cancel switch of one running command."""

    def __init__(self, timeout_s: float) -> None:
        """Start the clock: the command times out ``timeout_s`` seconds from now."""
        self.deadline = anyio.current_time() + timeout_s
        self.cancel_reason: str | None = None
        self._canceled = anyio.Event()

    def cancel(self, reason: str = "canceled by the control plane") -> None:
        """Ask the command to stop; the first reason given is kept."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._canceled.set()

    @property
    def canceled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._canceled.is_set()

    async def wait_stop(self) -> StopReason:
        """Wait until the command is canceled or its deadline passes, and say which came first."""
        with anyio.CancelScope(deadline=self.deadline):
            await self._canceled.wait()
            return "canceled"
        return "canceled" if self.canceled else "timeout"


def find_program(name: str, exec_env: ExecEnv) -> str | None:
    """Resolve a program name on the commands' ``PATH`` (a name with ``/`` must be executable as is)."""
    if "/" in name:
        return name if os.access(name, os.X_OK) and not os.path.isdir(name) else None
    return shutil.which(name, path=exec_env.path)


def stopped(reason: StopReason, control: RunControl, *, timeout_s: float, exit_code: int | None = None) -> Outcome:
    """The outcome of a command stopped by its deadline or a cancel."""
    if reason == "timeout":
        return Outcome("timeout", exit_code, "timeout", f"command exceeded its {timeout_s:g} s timeout")
    return Outcome("canceled", exit_code, "canceled", control.cancel_reason or "canceled")


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


async def _pump(stream: anyio.abc.ByteReceiveStream | None, name: OutputStream, output: CommandOutput) -> None:
    if stream is None:
        return
    try:
        async for data in stream:
            await output.feed(name, data)
    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass


async def run_process(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    output: CommandOutput,
    control: RunControl,
    exec_env: ExecEnv,
    timeout_s: float,
) -> Outcome:
    """Run a program to completion, its deadline, or a cancel, feeding its output to ``output``.

    Args:
        argv: Program and arguments; ``argv[0]`` must already be resolved (see :func:`find_program`).
        cwd: Working directory; must exist.
        env: Complete environment of the child.
        output: Receives stdout and stderr.
        control: Deadline and cancel switch.
        exec_env: Kill timings.
        timeout_s: The timeout, for the error message.

    Returns:
        ``ok`` on exit status 0, ``error`` (``nonzero_exit``) otherwise, ``timeout``/``canceled``
        when stopped, or ``error`` with ``not_found``/``permission_denied``/``exec_failed`` when the
        program could not start.
    """
    if not await anyio.Path(cwd).is_dir():
        return Outcome.failure("not_found", f"working directory {cwd} does not exist")
    try:
        process = await anyio.open_process(
            list(argv), stdin=subprocess.DEVNULL, cwd=cwd, env=dict(env), start_new_session=True
        )
    except FileNotFoundError:
        return Outcome.failure("not_found", f"program {argv[0]} not found")
    except PermissionError:
        return Outcome.failure("permission_denied", f"program {argv[0]} is not executable")
    except OSError as exc:
        return Outcome.failure("exec_failed", f"cannot start {argv[0]}: {exc.strerror}")
    pgid = process.pid
    reason: StopReason | None = None
    pumps_done = anyio.Event()
    try:
        async with anyio.create_task_group() as task_group:
            pump_scope = anyio.CancelScope()
            watch_scope = anyio.CancelScope()

            async def pumps() -> None:
                with pump_scope:
                    async with anyio.create_task_group() as pump_group:
                        pump_group.start_soon(_pump, process.stdout, "stdout", output)
                        pump_group.start_soon(_pump, process.stderr, "stderr", output)
                pumps_done.set()

            async def watch() -> None:
                nonlocal reason
                with watch_scope:
                    reason = await control.wait_stop()
                if reason is None:
                    return
                _signal_group(pgid, signal.SIGTERM)
                with anyio.move_on_after(exec_env.kill_grace_s):
                    await process.wait()
                    await pumps_done.wait()
                _signal_group(pgid, signal.SIGKILL)

            task_group.start_soon(pumps)
            task_group.start_soon(watch)
            await process.wait()
            if reason is None:
                watch_scope.cancel()
            with anyio.move_on_after(exec_env.pipe_grace_s if reason is None else exec_env.kill_grace_s):
                await pumps_done.wait()
            pump_scope.cancel()
    finally:
        if process.returncode is None:
            _signal_group(pgid, signal.SIGKILL)
        with anyio.CancelScope(shield=True), anyio.move_on_after(exec_env.kill_grace_s):
            await process.aclose()
    exit_code = process.returncode
    if reason is not None:
        return stopped(reason, control, timeout_s=timeout_s, exit_code=exit_code)
    if exit_code == 0:
        return Outcome("ok", 0)
    return Outcome("error", exit_code, "nonzero_exit", f"exited with status {exit_code}")


async def call_in_thread(func: Callable[[], _T], control: RunControl) -> _T | StopReason:
    """Run blocking work in a worker thread, giving up on it when the command is canceled or times out.

    The thread cannot be interrupted; it finishes in the background and its result is dropped. Use
    this only for work that is safe to abandon (reads), never for writes.

    Returns:
        The function's result, or the :data:`StopReason` when the command was stopped first.
    """
    result: list[_T] = []
    reason: list[StopReason] = []
    async with anyio.create_task_group() as task_group:

        async def watch() -> None:
            reason.append(await control.wait_stop())
            task_group.cancel_scope.cancel()

        task_group.start_soon(watch)
        result.append(await anyio.to_thread.run_sync(func, abandon_on_cancel=True))
        task_group.cancel_scope.cancel()
    if result:
        return result[0]
    return reason[0]
