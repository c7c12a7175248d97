"""Network tools: HTTP clients, probes, captures, copies to other hosts, interfaces and firewalls.

A plain HTTP GET is a diagnose-level probe; saving to a file, uploading or sending a body is a HIGH
write. Reconfiguring interfaces or routes is HIGH `network_change`; firewall changes are HIGH
`network_filter`, and flushing a firewall is CRITICAL because it can cut the host off or open it.
"""

import re

from legator_mcp.policy._call import Call, Handler, parse_options
from legator_mcp.policy._core import Level, Risk
from legator_mcp.policy._paths import NULL_SINKS
from legator_mcp.policy._syntax import Word

_CURL_SHORT = "AbcCdDeEFHKmoPQrTtuUwxXyYz"
_CURL_LONG = (
    *("output", "data", "data-raw", "data-binary", "data-urlencode", "data-ascii", "form", "form-string"),
    *("upload-file", "request", "header", "user-agent", "cookie", "cookie-jar", "config", "dump-header"),
    *("referer", "user", "proxy", "max-time", "connect-timeout", "output-dir", "json", "url", "write-out"),
    *("cert", "key", "cacert", "capath", "range", "retry", "resolve", "connect-to", "trace", "trace-ascii"),
    *("stderr", "etag-save", "hsts", "alt-svc", "interface", "unix-socket", "oauth2-bearer", "proxy-user"),
)
_CURL_WRITES = ("o", "output", "D", "dump-header", "c", "cookie-jar", "trace", "trace-ascii", "stderr", "etag-save")
_CURL_UPLOADS = ("d", "data", "F", "form", "T", "upload-file", "json")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _network_request(call: Call) -> None:
    call.add("network_request", f"{call.shown} fetches from the network", Risk.LOW, Level.DIAGNOSE)


def _network_write(call: Call, detail: str) -> None:
    call.add("network_write", detail, Risk.HIGH, Level.REMEDIATE)


def _output(call: Call, word: Word) -> None:
    if word.dynamic or word.text not in NULL_SINKS:
        call.write(word, floor=Risk.HIGH, code="file_write")


def curl(call: Call) -> None:
    """`curl`: GET is diagnose/LOW; output files, uploads and non-GET methods are HIGH."""
    options = parse_options(call.args, _CURL_SHORT, _CURL_LONG)
    _network_request(call)
    for name in _CURL_WRITES:
        for word in options.values.get(name, []):
            _output(call, word)
    if options.has("O", "remote-name", "remote-name-all", "output-dir"):
        call.write(options.value("output-dir") or Word.literal("."), floor=Risk.HIGH, code="file_write")
    if options.has(*_CURL_UPLOADS) or any(flag.startswith(("data", "form")) for flag in options.flags):
        _network_write(call, f"{call.shown} sends data")
    method = options.value("X", "request")
    if method is not None and (method.dynamic or method.text.upper() not in _SAFE_METHODS):
        _network_write(call, f"{call.name} uses method {method.raw}")
    if options.has("K", "config"):
        _network_write(call, f"{call.name} reads further options from a file")
    call.check_reads([Word.literal(word.text[7:]) for word in options.operands if word.text.startswith("file://")])


def wget(call: Call) -> None:
    """`wget`: saving a download is a HIGH write unless it goes to stdout; POSTs are HIGH."""
    options = parse_options(
        call.args,
        "OoaPeiUtTwQDlARXIB",
        (
            *("output-document", "output-file", "append-output", "directory-prefix", "execute", "input-file"),
            *("post-data", "post-file", "body-data", "body-file", "method", "header", "user-agent", "user"),
        ),
    )
    _network_request(call)
    document = options.value("O", "output-document")
    if document is not None:
        _output(call, document)
    elif not options.has("spider"):
        call.write(options.value("P", "directory-prefix") or Word.literal("."), floor=Risk.HIGH, code="file_write")
    for word in options.values.get("o", []) + options.values.get("a", []) + options.values.get("output-file", []):
        _output(call, word)
    method = options.value("method")
    if options.has("post-data", "post-file", "body-data", "body-file") or (
        method is not None and method.text.upper() not in _SAFE_METHODS
    ):
        _network_write(call, f"{call.shown} sends data")
    if options.has("e", "execute"):
        _network_write(call, f"{call.name} -e runs wgetrc commands")


