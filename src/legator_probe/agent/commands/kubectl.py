"""The ``kubectl`` command kind: run kubectl with an argv, optionally pinned to a namespace and context."""

from legator_probe.agent.commands._output import CommandOutput
from legator_probe.agent.commands._runner import ExecEnv, Outcome, RunControl, find_program, run_process
from legator_probe.protocol.commands import KubectlCommand

__all__ = ["kubectl_argv", "run_kubectl"]


def kubectl_argv(program: str, command: KubectlCommand) -> list[str]:
    """Return the full argv: ``kubectl [--context C] [--namespace N] <argv>``."""
    spec = command.spec
    argv = [program]
    if spec.context is not None:
        argv += ["--context", spec.context]
    if spec.namespace is not None:
        argv += ["--namespace", spec.namespace]
    return argv + list(spec.argv)


async def run_kubectl(
    command: KubectlCommand, *, output: CommandOutput, control: RunControl, exec_env: ExecEnv
) -> Outcome:
    """Run kubectl with the probe's environment (``KUBECONFIG``, ``HOME``).

    Returns:
        The process outcome; ``error``/``unavailable`` when kubectl is not installed.
    """
    program = find_program("kubectl", exec_env)
    if program is None:
        return Outcome.failure("unavailable", "kubectl is not installed on this host (not found on PATH)")
    return await run_process(
        kubectl_argv(program, command),
        cwd=exec_env.default_cwd,
        env=exec_env.env,
        output=output,
        control=control,
        exec_env=exec_env,
        timeout_s=command.timeout_s,
    )
