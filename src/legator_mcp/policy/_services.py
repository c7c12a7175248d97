"""Service managers, package managers, signals and power state.

The unit, action and signal rules here are shared with the typed `systemd` and `process` command
kinds, so `systemctl stop sshd` in a script and `{"action": "stop", "unit": "sshd"}` agree.
"""

import fnmatch
import re
from dataclasses import dataclass

from legator_mcp.policy._call import Call, Handler, parse_options
from legator_mcp.policy._core import Level, Risk, Verdict
from legator_mcp.policy._syntax import Word

_CRITICAL_UNITS = frozenset(
    {
        *("sshd", "ssh", "networking", "network", "NetworkManager", "dbus", "dbus-broker", "docker", "containerd"),
        *("kubelet", "crio", "cri-o", "etcd", "k3s", "k3s-agent", "firewalld", "nftables", "iptables", "ufw"),
        *("auditd", "polkit", "legator", "legator-probe", "sssd", "chronyd", "ntpd", "cron", "crond", "rsyslog"),
        *("getty", "serial-getty", "multipathd", "lvm2-monitor", "libvirtd", "wpa_supplicant", "dhcpcd"),
    }
)
_CRITICAL_PREFIXES = ("systemd-", "kube-", "rke2-", "k3s-", "legator")
_POWER_TARGETS = frozenset(
    {
        *("reboot", "poweroff", "halt", "kexec", "rescue", "emergency", "shutdown", "suspend", "hibernate"),
        *("hybrid-sleep", "suspend-then-hibernate", "sleep", "soft-reboot", "ctrl-alt-del", "exit", "final"),
    }
)
_UNIT_SUFFIX = re.compile(r"\.(service|socket|target|timer|mount|automount|path|slice|scope|swap|device)$")
READ_ACTIONS = frozenset(
    {
        *("status", "show", "cat", "help", "list-units", "list-unit-files", "list-sockets", "list-timers"),
        *("list-jobs", "list-dependencies", "list-machines", "list-automounts", "list-paths", "is-active"),
        *("is-enabled", "is-failed", "is-system-running", "get-default", "show-environment", "whoami", "list"),
    }
)
_GENTLE_ACTIONS = frozenset(
    {
        *("start", "restart", "reload", "try-restart", "reload-or-restart", "try-reload-or-restart", "condrestart"),
        *("condreload", "force-reload", "enable", "reenable", "daemon-reload", "reset-failed", "set-environment"),
        *("unset-environment", "import-environment", "preset", "add-wants", "add-requires", "bind", "freeze"),
        *("thaw", "log-level", "log-target", "service-log-level", "service-log-target", "cancel", "mount-image"),
        *("service-watchdogs",),
    }
)
_POWER_ACTIONS = frozenset(
    {
        *("reboot", "poweroff", "halt", "kexec", "suspend", "hibernate", "hybrid-sleep", "suspend-then-hibernate"),
        *("rescue", "emergency", "default", "soft-reboot", "switch-root", "sleep"),
    }
)


def _unit_base(text: str) -> str:
    return _UNIT_SUFFIX.sub("", text).split("@", 1)[0]


def unit_is_critical(word: Word) -> bool:
    """Tell whether a unit (or unit pattern) could be one whose loss cuts the host off or breaks it."""
    if word.dynamic:
        return True
    base = _unit_base(word.text)
    if any(char in base for char in "*?["):
        return any(fnmatch.fnmatchcase(name, base) for name in (*_CRITICAL_UNITS, "systemd-journald", "kube-proxy"))
    return base in _CRITICAL_UNITS or base.startswith(_CRITICAL_PREFIXES)


def unit_is_power_target(word: Word) -> bool:
    """Tell whether starting a unit would reboot, halt or isolate the host (`reboot.target`, …)."""
    if word.dynamic or not (word.text.endswith(".target") or any(char in word.text for char in "*?[")):
        return False
    base = _unit_base(word.text)
    return any(fnmatch.fnmatchcase(name, base) for name in _POWER_TARGETS)


