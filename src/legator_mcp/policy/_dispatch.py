"""The dispatcher: walks parsed scripts and argv lists and hands each program to its handler."""

import dataclasses
import fnmatch
import functools
import posixpath
import re

from legator_mcp.policy import _files, _interpreters, _kubectl, _net, _services, _system, _wrappers
from legator_mcp.policy._call import Call, Context, Handler, Stdin, check_environment
from legator_mcp.policy._core import Level, Risk, Verdict
from legator_mcp.policy._paths import NULL_SINKS, normalize, read_is_sensitive, write_risk
from legator_mcp.policy._shell import parse_script
from legator_mcp.policy._syntax import MAX_DEPTH, Redirect, Script, SimpleCommand, Word, expand_braces

HANDLERS: dict[str, Handler] = {
    **_wrappers.HANDLERS,
    **_interpreters.HANDLERS,
    **_files.HANDLERS,
    **_net.HANDLERS,
    **_services.HANDLERS,
    **_system.HANDLERS,
    **_kubectl.HANDLERS,
}
"""Every program the classifier knows, by normalised name."""

_ALIASES = (
    (re.compile(r"mkfs(\..+)?|mke2fs|mkfs\.\w+"), "mkfs"),
    (re.compile(r"fsck\..+|e2fsck"), "fsck"),
    (re.compile(r"(python|pypy)[0-9.]*[mdu]?"), "python"),
    (re.compile(r"pip[0-9.]*"), "pip"),
    (re.compile(r"perl[0-9.]*"), "perl"),
    (re.compile(r"ruby[0-9.]*"), "ruby"),
    (re.compile(r"php[0-9.]*"), "php"),
    (re.compile(r"lua[0-9.]*|luajit"), "lua"),
    (re.compile(r"(ip6?|eb|arp)tables(-legacy|-nft)?"), "iptables"),
    (re.compile(r"(ip6?|eb|arp)tables(-legacy|-nft)?-save"), "iptables-save"),
    (re.compile(r"(ip6?|eb|arp)tables(-legacy|-nft)?-restore"), "iptables-restore"),
)
_TRUSTED_DIRS = frozenset(
    {"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/usr/libexec", "/snap/bin"}
)
_INIT_SCRIPT = re.compile(r"^/etc/(rc\.d/)?init\.d/[^/]+$")


@functools.lru_cache(maxsize=4096)
def lookup(name: str) -> tuple[str, Handler] | None:
    """Find the handler for a normalised program name, and the name it is registered under."""
    handler = HANDLERS.get(name)
    if handler is not None:
        return name, handler
    for pattern, key in _ALIASES:
        if pattern.fullmatch(name):
            return key, HANDLERS[key]
    return None


