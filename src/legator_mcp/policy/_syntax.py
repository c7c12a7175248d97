"""The parsed form of shell source: words, redirections, simple commands and scripts.

Nothing here parses; `_shell` lexes and `_parser` groups tokens. These types are what the rest of the
classifier reads.
"""

import re
from dataclasses import dataclass, field

MAX_DEPTH = 8
"""How deeply substitutions and nested `sh -c` strings are followed before giving up."""

DYNAMIC_MARK = "\x00"
"""Stands for an expansion inside `Word.template`."""

REDIRECTS = frozenset({"<", ">", ">>", ">|", "&>", "&>>", "<>", ">&", "<&", "<<", "<<-", "<<<"})
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
BRACE = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}")
GLOB = re.compile(r"[*?]|\[.*\]")
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}


@dataclass(frozen=True)
class Word:
    """One shell word after quote removal.

    Attributes:
        text: The literal value; expansions contribute nothing to it.
        raw: The source text, for messages.
        dynamic: True when an expansion makes the run-time value unknowable.
        prefix: The literal text before the first expansion (the whole text when not dynamic).
        chunks: The literal runs between expansions.
        template: `text` with each expansion replaced by `DYNAMIC_MARK`.
        glob: True when an unquoted pattern character could make the shell expand it.
        quoted: True when any quoting or escaping was present.
        brace: True when brace expansion (`{a,b}`, `{1..3}`) would apply.
        procsub: True for a process substitution `<(…)` / `>(…)`.
        assignment: True for `NAME=value` with an unquoted name.
    """

    text: str
    raw: str
    dynamic: bool = False
    prefix: str = ""
    chunks: tuple[str, ...] = ()
    template: str = ""
    glob: bool = False
    quoted: bool = False
    brace: bool = False
    procsub: bool = False
    assignment: bool = False

    @classmethod
    def literal(cls, text: str) -> "Word":
        """Build a word whose value is exactly `text` (an argv element, not shell source)."""
        return cls(text=text, raw=text, prefix=text, chunks=(text,), template=text)

    @classmethod
    def unknown(cls, raw: str, prefix: str = "") -> "Word":
        """Build one opaque argument whose value is only known at run time, starting with `prefix`."""
        return cls(
            text=prefix,
            raw=raw,
            dynamic=True,
            prefix=prefix,
            chunks=(prefix,),
            template=prefix + DYNAMIC_MARK,
            quoted=True,
        )


@dataclass
class HereDoc:
    """A here-document; its body is filled in when the lexer reaches the end of the line."""

    delimiter: str
    expands: bool
    strip_tabs: bool
    body: str = ""
    dynamic: bool = False


@dataclass(frozen=True)
class Op:
    """An operator token: control operators, redirections (with an optional fd) and here-documents."""

    op: str
    fd: int | None = None
    heredoc: HereDoc | None = None


@dataclass(frozen=True)
class Redirect:
    """A redirection attached to a simple command; `target` is None for here-documents."""

    op: str
    fd: int | None
    target: Word | None
    heredoc: HereDoc | None = None


@dataclass
class SimpleCommand:
    """One simple command with its assignments, redirections and position in pipes and functions."""

    words: list[Word] = field(default_factory=list[Word])
    assignments: list[Word] = field(default_factory=list[Word])
    redirects: list[Redirect] = field(default_factory=list[Redirect])
    piped_stdin: bool = False
    pipes_stdout: bool = False
    background: bool = False
    function: str | None = None


@dataclass
class Script:
    """The flattened result of parsing a script.

    Attributes:
        commands: Every simple command, in source order.
        subs: Scripts of command and process substitutions, which run as well.
        errors: What the parser could not follow; non-empty means "not parsed confidently".
        features: Constructs seen (`command_substitution`, `process_substitution`, `heredoc`, `subshell`).
        functions: Names of shell functions the script defines.
        pool: Literal material (words, assignment values, statically known substitution output)
            that a run-time command name could plausibly be built from.
    """

    commands: list[SimpleCommand] = field(default_factory=list[SimpleCommand])
    subs: list["Script"] = field(default_factory=list["Script"])
    errors: list[str] = field(default_factory=list[str])
    features: set[str] = field(default_factory=set[str])
    functions: set[str] = field(default_factory=set[str])
    pool: set[str] = field(default_factory=set[str])

    def walk(self) -> list["Script"]:
        """Return this script and every nested substitution script."""
        found: list[Script] = [self]
        for sub in self.subs:
            found.extend(sub.walk())
        return found


def decode_escapes(text: str, start: int = 0, *, stop: str | None = None) -> tuple[str, int]:
    r"""Decode ANSI-C escapes (`\x72`, `\155`, `\n`, …) from `start` up to an unescaped `stop`.

    Returns:
        The decoded text and the index just past `stop` (or the end of `text`).
    """
    out: list[str] = []
    pos = start
    while pos < len(text):
        char = text[pos]
        if stop is not None and char == stop:
            return "".join(out), pos + 1
        if char != "\\" or pos + 1 >= len(text):
            out.append(char)
            pos += 1
            continue
        code = text[pos + 1]
        pos += 2
        if code in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[code])
        elif code in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[code]
            digits = re.match(rf"[0-9a-fA-F]{{1,{width}}}", text[pos : pos + width])
            if digits:
                out.append(chr(min(int(digits.group(), 16), 0x10FFFF)))
                pos += len(digits.group())
            else:
                out.append("\\" + code)
        elif code in "01234567":
            digits = re.match(r"[0-7]{0,2}", text[pos : pos + 2])
            assert digits is not None
            out.append(chr(int(code + digits.group(), 8)))
            pos += len(digits.group())
        elif code == "c" and pos < len(text):
            out.append(chr(ord(text[pos]) & 0x1F))
            pos += 1
        else:
            out.append("\\" + code)
    return "".join(out), pos


def _expand_text(text: str) -> list[str]:
    match = BRACE.search(text)
    if match is None:
        return [text]
    body = match.group()[1:-1]
    head, tail = text[: match.start()], text[match.end() :]
    if "," in body:
        options = body.split(",")
    else:
        first, _, last = body.partition("..")
        if first.lstrip("-").isdigit() and last.lstrip("-").isdigit():
            low, high = int(first), int(last)
            step = 1 if high >= low else -1
            options = [str(n) for n in range(low, high + step, step)[:64]]
        elif len(first) == 1 and len(last) == 1:
            step = 1 if last >= first else -1
            options = [chr(n) for n in range(ord(first), ord(last) + step, step)[:64]]
        else:
            return [text]
    return [expanded for option in options for expanded in _expand_text(head + option + tail)]


def expand_braces(word: Word) -> list[Word]:
    """Apply brace expansion to a plain word; a quoted or dynamic one becomes a dynamic word."""
    if not word.brace:
        return [word]
    if word.quoted or word.dynamic:
        return [Word.unknown(word.raw)]
    return [
        Word(text=text, raw=text, prefix=text, chunks=(text,), template=text, glob=GLOB.search(text) is not None)
        for text in _expand_text(word.text)
    ]
