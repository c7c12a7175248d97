"""Shells, interpreters and shell builtins that run code: `sh -c`, `python -c`, `eval`, `source`, `alias`.

Shells are followed into their `-c` strings, here-documents and here-strings. Other languages are
opaque, so inline code or a script file counts as `arbitrary_code`, and code piped into any
interpreter is CRITICAL.
"""

from dataclasses import dataclass

from legator_mcp.policy._call import Call, Handler, check_environment, joined, parse_options
from legator_mcp.policy._core import Level, Risk
from legator_mcp.policy._syntax import Word
from legator_mcp.policy._wrappers import wrapped

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "rbash", "lksh", "posh", "yash"})
_STDIN_FILES = frozenset({"/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"})
_BUILTINS = frozenset(
    {
        *("cd", "pushd", "popd", "dirs", "unset", "set", "shopt", "shift", "read", "wait", "exit", "return"),
        *("break", "continue", "true", "false", ":", "test", "[", "[[", "hash", "ulimit", "umask", "times"),
        *("jobs", "fg", "bg", "disown", "let", "getopts", "history", "help", "caller", "logout", "complete"),
        *("compgen", "bind", "suspend", "sleep"),
    }
)
_ASSIGNING_BUILTINS = frozenset({"export", "declare", "typeset", "local", "readonly"})


def shell(call: Call) -> None:
    """POSIX-family shells: follow `-c` strings; script files and stdin are judged by their source."""
    args = call.args
    index = 0
    command_mode = stdin_mode = False
    while index < len(args):
        word = args[index]
        text = word.text
        if word.dynamic:
            break
        if text in ("--version", "--help") and len(args) == 1:
            call.read_only()
            return
        if text in ("-", "--"):
            index += 1
            stdin_mode = stdin_mode or text == "-"
            break
        if text.startswith("--"):
            index += 2 if text in ("--rcfile", "--init-file") else 1
        elif len(text) > 1 and text[0] in "-+":
            command_mode = command_mode or (text[0] == "-" and "c" in text)
            stdin_mode = stdin_mode or "s" in text
            index += 2 if ("o" in text or "O" in text) else 1
        else:
            break
    operands = args[index:]
    if command_mode:
        if not operands:
            call.read_only(f"{call.name} -c without a script does nothing")
            return
        call.add("wrapper", f"{call.name} -c runs a script", Risk.LOW, Level.OBSERVE)
        call.run_script(operands[0])
    elif operands and not stdin_mode:
        _script_file(call, operands[0])
    else:
        call.run_stdin_script(call.name)


def _script_file(call: Call, script: Word) -> None:
    if script.procsub:
        call.unparsed("shell_pipe_to_interpreter", f"{call.name} runs code produced by {script.raw}", Risk.CRITICAL)
    elif not script.dynamic and script.text in _STDIN_FILES:
        _code_from_stdin(call)
    else:
        call.unparsed("arbitrary_code", f"{call.name} runs the script {script.raw}, whose contents are unknown")


def _code_from_stdin(call: Call) -> None:
    if call.name in SHELLS or call.name == "source" or call.name == ".":
        call.run_stdin_script(call.name)
    elif call.ctx.stdin.kind == "pipe":
        call.unparsed("shell_pipe_to_interpreter", f"{call.name} runs whatever is piped into it", Risk.CRITICAL)
    else:
        call.unparsed("arbitrary_code", f"{call.name} runs code from standard input")


@dataclass(frozen=True)
class _Interpreter:
    code: frozenset[str]
    letters: str = ""
    valued: frozenset[str] = frozenset()
    version: frozenset[str] = frozenset({"-v", "--version", "-V", "-h", "--help"})


_INTERPRETERS: dict[str, _Interpreter] = {
    "python": _Interpreter(
        frozenset({"-c"}), "c", frozenset({"-W", "-X", "-Q"}), frozenset({"-V", "--version", "-VV", "-h", "--help"})
    ),
    "perl": _Interpreter(frozenset({"-e", "-E"}), "eE", frozenset({"-I", "-M", "-m"})),
    "ruby": _Interpreter(frozenset({"-e"}), "e", frozenset({"-I", "-r"})),
    "node": _Interpreter(frozenset({"-e", "--eval", "-p", "--print"}), "", frozenset({"-r", "--require"})),
    "php": _Interpreter(frozenset({"-r", "-B", "-R", "-F", "-E"}), "r", frozenset({"-d", "-c", "-z"})),
    "lua": _Interpreter(frozenset({"-e"}), "e", frozenset({"-l"})),
    "Rscript": _Interpreter(frozenset({"-e"})),
    "osascript": _Interpreter(frozenset({"-e"})),
    "tclsh": _Interpreter(frozenset()),
    "fish": _Interpreter(frozenset({"-c", "--command"}), "c"),
    "csh": _Interpreter(frozenset({"-c"}), "c"),
    "tcsh": _Interpreter(frozenset({"-c"}), "c"),
    "pwsh": _Interpreter(frozenset({"-c", "-Command", "-command", "-EncodedCommand", "-e", "-ec"})),
    "nu": _Interpreter(frozenset({"-c", "--commands"}), "c"),
}
_INTERPRETERS["nodejs"] = _INTERPRETERS["node"]
_INTERPRETERS["powershell"] = _INTERPRETERS["pwsh"]
_SAFE_PYTHON_MODULES = frozenset({"json.tool", "platform", "sysconfig", "site", "tabnanny", "pydoc", "calendar"})


