"""Built-in policy templates and the pure decision: classifier verdict + template + probe level → decision.

Patterns are globs over a normalised command line (program basename and arguments joined by single spaces) or,
with an ``re:`` prefix, regular expressions matching the whole line. A shell script is split into its simple
commands at ``;``, ``&``, ``|``, newlines and substitutions (a rough split: it only ever makes more segments,
so a block pattern sees every command and an allow pattern has to cover every piece). Allow and pre-approval
also require every program the classifier found (including those inside substitutions and ``sh -c``) to be
covered, and the command to be fully parsed.
"""

import fnmatch
import posixpath
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from legator_mcp.policy.classifier import Classification, Level, Risk
from legator_mcp.policy.schemas import Decision, IndicatorRead, PolicyDecision, PolicyTemplateRead
from legator_probe.agent.policy import glob_matches

__all__ = ["APPROVAL_THRESHOLD", "BUILTINS", "command_lines", "decide", "matching"]

APPROVAL_THRESHOLD = Risk.HIGH
"""Commands at or above this risk wait for a human approval, whatever the probe's level."""

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_SECRET_PATHS = [
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers", "/etc/sudoers.d",
    "/etc/ssh/ssh_host_*_key", "/root/.ssh", "/home/*/.ssh/id_*", "/etc/ssl/private", "/etc/pki/*/private/**",
    "/root/.kube", "/root/.aws", "/var/lib/legator-probe",
]  # fmt: skip


def _builtin(template_id: str, name: str, level: str, description: str, blocked: list[str]) -> PolicyTemplateRead:
    return PolicyTemplateRead(
        id=template_id, name=name, description=description, level=level, builtin=True,  # pyright: ignore[reportArgumentType]
        allow_patterns=[], block_patterns=blocked, path_allow=[], path_deny=list(_SECRET_PATHS),
        preapproved_patterns=[], version=1, created_at=_EPOCH, updated_at=_EPOCH,
    )  # fmt: skip


BUILTINS: dict[str, PolicyTemplateRead] = {
    t.id: t
    for t in (
        _builtin(
            "observe-only", "Observe Only", "observe", "Read-only inspection; nothing on the host changes.",
            ["rm", "rm *", "kill *", "reboot*", "shutdown*", "mkfs*", "dd *", "systemctl stop *",
             "systemctl restart *"],
        ),
        _builtin(
            "diagnose", "Diagnose", "diagnose", "Inspection plus diagnostic tools (tracers, journals, kubectl reads).",
            ["rm -rf *", "mkfs*", "dd if=*", "reboot*", "shutdown*", "systemctl stop *", "systemctl restart *"],
        ),
        _builtin(
            "full-remediate", "Full Remediate", "remediate",
            "Changes allowed; high-risk commands still wait for a human approval.",
            ["rm -rf /", "rm -rf / *", "mkfs*", "dd if=/dev/zero of=/dev/sd*"],
        ),
    )
}  # fmt: skip
"""The built-in templates, by id; they are never stored, changed or deleted."""

_SPLIT = re.compile(r"\|\||&&|[;|&\n]|\$\(|`|<\(|>\(|\)")
_SPACE = re.compile(r"\s+")


def _norm(words: Sequence[object]) -> str:
    parts = [str(w) for w in words if w is not None and str(w) != ""]
    if parts:
        parts[0] = posixpath.basename(parts[0]) or parts[0]
    return _SPACE.sub(" ", " ".join(parts)).strip()


def command_lines(kind: str, spec: Mapping[str, Any]) -> list[str]:
    """The normalised command lines patterns are matched against (a script gives one per simple command)."""
    if kind == "shell":
        lines: list[str] = []
        argv = spec.get("argv")
        if isinstance(argv, list) and argv:
            lines.append(_norm(argv))  # pyright: ignore[reportUnknownArgumentType]
        script = spec.get("script")
        if isinstance(script, str):
            for piece in _SPLIT.split(script):
                words = piece.split()
                # Leading assignments and wrappers stay in the line; only the program path is normalised.
                if words:
                    lines.append(_norm(words))
        return lines or [""]
    if kind in ("file_read", "file_write"):
        return [_norm([kind, spec.get("path")])]
    if kind == "systemd":
        return [_norm(["systemctl", spec.get("action"), spec.get("unit")])]
    if kind == "kubectl":
        argv = spec.get("argv")
        return [_norm(["kubectl", *(argv if isinstance(argv, list) else [])])]  # pyright: ignore[reportUnknownArgumentType]
    if kind == "process":
        return [_norm(["process", spec.get("action"), spec.get("signal"), spec.get("pid"), spec.get("name_filter")])]
    return [kind]


def _matches(pattern: str, line: str) -> bool:
    if pattern.startswith("re:"):
        try:
            return re.fullmatch(pattern[3:], line) is not None
        except re.error:
            return False
    return fnmatch.fnmatchcase(line, pattern)


def matching(patterns: Sequence[str], line: str) -> str | None:
    """The first pattern that matches ``line``, if any."""
    return next((p for p in patterns if _matches(p, line)), None)


def _covers(patterns: Sequence[str], lines: Sequence[str], programs: Sequence[str]) -> bool:
    """Whether every line and every program the classifier found is matched by some pattern."""
    if not patterns:
        return False
    if any(matching(patterns, line) is None for line in lines):
        return False
    # A program hidden inside a substitution or ``sh -c`` (not leading any line) must be covered too: by a
    # pattern matching the bare program name or any invocation of it.
    leading = {line.split(" ", 1)[0] for line in lines}
    for program in programs:
        name = posixpath.basename(program)
        if name in leading:
            continue
        if not any(_matches(p, name) or _matches(p, name + " x") for p in patterns):
            return False
    return True