def service_action(verdict: Verdict, tool: str, action: str, units: list[Word]) -> None:
    """Judge a service-manager action on some units."""
    shown = " ".join([tool, action, *(unit.raw for unit in units)])
    if action in READ_ACTIONS:
        verdict.add("read_only", shown, Risk.LOW, Level.OBSERVE)
        return
    if action in _POWER_ACTIONS:
        verdict.add("power_state", f"{shown} changes the power state", Risk.CRITICAL, Level.REMEDIATE)
        return
    risk = Risk.MEDIUM if action in _GENTLE_ACTIONS else Risk.HIGH
    verdict.add("service_change", shown, risk, Level.REMEDIATE)
    for unit in units:
        if unit_is_power_target(unit) and action not in ("stop", "disable", "mask", "kill"):
            verdict.add("power_state", f"{action} {unit.raw} changes the power state", Risk.CRITICAL, Level.REMEDIATE)
        elif unit_is_critical(unit):
            verdict.add("critical_unit", f"{action} on critical unit {unit.raw}", Risk.HIGH, Level.REMEDIATE)


def systemctl(call: Call) -> None:
    """`systemctl [options] action [units]`."""
    long = (
        *("type", "property", "signal", "lines", "output", "host", "machine", "job-mode", "kill-whom", "root"),
        *("kill-value", "preset-mode", "state", "what", "message", "timestamp", "reboot-argument", "when"),
    )
    options = parse_options(call.args, "tpsnoHM", long)
    if not options.operands:
        service_action(call.verdict, "systemctl", "list-units", [])
        return
    service_action(call.verdict, "systemctl", options.operands[0].text, options.operands[1:])


def service(call: Call) -> None:
    """`service name action`, `rc-service`, `invoke-rc.d`: SysV-style front ends."""
    options = parse_options(call.args)
    if options.has("status-all", "l", "list", "e", "exists", "r", "resolve") or len(options.operands) < 2:
        call.read_only(operands=[])
        return
    name, action = options.operands[0], options.operands[1].text
    service_action(call.verdict, call.name, action, [name])


def init_script(call: Call) -> None:
    """`/etc/init.d/name action`."""
    if not call.args:
        call.read_only(operands=[])
        return
    service_action(call.verdict, call.name, call.args[0].text, [Word.literal(call.name)])


def service_enablement(call: Call) -> None:
    """`update-rc.d`, `rc-update`, `chkconfig`: listing is read-only, the rest changes boot services."""
    words = [word.text for word in call.args]
    if not words or words[0] in ("show", "--list", "-l") or (call.name == "chkconfig" and len(words) == 1):
        call.read_only(operands=[])
    else:
        call.add("service_change", f"{call.shown} changes boot-time services", Risk.HIGH, Level.REMEDIATE)


def supervisor(call: Call) -> None:
    """`supervisorctl` and runit's `sv`."""
    operands = parse_options(call.args, "csupw").operands
    action = operands[0].text if operands else "status"
    reads = {"status", "avail", "pid", "version", "help", "tail", "maintail", "s", "check"}
    harsh = {"stop", "remove", "shutdown", "signal", "down", "d", "kill", "k", "exit", "x", "force-stop", "pause"}
    if action in reads:
        call.read_only(operands=[])
        return
    risk = Risk.HIGH if action in harsh or any(unit_is_critical(word) for word in operands[1:]) else Risk.MEDIUM
    call.add("service_change", call.shown, risk, Level.REMEDIATE)


@dataclass(frozen=True)
class _Manager:
    reads: str
    refresh: str = ""
    runs: str = ""
    short: str = ""
    long: tuple[str, ...] = ()

    def kind(self, action: str) -> str:
        """Return `read`, `refresh`, `run` or `change` for a subcommand."""
        for kind, names in (("read", self.reads), ("refresh", self.refresh), ("run", self.runs)):
            if action in names.split():
                return kind
        return "change"


