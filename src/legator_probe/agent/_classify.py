"""A small, conservative classifier of shell and kubectl command lines.

It answers one question for the probe's own policy check: what is the lowest capability level at
which this command is harmless? Only commands it understands get ``observe`` or ``diagnose``;
anything it does not recognise, or cannot see through (shell expansions, redirections into files,
background jobs, programs outside the system directories, environment overrides), needs
``remediate``. It also reports which paths a read-only command reads or lists, so path rules can
refuse ``cat /etc/shadow`` as they refuse a ``file_read`` of it.

The control plane runs a far richer classifier; this one only has to be right when it says "safe".
"""

import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from legator_probe.agent._shell_rules import RULES, Access, AccessMode, Context, NeedsRemediate
from legator_probe.protocol.commands import ShellSpec
from legator_probe.protocol.types import CapabilityLevel

__all__ = [
    "LEVEL_RANK",
    "Access",
    "AccessMode",
    "Classification",
    "classify_kubectl",
    "classify_shell",
    "max_level",
]

LEVEL_RANK: Final[dict[CapabilityLevel, int]] = {"observe": 1, "diagnose": 2, "remediate": 3}
"""Order of capability levels."""


@dataclass(frozen=True, slots=True)
class Classification:
    """The level a command needs, why, and the paths it touches."""

    level: CapabilityLevel
    reason: str
    accesses: tuple[Access, ...] = ()


def max_level(*levels: CapabilityLevel) -> CapabilityLevel:
    """Return the highest of the given levels (``observe`` for none)."""
    highest: CapabilityLevel = "observe"
    for level in levels:
        if LEVEL_RANK[level] > LEVEL_RANK[highest]:
            highest = level
    return highest


_SYSTEM_BIN_DIRS: Final = frozenset({"/bin", "/sbin", "/usr/bin", "/usr/sbin"})
_SAFE_ENV: Final = frozenset({"LANG", "LANGUAGE", "TZ", "TERM", "COLUMNS", "LINES", "NO_COLOR"})
_SEPARATORS: Final = frozenset({"|", "||", "&&", ";", "(", ")", "|&", "\n"})


def _program_name(word: str) -> str:
    if "/" not in word:
        return word
    directory, name = posixpath.split(posixpath.normpath(word))
    if directory not in _SYSTEM_BIN_DIRS:
        raise NeedsRemediate("program outside the system directories")
    return name


def _simple_command(words: list[str], ctx: Context) -> CapabilityLevel:
    if not words:
        return "observe"
    first = words[0]
    if "=" in first and not first.startswith(("=", "/")):
        raise NeedsRemediate("environment assignment before a command")
    name = _program_name(first)
    if name == "kubectl":
        verdict = classify_kubectl(words[1:])
        if verdict.level == "remediate":
            raise NeedsRemediate(verdict.reason)
        return verdict.level
    rule = RULES.get(name)
    if rule is None:
        raise NeedsRemediate(f"{name!r} is not a known read-only program")
    return rule(words[1:], ctx)


def _expands(script: str) -> bool:
    """Whether ``script`` has ``$``, a backquote, or a comment outside single quotes."""
    quote: str | None = None
    escaped = False
    previous = " "
    for char in script:
        if escaped:
            escaped = False
        elif quote == "'":
            if char == "'":
                quote = None
        elif char == "\\":
            escaped = True
        elif char in "$`":
            return True
        elif quote == '"':
            if char == '"':
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and previous in " \t\n;|&()":
            return True
        previous = char
    return quote is not None or escaped