def ping(call: Call) -> None:
    """`ping -c N` is a bounded read; flooding is MEDIUM; unbounded pinging is a diagnose probe."""
    options = parse_options(call.args, "cisIlmpQSTtWwM")
    if options.has("f"):
        call.add("diagnostic_tool", f"{call.shown} floods the network", Risk.MEDIUM, Level.DIAGNOSE)
    elif options.has("c", "w"):
        call.read_only(operands=[])
    else:
        _network_request(call)


def netcat(call: Call) -> None:
    """`nc`/`ncat`/`socat`: listening or executing a program is HIGH; probing is diagnose."""
    text = " ".join(word.text for word in call.args)
    options = parse_options(call.args, "epcsiwqOITXxgGPW", ("exec", "sh-exec", "lua-exec"))
    if call.name == "socat":
        executes = re.search(r"\b(EXEC|SYSTEM):", text, re.IGNORECASE) is not None
        listens = re.search(r"\b(TCP|UDP|SCTP|UNIX|OPENSSL)[46]?-LISTEN|\bLISTEN:", text, re.IGNORECASE) is not None
    else:
        executes = options.has("e", "c", "exec", "sh-exec", "lua-exec")
        listens = options.has("l", "listen")
    if executes:
        call.unparsed("arbitrary_code", f"{call.name} connects a program to the network: {text[:40]}")
    if listens:
        call.add("network_listener", f"{call.shown} listens for connections", Risk.HIGH, Level.REMEDIATE)
    if not executes and not listens:
        risk = Risk.LOW if options.has("z") else Risk.MEDIUM
        call.add("diagnostic_tool", f"{call.shown} talks to a socket", risk, Level.DIAGNOSE)


def openssl(call: Call) -> None:
    """`openssl`: inspecting certificates is read-only; `-out` writes; `s_server` listens."""
    private = bool(call.args) and call.args[0].text in ("rsa", "pkey", "ec", "dsa", "pkcs12", "pkcs8")
    for index, word in enumerate(call.args[:-1]):
        following = call.args[index + 1]
        if word.text in ("-out", "-keyout"):
            _output(call, following)
        elif word.text in ("-key", "-inkey") or (private and word.text == "-in"):
            call.check_reads([following])
    if call.args and call.args[0].text == "s_server":
        call.add("network_listener", "openssl s_server listens for connections", Risk.HIGH, Level.REMEDIATE)
    call.add("read_only", call.shown, Risk.LOW, Level.OBSERVE)


def tcpdump(call: Call) -> None:
    """`tcpdump` captures traffic (diagnose/MEDIUM); `-w` writes; `-z` runs a program."""
    options = parse_options(call.args, "BcCEFGijMmrsTVwWyzZ", ("time-stamp-precision", "interface"))
    call.add("diagnostic_tool", f"{call.shown} captures network traffic", Risk.MEDIUM, Level.DIAGNOSE)
    for word in options.values.get("w", []):
        _output(call, word)
    if options.value("z") is not None:
        call.unparsed("arbitrary_code", "tcpdump -z runs a program on every capture file")


def _remote(word: Word) -> bool:
    return re.match(r"^([^/]*@)?[^/:]+:", word.text) is not None or word.text.startswith("rsync://")


def transfer(call: Call) -> None:
    """`rsync`, `scp`, `sftp`: writing locally follows the path policy; deleting is HIGH."""
    short = {"rsync": "efTBM", "scp": "cFiJlLoPS", "sftp": "BbcDFiJloPRS"}[call.name]
    long = ("rsh", "rsync-path", "filter", "exclude", "include", "files-from", "password-file", "temp-dir")
    options = parse_options(call.args, short, (*long, "backup-dir", "suffix", "chmod", "chown", "log-file"))
    shell = options.value("e", "rsh") if call.name == "rsync" else options.value("S")
    if shell is not None and not shell.text.startswith("ssh"):
        call.add("arbitrary_code", f"{call.name} uses {shell.raw} as its transport", Risk.HIGH, Level.REMEDIATE)
    if options.value("rsync-path") is not None:
        call.add("arbitrary_code", "rsync --rsync-path runs a remote command", Risk.HIGH, Level.REMEDIATE)
    for option in options.values.get("o", []):
        if "command" in option.text.lower():
            call.add("arbitrary_code", f"{call.name} option runs a command: {option.raw}", Risk.HIGH, Level.REMEDIATE)
    if call.name == "rsync" and any(flag.startswith(("del", "remove-source")) for flag in options.flags):
        call.add("destructive_tool", f"{call.shown} deletes files", Risk.HIGH, Level.REMEDIATE)
    if call.name == "sftp" or any(_remote(word) for word in options.operands):
        call.add("remote_execution", f"{call.shown} copies to or from another host", Risk.MEDIUM, Level.DIAGNOSE)
    if call.name == "sftp":
        if options.value("b") is not None or call.ctx.stdin.kind != "none":
            call.add("arbitrary_code", "sftp runs a batch of commands", Risk.HIGH, Level.REMEDIATE)
        return
    if len(options.operands) > 1 and not _remote(options.operands[-1]):
        call.write(options.operands[-1])
        call.check_reads(options.operands[:-1])