_APT = _Manager(
    "list show search policy depends rdepends showsrc showpkg madison changelog help moo indextargets check "
    "versions why why-not",
    "update clean autoclean download source",
    short="otc",
    long=("option", "target-release", "config-file"),
)
_DNF = _Manager(
    "list info search provides whatprovides repolist repoinfo repoquery check-update check deplist help "
    "updateinfo version leaves alias",
    "makecache clean",
    short="cxedR",
    long=("setopt", "enablerepo", "disablerepo", "installroot", "releasever", "exclude", "repo", "config"),
)
_NPM = _Manager(
    "ls list ll la view v info show outdated search s find help get root prefix bin doctor fund explain why "
    "query whoami ping config audit",
    "pack cache",
    "run run-script start test t exec x dlx restart stop",
)
_CONDA = _Manager("list info search help", runs="run")
_NPX = _Manager("", runs="")
_MANAGERS: dict[str, _Manager] = {
    **dict.fromkeys(("apt", "apt-get", "aptitude"), _APT),
    "apt-mark": _Manager("showmanual showauto showhold showinstall showremove showpurge"),
    **dict.fromkeys(("dnf", "yum", "microdnf", "tdnf"), _DNF),
    "zypper": _Manager(
        "search se info if packages pa patches list-updates lu list-patches lp repos lr services ls products pd "
        "patterns pt what-provides wp patch-check pchk locks ll ps needs-rebooting help licenses versioncmp "
        "vcmp targetos tos",
        "refresh ref clean cc",
        short="Rrc",
        long=("root", "repo", "config", "reposd-dir", "cache-dir"),
    ),
    "apk": _Manager(
        "info search list policy version stats dot audit verify manifest help",
        "update cache",
        short="pX",
        long=("root", "repository", "arch", "keys-dir", "cache-dir"),
    ),
    "pip": _Manager("list show freeze check search help debug index inspect hash config", "download wheel cache"),
    "pipx": _Manager("list environment help completions", runs="run"),
    **dict.fromkeys(("npm", "pnpm", "yarn"), _NPM),
    "gem": _Manager("list search info query environment env contents dependency specification which help outdated"),
    "snap": _Manager(
        "list info find search version services changes change connections interfaces aliases get logs warnings "
        "model known help tasks"
    ),
    "flatpak": _Manager(
        "list info search remotes remote-ls remote-info history ps documents permissions permission-show help"
    ),
    "brew": _Manager(
        "list ls info search outdated deps uses config doctor leaves desc home commands shellenv", "update cleanup"
    ),
    **dict.fromkeys(("conda", "mamba", "micromamba"), _CONDA),
    **dict.fromkeys(("npx", "pnpx", "bunx"), _NPX),
}
_VERSION_FLAGS = frozenset({"--version", "-v", "-V", "--help", "-h"})
_PACKAGE_SUBCOMMAND_READS = {
    "config": frozenset({"list", "get", "debug", "ls"}),
    "audit": frozenset({"", "signatures"}),
    "history": frozenset({"", "list", "info"}),
    "module": frozenset({"list", "info", "provides"}),
    "group": frozenset({"list", "info", "summary"}),
    "groups": frozenset({"list", "info", "summary"}),
    "cache": frozenset({"list", "info", "dir", "ls", "verify"}),
}


def _package_verdict(call: Call, kind: str) -> None:
    if kind == "read":
        call.read_only(operands=[])
    elif kind == "refresh":
        call.add("package_manager", f"{call.shown} refreshes package metadata", Risk.MEDIUM, Level.REMEDIATE)
    elif kind == "run":
        call.unparsed("arbitrary_code", f"{call.shown} runs package code")
    else:
        call.add("package_manager", f"{call.shown} changes installed packages", Risk.HIGH, Level.REMEDIATE)


