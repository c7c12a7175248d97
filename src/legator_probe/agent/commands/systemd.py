"""The ``systemd`` command kind: unit status, unit list and journal tail; start/stop/restart/reload/enable/disable.

Everything goes through ``systemctl`` and ``journalctl``. A host without them, or where systemd is
not PID 1, gets an ``error`` result with ``error_code="unavailable"``, never a crash.
"""

import json
from typing import Final, cast

from pydantic import JsonValue

from legator_probe.agent.commands._output import CommandOutput
from legator_probe.agent.commands._runner import ExecEnv, Outcome, RunControl, find_program, run_process
from legator_probe.protocol.commands import SystemdCommand

__all__ = ["STATUS_PROPERTIES", "run_systemd"]

STATUS_PROPERTIES: Final = (
    "Id",
    "Description",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "MainPID",
    "ActiveEnterTimestamp",
    "ExecMainStatus",
    "Result",
    "NRestarts",
    "FragmentPath",
)
"""Unit properties reported in ``data.properties`` by ``status`` and by every change."""

_NOT_RUNNING: Final = ("System has not been booted with systemd", "Failed to connect to bus", "Host is down")
_STATUS_INACTIVE: Final = 3
_STATUS_NO_UNIT: Final = 4


def _systemd_missing(output: CommandOutput) -> bool:
    stderr = output.text("stderr")
    return any(marker in stderr for marker in _NOT_RUNNING)


async def _properties(
    systemctl: str, unit: str, *, control: RunControl, exec_env: ExecEnv, timeout_s: float
) -> dict[str, JsonValue] | None:
    capture = CommandOutput(request_id="properties", max_bytes=64 * 1024)
    argv = [systemctl, "show", "--no-pager", f"--property={','.join(STATUS_PROPERTIES)}", "--", unit]
    async with capture:
        outcome = await run_process(
            argv,
            cwd=exec_env.default_cwd,
            env=exec_env.env,
            output=capture,
            control=control,
            exec_env=exec_env,
            timeout_s=timeout_s,
        )
    if outcome.status != "ok":
        return None
    properties: dict[str, JsonValue] = {}
    for line in capture.text("stdout").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            properties[key] = value
    return properties


def _units(text: str) -> list[JsonValue] | None:
    try:
        parsed: object = json.loads(text)
    except ValueError:
        return None
    if not isinstance(parsed, list):
        return None
    return cast(list[JsonValue], parsed)


async def run_systemd(
    command: SystemdCommand, *, output: CommandOutput, control: RunControl, exec_env: ExecEnv
) -> Outcome:
    """Run one systemd action.

    ``status`` succeeds for inactive units too (``data.properties.ActiveState`` says which);
    ``list`` returns ``data.units`` parsed from ``systemctl list-units --output=json``; ``journal``
    tails ``journalctl -u`` into stdout; the changing actions report the unit's properties after
    the change.

    Returns:
        The outcome; ``error`` with ``unavailable`` without systemd, ``not_found`` for an unknown unit.
    """
    spec = command.spec
    tool = "journalctl" if spec.action == "journal" else "systemctl"
    program = find_program(tool, exec_env)
    if program is None:
        return Outcome.failure("unavailable", f"{tool} is not installed on this host (no systemd)")
    unit = spec.unit or ""
    if spec.action == "status":
        argv = [program, "status", "--no-pager", "--full", f"--lines={spec.lines}", "--", unit]
    elif spec.action == "list":
        argv = [program, "list-units", "--type=service", "--all", "--no-pager", "--output=json"]
        argv += ["--", unit] if unit else []
    elif spec.action == "journal":
        argv = [program, "--no-pager", "--output=short-iso", f"--lines={spec.lines}", f"--unit={unit}"]
    else:
        argv = [program, spec.action, "--no-pager", "--", unit]
    outcome = await run_process(
        argv,
        cwd=exec_env.default_cwd,
        env=exec_env.env,
        output=output,
        control=control,
        exec_env=exec_env,
        timeout_s=command.timeout_s,
    )
    if outcome.status == "error" and _systemd_missing(output):
        return Outcome("error", outcome.exit_code, "unavailable", "systemd is not running on this host")
    if spec.action == "status" and outcome.exit_code == _STATUS_NO_UNIT:
        return Outcome("error", outcome.exit_code, "not_found", f"unit {unit} not found")
    if spec.action == "status" and outcome.exit_code == _STATUS_INACTIVE:
        outcome = Outcome("ok", outcome.exit_code)
    if outcome.status in ("timeout", "canceled"):
        return outcome
    data: dict[str, JsonValue] = {"action": spec.action, "unit": spec.unit}
    if spec.action == "list":
        data["units"] = _units(output.text("stdout"))
    elif spec.action != "journal" and not control.canceled:
        data["properties"] = await _properties(
            program, unit, control=control, exec_env=exec_env, timeout_s=command.timeout_s
        )
    outcome.data = data
    return outcome
