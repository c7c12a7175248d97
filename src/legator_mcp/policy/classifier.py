"""Classify a command into a risk, the probe level it needs, and the reasons why.

`classify(kind, spec)` takes one of the six command kinds (`shell`, `file_read`, `file_write`,
`process`, `systemd`, `kubectl`) with its spec as a plain mapping, and returns a `Classification`.
It is pure: no I/O, no clock, no configuration.

Shell commands are judged by their parsed argv, never by string prefix. A `script` is tokenised like
`sh -c` would (quotes, escapes, `$'…'`, here-documents, substitutions) and split into simple
commands; the result is the maximum over every simple command, including those inside command
substitutions, `sh -c` strings, `eval`, `xargs`, `find -exec`, `watch` and the wrappers `sudo`,
`env`, `nice`, `timeout` & co. Program names are normalised (basename, quotes removed). What the
classifier cannot see through (syntax it does not follow, command names built at run time, inline
code for other interpreters) is at least HIGH with ``parsed=False``. Unknown programs are MEDIUM
and need diagnose, so a custom policy can pre-approve them by name.

Indicator codes (stable; the risk an indicator carries varies with the case):

* ``read_only`` — a program or action that only reads (LOW, observe).
* ``shell_builtin`` / ``function_call`` / ``wrapper`` / ``empty_command`` — shell mechanics and
  wrappers; the wrapped command is judged on its own (LOW, observe).
* ``command_substitution`` / ``process_substitution`` — noted; their commands are judged too (LOW).
* ``journal_read`` — reading the systemd journal through the typed `systemd` kind (LOW, diagnose).
* ``diagnostic_tool`` — tracers, profilers, packet capture, scanners (diagnose, LOW to HIGH).
* ``network_request`` — an HTTP GET or an unbounded ping (LOW, diagnose).
* ``privilege_escalation`` — `sudo`, `su`, `doas`, `chroot`, `nsenter` …: at least diagnose; set-id
  bits and privileged containers are HIGH.
* ``remote_execution`` — `ssh`/`scp`/`rsync` to another host (MEDIUM, diagnose) plus the remote command.
* ``environment_override`` — PATH overridden (MEDIUM, diagnose).
* ``unknown_program`` — not in any table, or run from outside the system directories (MEDIUM, diagnose).
* ``sensitive_path`` — reading private keys, shadow files, kube/cloud credentials (MEDIUM, observe).
* ``sensitive_resource`` — kubectl reading Secret values or raw kubeconfig (MEDIUM, diagnose).
* ``kubectl_read`` / ``kubectl_mutation`` / ``critical_namespace`` — Kubernetes (and helm) reads
  (LOW, diagnose), changes (MEDIUM to CRITICAL, remediate), changes in `kube-system` (HIGH).
* ``file_write`` / ``redirect_write`` — a file is written by a tool or a shell redirection
  (remediate; MEDIUM by default for file tools, HIGH for output options and redirections).
* ``system_path_write`` / ``block_device_write`` — the path policy raised a write: system paths
  HIGH; `/etc/passwd`, `/etc/shadow`, sudoers, `/boot`, `/dev/*` CRITICAL; disks CRITICAL.
* ``destructive_tool`` — deleting, wiping, truncating (HIGH); recursive deletion of `/`, `~` or a
  top-level directory is CRITICAL.
* ``storage_change`` — partitions, LVM, RAID, mounts, filesystems (HIGH).
* ``service_change`` / ``critical_unit`` — service managers: restart MEDIUM, stop/disable HIGH, any
  change to sshd, networking, container runtimes, systemd-* or the probe itself HIGH.
* ``power_state`` — reboot, shutdown, halt, rescue targets, sysrq (CRITICAL).
* ``package_manager`` — refresh MEDIUM, install/remove/upgrade HIGH.
* ``signal`` / ``process_change`` — signals (TERM & co MEDIUM, KILL/STOP HIGH, pid 1 HIGH, pid 1
  with KILL and pid -1 CRITICAL), priority changes (MEDIUM).
* ``network_change`` / ``network_filter`` / ``network_listener`` / ``network_write`` — interface and
  route changes, firewall changes (flush CRITICAL), listening sockets, uploads and POSTs (HIGH).
* ``user_management`` / ``scheduled_task`` / ``kernel_change`` / ``system_config`` — accounts, cron
  and at, sysctl and modules, host settings and boot loaders (HIGH; a few MEDIUM).
* ``vcs_change`` / ``container_change`` / ``database_client`` — git (MEDIUM, discarding work HIGH),
  container engines (MEDIUM to HIGH), database clients (HIGH).
* ``arbitrary_code`` — inline code for another language, script files, code-injecting environment
  variables (HIGH; ``parsed=False`` when the code is opaque).
* ``dynamic_command`` — a program name or shell string only known at run time (HIGH, unparsed); a
  guess from the script's own words may raise it to CRITICAL (`a=rm; $a -rf /`).
* ``unparseable`` — syntax the parser does not follow confidently (HIGH, unparsed).
* ``shell_pipe_to_interpreter`` — a shell or interpreter running code piped into it (CRITICAL).
* ``fork_bomb`` — a shell function that spawns copies of itself (CRITICAL).
"""

