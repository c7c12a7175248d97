"""The command executor: policy check, concurrency bound, cancel, timeout, and one result per command.

:class:`Executor` takes verified ``command`` messages, checks them against the probe's own
:class:`~legator_probe.agent.policy.LocalPolicy`, runs them concurrently (at most
``max_concurrent``), and reports every command exactly once through an :class:`Emitter`:

* refused by policy → a ``rejection`` (``reason="policy"``) and a ``refused`` result
  (``error_code="policy_refused"``);
* over the concurrency bound → an ``error`` result with ``error_code="busy"``; the probe shutting
  down → ``shutting_down``; a request id that is already running → an ``error`` message
  (``duplicate_request``) and no second result;
* otherwise the kind's outcome: ``ok``, ``error``, ``timeout`` or ``canceled``, with stdout/stderr
  capped at ``max_output_bytes`` (``truncated``, full sizes in ``stdout_bytes``/``stderr_bytes``) and
  everything sanitised. Streaming commands send ``output_chunk`` payloads first.

Commands outlive a dropped connection: the executor's task group belongs to the daemon, and the
emitter decides what to do with results while offline.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Protocol, Self, cast

import anyio
import anyio.abc
from pydantic import JsonValue

from legator_probe.agent.commands._output import CommandOutput
from legator_probe.agent.commands._runner import ExecEnv, Outcome, RunControl, call_in_thread, stopped
from legator_probe.agent.policy import LocalPolicy
from legator_probe.protocol.commands import (
    CommandPayload,
    FileReadCommand,
    FileWriteCommand,
    KubectlCommand,
    ShellCommand,
    SystemdCommand,
)
from legator_probe.protocol.connection import DEFAULT_MAX_FRAME_BYTES
from legator_probe.protocol.messages import CommandMessage
from legator_probe.protocol.payloads import CommandResultPayload, ErrorPayload, OutputChunkPayload, RejectionPayload
from legator_probe.protocol.sanitize import sanitize, sanitize_mapping

__all__ = ["DEFAULT_MAX_CONCURRENT", "Emitter", "Executor"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT = 8
"""Commands run at once unless configured otherwise."""


class Emitter(Protocol):
    """Where the executor sends what it produces (the daemon forwards it to the control plane)."""

    async def chunk(self, payload: OutputChunkPayload) -> None:
        """Send a piece of a streaming command's output."""
        ...

    async def result(self, payload: CommandResultPayload) -> None:
        """Send a command's final result (exactly one per command)."""
        ...

    async def rejection(self, payload: RejectionPayload) -> None:
        """Report that local policy refused a verified instruction."""
        ...

    async def error(self, payload: ErrorPayload) -> None:
        """Report a problem with an instruction that must not produce a result of its own."""
        ...


@dataclass(slots=True)
class _Running:
    command: CommandPayload
    control: RunControl
    done: anyio.Event = field(default_factory=anyio.Event)