def interpreter(call: Call) -> None:
    """Interpreters of other languages: inline code and script files are opaque."""
    key = call.name  # versioned names (python3.11, perl5.36) arrive under their family name
    spec = _INTERPRETERS[key]
    args = call.args
    index = 0
    while index < len(args):
        text = args[index].prefix
        if text == "--":
            index += 1
            break
        if not text.startswith("-") or text == "-":
            break
        if text in spec.version and len(args) == 1:
            call.read_only()
            return
        short = not text.startswith("--") and len(text) > 1
        if text in spec.code or (short and any(letter in text[1:] for letter in spec.letters)):
            call.unparsed("arbitrary_code", f"{call.name} runs inline code")
            return
        if key == "python" and short and "m" in text[1:]:
            _python_module(call, text, args[index + 1 :])
            return
        index += 2 if text in spec.valued else 1
    operands = args[index:]
    if operands and operands[0].text != "-":
        _script_file(call, operands[0])
    else:
        _code_from_stdin(call)


def _python_module(call: Call, option: str, rest: list[Word]) -> None:
    attached = option.split("m", 1)[1]
    module = attached or (rest[0].text if rest else "")
    arguments = rest if attached else rest[1:]
    if module == "pip":
        wrapped(call, [Word.literal("pip"), *arguments])
    elif module in _SAFE_PYTHON_MODULES:
        call.read_only(f"{call.name} -m {module}")
    else:
        call.unparsed("arbitrary_code", f"{call.name} runs module {module or '?'}")


def eval_builtin(call: Call) -> None:
    """`eval args` joins its arguments and runs them as shell code."""
    if call.args:
        call.add("wrapper", "eval runs its arguments as shell code", Risk.LOW, Level.OBSERVE)
        call.run_script(joined(call.args))


def source(call: Call) -> None:
    """`source file` / `. file` runs a file's commands in the current shell."""
    if not call.args:
        call.read_only(f"{call.name} without a file does nothing")
        return
    _script_file(call, call.args[0])


def alias(call: Call) -> None:
    """`alias name='cmd'`: judge the aliased command as if it ran (dash expands aliases in scripts)."""
    call.add("shell_builtin", call.shown, Risk.LOW, Level.OBSERVE)
    for word in call.args:
        if "=" in word.template:
            value = word.template.split("=", 1)[1]
            text = word.text.split("=", 1)[1] if "=" in word.text else ""
            call.run_script(Word(text=text, raw=word.raw, dynamic=word.dynamic, template=value))


def trap(call: Call) -> None:
    """`trap 'cmd' SIGNAL` runs cmd when the signal arrives."""
    call.add("shell_builtin", call.shown, Risk.LOW, Level.OBSERVE)
    operands = [word for word in call.args if word.text not in ("-p", "-l", "--")]
    if len(operands) > 1 and operands[0].text not in ("-", ""):
        call.run_script(operands[0])


def builtin(call: Call) -> None:
    """Shell builtins that only affect the shell itself."""
    call.add("shell_builtin", call.shown, Risk.LOW, Level.OBSERVE)
    if call.name in _ASSIGNING_BUILTINS:
        for word in call.args:
            if word.assignment:
                name, _, value = word.text.partition("=")
                check_environment(name, value, call.verdict)
    elif call.name == "enable" and any(word.text.startswith("-f") for word in call.args):
        call.add("arbitrary_code", "enable -f loads a builtin from a shared object", Risk.HIGH, Level.REMEDIATE)
    elif call.name in ("mapfile", "readarray") and (callback := parse_options(call.args, "CcdnOsu").value("C")):
        call.run_script(callback)
    elif call.name == "fc" and not parse_options(call.args, "e").has("l"):
        call.unparsed("arbitrary_code", "fc re-runs commands from history")


HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(SHELLS, shell),
    **dict.fromkeys(_INTERPRETERS, interpreter),
    "eval": eval_builtin,
    **dict.fromkeys(("source", "."), source),
    "alias": alias,
    "trap": trap,
    **dict.fromkeys((*_BUILTINS, *_ASSIGNING_BUILTINS, "enable", "mapfile", "readarray", "fc"), builtin),
}
"""Handlers for shells, interpreters and code-running builtins."""
