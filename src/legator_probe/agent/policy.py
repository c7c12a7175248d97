"""Probe-side policy: defence in depth behind the control plane's policy engine.

The probe keeps its own capability level and path rules (from registration and signed
``policy_update`` messages) and checks every command against them *after* its signature was
verified, so a compromised control plane still cannot make an ``observe`` probe write a file.

Checks, in order (the first that fails refuses the command):

1. **protected paths** — the probe's own config and state files are never read or written by a
   command, at any level (they hold the credential and the trusted keys).
2. **block/allow patterns** — globs over the command's display line (:func:`command_line`);
   a block match refuses, and a non-empty allow list must match.
3. **level** — the level the command needs (:func:`classify`) must not exceed the probe's.
4. **paths** — ``path_deny`` globs refuse at every level; below ``remediate`` built-in secret
   files (``/etc/shadow``, SSH host and user keys, kubeconfigs…) are not readable either;
   ``/proc``, ``/sys`` and ``/dev`` are never written; a non-empty ``path_allow`` must cover the
   path of a ``file_read``/``file_write``.

Path globs: ``*`` and ``?`` stay within a path segment, ``**`` spans segments, and a pattern
without wildcards (or ending in ``/**``) also covers everything below it. Paths are checked both as
given and with symlinks resolved.
"""

import fnmatch
import os
import posixpath
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal, TypeAlias

from legator_probe.agent._classify import LEVEL_RANK, Access, Classification, classify_kubectl, classify_shell
from legator_probe.agent.settings import PolicyConfig
from legator_probe.protocol.commands import (
    CommandPayload,
    FileReadCommand,
    FileWriteCommand,
    KubectlCommand,
    ProcessCommand,
    ShellCommand,
    SystemdCommand,
)
from legator_probe.protocol.types import CapabilityLevel

__all__ = [
    "BUILTIN_SECRET_PATHS",
    "LEVEL_RANK",
    "SYSTEM_WRITE_DENY",
    "Decision",
    "LocalPolicy",
    "PolicyRule",
    "classify",
    "command_line",
    "glob_matches",
]

BUILTIN_SECRET_PATHS: Final[tuple[str, ...]] = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/ssh/ssh_host_*_key",
    "/etc/ssl/private",
    "/etc/kubernetes/pki",
    "/etc/kubernetes/admin.conf",
    "/var/lib/kubelet/pki",
    "/root/.ssh/id_*",
    "/home/*/.ssh/id_*",
    "/root/.kube/config",
    "/home/*/.kube/config",
    "/root/.aws/credentials",
    "/home/*/.aws/credentials",
    "/root/.docker/config.json",
    "/home/*/.docker/config.json",
    "/proc/*/environ",
    "/proc/*/mem",
    "/proc/kcore",
)
"""Files holding secrets, unreadable below ``remediate`` whatever the policy says."""

SYSTEM_WRITE_DENY: Final[tuple[str, ...]] = ("/proc", "/sys", "/dev")
"""Trees a ``file_write`` never touches (writing ``/proc/sysrq-trigger`` reboots the host)."""

PolicyRule: TypeAlias = Literal[
    "allowed", "protected_path", "block_pattern", "allow_pattern", "level", "path_deny", "secret_path", "path_allow"
]
"""Which check decided."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of :meth:`LocalPolicy.evaluate`."""

    allowed: bool
    rule: PolicyRule
    required_level: CapabilityLevel
    reason: str


# --- globs ----------------------------------------------------------------------------------


