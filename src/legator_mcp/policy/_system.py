"""System administration tools: users, scheduling, kernel, host settings, logs, mounts, git, containers.

Most of these follow one pattern: a known set of read-only subcommands or options is LOW/observe, and
everything else (including anything unrecognised) is a HIGH change with a topic-specific code.
"""

import re

from legator_mcp.policy._call import Call, Handler, parse_options
from legator_mcp.policy._core import Level, Risk


def _change(call: Call, code: str, what: str, risk: Risk = Risk.HIGH) -> None:
    call.add(code, f"{call.shown} {what}", risk, Level.REMEDIATE)


def users(call: Call) -> None:
    """Account tools are HIGH `user_management`; `passwd -S`, `chage -l`, `visudo -c` only read."""
    words = {word.text for word in call.args}
    reads = {"passwd": {"-S", "--status"}, "chage": {"-l", "--list"}, "visudo": {"-c", "--check"}}.get(call.name, set())
    if words & reads:
        call.read_only(operands=[])
    else:
        _change(call, "user_management", "changes user accounts or credentials")


def crontab(call: Call) -> None:
    """`crontab -l` reads; `-r` deletes every job; anything else installs jobs."""
    options = parse_options(call.args, "u")
    if options.has("l") and not options.has("r"):
        call.read_only(operands=[])
        return
    _change(call, "scheduled_task", "replaces scheduled jobs")
    if options.has("r"):
        call.add("destructive_tool", "crontab -r deletes every scheduled job", Risk.HIGH, Level.REMEDIATE)


def at(call: Call) -> None:
    """`at`/`batch` schedule shell commands read from input; `atq` lists, `atrm` removes."""
    options = parse_options(call.args, "qfmMtc")
    if call.name == "atq" or options.has("l", "c"):
        call.read_only(operands=[])
        return
    if call.name == "atrm" or options.has("r", "d"):
        _change(call, "scheduled_task", "removes scheduled jobs", Risk.MEDIUM)
        return
    _change(call, "scheduled_task", "schedules shell commands")
    if options.value("f") is not None:
        call.unparsed("arbitrary_code", "at runs commands from a file")
    else:
        call.run_stdin_script("at")


def kernel(call: Call) -> None:
    """`sysctl`, `modprobe`, `insmod`, `rmmod`, `depmod`: reads vs kernel changes."""
    options = parse_options(call.args, "pCdSr")
    if call.name == "sysctl":
        writes = options.has("w", "write", "p", "load", "system") or any("=" in w.text for w in options.operands)
        if not writes:
            call.read_only(operands=[])
            return
    elif call.name == "modprobe" and options.has("n", "dry-run", "c", "showconfig", "show-depends", "D", "V"):
        call.read_only(operands=[])
        return
    risk = Risk.MEDIUM if call.name in ("depmod", "ldconfig") else Risk.HIGH
    _change(call, "kernel_change", "changes the running kernel", risk)


_SETTINGS_READS: dict[str, frozenset[str]] = {
    "timedatectl": frozenset({"", "status", "show", "list-timezones", "timesync-status", "show-timesync", "help"}),
    "hostnamectl": frozenset({"", "status", "help"}),
    "localectl": frozenset({"", "status", "list-locales", "list-keymaps", "list-x11-keymap-models", "help"}),
    "loginctl": frozenset(
        {
            "",
            "list-sessions",
            "list-users",
            "list-seats",
            "session-status",
            "show-session",
            "user-status",
            "show-user",
            "seat-status",
            "show-seat",
            "help",
        }  # fmt: skip
    ),
    "resolvectl": frozenset({"", "status", "query", "service", "openpgp", "tlsa", "statistics", "help"}),
    "networkctl": frozenset({"", "list", "status", "lldp", "label", "cat", "help"}),
    "update-alternatives": frozenset({"--display", "--query", "--list", "--get-selections", "--help"}),
    "efibootmgr": frozenset({"", "-v", "--verbose"}),
    "aa-status": frozenset({""}),
    "getenforce": frozenset({""}),
    "sestatus": frozenset({"", "-v", "-b"}),
    "needrestart": frozenset({"-r", "-b"}),
}
_SETTINGS_MEDIUM = frozenset({"flush-caches", "reset-statistics", "reset-server-features", "reload"})


