"""Per-program rules of the probe's shell classifier (see :mod:`legator_probe.agent._classify`).

Each rule gets a program's arguments and a :class:`Context`, records the paths the program reads or
lists, and returns the level it needs, or raises :class:`NeedsRemediate` with the reason when an
argument makes it unsafe (``find -delete``, ``curl -o``, ``sysctl -w``…). A program without a rule
needs ``remediate``.
"""

import glob
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from legator_probe.protocol.types import CapabilityLevel

__all__ = ["RULES", "Access", "AccessMode", "Context", "NeedsRemediate", "Rule"]

AccessMode: TypeAlias = Literal["read", "write", "list", "read_tree"]
"""How a command touches a path: reads it, writes it, lists it, or reads everything below it."""


@dataclass(frozen=True, slots=True)
class Access:
    """A path a command touches, absolute and normalised."""

    path: str
    mode: AccessMode


_GLOB_CHARS: Final = frozenset("*?[")


class NeedsRemediate(Exception):
    """Raised inside a rule when the command needs ``remediate``; the message is the reason."""


@dataclass(slots=True)
class Context:
    """What a rule sees besides the arguments: where the command runs, and where accesses are recorded."""

    cwds: list[str]
    """Every directory the current command may run in (a ``cd`` adds one rather than replacing)."""
    expand_globs: bool
    accesses: list[Access]

    def resolve(self, word: str) -> list[str]:
        """Every absolute path ``word`` may name (one per possible working directory)."""
        path = os.path.expanduser(word) if word.startswith("~") else word
        if posixpath.isabs(path):
            return [posixpath.normpath(path)]
        return [posixpath.normpath(posixpath.join(cwd, path)) for cwd in self.cwds]

    def touch(self, word: str, mode: AccessMode) -> None:
        """Record that the command touches ``word`` (and, in scripts, what a glob in it expands to)."""
        if not word:
            return
        for path in self.resolve(word):
            self.accesses.append(Access(path, mode))
            if self.expand_globs and _GLOB_CHARS.intersection(path):
                self.accesses.extend(Access(posixpath.normpath(match), mode) for match in glob.glob(path)[:1000])


Rule: TypeAlias = Callable[[list[str], Context], CapabilityLevel]
"""A program rule: arguments and context in, required level out (or :class:`NeedsRemediate`)."""


def _options(args: Sequence[str]) -> list[str]:
    options: list[str] = []
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("-") and arg != "-":
            options.append(arg)
    return options


def _positional(args: Sequence[str]) -> list[str]:
    found: list[str] = []
    rest = False
    for arg in args:
        if rest or not arg.startswith("-") or arg == "-":
            found.append(arg)
        elif arg == "--":
            rest = True
    return found


def _path_words(args: Sequence[str]) -> list[str]:
    """Every word that could name a file: positional words and values glued to options."""
    words = [arg for arg in _positional(args) if arg != "-"]
    for option in _options(args):
        if "=" in option:
            words.append(option.split("=", 1)[1])
        elif "/" in option:
            words.append(option[option.index("/") :])
    return words


def _has_option(args: Sequence[str], *names: str, short: str = "") -> bool:
    """Whether any long option in ``names`` (exact or ``--x=``) or any short letter in ``short`` is given."""
    for option in _options(args):
        if option.split("=", 1)[0] in names:
            return True
        if short and not option.startswith("--") and any(letter in short for letter in option[1:]):
            return True
    return False


def _fixed(level: CapabilityLevel) -> Rule:
    return lambda _args, _ctx: level


def _touching(level: CapabilityLevel, mode: AccessMode) -> Rule:
    def rule(args: list[str], ctx: Context) -> CapabilityLevel:
        for word in _path_words(args):
            ctx.touch(word, mode)
        return level

    return rule


def _no_positional(level: CapabilityLevel, what: str) -> Rule:
    def rule(args: list[str], _ctx: Context) -> CapabilityLevel:
        if _positional(args):
            raise NeedsRemediate(f"{what} with arguments may change the system")
        return level

    return rule


def _grep(args: list[str], ctx: Context) -> CapabilityLevel:
    recursive = _has_option(args, "--recursive", "--dereference-recursive", short="rR") or any(
        option in ("-d", "--directories=recurse", "-drecurse") for option in _options(args)
    )
    for word in _path_words(args):
        ctx.touch(word, "read_tree" if recursive else "read")
    return "observe"


def _cd(args: list[str], ctx: Context) -> CapabilityLevel:
    positional = _positional(args)
    target = positional[0] if positional else "~"
    if target == "-" or len(positional) > 1:
        raise NeedsRemediate("cd to a directory the classifier cannot follow")
    ctx.touch(target, "list")
    ctx.cwds.extend(path for path in ctx.resolve(target) if path not in ctx.cwds)
    return "observe"