class _Engine:
    def run_script(self, source: str, ctx: Context, verdict: Verdict) -> None:
        self.run_parsed(parse_script(source, ctx.depth), ctx, verdict)

    def run_parsed(self, script: Script, ctx: Context, verdict: Verdict) -> None:
        scripts = script.walk()
        cwds = set(ctx.cwds)
        functions = set(ctx.functions)
        # Only known programs can outrank the HIGH a run-time name already gets, so only they are kept.
        pool = set(ctx.pool) | {name for name in script.pool if lookup(posixpath.basename(name)) is not None}
        for part in scripts:
            for error in part.errors:
                verdict.unparsed("unparseable", error)
            for feature in sorted(part.features & {"command_substitution", "process_substitution"}):
                verdict.add(feature, f"script uses {feature.replace('_', ' ')}", Risk.LOW, Level.OBSERVE)
            functions |= part.functions
        for _ in range(3):  # `cd /usr; cd lib` reaches /usr/lib: follow relative cds a few steps
            cwds |= {target for part in scripts for target in _cd_targets(part, frozenset(cwds))}
        inner = dataclasses.replace(ctx, cwds=frozenset(cwds), functions=frozenset(functions), pool=frozenset(pool))
        for part in scripts:
            for command in part.commands:
                self.run_simple(
                    command, inner if part is script else dataclasses.replace(inner, stdin=Stdin()), verdict
                )

    def run_simple(self, command: SimpleCommand, ctx: Context, verdict: Verdict) -> None:
        stdin = Stdin("pipe") if command.piped_stdin else ctx.stdin
        for redirect in command.redirects:
            stdin = _redirect(redirect, ctx, verdict) or stdin
        untrusted = ctx.untrusted_path
        for assignment in command.assignments:
            name, _, value = assignment.text.partition("=")
            untrusted = check_environment(name.split("[")[0].rstrip("+"), value, verdict) or untrusted
        words = [expanded for word in command.words for expanded in expand_braces(word)]
        if not words:
            if command.assignments:
                verdict.add("shell_builtin", "variable assignment", Risk.LOW, Level.OBSERVE)
            return
        if (
            command.function is not None
            and not words[0].dynamic
            and words[0].text == command.function
            and (command.piped_stdin or command.pipes_stdout or command.background)
        ):
            verdict.add(
                "fork_bomb", f"function {command.function} spawns copies of itself", Risk.CRITICAL, Level.REMEDIATE
            )
        self.run_argv(words, dataclasses.replace(ctx, stdin=stdin, untrusted_path=untrusted), verdict)

    def run_argv(self, words: list[Word], ctx: Context, verdict: Verdict) -> None:
        if ctx.depth > 2 * MAX_DEPTH:
            verdict.unparsed("unparseable", "commands nested too deeply")
            return
        first = words[0]
        if first.dynamic or first.glob or first.brace or first.procsub:
            self._dynamic(words, ctx, verdict)
            return
        text = first.text
        name = posixpath.basename(text.rstrip("/")) if "/" in text else text
        verdict.program(name)
        if _INIT_SCRIPT.match(text):
            _services.init_script(Call(name, words[1:], ctx, verdict, self))
            return
        if "/" in text and posixpath.dirname(posixpath.normpath(text)) not in _TRUSTED_DIRS:
            verdict.add("unknown_program", f"{text} is outside the system directories", Risk.MEDIUM, Level.DIAGNOSE)
        elif "/" not in text and ctx.untrusted_path:
            verdict.add("unknown_program", f"{text} is looked up in an overridden PATH", Risk.MEDIUM, Level.DIAGNOSE)
        if "/" not in text and name in ctx.functions:
            verdict.add("function_call", f"calls shell function {name}", Risk.LOW, Level.OBSERVE)
            return
        found = lookup(name)
        if found is None:
            verdict.add("unknown_program", f"{name} is not a known program", Risk.MEDIUM, Level.DIAGNOSE)
            return
        key, handler = found
        handler(Call(key, words[1:], ctx, verdict, self))

    def _dynamic(self, words: list[Word], ctx: Context, verdict: Verdict) -> None:
        first = words[0]
        verdict.unparsed("dynamic_command", f"program name {first.raw} is only known at run time")
        if ctx.speculative:
            return
        names = set(ctx.pool)
        if first.glob and not first.dynamic:
            pattern = posixpath.basename(first.text)
            names |= {name for name in HANDLERS if fnmatch.fnmatchcase(name, pattern)}
        candidates = [[Word.literal(name), *words[1:]] for name in sorted(names)]
        pieces = " ".join(first.chunks).split()
        if pieces:
            candidates.append([Word.literal(piece) for piece in pieces] + words[1:])
        guess_ctx = dataclasses.replace(ctx, speculative=True, pool=frozenset())
        worst: tuple[list[Word], Verdict] | None = None
        for candidate in candidates[: max(verdict.guesses_left, 0)]:
            verdict.guesses_left -= 1
            guess = Verdict()
            self.run_argv(candidate, guess_ctx, guess)
            if worst is None or guess.risk > worst[1].risk:
                worst = (candidate, guess)
        if worst is not None and worst[1].risk > Risk.HIGH:
            shown = " ".join(word.raw for word in worst[0])[:60]
            verdict.merge(worst[1], prefix=f"if it runs {shown}: ")


ENGINE = _Engine()
"""The single dispatcher instance."""


def _cd_targets(script: Script, cwds: frozenset[str | None]) -> set[str | None]:
    """Every directory a `cd`/`pushd` in the script might move to; None when one is unknowable."""
    found: set[str | None] = set()
    for command in script.commands:
        if not command.words or command.words[0].text not in ("cd", "pushd"):
            continue
        operands = [word for word in command.words[1:] if not word.text.startswith("-") or word.dynamic]
        if not operands:
            found.add("~")
        elif operands[0].dynamic or operands[0].text == "-":
            found.add(None)
        else:
            found |= {normalize(operands[0].text, cwd) for cwd in cwds}
    return found


def _redirect(redirect: Redirect, ctx: Context, verdict: Verdict) -> Stdin | None:
    """Judge one redirection; return the standard input it provides, if any."""
    op, target = redirect.op, redirect.target
    if redirect.heredoc is not None:
        return Stdin("text", redirect.heredoc.body, redirect.heredoc.dynamic)
    assert target is not None
    if op == "<<<":
        return Stdin("text", target.text + "\n", target.dynamic)
    if op in ("<", "<&"):
        if op == "<" and (path := read_is_sensitive(target, ctx.cwds)) is not None:
            verdict.add("sensitive_path", f"input read from {path}", Risk.MEDIUM, Level.OBSERVE)
        return Stdin("file") if op == "<" and redirect.fd in (None, 0) else None
    if op == ">&" and not target.dynamic and (target.text.isdigit() or target.text == "-"):
        return None
    if target.procsub or (not target.dynamic and (target.text in NULL_SINKS or target.text.startswith("/dev/fd/"))):
        return None
    risk, code, path = write_risk(target, ctx.cwds)
    verdict.add("redirect_write", f"output redirected to {path}", max(risk, Risk.HIGH), Level.REMEDIATE)
    if code != "file_write":
        verdict.add(code, f"output redirected to {path}", risk, Level.REMEDIATE)
    if path in ("/proc/sysrq-trigger", "/sys/power/state"):
        verdict.add("power_state", f"writing {path} can reboot or halt the host", Risk.CRITICAL, Level.REMEDIATE)
    return Stdin("file") if op == "<>" and redirect.fd in (None, 0) else None