def settings(call: Call) -> None:
    """Host settings tools: status/list subcommands read; `set-*` and the like change the host (HIGH)."""
    words = [word.text for word in call.args if call.name in ("update-alternatives", "efibootmgr", "sestatus")
             or not word.text.startswith("-")]  # fmt: skip
    action = words[0] if words else ""
    reads = _SETTINGS_READS.get(call.name, frozenset())
    if action in reads or (call.name == "hostnamectl" and action == "hostname" and len(words) == 1):
        call.read_only(operands=[])
    elif call.name == "resolvectl" and len(words) <= 2 and action in ("dns", "domain", "llmnr", "mdns", "dnssec"):
        call.read_only(operands=[])
    elif action in _SETTINGS_MEDIUM:
        _change(call, "system_config", "changes host settings", Risk.MEDIUM)
    else:
        code = "network_change" if call.name in ("resolvectl", "networkctl") else "system_config"
        _change(call, code, "changes host settings")


def clock_and_name(call: Call) -> None:
    """`hostname NAME`, `date -s`, `hwclock --systohc` set the host; without those they only read."""
    options = parse_options(
        call.args, "dfrsIF" if call.name != "hwclock" else "f", ("date", "file", "reference", "set")
    )
    if call.name == "hostname":
        changes = bool(options.operands) or options.has("F", "file", "b", "boot")
    elif call.name == "date":
        changes = options.has("s", "set") or any(not w.text.startswith("+") for w in options.operands)
    else:
        changes = options.has("w", "systohc", "s", "hctosys", "set", "adjust", "a")
    if changes:
        _change(call, "system_config", "changes host identity or time")
    else:
        call.read_only(operands=[])


def boot(call: Call) -> None:
    """Boot loader and initramfs tools: a mistake leaves the host unbootable (HIGH)."""
    _change(call, "system_config", "changes what the host boots")


def selinux(call: Call) -> None:
    """`setenforce`, `aa-disable` & co switch mandatory access control (HIGH)."""
    _change(call, "system_config", "changes mandatory access control")


def journalctl(call: Call) -> None:
    """`journalctl` reads logs; vacuuming deletes them (HIGH); rotating/flushing is MEDIUM."""
    options = parse_options(call.args, "unpoSUbDMIcgtFkN", ("unit", "priority", "output", "since", "until", "lines"))
    if any(flag.startswith("vacuum") for flag in options.flags):
        call.add("destructive_tool", f"{call.shown} deletes old logs", Risk.HIGH, Level.REMEDIATE)
    elif options.has(
        "rotate", "flush", "sync", "relinquish-var", "smart-relinquish-var", "setup-keys", "update-catalog"
    ):
        _change(call, "system_config", "changes the journal", Risk.MEDIUM)
    else:
        call.read_only(operands=[])


def dmesg(call: Call) -> None:
    """`dmesg` reads the kernel log; clearing it or changing the console level is MEDIUM."""
    options = parse_options(call.args, "fnlsF", ("facility", "level", "console-level", "buffer-size", "file"))
    if options.has("c", "C", "clear", "read-clear", "D", "console-off", "E", "console-on", "n", "console-level"):
        _change(call, "system_config", "changes the kernel log", Risk.MEDIUM)
    else:
        call.read_only(operands=[])


def mount(call: Call) -> None:
    """`mount` alone lists mounts; mounting, unmounting and remounting are HIGH."""
    options = parse_options(call.args, "tOoLUTNX", ("types", "test-opts", "options", "label", "uuid"))
    listing = not options.operands and not options.has("a", "all", "o", "options", "B", "bind", "M", "move")
    if call.name == "mount" and listing:
        call.read_only(operands=[])
    else:
        _change(call, "storage_change", "changes what is mounted")