def _find(args: list[str], ctx: Context) -> CapabilityLevel:
    acting = {"-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf", "-fls"}
    if acting.intersection(args):
        raise NeedsRemediate("find with an action that runs programs or changes files")
    for word in args:
        if word.startswith("-"):
            break
        ctx.touch(word, "list")
    return "observe"


def _refuse_options(level: CapabilityLevel, reason: str, *names: str, short: str = "") -> Rule:
    def rule(args: list[str], ctx: Context) -> CapabilityLevel:
        if _has_option(args, *names, short=short):
            raise NeedsRemediate(reason)
        return level

    return rule


def _hostname(args: list[str], _ctx: Context) -> CapabilityLevel:
    if _positional(args) or _has_option(args, "--file", short="bF"):
        raise NeedsRemediate("hostname with a name sets the host name")
    return "observe"


def _env(args: list[str], _ctx: Context) -> CapabilityLevel:
    if args and args != ["-0"]:
        raise NeedsRemediate("env with arguments runs a program")
    return "observe"


def _getent(args: list[str], ctx: Context) -> CapabilityLevel:
    database = next(iter(_positional(args)), "")
    if database in ("shadow", "gshadow"):
        ctx.touch(f"/etc/{database}", "read")
    return "observe"


def _ip(args: list[str], _ctx: Context) -> CapabilityLevel:
    changing = {"add", "del", "delete", "change", "replace", "set", "flush", "append", "exec", "save", "restore"}
    positional = _positional(args)
    if changing.intersection(positional) or "netns" in positional or _has_option(args, "-batch", short="b"):
        raise NeedsRemediate("ip with a verb that changes the network")
    return "observe"


def _verbs(level: CapabilityLevel, allowed: frozenset[str], what: str) -> Rule:
    def rule(args: list[str], _ctx: Context) -> CapabilityLevel:
        positional = _positional(args)
        if positional and positional[0] not in allowed:
            raise NeedsRemediate(f"{what} {positional[0]!r} is not a read-only verb")
        return level

    return rule


_SYSTEMCTL_READ: Final = frozenset(
    "status show cat is-active is-enabled is-failed is-system-running list-units list-unit-files "
    "list-timers list-sockets list-dependencies list-jobs list-machines get-default show-environment".split()
)


def _systemctl(args: list[str], _ctx: Context) -> CapabilityLevel:
    positional = _positional(args)
    if not positional or positional[0] not in _SYSTEMCTL_READ:
        raise NeedsRemediate("systemctl verb that changes units or the system")
    return "diagnose"


def _sysctl(args: list[str], _ctx: Context) -> CapabilityLevel:
    if _has_option(args, "--write", "--load", "--system", short="wp") or any("=" in arg for arg in _positional(args)):
        raise NeedsRemediate("sysctl that sets kernel parameters")
    return "observe"


def _date(args: list[str], _ctx: Context) -> CapabilityLevel:
    if _has_option(args, "--set", short="s") or any(not arg.startswith("+") for arg in _positional(args)):
        raise NeedsRemediate("date that sets the clock")
    return "observe"


def _awk(args: list[str], ctx: Context) -> CapabilityLevel:
    if _has_option(args, "--file", "--include", "--load", "--exec", short="fil"):
        raise NeedsRemediate("awk loading program files")
    positional = _positional(args)
    if not positional:
        return "observe"
    program, files = positional[0], positional[1:]
    if any(marker in program for marker in ("system", "|", ">", "getline", "@load", "ENVIRON")):
        raise NeedsRemediate("awk program that may run commands or write files")
    for word in files:
        ctx.touch(word, "read")
    return "observe"


def _uniq(args: list[str], ctx: Context) -> CapabilityLevel:
    positional = _positional(args)
    if len(positional) > 1:
        raise NeedsRemediate("uniq with an output file")
    for word in positional:
        ctx.touch(word, "read")
    return "observe"