import posixpath
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from legator_mcp.policy._call import Context, check_environment
from legator_mcp.policy._core import Classification, Indicator, Level, Risk, Verdict
from legator_mcp.policy._dispatch import ENGINE
from legator_mcp.policy._kubectl import classify_kubectl
from legator_mcp.policy._paths import read_is_sensitive, write_risk
from legator_mcp.policy._services import judge_signal, normalize_signal, service_action
from legator_mcp.policy._syntax import Word

__all__ = ["KINDS", "Classification", "Indicator", "Level", "Risk", "classify"]

_ANYWHERE: frozenset[str | None] = frozenset({None})


def _text(spec: Mapping[str, Any], key: str, kind: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} spec needs a non-empty string {key!r}")
    return value


def _strings(value: object, what: str, *, allow_empty: bool = False) -> list[str]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not (value or allow_empty):
        raise ValueError(f"{what} must be a non-empty list of strings")
    items: list[str] = []
    for item in cast(Sequence[object], value):
        if not isinstance(item, str):
            raise ValueError(f"{what} must be a non-empty list of strings")
        items.append(item)
    return items


def _shell(spec: Mapping[str, Any], verdict: Verdict) -> None:
    argv, script, cwd, env = spec.get("argv"), spec.get("script"), spec.get("cwd"), spec.get("env")
    if argv is None and script is None:
        raise ValueError("shell spec needs argv or script")
    start = posixpath.normpath(cwd) if isinstance(cwd, str) and cwd.startswith("/") else None
    untrusted = False
    if isinstance(env, Mapping):
        for name, value in cast(Mapping[object, object], env).items():
            untrusted = check_environment(str(name), str(value), verdict) or untrusted
    ctx = Context(cwds=frozenset({start}), untrusted_path=untrusted)
    if argv is not None:
        ENGINE.run_argv([Word.literal(arg) for arg in _strings(argv, "shell argv")], ctx, verdict)
    if script is not None:
        if not isinstance(script, str):
            raise ValueError("shell script must be a string")
        if script.strip():
            ENGINE.run_script(script, ctx, verdict)
        else:
            verdict.add("empty_command", "the script is empty", Risk.LOW, Level.OBSERVE)


def _file_read(spec: Mapping[str, Any], verdict: Verdict) -> None:
    path = _text(spec, "path", "file_read")
    verdict.add("read_only", f"reads {path}", Risk.LOW, Level.OBSERVE)
    if (sensitive := read_is_sensitive(Word.literal(path), _ANYWHERE)) is not None:
        verdict.add("sensitive_path", f"{sensitive} may hold secrets", Risk.MEDIUM, Level.OBSERVE)


