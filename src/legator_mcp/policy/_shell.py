"""A small POSIX-shell lexer and parser, deep enough to find every simple command a script would run.

It is not a shell: it never expands anything. Quotes and escapes are removed, so `r''m` and `\\rm`
read as `rm`, and every expansion (`$VAR`, `${…}`, `$(…)`, backticks, arithmetic) marks its word as
*dynamic*. Command and process substitutions, and backticks, are parsed recursively into `Script.subs`
because they run too. Control structures (`if`, `while`, `for`, `{ … }`, `( … )`, functions) are
flattened: the classifier takes the maximum over all simple commands, so which branch runs does not
matter. Whatever it cannot follow (`case`, `coproc`, unbalanced quotes or blocks, deep nesting) lands in
`Script.errors`, and the classifier treats it as unparseable.
"""

import re

from legator_mcp.policy._parser import build_script
from legator_mcp.policy._syntax import (
    ASSIGNMENT,
    BRACE,
    DYNAMIC_MARK,
    GLOB,
    MAX_DEPTH,
    HereDoc,
    Op,
    Script,
    Word,
    decode_escapes,
)

_META = frozenset(" \t\n|&;()<>")
_OPERATORS = (
    *(";;&", "&>>", "<<<", "<<-"),
    *(";;", ";&", "&&", "||", "|&", "&>", ">>", ">|", ">&", "<<", "<&", "<>", "<(", ">("),
    *("|", "&", ";", "(", ")", "<", ">"),
)
_PARAMETER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-]")
_PLAIN = re.compile(r"[^ \t\n|&;()<>\\'\"$`]+")


class _WordBuilder:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.template: list[str] = []
        self.unquoted: list[str] = []
        self.prefix: str | None = None
        self.quoted = False

    def lit(self, value: str, *, quoted: bool = False) -> None:
        self.text.append(value)
        self.template.append(value)
        if quoted:
            self.quoted = True
        else:
            self.unquoted.append(value)

    def expansion(self) -> None:
        if self.prefix is None:
            self.prefix = "".join(self.text)
        self.template.append(DYNAMIC_MARK)
        self.unquoted.append(DYNAMIC_MARK)

    def build(self, raw: str) -> Word:
        text = "".join(self.text)
        template = "".join(self.template)
        unquoted = "".join(self.unquoted)
        return Word(
            text=text,
            raw=raw,
            dynamic=self.prefix is not None,
            prefix=text if self.prefix is None else self.prefix,
            chunks=tuple(chunk for chunk in template.split(DYNAMIC_MARK) if chunk),
            template=template,
            glob=GLOB.search(unquoted) is not None,
            quoted=self.quoted,
            brace=BRACE.search(unquoted) is not None,
            assignment=ASSIGNMENT.match(raw) is not None,
        )


def _static_output(script: Script) -> list[str]:
    """Guess what a substitution prints when it is a lone `echo`, `printf`, `which` or `command -v`."""
    if len(script.commands) != 1 or script.subs:
        return []
    words = script.commands[0].words
    if not words or any(word.dynamic for word in words):
        return []
    name, args = words[0].text, [word.text for word in words[1:]]
    while name in ("echo", "printf") and args and args[0] in ("-n", "-e", "-E", "--"):
        args = args[1:]
    if name == "echo":
        return " ".join(args).split()
    if name == "printf" and args:
        formatted, _ = decode_escapes(args[0])
        for value in args[1:]:
            formatted = formatted.replace("%s", value, 1)
        return formatted.split()
    if name in ("which", "command", "type", "whereis"):
        return [arg.rsplit("/", 1)[-1] for arg in args if not arg.startswith("-")]
    return []