def _subcommands(call: Call, valued: str = "") -> list[str]:
    return [word.text for word in parse_options(call.args, valued).operands]


_IP_READ = frozenset({"", "show", "sh", "list", "lst", "ls", "get", "help", "monitor", "save", "showdump"})


def ip(call: Call) -> None:
    """`ip`: `show`/`list`/`get` read; `add`, `del`, `set`, `flush` … change the network (HIGH)."""
    args = list(call.args)
    index = 0
    while index < len(args) and args[index].text.startswith("-"):
        text = args[index].text.lstrip("-")
        if text in ("b", "batch"):
            call.add("network_change", "ip -batch runs commands from a file", Risk.HIGH, Level.REMEDIATE)
        index += 2 if text in ("n", "netns", "b", "batch", "f", "family", "l", "loops", "rc", "rcvbuf") else 1
    words = [word.text for word in args[index:]]
    obj, command = (words + ["", ""])[:2]
    if obj in ("netns", "vrf") and command == "exec" and len(words) > 3:
        call.add("wrapper", f"ip {obj} exec runs {words[3]}", Risk.LOW, Level.OBSERVE)
        call.run(args[index + 3 :])
        return
    reads = set(_IP_READ)
    if not "link".startswith(obj or "-"):
        reads.add("s")  # `ip link s` means set; elsewhere `s` abbreviates show
    if obj in ("netns", "vrf"):
        reads |= {"identify", "pids"}
    if command in reads or obj in ("help", "-V", "monitor"):
        call.read_only(operands=[])
    else:
        call.add("network_change", f"{call.shown} changes the network configuration", Risk.HIGH, Level.REMEDIATE)


def network_tool(call: Call) -> None:
    """`ifconfig`, `route`, `tc`, `nmcli`, `ethtool`, `iw`, `brctl`, `bridge`, `wg`, `netplan`: reads vs changes."""
    words = _subcommands(call, "")
    flags = [word.text for word in call.args if word.text.startswith("-")]
    changes = {
        "ifconfig": len(words) > 1,
        "route": bool(set(words) & {"add", "del", "delete", "flush"}),
        "tc": bool(words) and not set(words[1:2]) & {"show", "list", "ls", "sh", "monitor"},
        "nmcli": bool(
            set(words)
            & {
                "up",
                "down",
                "modify",
                "mod",
                "delete",
                "del",
                "add",
                "reload",
                "load",
                "import",
                "clone",
                "edit",
                "connect",
                "disconnect",
                "set",
                "off",
                "on",
                "reapply",
            }
        ),
        "ethtool": any(
            re.fullmatch(r"-[sKACGLEfrW]|--(change|features|offload|pause|coalesce|set-\S+|reset|flash|negotiate)", f)
            for f in flags
        ),
        "iw": bool(set(words) & {"set", "connect", "disconnect", "del", "add", "ibss", "mesh", "join", "leave"}),
        "brctl": bool(words) and words[0] not in ("show", "showmacs", "showstp"),
        "bridge": bool(words) and not set(words[1:2]) & {"show", "list", "ls", "monitor", ""},
        "wg": bool(words) and words[0] in ("set", "setconf", "addconf", "syncconf"),
        "netplan": bool(words) and words[0] in ("apply", "try", "generate", "set"),
        "conntrack": any(f in ("-F", "--flush", "-D", "--delete", "-U", "--update", "-I", "--create") for f in flags),
    }.get(call.name, True)
    if changes:
        call.add("network_change", f"{call.shown} changes the network configuration", Risk.HIGH, Level.REMEDIATE)
    elif call.name == "wg" and words[:1] == ["showconf"]:
        call.add("sensitive_path", "wg showconf prints private keys", Risk.MEDIUM, Level.OBSERVE)
    else:
        call.read_only(operands=[])


