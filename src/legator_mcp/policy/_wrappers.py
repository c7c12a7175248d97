"""Programs that run other programs: privilege wrappers, `env`, `nice` & co, `xargs`, `watch`, `ssh`.

A wrapper never lowers what it wraps: it records its own small finding and classifies the wrapped
command in full.
"""

import shlex
from dataclasses import dataclass

from legator_mcp.policy._call import Call, Handler, Stdin, check_environment, joined, parse_options
from legator_mcp.policy._core import Level, Risk
from legator_mcp.policy._syntax import Word


def _privilege(call: Call, who: Word | None) -> None:
    target = f"as {who.raw}" if who is not None else "as root"
    call.add("privilege_escalation", f"{call.name} runs commands {target}", Risk.LOW, Level.DIAGNOSE)


def wrapped(call: Call, command: list[Word], *, untrusted_path: bool = False) -> None:
    """Record that `call` runs `command`, then classify `command`."""
    call.add("wrapper", f"{call.name} runs {command[0].raw}", Risk.LOW, Level.OBSERVE)
    call.run(command, untrusted_path=untrusted_path)


def _strip_assignments(call: Call, command: list[Word]) -> tuple[list[Word], bool]:
    untrusted = False
    while command and command[0].assignment:
        name, _, value = command[0].text.partition("=")
        untrusted = check_environment(name, value, call.verdict) or untrusted
        command = command[1:]
    return command, untrusted


def sudo(call: Call) -> None:
    """`sudo`, `sudoedit`, `doas`, `pkexec`, `run0`: privilege plus whatever they run."""
    if call.name == "sudoedit":
        _privilege(call, None)
        for word in parse_options(call.args, "ugCDh").operands:
            call.write(word, floor=Risk.HIGH)
        return
    short, long = {
        "sudo": ("ugpChDrtTUR", ("user", "group", "prompt", "close-from", "chdir", "role", "type", "host")),
        "doas": ("uC", ()),
        "pkexec": ("", ("user",)),
        "run0": ("ugD", ("user", "group", "chdir", "property", "description", "slice", "nice", "setenv", "unit")),
    }[call.name]
    options = parse_options(call.args, short, long, stop_at_operand=True)
    _privilege(call, options.value("u", "user"))
    command, untrusted = _strip_assignments(call, options.operands)
    if call.name == "sudo" and options.has("e", "edit"):
        for word in command:
            call.write(word, floor=Risk.HIGH)
    elif call.name in ("sudo", "doas") and options.has("i", "login", "s", "shell"):
        if command:
            wrapped(call, command, untrusted_path=untrusted)
        else:
            call.run_stdin_script(f"{call.name} -s")
    elif command:
        wrapped(call, command, untrusted_path=untrusted)
    elif call.name in ("pkexec", "run0"):
        call.run_stdin_script(call.name)
    else:
        call.read_only(f"{call.name} without a command")


def su(call: Call) -> None:
    """`su` and `runuser`: `-c` strings are scripts; `runuser -u user cmd` runs argv."""
    short = "cgGsuw" if call.name == "runuser" else "cgGsw"
    long = ("command", "group", "supp-group", "shell", "user", "whitelist-environment", "session-command")
    options = parse_options(call.args, short, long)
    user = options.value("u", "user")
    if user is not None:  # `runuser -u user cmd -x`: options after the command belong to it
        options = parse_options(call.args, short, long, stop_at_operand=True)
    operands = [word for word in options.operands if word.text != "-"]
    _privilege(call, user or (operands[0] if operands and user is None else None))
    script = options.value("c", "command", "session-command")
    if script is not None:
        call.run_script(script)
    elif user is not None and operands:
        wrapped(call, operands)
    else:
        call.run_stdin_script(call.name)


def env(call: Call) -> None:
    """`env [-i] [-u NAME] [NAME=value]… [command]`; `-S` splits a string into the command."""
    args = call.args
    index = 0
    untrusted = False
    command: list[Word] | None = None
    while index < len(args):
        word = args[index]
        text = word.text
        if word.dynamic:
            break
        if text in ("-u", "--unset", "-C", "--chdir"):
            index += 2
        elif text in ("-S", "--split-string") or text.startswith(("-S", "--split-string=")):
            value = text.partition("=")[2] if text.startswith("--") else text[2:]
            if not value and index + 1 < len(args):
                index += 1
                value = args[index].text
                if args[index].dynamic:
                    call.unparsed("dynamic_command", f"env -S splits a string built at run time: {args[index].raw}")
            try:
                command = [Word.literal(part) for part in shlex.split(value)] + list(args[index + 1 :])
            except ValueError:
                call.unparsed("unparseable", f"env -S string cannot be split: {value}")
                return
            break
        elif text == "--":
            index += 1
            break
        elif text.startswith("-"):
            index += 1
        elif word.assignment:
            name, _, value = text.partition("=")
            untrusted = check_environment(name, value, call.verdict) or untrusted
            index += 1
        else:
            break
    command = list(args[index:]) if command is None else command
    if not command:
        call.read_only("env prints the environment")
        return
    wrapped(call, command, untrusted_path=untrusted)