def _curl(args: list[str], _ctx: Context) -> CapabilityLevel:
    flags = {"--silent", "--show-error", "--fail", "--location", "--head", "--include", "--verbose", "--insecure"}
    flags |= {"--compressed", "--http1.1", "--http2", "--ipv4", "--ipv6", "--no-progress-meter", "--fail-with-body"}
    valued = {"-m", "--max-time", "--connect-timeout", "-H", "--header", "-A", "--user-agent", "--retry", "-w"}
    valued |= {"--write-out", "-X", "--request", "--resolve", "-u", "--user"}
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        name, glued, value = arg.partition("=")
        if name in valued:
            if not glued:
                value = args[index] if index < len(args) else ""
                index += 1
            if name in ("-X", "--request") and value.upper() not in ("GET", "HEAD"):
                raise NeedsRemediate("curl with a method that changes state")
            if value.startswith("@"):
                raise NeedsRemediate("curl reading a file")
        elif arg in flags:
            continue
        elif arg.startswith("-") and not arg.startswith("--") and set(arg[1:]) <= set("sSfLIivk46"):
            continue
        elif arg.startswith("-"):
            raise NeedsRemediate(f"curl option {arg.split('=')[0]!r} may write, upload or read files")
        elif "://" in arg and not arg.lower().startswith(("http://", "https://")):
            raise NeedsRemediate("curl with a non-HTTP URL")
    return "diagnose"


def _openssl(args: list[str], ctx: Context) -> CapabilityLevel:
    positional = _positional(args)
    if not positional or positional[0] not in ("s_client", "x509", "verify", "version", "ciphers", "crl"):
        raise NeedsRemediate("openssl subcommand that may write keys or files")
    if {"-out", "-keyout", "-writerand", "-sess_out", "-msgfile", "-keylogfile"}.intersection(args):
        raise NeedsRemediate("openssl writing a file")
    for option, value in zip(args, args[1:], strict=False):
        if option in ("-in", "-CAfile", "-cert", "-key"):
            ctx.touch(value, "read")
    return "diagnose"


def _container(args: list[str], _ctx: Context) -> CapabilityLevel:
    reads = {"ps", "images", "inspect", "logs", "stats", "version", "info", "top", "port", "history", "diff"}
    positional = _positional(args)
    if positional and positional[0] in ("container", "image", "network", "volume") and len(positional) > 1:
        verb = positional[1]
        reads = {"ls", "list", "ps", "inspect", "logs", "top", "port", "stats", "history", "diff"}
    else:
        verb = positional[0] if positional else ""
    if verb not in reads or (verb == "stats" and "--no-stream" not in args):
        raise NeedsRemediate("container command that is not a one-shot read")
    return "diagnose"


RULES: Final[dict[str, Rule]] = {
    **dict.fromkeys(
        "true false uptime whoami nproc arch pwd groups w who users tty logname lscpu lsmod lspci lsusb free "
        "uname id ps pgrep pstree ss netstat printenv echo printf sleep locale findmnt vmstat iostat mpstat "
        "lsblk blkid test [ tr seq basename dirname".split(),
        _fixed("observe"),
    ),
    **dict.fromkeys("ping ping6 traceroute tracepath mtr dig nslookup host whois lsof".split(), _fixed("diagnose")),
    **dict.fromkeys(
        "cat head tail wc md5sum sha1sum sha256sum sha512sum file strings jq nl tac base64 zcat cut column".split(),
        _touching("observe", "read"),
    ),
    **dict.fromkeys("ls stat du df realpath readlink".split(), _touching("observe", "list")),
    "cd": _cd,
    **dict.fromkeys("grep egrep fgrep zgrep".split(), _grep),
    "rgrep": lambda args, ctx: _grep(["-r", *args], ctx),
    "find": _find,
    "hostname": _hostname,
    "env": _env,
    "getent": _getent,
    "ip": _ip,
    "mount": _no_positional("observe", "mount"),
    "sort": _refuse_options("observe", "sort writing an output file", "--output", short="o"),
    "uniq": _uniq,
    "date": _date,
    "sysctl": _sysctl,
    "systemctl": _systemctl,
    "journalctl": _refuse_options(
        "diagnose",
        "journalctl maintenance that deletes or rotates logs",
        *"--rotate --vacuum-size --vacuum-time --vacuum-files --flush --sync --relinquish-var".split(),
        *"--smart-relinquish-var --setup-keys --update-catalog".split(),
    ),
    "dmesg": _refuse_options("diagnose", "dmesg that clears or configures the kernel log", "--clear", short="cCDEn"),
    "timedatectl": _verbs("observe", frozenset({"status", "show", "list-timezones"}), "timedatectl"),
    "hostnamectl": _verbs("observe", frozenset({"status"}), "hostnamectl"),
    "awk": _awk,
    "gawk": _awk,
    "mawk": _awk,
    "curl": _curl,
    "openssl": _openssl,
    "docker": _container,
    "podman": _container,
    "tcpdump": _refuse_options("diagnose", "tcpdump writing files or running commands", short="wWzZC"),
}
"""Programs the classifier understands, by base name; anything else needs ``remediate``."""