class _Lexer:
    def __init__(self, text: str, depth: int, pos: int = 0) -> None:
        self.text = text
        self.depth = depth
        self.pos = pos
        self.errors: list[str] = []
        self.subs: list[Script] = []
        self.features: set[str] = set()
        self.outputs: list[str] = []
        self._pending: list[HereDoc] = []

    def script(self, tokens: list[Word | Op]) -> Script:
        """Parse `tokens` into a script carrying what this lexer found."""
        lexed = Script(subs=self.subs, errors=self.errors, features=self.features)
        return build_script(tokens, lexed=lexed, outputs=self.outputs)

    def tokens(self, *, nested: bool) -> list[Word | Op]:
        """Tokenise until the end of the text or, when `nested`, the `)` closing a `$(`."""
        text = self.text
        found: list[Word | Op] = []
        parens = 0
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t":
                self.pos += 1
            elif char == "\\" and text.startswith("\n", self.pos + 1):
                self.pos += 2
            elif char == "\n":
                found.append(Op("\n"))
                self.pos += 1
                self._read_heredocs()
            elif char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif char in "|&;()<>":
                op = next(o for o in _OPERATORS if text.startswith(o, self.pos))
                if op in ("<(", ">("):
                    found.append(self._process_substitution())
                    continue
                self.pos += len(op)
                if op == "(":
                    parens += 1
                elif op == ")":
                    if nested and parens == 0:
                        return found
                    parens -= 1
                found.append(self._heredoc(op, None) if op in ("<<", "<<-") else Op(op))
            else:
                word = self._word()
                if (
                    word.raw.isdigit()
                    and text[self.pos : self.pos + 1] in ("<", ">")
                    and text[self.pos + 1 : self.pos + 2] != "("
                ):
                    op = next(o for o in _OPERATORS if text.startswith(o, self.pos))
                    self.pos += len(op)
                    fd = int(word.raw)
                    found.append(self._heredoc(op, fd) if op in ("<<", "<<-") else Op(op, fd))
                else:
                    found.append(word)
        if nested:
            self.errors.append("unterminated $(")
        return found

    def _absorb(self, other: "_Lexer") -> None:
        self.errors.extend(other.errors)
        self.subs.extend(other.subs)
        self.features |= other.features
        self.outputs.extend(other.outputs)

    def _add_sub(self, script: Script) -> None:
        self.subs.append(script)
        self.outputs.extend(_static_output(script))

    def _too_deep(self) -> bool:
        if self.depth + 1 > MAX_DEPTH:
            self.errors.append("substitutions nested too deeply")
            self.pos = len(self.text)
            return True
        return False

    def _nested(self) -> None:
        """Lex and parse a `$(…)` body starting at `self.pos`, leaving `self.pos` after its `)`."""
        if self._too_deep():
            return
        inner = _Lexer(self.text, self.depth + 1, self.pos)
        tokens = inner.tokens(nested=True)
        self.pos = inner.pos
        self._add_sub(inner.script(tokens))

    def _parse_text(self, source: str) -> None:
        if self._too_deep():
            return
        self._add_sub(parse_script(source, self.depth + 1))

    def _scan(self, content: str) -> bool:
        """Find substitutions inside double-quote-like text; return whether it expands anything."""
        if self.depth + 1 > MAX_DEPTH:
            self.errors.append("expansions nested too deeply")
            return True
        inner = _Lexer(content, self.depth + 1)
        builder = _WordBuilder()
        inner._double(builder, closer=None)
        self._absorb(inner)
        return builder.prefix is not None

    def _process_substitution(self) -> Word:
        start = self.pos
        self.pos += 2
        self._nested()
        self.features.add("process_substitution")
        raw = self.text[start : self.pos]
        return Word(text="", raw=raw, dynamic=True, chunks=(), template=DYNAMIC_MARK, procsub=True)

    def _heredoc(self, op: str, fd: int | None) -> Op:
        while self.text[self.pos : self.pos + 1] in (" ", "\t"):
            self.pos += 1
        if self.pos >= len(self.text) or self.text[self.pos] in _META:
            self.errors.append("here-document without a delimiter")
            return Op(op, fd)
        delimiter = self._word()
        heredoc = HereDoc(delimiter=delimiter.text, expands=not delimiter.quoted, strip_tabs=op == "<<-")
        self._pending.append(heredoc)
        self.features.add("heredoc")
        return Op(op, fd, heredoc)

    def _read_heredocs(self) -> None:
        text = self.text
        for heredoc in self._pending:
            lines: list[str] = []
            while self.pos < len(text):
                end = text.find("\n", self.pos)
                end = len(text) if end < 0 else end
                line = text[self.pos : end]
                self.pos = min(end + 1, len(text))
                if heredoc.strip_tabs:
                    line = line.lstrip("\t")
                if line == heredoc.delimiter:
                    break
                lines.append(line)
            heredoc.body = "".join(line + "\n" for line in lines)
            if heredoc.expands:
                heredoc.dynamic = self._scan(heredoc.body)
        self._pending.clear()

    def _word(self) -> Word:
        text = self.text
        start = self.pos
        builder = _WordBuilder()
        while self.pos < len(text):
            char = text[self.pos]
            if char in _META:
                break
            if char == "\\":
                following = text[self.pos + 1 : self.pos + 2]
                if following != "\n":
                    builder.lit(following or "\\", quoted=bool(following))
                self.pos += 2 if following else 1
            elif char == "'":
                end = text.find("'", self.pos + 1)
                if end < 0:
                    self.errors.append("unterminated single quote")
                    end = len(text)
                builder.lit(text[self.pos + 1 : end], quoted=True)
                self.pos = end + 1
            elif char == '"':
                self.pos += 1
                self._double(builder, closer='"')
            elif char == "$":
                self._dollar(builder, in_double=False)
            elif char == "`":
                self._backtick(builder, in_double=False)
            else:
                plain = _PLAIN.match(text, self.pos)
                run = plain.group() if plain else char
                builder.lit(run)
                self.pos += len(run)
        return builder.build(text[start : min(self.pos, len(text))])

    def _double(self, builder: _WordBuilder, *, closer: str | None) -> None:
        text = self.text
        builder.quoted = True
        while self.pos < len(text):
            char = text[self.pos]
            if char == closer:
                self.pos += 1
                return
            if char == "\\":
                following = text[self.pos + 1 : self.pos + 2]
                if following in ("$", "`", '"', "\\"):
                    builder.lit(following, quoted=True)
                    self.pos += 2
                elif following == "\n":
                    self.pos += 2
                else:
                    builder.lit("\\", quoted=True)
                    self.pos += 1
            elif char == "$":
                self._dollar(builder, in_double=True)
            elif char == "`":
                self._backtick(builder, in_double=True)
            else:
                builder.lit(char, quoted=True)
                self.pos += 1
        if closer is not None:
            self.errors.append("unterminated double quote")

    def _dollar(self, builder: _WordBuilder, *, in_double: bool) -> None:
        text = self.text
        start = self.pos
        following = text[start + 1 : start + 2]
        if following == "(":
            end = self._arithmetic_end(start + 1) if text.startswith("((", start + 1) else None
            if end is not None:
                self._scan(text[start + 3 : end - 1])
                self.pos = end + 1
            else:
                self.pos = start + 2
                self._nested()
                self.features.add("command_substitution")
            builder.expansion()
        elif following == "{":
            end = self._brace_end(start + 2)
            if end is None:
                self.errors.append("unterminated ${")
                end = len(text)
            self._scan(text[start + 2 : end])
            self.pos = end + 1
            builder.expansion()
        elif following == "'" and not in_double:
            decoded, self.pos = decode_escapes(text, start + 2, stop="'")
            builder.lit(decoded, quoted=True)
        elif following == '"' and not in_double:
            self.pos = start + 2
            self._double(builder, closer='"')
        elif match := _PARAMETER.match(text, start + 1):
            self.pos = match.end()
            builder.expansion()
        else:
            builder.lit("$", quoted=in_double)
            self.pos = start + 1

    def _arithmetic_end(self, start: int) -> int | None:
        depth = 0
        for index in range(start, len(self.text)):
            char = self.text[index]
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    return index if self.text[index - 1] == ")" else None
        return None

    def _brace_end(self, start: int) -> int | None:
        depth = 1
        index = start
        while index < len(self.text):
            char = self.text[index]
            if char == "\\":
                index += 1
            elif char == "'":
                close = self.text.find("'", index + 1)
                index = len(self.text) if close < 0 else close
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return index
            index += 1
        return None

    def _backtick(self, builder: _WordBuilder, *, in_double: bool) -> None:
        text = self.text
        index = self.pos + 1
        body: list[str] = []
        while index < len(text) and text[index] != "`":
            if text[index] == "\\" and index + 1 < len(text):
                following = text[index + 1]
                keep = following in "$`\\" or (in_double and following == '"')
                body.append(following if keep else "\\" + following)
                index += 2
            else:
                body.append(text[index])
                index += 1
        if index >= len(text):
            self.errors.append("unterminated backtick")
        self.pos = index + 1
        self._parse_text("".join(body))
        self.features.add("command_substitution")
        builder.expansion()


def parse_script(source: str, depth: int = 0) -> Script:
    """Parse shell source into its simple commands.

    Args:
        source: The script, as `sh -c` would receive it.
        depth: How deeply this script is nested in others (limits recursion).

    Returns:
        The flattened script; check `errors` before trusting it.
    """
    if depth > MAX_DEPTH:
        return Script(errors=["scripts nested too deeply"])
    lexer = _Lexer(source, depth)
    tokens = lexer.tokens(nested=False)
    return lexer.script(tokens)
