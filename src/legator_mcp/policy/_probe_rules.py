"""A template's command patterns in the probe's dialect, for the signed ``policy_update``.

The probe matches its patterns against the whole display line of a command, lower-cased (see
``legator_probe.agent.policy.command_line``), and treats a pattern without ``*?[`` as a prefix. The control plane
matches globs against each normalised simple command (program basename and arguments) and also accepts
``re:`` regular expressions. The translation keeps the probe from refusing what the control plane's rules
allow, while it still enforces every block pattern it can express:

* a block pattern without wildcards becomes an exact-match glob (``rm`` must not block ``rmdir``);
* a ``re:`` block pattern is left to the control plane (the probe has no regular expressions);
* allow patterns are sent only when every one is a glob, each also as ``*/<pattern>`` so an argv that names
  the program by path (``/bin/df -h``) is covered as the control plane's basename normalisation covers it.

Path rules are sent unchanged: both sides use the probe's path globs.
"""

from collections.abc import Sequence

from legator_mcp.policy.schemas import PolicyTemplateRead, ProbeRules

__all__ = ["probe_rules"]

_WILDCARDS = "*?["


def _exact(pattern: str) -> str | None:
    """A glob matching exactly ``pattern`` (which has no wildcards): one character in brackets."""
    for index in range(len(pattern) - 1, -1, -1):
        # ``[!]`` would open a negated set; any other single character in brackets is itself.
        if pattern[index] != "!":
            return f"{pattern[:index]}[{pattern[index]}]{pattern[index + 1 :]}"
    return None


def _block(patterns: Sequence[str]) -> list[str]:
    translated: list[str] = []
    for pattern in patterns:
        if pattern.startswith("re:"):
            continue
        glob = pattern if any(c in pattern for c in _WILDCARDS) else _exact(pattern)
        if glob is not None:
            translated.append(glob)
    return translated


def _allow(patterns: Sequence[str]) -> list[str]:
    if any(p.startswith("re:") for p in patterns):
        return []
    return [variant for p in patterns for variant in (p, f"*/{p}")]


def probe_rules(template: PolicyTemplateRead | None) -> ProbeRules:
    """The rules a probe with ``template`` enforces itself (none without a template)."""
    if template is None:
        return ProbeRules()
    return ProbeRules(
        allow_patterns=_allow(template.allow_patterns),
        block_patterns=_block(template.block_patterns),
        path_allow=list(template.path_allow),
        path_deny=list(template.path_deny),
    )