def logrotate(call: Call) -> None:
    """`logrotate -d` is a dry run; otherwise it rotates and deletes old logs (MEDIUM)."""
    if parse_options(call.args, "sl").has("d", "debug"):
        call.read_only(operands=[])
    else:
        _change(call, "system_config", "rotates and prunes logs", Risk.MEDIUM)


def perf(call: Call) -> None:
    """`perf` profiles (diagnose/MEDIUM); `record`/`stat`/`trace` may run a command; `probe` adds kprobes."""
    options = parse_options(call.args, stop_at_operand=True)
    action = options.operands[0].text if options.operands else ""
    if action == "probe":
        _change(call, "kernel_change", "adds kernel probes")
        return
    call.add("diagnostic_tool", f"{call.shown} profiles the system", Risk.MEDIUM, Level.DIAGNOSE)
    if action in ("record", "stat", "trace", "mem", "c2c", "sched", "lock", "kmem", "kvm", "ftrace"):
        inner = parse_options(
            options.operands[1:], "eptoFcCGumrjIDN", ("output", "event", "call-graph"), stop_at_operand=True
        )
        for word in inner.values.get("o", []) + inner.values.get("output", []):
            call.write(word, floor=Risk.HIGH, code="file_write")
        if inner.operands:
            call.add("wrapper", f"perf runs {inner.operands[0].raw}", Risk.LOW, Level.OBSERVE)
            call.run(inner.operands)


_GIT_READS = frozenset(
    {
        *("status", "log", "diff", "show", "blame", "shortlog", "describe", "rev-parse", "rev-list", "ls-files"),
        *("ls-tree", "ls-remote", "cat-file", "grep", "version", "help", "whatchanged", "show-ref", "for-each-ref"),
        *("count-objects", "fsck", "verify-commit", "verify-tag", "var", "check-ignore", "check-attr", "name-rev"),
        *("merge-base", "cherry", "range-diff", "show-branch", "annotate", "diff-tree", "diff-files", "diff-index"),
    }
)
_GIT_LISTS: dict[str, frozenset[str]] = {
    "branch": frozenset({"-a", "-r", "-l", "--list", "-v", "-vv", "--show-current", "--all", "--contains", "--merged"}),
    "tag": frozenset({"-l", "--list", "-n", "--contains", "--points-at", "--merged"}),
    "remote": frozenset({"-v", "show", "get-url", "--verbose"}),
    "config": frozenset(
        {"--get", "--get-all", "--get-regexp", "--list", "-l", "--show-origin", "--show-scope", "get", "list"}
    ),
    "stash": frozenset({"list", "show"}),
    "worktree": frozenset({"list"}),
    "submodule": frozenset({"status", "summary"}),
    "reflog": frozenset({"show", "exists"}),
    "notes": frozenset({"list", "show"}),
    "bisect": frozenset({"log", "view", "visualize"}),
    "clean": frozenset({"-n", "--dry-run"}),
}
_GIT_RISKY_CONFIG = re.compile(
    r"^(core\.(pager|editor|sshcommand|fsmonitor|hookspath|gitproxy)|alias\..*|pager\..*|diff\..*|filter\..*|"
    r"credential\..*|sequence\.editor|uploadpack\..*|protocol\..*|gpg\..*program|merge\..*\.driver|"
    r"(diff|merge)tool\..*|include\.path|includeif\..*)$",
    re.IGNORECASE,
)