@dataclass(frozen=True)
class _Wrap:
    short: str = ""
    long: tuple[str, ...] = ()
    skip: int = 0
    privileged: bool = False
    shell_when_bare: bool = False
    diagnostic: Risk | None = None
    output: tuple[str, ...] = ()
    changes_process: tuple[str, ...] = ()


_WRAPS: dict[str, _Wrap] = {
    "nice": _Wrap("n", ("adjustment",)),
    "ionice": _Wrap("cnpPu", ("class", "classdata", "pid", "pgid", "uid"), changes_process=("p", "P", "u")),
    "timeout": _Wrap("sk", ("signal", "kill-after"), skip=1),
    "nohup": _Wrap(),
    "stdbuf": _Wrap("ioe", ("input", "output", "error")),
    "setsid": _Wrap(),
    "unbuffer": _Wrap(),
    "time": _Wrap("fo", ("format", "output"), output=("o", "output")),
    "exec": _Wrap("a"),
    "builtin": _Wrap(),
    "nocache": _Wrap(),
    "chronic": _Wrap(),
    "proxychains": _Wrap("f"),
    "proxychains4": _Wrap("f"),
    "torsocks": _Wrap("uapP"),
    "systemd-cat": _Wrap("tp", ("identifier", "priority", "stderr-priority", "level-prefix")),
    "numactl": _Wrap("imNCpP", ("interleave", "membind", "cpunodebind", "physcpubind", "preferred")),
    "taskset": _Wrap(skip=1, changes_process=("p", "pid")),
    "chrt": _Wrap("TPD", ("sched-runtime", "sched-period", "sched-deadline"), skip=1, changes_process=("p", "pid")),
    "chroot": _Wrap("", ("userspec", "groups"), skip=1, privileged=True, shell_when_bare=True),
    "nsenter": _Wrap("tSGW", ("target", "setuid", "setgid", "wdns"), privileged=True, shell_when_bare=True),
    "unshare": _Wrap("SGRw", ("setuid", "setgid", "root", "wd"), privileged=True, shell_when_bare=True),
    "setpriv": _Wrap(
        "", ("reuid", "regid", "groups", "securebits", "selinux-label", "apparmor-profile"), privileged=True
    ),
    "chpst": _Wrap("ugUebnlL/", privileged=True),
    "valgrind": _Wrap(diagnostic=Risk.MEDIUM),
    "strace": _Wrap("eopsuEPIaXbSOU", ("output",), diagnostic=Risk.MEDIUM, output=("o", "output")),
    "ltrace": _Wrap("eopsunalwADFx", ("output",), diagnostic=Risk.MEDIUM, output=("o", "output")),
}


def _generic(call: Call) -> None:
    spec = _WRAPS[call.name]
    options = parse_options(call.args, spec.short, spec.long, stop_at_operand=True)
    command = options.operands[spec.skip :]
    if spec.privileged:
        _privilege(call, options.value("u", "userspec", "reuid", "S", "setuid"))
    if spec.diagnostic is not None:
        call.add("diagnostic_tool", f"{call.name} traces a process", spec.diagnostic, Level.DIAGNOSE)
    for name in spec.output:
        if (target := options.value(name)) is not None:
            call.write(target, floor=Risk.HIGH, code="file_write")
    if spec.changes_process and options.has(*spec.changes_process):
        if len(options.operands) > 1 or call.name == "ionice":
            call.add("process_change", f"{call.shown} changes a running process", Risk.MEDIUM, Level.REMEDIATE)
        else:
            call.read_only()
        return
    if command:
        wrapped(call, command)
    elif spec.shell_when_bare:
        call.run_stdin_script(call.name)
    elif spec.diagnostic is None:
        call.read_only(f"{call.name} without a command")


def command_builtin(call: Call) -> None:
    """`command [-p] cmd …` runs cmd; `command -v/-V` only looks it up."""
    options = parse_options(call.args, stop_at_operand=True)
    if options.has("v", "V") or not options.operands:
        call.read_only()
    else:
        wrapped(call, options.operands)


def busybox(call: Call) -> None:
    """`busybox applet …` (and toybox) runs the applet."""
    if not call.args or call.args[0].text.startswith("-"):
        call.read_only()
    else:
        wrapped(call, call.args)


def xargs(call: Call) -> None:
    """`xargs cmd` runs cmd with arguments read from standard input."""
    options = parse_options(
        call.args,
        "adEILnPs",
        ("arg-file", "delimiter", "max-lines", "max-args", "max-procs", "max-chars", "process-slot-var"),
        stop_at_operand=True,
    )
    command = options.operands or [Word.literal("echo")]
    replace = options.value("I", "replace")
    if replace is None and any(flag in ("i", "replace") for flag in options.flags):
        replace = Word.literal("{}")
    if replace is not None:
        marker = replace.text
        items = [
            Word.unknown(word.raw, word.text.split(marker)[0]) if marker in word.text else word for word in command
        ]
    else:
        items = [*command, Word.unknown("<stdin items>")]
    call.add("wrapper", f"xargs runs {command[0].raw} with arguments read from input", Risk.LOW, Level.OBSERVE)
    call.run(items, stdin=Stdin())