def _script_words(script: str) -> list[str]:
    lexer = shlex.shlex(script.replace("\\\n", "").replace("\n", " ; "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def _split_script(script: str, ctx: Context) -> list[list[str]]:
    if any(ord(char) < 0x20 and char not in "\t\n" for char in script):
        raise NeedsRemediate("control characters in the script")
    if _expands(script):
        raise NeedsRemediate("shell expansion ($, backquotes) or comments the classifier cannot see through")
    try:
        tokens = _script_words(script)
    except ValueError:
        raise NeedsRemediate("unbalanced quoting") from None
    commands: list[list[str]] = [[]]
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        target = tokens[index] if index < len(tokens) else ""
        if token in _SEPARATORS:
            commands.append([])
        elif token in (">", ">>", "&>", ">|", "&>>", "<>"):
            if target != "/dev/null":
                raise NeedsRemediate("output redirection into a file")
            index += 1
        elif token in (">&", "<&"):
            if not (target.isdigit() or target == "-"):
                raise NeedsRemediate("redirection into a file")
            index += 1
        elif token == "<":
            ctx.touch(target, "read")
            index += 1
        elif token and set(token) <= set("<>&|;()"):
            raise NeedsRemediate(f"shell operator {token!r} (background jobs, here-documents)")
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def classify_shell(spec: ShellSpec, *, default_cwd: str) -> Classification:
    """Classify a ``shell`` command (``argv`` or ``sh -c script``).

    Args:
        spec: The command.
        default_cwd: Working directory used when ``spec.cwd`` is not set (relative paths resolve against it).

    Returns:
        The level the command needs, the reason, and the paths it reads or lists.
    """
    cwd = spec.cwd or default_cwd
    ctx = Context(cwds=[cwd], expand_globs=spec.script is not None, accesses=[])
    try:
        unsafe_env = sorted(name for name in spec.env if name not in _SAFE_ENV and not name.startswith("LC_"))
        if unsafe_env:
            raise NeedsRemediate(f"environment override of {', '.join(unsafe_env)}")
        ctx.touch(cwd, "list")
        commands = [list(spec.argv)] if spec.argv is not None else _split_script(spec.script or "", ctx)
        levels: list[CapabilityLevel] = [_simple_command(command, ctx) for command in commands]
    except NeedsRemediate as exc:
        return Classification("remediate", str(exc), tuple(ctx.accesses))
    level = max_level(*levels)
    names = ", ".join(dict.fromkeys(command[0] for command in commands)) or "nothing"
    return Classification(level, f"known {level}-level programs: {names}", tuple(ctx.accesses))


# --- kubectl --------------------------------------------------------------------------------

_KUBECTL_VALUED: Final = frozenset(
    "-n --namespace --context --cluster --user --username --password -s --server --kubeconfig --token --as "
    "--as-group --as-uid --request-timeout --cache-dir --certificate-authority --client-certificate "
    "--client-key --tls-server-name --profile -v --v --vmodule -l --selector -o --output -c --container "
    "--field-selector --tail --since --since-time --sort-by --template -L --label-columns".split()
)
_KUBECTL_READ: Final = frozenset(
    "get describe logs top events explain api-resources api-versions version cluster-info wait".split()
)
_KUBECTL_SUB_READ: Final = {
    "config": frozenset({"view", "get-contexts", "current-context", "get-clusters", "get-users"}),
    "auth": frozenset({"can-i", "whoami"}),
    "rollout": frozenset({"status", "history"}),
}


def _kubectl_words(argv: Sequence[str]) -> list[str]:
    """The positional words of a kubectl command line, skipping options and their values."""
    words: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            words.extend(argv[index:])
            break
        if arg.startswith("-"):
            if "=" not in arg and arg in _KUBECTL_VALUED:
                index += 1
            continue
        words.append(arg)
    return words


def classify_kubectl(argv: Sequence[str]) -> Classification:
    """Classify a kubectl command line (without ``kubectl`` itself): read verbs ``diagnose``, else ``remediate``."""
    words = _kubectl_words(argv)
    verb = words[0] if words else ""
    options = {arg.split("=", 1)[0] for arg in argv if arg.startswith("-")}
    if options & {"--log-file", "--profile-output", "--log-dir"}:
        return Classification("remediate", "kubectl writing files")
    if verb in _KUBECTL_SUB_READ:
        sub = words[1] if len(words) > 1 else ""
        if sub not in _KUBECTL_SUB_READ[verb] or (verb == "config" and "--raw" in options):
            return Classification("remediate", f"kubectl {verb} {sub}".strip() + " may change state or reveal keys")
        return Classification("diagnose", f"kubectl {verb} {sub} only reads")
    if verb not in _KUBECTL_READ:
        return Classification("remediate", f"kubectl {verb or '(no verb)'} is not a read verb")
    if verb == "cluster-info" and "dump" in words:
        return Classification("remediate", "kubectl cluster-info dump writes files")
    targets = [word.lower() for word in words[1:]] + [arg.lower() for arg in argv if arg.startswith("/")]
    if any("secret" in target for target in targets):
        return Classification("remediate", "kubectl reading Secrets")
    return Classification("diagnose", f"kubectl {verb} only reads")
