"""Group tokens into simple commands, flattening control structures (see `_shell`)."""

from dataclasses import dataclass

from legator_mcp.policy._syntax import REDIRECTS, Op, Redirect, Script, SimpleCommand, Word


@dataclass
class _Block:
    closer: str
    piped: bool
    function: str | None


class _Parser:
    def __init__(self, tokens: list[Word | Op]) -> None:
        self.tokens = tokens
        self.index = 0
        self.commands: list[SimpleCommand] = []
        self.errors: list[str] = []
        self.functions: set[str] = set()
        self.features: set[str] = set()
        self.blocks: list[_Block] = []
        self.current = SimpleCommand()
        self.piped_next = False
        self.pending_function: str | None = None

    def run(self) -> None:
        while self.index < len(self.tokens):
            token = self.tokens[self.index]
            self.index += 1
            if isinstance(token, Word):
                self._word(token)
            else:
                self._op(token)
        self._finish()
        if self.blocks:
            self.errors.append(f"unterminated block, expected {self.blocks[-1].closer!r}")
        if self.pending_function is not None:
            self.errors.append(f"function {self.pending_function!r} has no body")

    def _peek(self, offset: int = 0) -> Word | Op | None:
        index = self.index + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def _peek_op(self, op: str, offset: int = 0) -> bool:
        token = self._peek(offset)
        return isinstance(token, Op) and token.op == op

    def _word(self, word: Word) -> None:
        current = self.current
        if current.words:
            current.words.append(word)
            return
        keyword = None if (word.quoted or word.dynamic or current.assignments or current.redirects) else word.text
        if keyword is not None and self._keyword(keyword, word):
            return
        if word.assignment:
            current.assignments.append(word)
        else:
            current.words.append(word)

    def _keyword(self, keyword: str, word: Word) -> bool:
        if keyword in ("if", "while", "until", "{"):
            self._open({"if": "fi", "{": "}"}.get(keyword, "done"))
        elif keyword in ("then", "else", "elif", "do", "!"):
            pass
        elif keyword in ("}", "fi", "done"):
            self._close(keyword)
        elif keyword in ("for", "select"):
            self._for()
        elif keyword == "function":
            name = self._peek()
            if not isinstance(name, Word):
                self.errors.append("function keyword without a name")
                return True
            self.index += 1
            if self._peek_op("(") and self._peek_op(")", 1):
                self.index += 2
            self._define(name.text)
        elif keyword in ("case", "esac", "coproc"):
            self.errors.append(f"unsupported construct {keyword!r}")
        elif keyword == "[[":
            while (token := self._peek()) is not None and not (isinstance(token, Word) and token.text == "]]"):
                self.index += 1
            if token is None:
                self.errors.append("unterminated [[")
            self.index += 1
            self.current.words.append(word)
        elif self._peek_op("(") and self._peek_op(")", 1):
            self.index += 2
            self._define(keyword)
        else:
            return False
        return True

    def _define(self, name: str) -> None:
        self.functions.add(name)
        self.pending_function = name

    def _for(self) -> None:
        if self._peek_op("("):
            while self._peek() is not None and not (self._peek_op(")") and self._peek_op(")", 1)):
                self.index += 1
            self.index += 2
        else:
            self.index += 1  # the loop variable
            token = self._peek()
            if isinstance(token, Word) and token.text == "in":
                while isinstance(self._peek(), Word):
                    self.index += 1
        self._open("done")

    def _open(self, closer: str) -> None:
        self.blocks.append(_Block(closer, self.piped_next, self.pending_function))
        if closer == ")":
            self.features.add("subshell")
        self.piped_next = False
        self.pending_function = None

    def _close(self, closer: str) -> None:
        if not self.blocks or self.blocks[-1].closer != closer:
            self.errors.append(f"unexpected {closer!r}")
            return
        self.blocks.pop()

    def _op(self, token: Op) -> None:
        op = token.op
        if op in REDIRECTS:
            if token.heredoc is not None:
                self.current.redirects.append(Redirect(op, token.fd, None, token.heredoc))
                return
            target = self._peek()
            if not isinstance(target, Word):
                self.errors.append(f"redirection {op!r} without a target")
                return
            self.index += 1
            self.current.redirects.append(Redirect(op, token.fd, target))
        elif op in ("|", "|&"):
            self._finish(pipe=True)
        elif op == "&":
            self._finish(background=True)
        elif op in (";", "\n", "&&", "||"):
            self._finish()
        elif op == "(":
            current = self.current
            if not current.words and current.assignments and current.assignments[-1].raw.endswith("="):
                self._array_value()
            elif current.words or current.assignments or current.redirects:
                self.errors.append("unexpected '('")
            else:
                self._open(")")
        elif op == ")":
            self._finish()
            self._close(")")
        else:
            self.errors.append(f"unsupported operator {op!r}")

    def _array_value(self) -> None:
        """Skip the elements of `name=(a b c)`; their substitutions were already lexed."""
        while (token := self._peek()) is not None and not (isinstance(token, Op) and token.op == ")"):
            self.index += 1
        if token is None:
            self.errors.append("unterminated array assignment")
        self.index += 1

    def _finish(self, *, pipe: bool = False, background: bool = False) -> None:
        current = self.current
        if current.words or current.assignments or current.redirects:
            current.piped_stdin = self.piped_next or any(block.piped for block in self.blocks)
            current.pipes_stdout = pipe
            current.background = background
            current.function = next((b.function for b in reversed(self.blocks) if b.function), None)
            self.commands.append(current)
            self.current = SimpleCommand()
        self.piped_next = pipe


def build_script(tokens: list[Word | Op], *, lexed: Script, outputs: list[str]) -> Script:
    """Parse a token list into a `Script`.

    Args:
        tokens: The lexer's output.
        lexed: What the lexer found on the way: substitution scripts, errors and features.
        outputs: Statically known output of substitutions, added to the name pool.

    Returns:
        The script, with lexer and parser findings combined.
    """
    parser = _Parser(tokens)
    parser.run()
    pool: set[str] = set(outputs)
    for token in tokens:
        if isinstance(token, Word):
            pool.update(token.chunks)
            if token.assignment:
                value = token.text.split("=", 1)[1]
                pool.add(value)
                pool.update(value.split())
    for sub in lexed.subs:
        pool |= sub.pool
    pool.discard("")
    return Script(
        commands=parser.commands,
        subs=lexed.subs,
        errors=lexed.errors + parser.errors,
        features=lexed.features | parser.features,
        functions=parser.functions,
        pool=pool,
    )