def _path_rule(kind: str, spec: Mapping[str, Any], template: PolicyTemplateRead) -> tuple[str, str] | None:
    """``(rule, sentence)`` when a file path breaks the template's path rules."""
    if kind not in ("file_read", "file_write"):
        return None
    raw = spec.get("path")
    if not isinstance(raw, str):
        return None
    # The probe's own path globs, so both ends agree: ``*`` stays in a segment, ``**`` spans segments, and a
    # pattern without wildcards covers everything below it.
    path = posixpath.normpath(raw)
    denied = next((d for d in template.path_deny if glob_matches(d, path)), None)
    if denied is not None:
        return "path_deny", f"path {path} matches the denied path rule {denied!r}"
    if template.path_allow and not any(glob_matches(a, path) for a in template.path_allow):
        return "path_allow", f"path {path} is outside every allowed path ({', '.join(template.path_allow)})"
    return None


def decide(
    *,
    verdict: Classification,
    kind: str,
    spec: Mapping[str, Any],
    probe_level: str,
    policy_id: str | None,
    template: PolicyTemplateRead | None,
    actor: str,
) -> PolicyDecision:
    """Weigh a classifier verdict against a template and a probe level. Pure.

    Rules, in order (the first that decides wins): block pattern → deny; allow list without a match → deny;
    path rules (file kinds) → deny; level cap → deny; risk at or above the threshold → queue, unless a
    pre-approved pattern covers it and the risk is below critical → allow; otherwise allow.
    """
    level = Level(probe_level)
    policy = policy_id or "default"
    top = [i for i in verdict.indicators if i.risk == verdict.risk] or list(verdict.indicators)
    driving = ", ".join(dict.fromkeys(i.code for i in top)) or "none"
    lines = command_lines(kind, spec)
    rationale = [
        f"classified {kind} as risk {verdict.risk.value}, needing level {verdict.required_level.value}"
        f" (indicators: {driving})"
        + ("" if verdict.parsed else " (parts could not be parsed, so it is treated as at least high)"),
    ]
    if template is None:
        rationale.append(f"policy {policy} is not a template: only the probe level and the threshold apply")
    decision, rule = Decision.ALLOW, "below_threshold"
    blocked = None
    if template is not None:
        for candidate in (*lines, *verdict.programs):
            blocked = matching(template.block_patterns, candidate)
            if blocked is not None:
                break
    path_rule = _path_rule(kind, spec, template) if template is not None else None
    if template is not None and blocked is not None:
        decision, rule = Decision.DENY, "block_pattern"
        rationale.append(f"rule block_pattern: {kind} matches the blocked pattern {blocked!r} of policy {policy}")
    elif (
        template is not None
        and template.allow_patterns
        and not (verdict.parsed and _covers(template.allow_patterns, lines, verdict.programs))
    ):
        decision, rule = Decision.DENY, "allow_list"
        rationale.append(
            f"rule allow_list: policy {policy} only allows commands matching its allow patterns"
            f" ({', '.join(template.allow_patterns)}) and this one"
            + (" could not be fully parsed" if not verdict.parsed else " is not covered by them")
        )
    elif path_rule is not None:
        decision, rule = Decision.DENY, path_rule[0]
        rationale.append(f"rule {path_rule[0]}: {path_rule[1]} (policy {policy})")
    elif verdict.required_level > level:
        decision, rule = Decision.DENY, "level_cap"
        rationale.append(
            f"rule level_cap: probe level {level.value} is below the required level"
            f" {verdict.required_level.value} (indicators: {driving}; policy {policy})"
        )
    elif verdict.risk >= APPROVAL_THRESHOLD:
        rationale.append(f"probe level {level.value} allows level {verdict.required_level.value} (policy {policy})")
        preapproved = (
            template is not None
            and verdict.risk < Risk.CRITICAL
            and verdict.parsed
            and _covers(template.preapproved_patterns, lines, verdict.programs)
        )
        if preapproved and template is not None:
            decision, rule = Decision.ALLOW, "preapproved"
            rationale.append(
                f"rule preapproved: risk {verdict.risk.value} (indicators: {driving}) is at or above the approval"
                f" threshold ({APPROVAL_THRESHOLD.value}), but policy {policy} pre-approves it with"
                f" {', '.join(p for p in template.preapproved_patterns if any(_matches(p, ln) for ln in lines))}"
            )
        else:
            decision, rule = Decision.QUEUE, "approval_threshold"
            reason = " (critical is never pre-approved)" if verdict.risk >= Risk.CRITICAL else ""
            rationale.append(
                f"rule approval_threshold: risk {verdict.risk.value} (indicators: {driving}) is at or above the"
                f" approval threshold ({APPROVAL_THRESHOLD.value}): a human must approve it first"
                f" (policy {policy}){reason}"
            )
    else:
        rationale.append(f"probe level {level.value} allows level {verdict.required_level.value} (policy {policy})")
        rationale.append(
            f"rule below_threshold: risk {verdict.risk.value} (indicators: {driving}) is below the approval"
            f" threshold ({APPROVAL_THRESHOLD.value})"
        )
    rationale.append(f"requested by {actor}")
    return PolicyDecision(
        decision=decision,
        risk=verdict.risk.value,
        required_level=verdict.required_level.value,
        probe_level=level.value,
        policy_id=policy_id,
        parsed=verdict.parsed,
        programs=list(verdict.programs),
        indicators=[IndicatorRead(code=i.code, detail=i.detail, risk=i.risk.value) for i in verdict.indicators],
        rationale=rationale,
        rule=rule,
    )