def package_manager(call: Call) -> None:
    """Package managers with subcommands: queries read, refreshes are MEDIUM, changes HIGH."""
    manager = _MANAGERS[call.name]
    options = parse_options(call.args, manager.short, manager.long)
    operands = [word.text for word in options.operands]
    if call.name in ("npx", "pnpx", "bunx"):
        _package_verdict(call, "read" if not operands and set(options.flags) else "run")
        return
    if not operands:
        read = not options.flags or any(word.text in _VERSION_FLAGS for word in call.args)
        _package_verdict(call, "read" if read or options.has("version", "help") else "change")
        return
    action, follow = operands[0], (operands[1] if len(operands) > 1 else "")
    if action in _PACKAGE_SUBCOMMAND_READS and call.name not in ("zypper", "apk"):
        kind = "read" if follow in _PACKAGE_SUBCOMMAND_READS[action] else "refresh"
        if action in ("history", "audit", "module", "group", "groups") and kind == "refresh":
            kind = "change"
    else:
        kind = manager.kind(action)
    _package_verdict(call, kind)


def low_level_package(call: Call) -> None:
    """`dpkg`, `rpm`, `pacman`: the operation is an option, not a subcommand."""
    options = parse_options(call.args, "" if call.name != "pacman" else "b")
    flags = set(options.flags)
    if call.name == "dpkg":
        reads = {"l", "L", "s", "S", "p", "C", "V", "list", "listfiles", "status", "search", "print-avail",
                 "get-selections", "print-architecture", "print-foreign-architectures", "compare-versions",
                 "version", "help", "audit", "verify"}  # fmt: skip
        kind = (
            "read"
            if flags & reads and not flags & {"i", "r", "P", "install", "remove", "purge", "unpack"}
            else "change"
        )
    elif call.name == "rpm":
        if flags & {"E", "eval"}:
            call.add("arbitrary_code", "rpm --eval can run shell macros", Risk.HIGH, Level.REMEDIATE)
        query = flags & {"q", "V", "K", "query", "verify", "checksig", "showrc", "version", "help", "E", "eval"}
        kind = "read" if query and not flags & {"U", "F", "e", "install", "upgrade", "freshen", "erase"} else "change"
    else:
        letters = flags - {"y"} if "S" in flags else flags
        if flags & {"Q", "T", "V", "h", "version", "help"} or (flags >= {"F"} and "y" not in flags):
            kind = "read"
        elif "S" in flags and letters - {"S"} and letters - {"S"} <= {"s", "i", "l", "g", "p"}:
            kind = "read"
        elif ("S" in flags and not options.operands and letters - {"S"} <= {"c"}) or flags == {"F", "y"}:
            kind = "refresh"
        else:
            kind = "change"
    _package_verdict(call, kind)


_SIGNAL_NUMBERS = {
    "0": "0", "1": "HUP", "2": "INT", "3": "QUIT", "4": "ILL", "5": "TRAP", "6": "ABRT", "7": "BUS", "8": "FPE",
    "9": "KILL", "10": "USR1", "11": "SEGV", "12": "USR2", "13": "PIPE", "14": "ALRM", "15": "TERM", "17": "CHLD",
    "18": "CONT", "19": "STOP", "20": "TSTP", "28": "WINCH",
}  # fmt: skip
_GENTLE_SIGNALS = frozenset({"TERM", "HUP", "INT", "USR1", "USR2", "CONT", "WINCH", "ALRM", "PIPE", "CHLD"})


def normalize_signal(text: str | None) -> str:
    """Return a signal's bare upper-case name (`sigkill` → `KILL`, `9` → `KILL`); TERM when absent."""
    if text is None or text == "":
        return "TERM"
    name = text.upper().removeprefix("-").removeprefix("SIG")
    return _SIGNAL_NUMBERS.get(name, name)


def judge_signal(verdict: Verdict, tool: str, signal: str, targets: list[str]) -> None:
    """Judge sending `signal` to `targets` (pids as text, `-1` meaning every process)."""
    if signal == "0":
        verdict.add("signal", f"{tool} only checks that processes exist", Risk.LOW, Level.DIAGNOSE)
        return
    risk = Risk.MEDIUM if signal in _GENTLE_SIGNALS else Risk.HIGH
    verdict.add("signal", f"{tool} sends SIG{signal}", risk, Level.REMEDIATE)
    for target in targets:
        if target == "-1":
            verdict.add("signal", f"{tool} sends SIG{signal} to every process", Risk.CRITICAL, Level.REMEDIATE)
        elif target == "1":
            risk = Risk.CRITICAL if signal == "KILL" else Risk.HIGH
            verdict.add("signal", f"{tool} sends SIG{signal} to init (pid 1)", risk, Level.REMEDIATE)
        elif target == "0" or target.startswith("-"):
            verdict.add("signal", f"{tool} signals a whole process group", Risk.HIGH, Level.REMEDIATE)