_IPTABLES_LONG = {
    "append": "A", "delete": "D", "insert": "I", "replace": "R", "list": "L", "list-rules": "S", "flush": "F",
    "zero": "Z", "new-chain": "N", "delete-chain": "X", "policy": "P", "rename-chain": "E", "check": "C",
}  # fmt: skip


def iptables(call: Call) -> None:
    """`iptables` and friends: listing is read-only, changes HIGH, flushing CRITICAL."""
    commands: set[str] = set()
    for word in call.args:
        text = word.text
        if text.startswith("--"):
            commands.add(_IPTABLES_LONG.get(text[2:].split("=")[0], ""))
        elif text.startswith("-") and len(text) > 1:
            commands |= {letter for letter in text[1:] if letter in "ADIRLSFZNXPEC"}
    commands.discard("")
    _filter_verdict(call, flush="F" in commands, change=bool(commands - {"L", "S", "C"}) or not call.args)


def _filter_verdict(call: Call, *, flush: bool, change: bool) -> None:
    if flush:
        call.add("network_filter", f"{call.shown} flushes firewall rules", Risk.CRITICAL, Level.REMEDIATE)
    elif change:
        call.add("network_filter", f"{call.shown} changes firewall rules", Risk.HIGH, Level.REMEDIATE)
    else:
        call.read_only(operands=[])


def firewall(call: Call) -> None:
    """`nft`, `ufw`, `firewall-cmd`, `ipset`, `iptables-restore`: reads vs changes vs flushes."""
    words = " ".join(word.text for word in call.args).split()
    flags = [word for word in words if word.startswith("-")]
    operands = [word for word in words if not word.startswith("-")]
    first = operands[0] if operands else ""
    if call.name == "nft":
        checking = bool(set(flags) & {"-c", "--check"})
        from_file = bool(set(flags) & {"-f", "--file", "-i", "--interactive"})
        read = checking or first in ("list", "describe", "monitor", "export") or (not operands and not from_file)
        _filter_verdict(call, flush="flush" in operands and not checking, change=not read)
    elif call.name == "ufw":
        read = "--dry-run" in flags or first in ("status", "show", "version", "help", "")
        read = read or (first == "app" and operands[1:2] in (["list"], ["info"]))
        _filter_verdict(call, flush=False, change=not read)
    elif call.name == "firewall-cmd":
        if "--panic-on" in flags:
            call.add("network_filter", "firewall-cmd --panic-on drops all traffic", Risk.CRITICAL, Level.REMEDIATE)
            return
        mutating = (
            *("--add", "--remove", "--set", "--change", "--new", "--delete", "--reload", "--complete-reload"),
            *("--runtime-to-permanent", "--panic", "--reset", "--load", "--lockdown", "--direct", "--policy"),
        )
        _filter_verdict(call, flush=False, change=any(flag.startswith(mutating) for flag in flags))
    elif call.name == "ipset":
        read = first in ("list", "save", "test", "version", "help") or bool(set(flags) & {"-L", "-S", "-T", "-v"})
        _filter_verdict(call, flush=first == "flush" or "-F" in flags, change=not read)
    else:
        _filter_verdict(call, flush=False, change=not set(flags) & {"-t", "--test"})


HANDLERS: dict[str, Handler] = {
    "curl": curl,
    "wget": wget,
    **dict.fromkeys(("ping", "ping6"), ping),
    **dict.fromkeys(("nc", "ncat", "netcat", "socat"), netcat),
    "openssl": openssl,
    "tcpdump": tcpdump,
    **dict.fromkeys(("rsync", "scp", "sftp"), transfer),
    "ip": ip,
    **dict.fromkeys(
        ("ifconfig", "route", "tc", "nmcli", "ethtool", "iw", "brctl", "bridge", "wg", "netplan", "conntrack"),
        network_tool,
    ),
    **dict.fromkeys(("ifup", "ifdown", "ifreload", "dhclient", "wg-quick", "nmtui", "iwconfig"), network_tool),
    "iptables": iptables,
    **dict.fromkeys(("nft", "ufw", "firewall-cmd", "ipset", "iptables-restore"), firewall),
}
"""Handlers for network tools."""