def _file_write(spec: Mapping[str, Any], verdict: Verdict) -> None:
    path = _text(spec, "path", "file_write")
    risk, code, resolved = write_risk(Word.literal(path), _ANYWHERE)
    verdict.add("file_write", f"writes {resolved}", risk, Level.REMEDIATE)
    if code != "file_write":
        verdict.add(code, f"writes {resolved}", risk, Level.REMEDIATE)
    mode = spec.get("mode")
    try:
        bits = int(mode, 8) if isinstance(mode, str) else mode if isinstance(mode, int) else 0
    except ValueError:
        bits = 0o7777
    if bits & 0o6000:
        verdict.add("privilege_escalation", f"mode {mode} sets a set-id bit", Risk.HIGH, Level.REMEDIATE)


def _process(spec: Mapping[str, Any], verdict: Verdict) -> None:
    action = spec.get("action")
    if action in ("list", "inspect"):
        verdict.add("read_only", f"process {action}", Risk.LOW, Level.OBSERVE)
        return
    if action != "signal":
        raise ValueError(f"unknown process action {action!r}")
    pid, signal = spec.get("pid"), spec.get("signal")
    name = normalize_signal(None if signal is None else str(signal))
    judge_signal(verdict, "process signal", name, [] if pid is None else [str(pid)])
    if pid is None:
        what = spec.get("name_filter")
        verdict.add("signal", f"signals every process matching {what!r}", Risk.HIGH, Level.REMEDIATE)


_SYSTEMD_CHANGES = frozenset({"start", "stop", "restart", "reload", "enable", "disable"})


def _systemd(spec: Mapping[str, Any], verdict: Verdict) -> None:
    action = spec.get("action")
    unit = spec.get("unit")
    if action == "journal":
        verdict.program("journalctl")
        verdict.add("journal_read", f"journal of {unit or 'the host'}", Risk.LOW, Level.DIAGNOSE)
        return
    if action not in ("status", "list", *_SYSTEMD_CHANGES):
        raise ValueError(f"unknown systemd action {action!r}")
    verdict.program("systemctl")
    units = [Word.literal(unit)] if isinstance(unit, str) and unit else []
    if action in _SYSTEMD_CHANGES and not units:
        verdict.add("service_change", f"systemd {action} without a unit", Risk.HIGH, Level.REMEDIATE)
        return
    service_action(verdict, "systemctl", str(action), units)


def _kubectl(spec: Mapping[str, Any], verdict: Verdict) -> None:
    argv = _strings(spec.get("argv"), "kubectl argv", allow_empty=True)
    if argv and posixpath.basename(argv[0]) in ("kubectl", "oc"):
        argv = argv[1:]
    namespace = spec.get("namespace")
    verdict.program("kubectl")
    classify_kubectl(verdict, [Word.literal(arg) for arg in argv], namespace if isinstance(namespace, str) else None)


KINDS: Mapping[str, Callable[[Mapping[str, Any], Verdict], None]] = {
    "shell": _shell,
    "file_read": _file_read,
    "file_write": _file_write,
    "process": _process,
    "systemd": _systemd,
    "kubectl": _kubectl,
}
"""The command kinds `classify` understands."""


def classify(kind: str, spec: Mapping[str, Any]) -> Classification:
    """Classify one command.

    Args:
        kind: One of `KINDS`: `shell`, `file_read`, `file_write`, `process`, `systemd`, `kubectl`.
        spec: The command's fields as a mapping (a pydantic `model_dump()`), e.g.
            ``{"argv": None, "script": "df -h && free -m", "cwd": None, "env": None}``.

    Returns:
        The highest risk found, the lowest level allowed to run it, every indicator behind that,
        whether the command was understood statically, and every program it would run.

    Raises:
        ValueError: When `kind` is unknown or `spec` lacks the fields that kind needs.
    """
    handler = KINDS.get(kind)
    if handler is None:
        raise ValueError(f"unknown command kind {kind!r}")
    verdict = Verdict()
    handler(spec, verdict)
    return verdict.result()
