"""What a program handler sees: the call being classified, its context, and an option parser."""

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from legator_mcp.policy import _paths
from legator_mcp.policy._core import Level, Risk, Verdict
from legator_mcp.policy._syntax import DYNAMIC_MARK, Word


@dataclass(frozen=True)
class Stdin:
    """Where a command's standard input comes from.

    Attributes:
        kind: `none` (nothing useful), `pipe` (another command's output), `file` (a redirect) or `text`
            (a here-document or here-string whose body is `text`).
        text: The body for `text`.
        dynamic: True when the body contains expansions.
    """

    kind: Literal["none", "pipe", "file", "text"] = "none"
    text: str = ""
    dynamic: bool = False


@dataclass(frozen=True)
class Context:
    """Everything about the surroundings of a command that changes how it is judged.

    Attributes:
        depth: Nesting depth of wrappers and inner scripts.
        cwds: Every working directory the command might run in; None stands for "unknown".
        pool: Literal words a run-time command name could be built from.
        functions: Shell functions defined by the enclosing script.
        stdin: Where standard input comes from.
        untrusted_path: True when PATH was overridden, so bare names may not be the system tools.
        speculative: True while evaluating a guess for a run-time command name.
    """

    depth: int = 0
    cwds: frozenset[str | None] = frozenset({None})
    pool: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    stdin: Stdin = field(default_factory=Stdin)
    untrusted_path: bool = False
    speculative: bool = False


class Engine(Protocol):
    """The dispatcher, as handlers see it: it classifies nested commands and scripts."""

    def run_argv(self, words: list[Word], ctx: Context, verdict: Verdict) -> None: ...

    def run_script(self, source: str, ctx: Context, verdict: Verdict) -> None: ...


@dataclass
class Options:
    """Parsed command-line options.

    Attributes:
        flags: Short letters and long names (without dashes), in order.
        values: Option values by letter or long name.
        operands: Non-option arguments (with `stop_at_operand`, the first one and all that follow).
        dynamic: True when a run-time word might have been an option.
    """

    flags: list[str] = field(default_factory=list[str])
    values: dict[str, list[Word]] = field(default_factory=dict[str, list[Word]])
    operands: list[Word] = field(default_factory=list[Word])
    dynamic: bool = False

    def has(self, *names: str) -> bool:
        """Tell whether any option in `names` was given; long names match GNU-style abbreviations."""
        for name in names:
            if len(name) == 1:
                if name in self.flags:
                    return True
            elif any(len(flag) > 1 and name.startswith(flag) for flag in self.flags):
                return True
        return False

    def value(self, *names: str) -> Word | None:
        """Return the last value given for any option in `names`."""
        found = [word for name in names for word in self.values.get(name, [])]
        return found[-1] if found else None


def parse_options(
    args: Sequence[Word],
    short_args: str = "",
    long_args: Sequence[str] = (),
    *,
    stop_at_operand: bool = False,
) -> Options:
    """Parse GNU-style options.

    Args:
        args: The words after the program name.
        short_args: Short option letters that take a value (`-n 5` or `-n5`).
        long_args: Long option names that take a value (`--name value` or `--name=value`).
        stop_at_operand: Stop at the first operand, as wrappers like `nice` or `sudo` do.

    Returns:
        The parsed options.
    """
    options = Options()
    index = 0
    while index < len(args):
        word = args[index]
        text = word.prefix if word.dynamic else word.text
        index += 1
        if word.dynamic and not word.quoted and not text:
            options.dynamic = True  # an unquoted `$FLAGS` may split into options
        if text == "--" and not word.dynamic:
            options.operands.extend(args[index:])
            break
        if not text.startswith("-") or text == "-":
            options.operands.append(word)
            if stop_at_operand:
                options.operands.extend(args[index:])
                break
            continue
        if text.startswith("--"):
            name, equals, value = text[2:].partition("=")
            known = next((long for long in long_args if long.startswith(name)), None) if name else None
            key = known or name
            options.flags.append(key)
            if equals:
                options.values.setdefault(key, []).append(Word.literal(value))
            elif known is not None and index < len(args):
                options.values.setdefault(key, []).append(args[index])
                index += 1
            continue
        letters = text[1:]
        for position, letter in enumerate(letters):
            options.flags.append(letter)
            if letter in short_args:
                attached = letters[position + 1 :]
                if attached:
                    options.values.setdefault(letter, []).append(Word.literal(attached))
                elif index < len(args):
                    options.values.setdefault(letter, []).append(args[index])
                    index += 1
                break
    return options