def _has_wildcard(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def _translate(pattern: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
            continue
        if pattern.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        index += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := pattern.find("]", index + 1)) != -1:
            body = pattern[index:end]
            index = end + 1
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append("[" + ("^/" if negate else "") + body.replace("\\", "\\\\") + "]")
        else:
            out.append(re.escape(char))
    return "".join(out)


@lru_cache(maxsize=512)
def _compile(pattern: str) -> re.Pattern[str]:
    base = pattern[:-3] if pattern.endswith("/**") else pattern
    base = base.rstrip("/") or "/"
    if base == "/":
        return re.compile(r"/.*")
    if pattern.endswith("/**") or not _has_wildcard(base):
        return re.compile(_translate(base) + "(?:/.*)?")
    return re.compile(_translate(base))


def glob_matches(pattern: str, path: str) -> bool:
    """Tell whether an absolute path matches a policy path glob (see the module docstring)."""
    return _compile(pattern).fullmatch(path) is not None


def _literal_prefix(pattern: str) -> str:
    parts: list[str] = []
    for part in pattern.split("/")[1:]:
        if _has_wildcard(part):
            break
        parts.append(part)
    return "/" + "/".join(parts)


def _within(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory + "/")


def _could_match_below(pattern: str, directory: str) -> bool:
    """Whether ``pattern`` might match ``directory`` or something inside it (conservative)."""
    if glob_matches(pattern, directory):
        return True
    prefix = _literal_prefix(pattern)
    return _within(prefix, directory) or (_has_wildcard(pattern) and _within(directory, prefix))


def _candidates(path: str) -> tuple[str, ...]:
    real = os.path.realpath(path)
    return (path,) if real == path else (path, real)


def _first_match(patterns: Iterable[str], access: Access) -> str | None:
    for pattern in patterns:
        for path in _candidates(access.path):
            if access.mode == "read_tree":
                if _could_match_below(pattern, path):
                    return pattern
            elif glob_matches(pattern, path):
                return pattern
    return None


# --- classification -------------------------------------------------------------------------


def command_line(command: CommandPayload) -> str:
    """Return the one-line form of a command that block/allow patterns are matched against.

    ``shell`` gives its argv (shell-quoted) or script, ``kubectl`` gives ``kubectl <argv>``,
    ``systemd`` gives ``systemctl <action> <unit>``, the others ``<kind> <action/path>``.
    """
    if isinstance(command, ShellCommand):
        spec = command.spec
        return shlex.join(spec.argv) if spec.argv is not None else (spec.script or "")
    if isinstance(command, KubectlCommand):
        return shlex.join(["kubectl", *command.spec.argv])
    if isinstance(command, SystemdCommand):
        spec = command.spec
        return " ".join(part for part in ("systemctl", spec.action, spec.unit) if part)
    if isinstance(command, ProcessCommand):
        spec = command.spec
        return " ".join(str(part) for part in ("process", spec.action, spec.pid, spec.signal) if part is not None)
    return f"{command.kind} {command.spec.path}"


def classify(command: CommandPayload, *, default_cwd: str = "/") -> Classification:
    """Return the level a command needs, with the reason and the paths it touches.

    ``file_read`` and process listing need ``observe``; ``systemd`` reads and kubectl read verbs
    ``diagnose``; writes, signals, unit changes and kubectl mutations ``remediate``; ``shell``
    commands are classified by program (unknown programs need ``remediate``).
    """
    if isinstance(command, ShellCommand):
        return classify_shell(command.spec, default_cwd=default_cwd)
    if isinstance(command, FileReadCommand):
        path = posixpath.normpath(command.spec.path)
        return Classification("observe", "file_read only reads", (Access(path, "read"),))
    if isinstance(command, FileWriteCommand):
        path = posixpath.normpath(command.spec.path)
        return Classification("remediate", "file_write changes a file", (Access(path, "write"),))
    if isinstance(command, ProcessCommand):
        if command.spec.action == "signal":
            return Classification("remediate", "process signal can stop or kill a process")
        return Classification("observe", f"process {command.spec.action} only reads /proc")
    if isinstance(command, SystemdCommand):
        if command.spec.action in ("status", "list", "journal"):
            return Classification("diagnose", f"systemd {command.spec.action} only reads")
        return Classification("remediate", f"systemd {command.spec.action} changes a unit")
    return classify_kubectl(command.spec.argv)


# --- the policy -----------------------------------------------------------------------------


class LocalPolicy:
    """The probe's own policy, evaluated before any command runs.

    Attributes:
        config: The policy as configured (level, path rules, patterns, version).
    """

    def __init__(self, config: PolicyConfig, *, protected_paths: Sequence[str] = (), default_cwd: str = "/") -> None:
        """Build the policy.

        Args:
            config: Level and rules, from the config file or a ``policy_update``.
            protected_paths: Globs no command may read or write at any level (the probe's own files).
            default_cwd: Working directory of commands that set none, for resolving relative paths.
        """
        self.config = config
        self._protected = tuple(protected_paths)
        self._default_cwd = default_cwd

    @property
    def level(self) -> CapabilityLevel:
        """The probe's capability level."""
        return self.config.level

    def with_config(self, config: PolicyConfig) -> "LocalPolicy":
        """Return a policy with new rules and the same protected paths."""
        return LocalPolicy(config, protected_paths=self._protected, default_cwd=self._default_cwd)

    def evaluate(self, command: CommandPayload) -> Decision:
        """Decide whether the probe may run ``command``; see the module docstring for the checks."""
        verdict = classify(command, default_cwd=self._default_cwd)
        required = verdict.level

        def refuse(rule: PolicyRule, reason: str) -> Decision:
            return Decision(False, rule, required, reason)

        for access in verdict.accesses:
            if access.mode != "list" and _first_match(self._protected, access):
                return refuse("protected_path", f"{access.path} is one of the probe's own files")
        line = command_line(command).lower()
        for pattern in self.config.block_patterns:
            if _pattern_matches(pattern.lower(), line):
                return refuse("block_pattern", f"command matches the blocked pattern {pattern!r}")
        allow = self.config.allow_patterns
        if allow and not any(_pattern_matches(pattern.lower(), line) for pattern in allow):
            return refuse("allow_pattern", "command matches no allowed pattern")
        if LEVEL_RANK[required] > LEVEL_RANK[self.level]:
            return refuse("level", f"command needs {required} ({verdict.reason}) but this probe is at {self.level}")
        for access in verdict.accesses:
            if hit := _first_match(self.config.path_deny, access):
                return refuse("path_deny", f"{access.path} is denied by the path rule {hit!r}")
            if access.mode in ("read", "read_tree") and self.level != "remediate":
                if hit := _first_match(BUILTIN_SECRET_PATHS, access):
                    what = "may read" if access.mode == "read_tree" else "reads"
                    return refuse("secret_path", f"{access.path} {what} secret files ({hit}) below remediate")
            if access.mode == "write" and (hit := _first_match(SYSTEM_WRITE_DENY, access)):
                return refuse("path_deny", f"{access.path} is under {hit}, which is never written")
        if self.config.path_allow and isinstance(command, FileReadCommand | FileWriteCommand):
            path = posixpath.normpath(command.spec.path)
            allowed = all(
                any(glob_matches(pattern, candidate) for pattern in self.config.path_allow)
                for candidate in _candidates(path)
            )
            if not allowed:
                return refuse("path_allow", f"{path} is outside the allowed paths")
        return Decision(True, "allowed", required, verdict.reason)


def _pattern_matches(pattern: str, line: str) -> bool:
    if any(char in pattern for char in "*?["):
        return fnmatch.fnmatchcase(line, pattern)
    return line.startswith(pattern)