class Executor:
    """Runs commands; use as an async context manager that owns the commands' task group."""

    def __init__(
        self,
        *,
        emitter: Emitter,
        policy: Callable[[], LocalPolicy],
        exec_env: ExecEnv,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Build the executor.

        Args:
            emitter: Receives chunks, results and rejections.
            policy: Returns the probe's current policy (it changes on ``policy_update``).
            exec_env: Environment, default working directory and kill timings of commands.
            max_concurrent: Commands allowed to run at once; more get a ``busy`` result.
            max_frame_bytes: The control plane's frame limit; results are trimmed to fit in one frame.
            clock: Monotonic clock for ``duration_ms``.
        """
        self._emitter = emitter
        self._policy = policy
        self.exec_env = exec_env
        self.max_concurrent = max_concurrent
        self._max_frame_bytes = max_frame_bytes
        self._clock = clock
        self._running: dict[str, _Running] = {}
        self._closed = False
        self._idle = anyio.Event()
        self._idle.set()
        self._task_group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        self._closed = True
        task_group, self._task_group = self._task_group, None
        return await task_group.__aexit__(exc_type, exc, tb)

    @property
    def running_count(self) -> int:
        """Commands running now."""
        return len(self._running)

    @property
    def accepting(self) -> bool:
        """False once :meth:`drain` began: new commands get a ``shutting_down`` result."""
        return not self._closed

    def submit(self, message: CommandMessage) -> None:
        """Start a verified command, or answer it at once when it cannot run.

        Returns immediately; the result arrives through the emitter.

        Raises:
            RuntimeError: The executor is not entered.
        """
        if self._task_group is None:
            raise RuntimeError("the executor is not running")
        command = message.payload
        request_id = command.request_id
        if self._closed:
            outcome = Outcome.failure("shutting_down", "the probe is shutting down")
            self._task_group.start_soon(self._answer, command, outcome)
            return
        decision = self._policy().evaluate(command)
        if not decision.allowed:
            logger.warning("policy refused command %s (%s): %s", request_id, decision.rule, decision.reason)
            self._task_group.start_soon(self._refuse, message, decision.rule, decision.required_level, decision.reason)
            return
        if request_id in self._running:
            # A second result under the same id would corrupt the first command's record: report an error.
            error = ErrorPayload(
                code="duplicate_request", message="this request id is already running", ref_id=message.id
            )
            self._task_group.start_soon(self._emitter.error, error)
            return
        if len(self._running) >= self.max_concurrent:
            outcome = Outcome.failure("busy", f"the probe already runs {self.max_concurrent} commands")
        else:
            running = _Running(command, RunControl(command.timeout_s))
            self._running[request_id] = running
            self._idle = anyio.Event()
            self._task_group.start_soon(self._run, running)
            return
        self._task_group.start_soon(self._answer, command, outcome)

    def cancel(self, request_id: str, reason: str = "canceled by the control plane") -> bool:
        """Stop a running command (its process group is killed); returns False if it is not running."""
        running = self._running.get(request_id)
        if running is None:
            return False
        running.control.cancel(reason)
        return True

    async def wait_idle(self) -> None:
        """Wait until no command is running (every started command has reported its result)."""
        await self._idle.wait()

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting commands, let running ones finish for ``timeout_s``, then cancel the rest.

        Returns once every command has reported its result to the emitter.
        """
        self._closed = True
        with anyio.move_on_after(timeout_s):
            await self._idle.wait()
        for request_id in list(self._running):
            self.cancel(request_id, "the probe is shutting down")
        await self._idle.wait()

    # --- internals ------------------------------------------------------------------------------

    async def _answer(self, command: CommandPayload, outcome: Outcome) -> None:
        await self._emitter.result(self._result(command, outcome, None, 0))

    async def _refuse(self, message: CommandMessage, rule: str, required: str, reason: str) -> None:
        command = message.payload
        await self._emitter.rejection(RejectionPayload(ref_id=message.id, reason="policy", detail=sanitize(reason)))
        policy = self._policy()
        outcome = Outcome(
            "refused",
            error_code="policy_refused",
            error=reason,
            data={"rule": rule, "required_level": required, "probe_level": policy.level},
        )
        await self._emitter.result(self._result(command, outcome, None, 0))

    async def _run(self, running: _Running) -> None:
        command = running.command
        started = self._clock()
        emit = self._emitter.chunk if command.stream else None
        output = CommandOutput(request_id=command.request_id, max_bytes=command.max_output_bytes, emit=emit)
        try:
            try:
                async with output:
                    outcome = await self._dispatch(command, output, running.control)
            except Exception:  # the per-command boundary: a bug in one kind must not take the probe down
                logger.exception("command %s failed inside the probe", command.request_id)
                outcome = Outcome.failure("internal_error", "the probe failed while running the command")
            duration_ms = int((self._clock() - started) * 1000)
            await self._emitter.result(self._result(command, outcome, output, duration_ms))
        finally:
            del self._running[command.request_id]
            running.done.set()
            if not self._running:
                self._idle.set()

    async def _dispatch(self, command: CommandPayload, output: CommandOutput, control: RunControl) -> Outcome:
        exec_env = self.exec_env
        if isinstance(command, ShellCommand):
            from legator_probe.agent.commands.shell import run_shell

            return await run_shell(command, output=output, control=control, exec_env=exec_env)
        if isinstance(command, SystemdCommand):
            from legator_probe.agent.commands.systemd import run_systemd

            return await run_systemd(command, output=output, control=control, exec_env=exec_env)
        if isinstance(command, KubectlCommand):
            from legator_probe.agent.commands.kubectl import run_kubectl

            return await run_kubectl(command, output=output, control=control, exec_env=exec_env)
        if isinstance(command, FileWriteCommand):
            from legator_probe.agent.commands.files import write_file

            if control.canceled:
                return stopped("canceled", control, timeout_s=command.timeout_s)
            # Never abandoned half-way: the write is atomic and short, and its result must be true.
            return await anyio.to_thread.run_sync(write_file, command.spec)
        if isinstance(command, FileReadCommand):
            from legator_probe.agent.commands.files import read_file

            value = await call_in_thread(
                partial(read_file, command.spec, max_output_bytes=command.max_output_bytes), control
            )
        else:
            from legator_probe.agent.commands.process import run_process_command

            value = await call_in_thread(partial(run_process_command, command.spec), control)
        if isinstance(value, Outcome):
            return value
        return stopped(value, control, timeout_s=command.timeout_s)

    def _result(
        self, command: CommandPayload, outcome: Outcome, output: CommandOutput | None, duration_ms: int
    ) -> CommandResultPayload:
        stdout = outcome.stdout if outcome.stdout is not None else (output.text("stdout") if output else "")
        stdout_bytes = outcome.stdout_bytes
        if stdout_bytes is None:
            stdout_bytes = output.total("stdout") if output else len(stdout.encode("utf-8"))
        data = (
            cast(dict[str, JsonValue], sanitize_mapping(cast(dict[str, Any], outcome.data))) if outcome.data else None
        )
        result = CommandResultPayload(
            request_id=command.request_id,
            status=outcome.status,
            exit_code=outcome.exit_code,
            stdout=stdout,
            stderr=output.text("stderr") if output else "",
            stdout_bytes=stdout_bytes,
            stderr_bytes=output.total("stderr") if output else 0,
            truncated=outcome.truncated or (output.truncated if output else False),
            duration_ms=max(duration_ms, 0),
            error_code=outcome.error_code,
            error=sanitize(outcome.error) if outcome.error else None,
            data=data,
        )
        return _fit(result, self._max_frame_bytes - _ENVELOPE_SLACK)


_ENVELOPE_SLACK = 64 * 1024


def _fit(result: CommandResultPayload, budget: int) -> CommandResultPayload:
    """Trim stdout/stderr until the result's JSON fits in one frame (escaped control bytes can grow 6x)."""
    if (len(result.stdout) + len(result.stderr)) * 6 < budget:
        return result
    for _ in range(8):
        size = len(result.model_dump_json().encode("utf-8"))
        if size <= budget:
            return result
        keep = max(budget / size * 0.95, 0.0)
        result = result.model_copy(
            update={
                "stdout": result.stdout[: int(len(result.stdout) * keep)],
                "stderr": result.stderr[: int(len(result.stderr) * keep)],
                "truncated": True,
            }
        )
    return result.model_copy(update={"stdout": "", "stderr": "", "truncated": True})