@dataclass
class Call:
    """One program invocation being classified.

    Attributes:
        name: The normalised program name (basename, quotes removed).
        args: The words after the program name.
        ctx: The surroundings.
        verdict: Where findings go.
        engine: The dispatcher, for nested commands.
    """

    name: str
    args: list[Word]
    ctx: Context
    verdict: Verdict
    engine: Engine

    @property
    def shown(self) -> str:
        """The invocation as a short string for messages."""
        text = " ".join([self.name, *(word.raw for word in self.args)])
        return text if len(text) <= 80 else text[:77] + "..."

    def add(self, code: str, detail: str, risk: Risk, level: Level) -> None:
        """Record a finding."""
        self.verdict.add(code, detail, risk, level)

    def read_only(self, detail: str | None = None, operands: Sequence[Word] | None = None) -> None:
        """Record a read-only use, flagging operands that are sensitive paths."""
        self.add("read_only", detail or self.shown, Risk.LOW, Level.OBSERVE)
        self.check_reads(self.args if operands is None else operands)

    def check_reads(self, words: Sequence[Word]) -> None:
        """Flag reads of secrets (private keys, shadow files) among `words`."""
        for word in words:
            path = _paths.read_is_sensitive(word, self.ctx.cwds)
            if path is not None:
                self.add("sensitive_path", f"{self.name} reads {path}", Risk.MEDIUM, Level.OBSERVE)

    def write(self, word: Word, *, floor: Risk = Risk.MEDIUM, code: str = "file_write") -> None:
        """Record a write to the file named by `word`; the path policy may raise the risk."""
        if not word.dynamic and word.text in _paths.NULL_SINKS:
            return
        risk, path_code, path = _paths.write_risk(word, self.ctx.cwds)
        self.add(code, f"{self.name} writes {path}", max(risk, floor), Level.REMEDIATE)
        if path_code not in ("file_write", code):
            self.add(path_code, f"{self.name} writes {path}", risk, Level.REMEDIATE)

    def unparsed(self, code: str, detail: str, risk: Risk = Risk.HIGH) -> None:
        """Record something whose effect cannot be known statically."""
        self.verdict.unparsed(code, detail, risk)

    def run(
        self,
        words: Sequence[Word],
        *,
        stdin: Stdin | None = None,
        cwds: frozenset[str | None] | None = None,
        untrusted_path: bool = False,
    ) -> None:
        """Classify a command this one runs (`sudo rm …` runs `rm …`); `words` must not be empty."""
        ctx = dataclasses.replace(
            self.ctx,
            depth=self.ctx.depth + 1,
            stdin=self.ctx.stdin if stdin is None else stdin,
            cwds=self.ctx.cwds if cwds is None else cwds,
            untrusted_path=self.ctx.untrusted_path or untrusted_path,
            functions=frozenset(),  # exec'd programs never resolve to shell functions
        )
        self.engine.run_argv(list(words), ctx, self.verdict)

    def run_script(self, word: Word, *, stdin: Stdin | None = None) -> None:
        """Classify a shell script passed as one word (`sh -c '…'`, `eval`, `su -c`)."""
        ctx = dataclasses.replace(
            self.ctx,
            depth=self.ctx.depth + 1,
            stdin=self.ctx.stdin if stdin is None else stdin,
            functions=frozenset(),  # a new shell (or, conservatively, eval) sees the real programs
        )
        if word.dynamic:
            self.unparsed("dynamic_command", f"{self.name} runs shell code built at run time: {word.raw}")
            self.engine.run_script(word.template.replace(DYNAMIC_MARK, "${_}"), ctx, self.verdict)
        else:
            self.engine.run_script(word.text, ctx, self.verdict)

    def run_stdin_script(self, interpreter: str) -> None:
        """Classify a shell that reads its program from standard input."""
        stdin = self.ctx.stdin
        if stdin.kind == "pipe":
            self.unparsed("shell_pipe_to_interpreter", f"{interpreter} runs whatever is piped into it", Risk.CRITICAL)
        elif stdin.kind == "text" and stdin.dynamic:
            self.unparsed(
                "shell_pipe_to_interpreter", f"{interpreter} runs a here-document built at run time", Risk.CRITICAL
            )
        elif stdin.kind == "text":
            self.run_script(Word.literal(stdin.text), stdin=Stdin())
        elif stdin.kind == "file":
            self.unparsed("arbitrary_code", f"{interpreter} runs commands read from a file")
        else:
            self.unparsed("arbitrary_code", f"{interpreter} starts an interactive shell")


Handler = Callable[[Call], None]
"""A function that classifies one program's invocation."""

_INJECTION_VARIABLES = frozenset(
    {
        *("LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "BASH_ENV", "ENV", "PROMPT_COMMAND", "SHELLOPTS"),
        *("BASHOPTS", "PS4", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PERL5OPT", "PERL5LIB", "RUBYOPT"),
        *("RUBYLIB", "NODE_OPTIONS", "GIT_SSH_COMMAND", "GIT_EXEC_PATH", "GIT_CONFIG_GLOBAL", "LESSOPEN"),
    }
)


def check_environment(name: str, value: str, verdict: Verdict) -> bool:
    """Judge one environment assignment; return True when it overrides PATH."""
    if name in _INJECTION_VARIABLES:
        verdict.add("arbitrary_code", f"{name} can inject code into the program", Risk.HIGH, Level.REMEDIATE)
    elif name == "PATH":
        verdict.add("environment_override", f"PATH set to {value}", Risk.MEDIUM, Level.DIAGNOSE)
        return True
    return False


def joined(words: Sequence[Word]) -> Word:
    """Join words with spaces into one script word, as `ssh`, `watch` and `eval` do."""
    text = " ".join(word.text for word in words)
    if not any(word.dynamic for word in words):
        return Word.literal(text)
    template = " ".join(word.template for word in words)
    return Word(text=text, raw=" ".join(word.raw for word in words), dynamic=True, template=template)


"""A function that classifies one program's invocation."""