def git(call: Call) -> None:
    """`git`: history queries read; committing or fetching is MEDIUM; discarding work or force-pushing is HIGH."""
    options = parse_options(
        call.args, "Cc", ("git-dir", "work-tree", "namespace", "exec-path", "config-env"), stop_at_operand=True
    )
    for value in options.values.get("c", []):
        if _GIT_RISKY_CONFIG.match(value.text.split("=", 1)[0]) or value.dynamic:
            call.add("arbitrary_code", f"git -c {value.raw} can run commands", Risk.HIGH, Level.REMEDIATE)
    if options.value("exec-path") is not None:
        call.add("arbitrary_code", "git --exec-path runs helpers from another directory", Risk.HIGH, Level.REMEDIATE)
    if not options.operands:
        call.read_only(operands=[])
        return
    action = options.operands[0].text
    rest = [word.text for word in options.operands[1:]]
    listing = _GIT_LISTS.get(action)
    if action in _GIT_READS or (listing is not None and (not rest and action not in ("clean",) or set(rest) & listing)):
        if not (action == "branch" and set(rest) & {"-d", "-D", "-m", "-M", "-c", "-C", "-f", "--delete", "--force"}):
            call.read_only(operands=[])
            return
    discards = {
        "clean": True,
        "reset": bool(set(rest) & {"--hard", "--merge", "--keep"}),
        "push": any(
            r in ("-f", "--force", "--mirror", "--delete", "-d", "--prune") or r.startswith(("+", ":", "--force"))
            for r in rest
        ),
        "checkout": bool(set(rest) & {"-f", "--force", "."}) or ("--" in rest and "--staged" not in rest),
        "restore": "--staged" not in rest and "-S" not in rest,
        "branch": bool(set(rest) & {"-D", "--delete"}) and bool(set(rest) & {"-D", "-f", "--force"}),
        "stash": bool(set(rest) & {"drop", "clear"}),
        "reflog": bool(set(rest) & {"expire", "delete"}),
        "gc": any(r.startswith("--prune") for r in rest),
        "filter-branch": True,
        "filter-repo": True,
        "update-ref": "-d" in rest,
        "prune": True,
    }.get(action, False)
    if discards:
        call.add("destructive_tool", f"{call.shown} discards work or history", Risk.HIGH, Level.REMEDIATE)
    else:
        call.add("vcs_change", f"{call.shown} changes a repository", Risk.MEDIUM, Level.REMEDIATE)


_CONTAINER_GROUPS = frozenset(
    {
        *("container", "image", "volume", "network", "system", "builder", "buildx", "compose", "node", "service"),
        *("stack", "swarm", "plugin", "secret", "config", "context", "manifest", "trust", "pod", "machine"),
    }
)
_CONTAINER_READS = frozenset(
    {
        *("ps", "ls", "list", "images", "inspect", "logs", "stats", "top", "version", "info", "port", "diff"),
        *("history", "search", "events", "df", "show", "help", "exists", "config", "pods", "inspectp", "inspecti"),
        *("imagefsinfo", "statsp", "healthcheck", "tree", "img"),
    }
)
_CONTAINER_GENTLE = frozenset(
    {
        *("start", "restart", "pause", "unpause", "pull", "build", "tag", "create", "cp", "commit", "save", "load"),
        *("export", "import", "update", "rename", "login", "logout", "up", "connect", "disconnect", "use", "wait"),
    }
)


def containers(call: Call) -> None:
    """`docker`, `podman`, `nerdctl`, `crictl`: reads LOW; start/pull MEDIUM; rm/kill/run/exec/prune HIGH."""
    options = parse_options(
        call.args,
        "Hcl",
        ("host", "context", "config", "log-level", "namespace", "runtime-endpoint"),
        stop_at_operand=True,
    )
    words = [word.text for word in options.operands]
    if not words:
        call.read_only(operands=[])
        return
    verb = words[1] if words[0] in _CONTAINER_GROUPS and len(words) > 1 else words[0]
    if words[0] in _CONTAINER_GROUPS and len(words) == 1:
        verb = "ls"
    rest = [word.text for word in options.operands]
    if any(
        text == "--privileged" or re.match(r"^(-v|--volume=?)?/:", text) or text.startswith("--pid=host")
        for text in rest
    ):
        call.add("privilege_escalation", f"{call.shown} gives a container the host", Risk.HIGH, Level.REMEDIATE)
    if verb in _CONTAINER_READS:
        call.read_only(operands=[])
    elif verb in _CONTAINER_GENTLE:
        call.add("container_change", call.shown, Risk.MEDIUM, Level.REMEDIATE)
    else:
        call.add("container_change", call.shown, Risk.HIGH, Level.REMEDIATE)