def kill(call: Call) -> None:
    """`kill [-SIG | -s SIG | -n NUM] pid…`: pid 1 and -1 escalate."""
    signal: str | None = None
    targets: list[str] = []
    args = list(call.args)
    index = 0
    while index < len(args):
        text = args[index].text
        index += 1
        if text in ("-l", "-L", "--list", "--table"):
            call.read_only(operands=[])
            return
        if text in ("-s", "-n", "--signal") and index < len(args):
            signal = args[index].text
            index += 1
        elif text == "--":
            targets += [word.text for word in args[index:]]
            break
        elif text.startswith("-") and signal is None and not targets and len(text) > 1:
            signal = text[1:]
        else:
            targets.append("?" if args[index - 1].dynamic else text)
    judge_signal(call.verdict, "kill", normalize_signal(signal), targets)


def kill_by_name(call: Call) -> None:
    """`killall`, `pkill`, `skill`, `fuser -k`: signalling by name or pattern is HIGH."""
    if call.name == "killall5":
        call.add("signal", "killall5 signals every process", Risk.CRITICAL, Level.REMEDIATE)
        return
    options = parse_options(call.args, "sgGPtuUFeo" if call.name != "killall" else "sgyoCuZn", ("signal",))
    if call.name == "fuser" and not options.has("k", "kill"):
        call.add("diagnostic_tool", f"{call.shown} lists processes using files", Risk.LOW, Level.DIAGNOSE)
        return
    if options.has("l", "list", "L"):
        call.read_only(operands=[])
        return
    call.add("signal", f"{call.shown} signals processes by name", Risk.HIGH, Level.REMEDIATE)


def priority(call: Call) -> None:
    """`renice`, `snice`: changing running processes' priority is MEDIUM."""
    call.add("process_change", f"{call.shown} changes process priority", Risk.MEDIUM, Level.REMEDIATE)


def power(call: Call) -> None:
    """`reboot`, `shutdown`, `poweroff`, `halt`, `kexec`, `init`/`telinit` runlevels."""
    words = [word.text for word in call.args]
    if call.name == "shutdown" and ("-c" in words or "-k" in words):
        call.add("power_state", f"{call.shown} cancels or only announces a shutdown", Risk.MEDIUM, Level.REMEDIATE)
        return
    if call.name in ("init", "telinit"):
        level = next((word for word in words if not word.startswith("-")), "")
        if level in ("q", "Q", "u", "U"):
            call.add("service_change", f"{call.shown} reloads init", Risk.MEDIUM, Level.REMEDIATE)
            return
        if level in ("2", "3", "4", "5"):
            call.add("service_change", f"{call.shown} changes the runlevel", Risk.HIGH, Level.REMEDIATE)
            return
    call.add("power_state", f"{call.shown} reboots, halts or isolates the host", Risk.CRITICAL, Level.REMEDIATE)


HANDLERS: dict[str, Handler] = {
    "systemctl": systemctl,
    **dict.fromkeys(("service", "rc-service", "invoke-rc.d"), service),
    **dict.fromkeys(("update-rc.d", "rc-update", "chkconfig"), service_enablement),
    **dict.fromkeys(("supervisorctl", "sv"), supervisor),
    **dict.fromkeys(_MANAGERS, package_manager),
    **dict.fromkeys(("dpkg", "rpm", "pacman"), low_level_package),
    "kill": kill,
    **dict.fromkeys(("killall", "killall5", "pkill", "skill", "fuser"), kill_by_name),
    **dict.fromkeys(("renice", "snice"), priority),
    **dict.fromkeys(("reboot", "shutdown", "poweroff", "halt", "kexec", "init", "telinit"), power),
}
"""Handlers for service managers, package managers, signals and power state."""
