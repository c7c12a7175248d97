"""The ``shell`` command kind: exec an argv directly, or run a script under ``sh -c``."""

from legator_probe.agent.commands._output import CommandOutput
from legator_probe.agent.commands._runner import ExecEnv, Outcome, RunControl, find_program, run_process
from legator_probe.protocol.commands import ShellCommand

__all__ = ["SHELL", "run_shell"]

SHELL = "/bin/sh"
"""The shell scripts run under."""


async def run_shell(command: ShellCommand, *, output: CommandOutput, control: RunControl, exec_env: ExecEnv) -> Outcome:
    """Run a ``shell`` command in its own process group, with ``env`` added to the probe's environment.

    Returns:
        The process outcome; ``error``/``not_found`` when the program is not on ``PATH``.
    """
    spec = command.spec
    env = {**exec_env.env, **spec.env}
    if spec.argv is not None:
        program = find_program(spec.argv[0], ExecEnv(env))
        if program is None:
            return Outcome.failure("not_found", f"program {spec.argv[0]!r} not found on PATH")
        argv = [program, *spec.argv[1:]]
    else:
        argv = [SHELL, "-c", spec.script or ""]
    return await run_process(
        argv,
        cwd=spec.cwd or exec_env.default_cwd,
        env=env,
        output=output,
        control=control,
        exec_env=exec_env,
        timeout_s=command.timeout_s,
    )