_HELM_READS = frozenset(
    {
        *("list", "ls", "status", "get", "history", "hist", "show", "inspect", "search", "template", "lint"),
        *("version", "env", "verify", "help", "completion"),
    }
)


def helm(call: Call) -> None:
    """`helm`: queries are like `kubectl get`; installs, upgrades and rollbacks are HIGH mutations."""
    options = parse_options(call.args, "nof", ("namespace", "kube-context", "kubeconfig", "output", "values"))
    words = [word.text for word in options.operands]
    verb, follow = (words + ["", ""])[:2]
    if verb in _HELM_READS or (verb in ("repo", "plugin", "dependency", "dep") and follow in ("list", "ls", "")):
        call.add("kubectl_read", call.shown, Risk.LOW, Level.DIAGNOSE)
    elif verb in ("repo", "pull", "package", "dependency", "dep", "test", "push", "registry"):
        call.add("kubectl_mutation", call.shown, Risk.MEDIUM, Level.REMEDIATE)
    else:
        call.add("kubectl_mutation", call.shown, Risk.HIGH, Level.REMEDIATE)


def database(call: Call) -> None:
    """Database clients run queries that may change or drop data; they are opaque (HIGH)."""
    if [word.text for word in call.args] in (["--version"], ["-V"], ["--help"]):
        call.read_only(operands=[])
    else:
        call.add("database_client", f"{call.shown} runs database queries", Risk.HIGH, Level.REMEDIATE)


HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(
        (
            *("useradd", "userdel", "usermod", "groupadd", "groupdel", "groupmod", "gpasswd", "adduser"),
            *("deluser", "addgroup", "delgroup", "chpasswd", "chsh", "chfn", "newusers", "vipw", "vigr"),
            *("visudo", "passwd", "chage", "pwconv", "grpconv"),
        ),
        users,
    ),
    "crontab": crontab,
    **dict.fromkeys(("at", "batch", "atq", "atrm"), at),
    **dict.fromkeys(("sysctl", "modprobe", "insmod", "rmmod", "depmod", "ldconfig", "dkms"), kernel),
    **dict.fromkeys(_SETTINGS_READS, settings),
    **dict.fromkeys(("hostname", "date", "hwclock"), clock_and_name),
    **dict.fromkeys(
        (
            *("update-grub", "grub-install", "grub-mkconfig", "grub2-mkconfig", "grub2-install", "update-initramfs"),
            *("dracut", "mkinitcpio", "bootctl", "kernel-install"),
        ),
        boot,
    ),
    **dict.fromkeys(("setenforce", "setsebool", "semanage", "aa-disable", "aa-complain", "aa-enforce"), selinux),
    "journalctl": journalctl,
    "dmesg": dmesg,
    **dict.fromkeys(("mount", "umount"), mount),
    "logrotate": logrotate,
    "perf": perf,
    "git": git,
    **dict.fromkeys(("docker", "podman", "nerdctl", "crictl", "ctr"), containers),
    "helm": helm,
    **dict.fromkeys(
        (
            *("psql", "mysql", "mariadb", "mongo", "mongosh", "redis-cli", "sqlite3", "cqlsh", "clickhouse-client"),
            *("sqlcmd", "influx", "etcdctl", "consul", "vault"),
        ),
        database,
    ),
}
"""Handlers for system administration tools."""