def parallel(call: Call) -> None:
    """GNU `parallel cmd ::: args`; without a command it runs its input lines as commands."""
    options = parse_options(
        call.args, "jSaIdNnkX", ("jobs", "arg-file", "delimiter", "results", "sshlogin"), stop_at_operand=True
    )
    command: list[Word] = []
    for word in options.operands:
        if word.text in (":::", "::::", ":::+"):
            break
        command.append(word)
    if not command:
        call.run_stdin_script("parallel")
        return
    call.add("wrapper", f"parallel runs {command[0].raw}", Risk.LOW, Level.OBSERVE)
    call.run([*(Word.unknown(w.raw) if "{" in w.text else w for w in command), Word.unknown("<inputs>")], stdin=Stdin())


def watch(call: Call) -> None:
    """`watch cmd` runs cmd repeatedly through `sh -c` (argv with `-x`)."""
    options = parse_options(call.args, "nq", ("interval", "equexit"), stop_at_operand=True)
    if not options.operands:
        call.read_only()
    elif options.has("x", "exec"):
        wrapped(call, options.operands)
    else:
        call.add("wrapper", f"watch runs {options.operands[0].raw}", Risk.LOW, Level.OBSERVE)
        call.run_script(joined(options.operands))


def flock(call: Call) -> None:
    """`flock file cmd …` or `flock file -c 'script'`."""
    options = parse_options(call.args, "wEc", ("timeout", "conflict-exit-code", "command"), stop_at_operand=True)
    script = options.value("c", "command")
    if script is None and len(options.operands) > 1 and options.operands[1].text in ("-c", "--command"):
        script = options.operands[2] if len(options.operands) > 2 else None
    if script is not None:
        call.run_script(script)
    elif len(options.operands) > 1:
        wrapped(call, options.operands[1:])
    else:
        call.read_only()


def script_command(call: Call) -> None:
    """`script -c cmd [file]` records a session into a file."""
    options = parse_options(call.args, "cTOIBEom", ("command", "timing", "log-out", "log-in", "log-io", "echo"))
    for word in options.operands:
        call.write(word)
    command = options.value("c", "command")
    if command is not None:
        call.run_script(command)
    else:
        call.run_stdin_script("script")


def systemd_run(call: Call) -> None:
    """`systemd-run cmd` runs cmd as a transient unit, possibly on a timer."""
    long = (
        *("unit", "property", "description", "slice", "setenv", "machine", "host", "uid", "gid", "nice"),
        *("working-directory", "service-type", "path-property", "socket-property", "timer-property"),
        *("on-active", "on-boot", "on-startup", "on-unit-active", "on-unit-inactive", "on-calendar"),
    )
    options = parse_options(call.args, "upEMH", long, stop_at_operand=True)
    call.add("service_change", f"{call.name} starts a transient unit", Risk.MEDIUM, Level.REMEDIATE)
    if any(flag.startswith("on-") for flag in options.flags):
        call.add("scheduled_task", f"{call.name} schedules a command", Risk.HIGH, Level.REMEDIATE)
    if options.has("S", "shell") or not options.operands:
        call.run_stdin_script(call.name)
    else:
        wrapped(call, options.operands)


def ssh(call: Call) -> None:
    """`ssh host cmd` runs cmd remotely through the remote user's shell."""
    options = parse_options(call.args, "BbcDEeFIiJLlmOoPpQRSWw", stop_at_operand=True)
    for option in options.values.get("o", []):
        if any(key in option.text.lower() for key in ("proxycommand", "localcommand", "knownhostscommand")):
            call.add("arbitrary_code", f"ssh option runs a local command: {option.raw}", Risk.HIGH, Level.REMEDIATE)
    command = options.operands[1:]
    call.add("remote_execution", f"{call.shown} acts on another host", Risk.MEDIUM, Level.DIAGNOSE)
    if command:
        call.run_script(joined(command), stdin=Stdin())
    elif not options.has("N", "V", "G", "Q"):
        call.run_stdin_script("ssh")


HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(("sudo", "sudoedit", "doas", "pkexec", "run0"), sudo),
    **dict.fromkeys(("su", "runuser"), su),
    "env": env,
    **dict.fromkeys(_WRAPS, _generic),
    "command": command_builtin,
    **dict.fromkeys(("busybox", "toybox"), busybox),
    "xargs": xargs,
    "parallel": parallel,
    "watch": watch,
    "flock": flock,
    "script": script_command,
    "systemd-run": systemd_run,
    "ssh": ssh,
}
"""Handlers for programs that run other programs."""
