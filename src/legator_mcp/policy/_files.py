"""Read-only tools, and tools that create, change or destroy files and disks.

Writes go through the path policy (`_paths`): system paths raise a write to HIGH, `/etc/passwd`,
`/boot` or `/dev/*` to CRITICAL. Recursive deletion of `/`, `~` or a top-level directory is CRITICAL,
and so is anything that writes a block device.
"""

import re

from legator_mcp.policy._call import Call, Handler, Options, parse_options
from legator_mcp.policy._core import Level, Risk
from legator_mcp.policy._paths import deletion_is_critical, is_block_device, write_risk
from legator_mcp.policy._syntax import Word

READ_ONLY = frozenset(
    {
        *("ls", "dir", "vdir", "cat", "tac", "head", "tail", "grep", "egrep", "fgrep", "zgrep", "rg", "ag", "ack"),
        *("df", "du", "free", "uptime", "ps", "pgrep", "pidof", "pstree", "uname", "id", "whoami", "groups"),
        *("users", "who", "w", "last", "lastb", "lastlog", "stat", "file", "wc", "cut", "tr", "paste", "join"),
        *("column", "nl", "fold", "fmt", "expand", "unexpand", "comm", "diff", "cmp", "md5sum", "sha1sum"),
        *("sha224sum", "sha256sum", "sha384sum", "sha512sum", "b2sum", "cksum", "sum", "base64", "base32"),
        *("basenc", "od", "hexdump", "hd", "strings", "less", "more", "most", "zcat", "bzcat", "xzcat"),
        *("zstdcat", "zless", "zmore", "readlink", "realpath", "basename", "dirname", "pwd", "which", "whereis"),
        *("type", "locate", "plocate", "echo", "printf", "seq", "yes", "nproc", "arch", "lsb_release", "getconf"),
        *("getent", "lscpu", "lsmem", "lspci", "lsusb", "lsmod", "modinfo", "lsblk", "blkid", "findmnt", "lsns"),
        *("lslocks", "lsipc", "tree", "jq", "yq", "printenv", "tty", "logname", "hostid", "cal", "factor"),
        *("expr", "numfmt", "tsort", "shuf", "look", "rev", "ldd", "nm", "objdump", "readelf", "size", "top"),
        *("htop", "atop", "btop", "systemd-analyze", "systemd-detect-virt", "systemd-escape", "sensors"),
        *("dmidecode", "dig", "nslookup", "host", "whois", "getfacl", "lsattr", "namei", "envsubst", "free"),
        *("lvs", "vgs", "pvs", "lvdisplay", "vgdisplay", "pvdisplay", "lvscan", "vgscan", "pvscan", "sync"),
        *(
            "ss",
            "netstat",
            "iptables-save",
            "virt-what",
            "lshw",
            "hwinfo",
            "inxi",
            "apt-cache",
            "dpkg-query",
            "mountpoint",
        ),
    }
)
"""Programs that only read, whatever their arguments: LOW, observe."""

DIAGNOSTIC: dict[str, Risk] = {
    **dict.fromkeys(("vmstat", "iostat", "mpstat", "pidstat", "sar", "dstat", "iotop", "iftop", "nethogs"), Risk.LOW),
    **dict.fromkeys(("slabtop", "traceroute", "traceroute6", "tracepath", "mtr", "lsof", "pmap", "smem"), Risk.LOW),
    **dict.fromkeys(("numastat", "arping", "bmon", "nload", "ifstat", "powertop", "fping"), Risk.LOW),
    **dict.fromkeys(
        ("nmap", "gcore", "pstack", "sysdig", "ngrep", "hping3", "masscan", "iperf", "iperf3"), Risk.MEDIUM
    ),
    **dict.fromkeys(("ab", "wrk", "hey", "tshark", "dumpcap", "smartctl"), Risk.MEDIUM),
    **dict.fromkeys(("gdb", "lldb", "bpftrace", "stap", "crash", "stress", "stress-ng"), Risk.HIGH),
}
"""Tools that probe deeper than reading: diagnose level, at the given risk."""

_EDITORS = frozenset({"vi", "vim", "nvim", "view", "nano", "pico", "emacs", "ed", "ex", "joe", "mcedit", "vimdiff"})
_COMPRESSORS = frozenset(
    {"gzip", "gunzip", "bzip2", "bunzip2", "xz", "unxz", "zstd", "unzstd", "lz4", "lzma", "unlzma", "compress"}
)


_METADATA_ONLY = frozenset(
    {
        *("ls", "dir", "vdir", "stat", "file", "du", "namei", "lsattr", "getfacl", "realpath", "readlink"),
        *("basename", "dirname", "which", "whereis", "type", "tree", "locate", "plocate", "mountpoint", "echo"),
    }
)


def read_only(call: Call) -> None:
    """Programs in `READ_ONLY`: LOW, but sensitive files whose contents they read are flagged."""
    operands = [word for word in call.args if not word.text.startswith("-")]
    if call.name in _METADATA_ONLY:
        operands = []
    elif call.name == "getent" and operands and operands[0].text in ("shadow", "gshadow"):
        operands = [Word.literal("/etc/" + operands[0].text)]
    call.read_only(operands=operands)


def diagnostic(call: Call) -> None:
    """Programs in `DIAGNOSTIC`, with output files for those that write them."""
    risk = DIAGNOSTIC[call.name]
    call.add("diagnostic_tool", f"{call.shown} probes the system", risk, Level.DIAGNOSE)
    outputs = {"tshark": "-w", "dumpcap": "-w", "gcore": "-o"}
    for index, word in enumerate(call.args[:-1]):
        output = word.text == outputs.get(call.name) or (call.name == "nmap" and re.fullmatch(r"-o[NXGAS]", word.text))
        if output:
            call.write(call.args[index + 1], floor=Risk.HIGH, code="file_write")


def _destroy(call: Call, detail: str) -> None:
    call.add("destructive_tool", detail, Risk.HIGH, Level.REMEDIATE)


def _device(call: Call, word: Word, verb: str) -> bool:
    """Flag `word` when it is a block device; return whether it was."""
    if not word.dynamic and is_block_device(word.text):
        call.add("block_device_write", f"{call.name} {verb} block device {word.text}", Risk.CRITICAL, Level.REMEDIATE)
        return True
    return False


def rm(call: Call) -> None:
    """`rm`, `unlink`, `rmdir`: HIGH; recursive removal of `/`, `~` or a top-level directory is CRITICAL."""
    options = parse_options(call.args)
    recursive = call.name == "rm" and (options.has("r", "R", "recursive") or options.dynamic)
    _destroy(call, f"{call.shown} deletes files")
    for target in options.operands:
        if recursive and deletion_is_critical(target, call.ctx.cwds):
            call.add("destructive_tool", f"recursive {call.name} on {target.raw}", Risk.CRITICAL, Level.REMEDIATE)
            continue
        risk, code, path = write_risk(target, call.ctx.cwds)
        if risk > Risk.HIGH:
            call.add(code, f"{call.name} deletes {path}", risk, Level.REMEDIATE)


def shred(call: Call) -> None:
    """`shred` and `truncate` destroy contents; on a block device that is CRITICAL."""
    options = parse_options(call.args, "nsr" if call.name == "shred" else "sr", ("iterations", "size", "reference"))
    _destroy(call, f"{call.shown} destroys file contents")
    for target in options.operands:
        if not _device(call, target, "overwrites"):
            call.write(target, floor=Risk.HIGH, code="destructive_tool")


def dd(call: Call) -> None:
    """`dd if=… of=…`: HIGH; writing a block device is CRITICAL."""
    _destroy(call, f"{call.shown} copies raw data")
    for word in call.args:
        key, _, value = word.text.partition("=")
        target = Word.unknown(word.raw, value) if word.dynamic else Word.literal(value)
        if key == "of" and not _device(call, target, "writes"):
            call.write(target, floor=Risk.HIGH, code="destructive_tool")
        elif key == "if" and not word.dynamic and is_block_device(value):
            call.add("sensitive_path", f"dd reads the raw device {value}", Risk.MEDIUM, Level.OBSERVE)


def mkfs(call: Call) -> None:
    """Filesystem and signature tools; on a block device they are CRITICAL."""
    options = parse_options(call.args)
    if call.name == "wipefs" and not options.has("a", "all", "o", "offset"):
        call.read_only("wipefs without --all only lists signatures")
        return
    _destroy(call, f"{call.shown} formats or wipes storage")
    for word in call.args:
        _device(call, word, "formats")


def partition(call: Call) -> None:
    """Partition editors: listing is read-only, changes are HIGH, wiping a table is CRITICAL."""
    options = parse_options(call.args, "ou" if call.name == "sfdisk" else "")
    listing = {
        "fdisk": ("l", "list"),
        "sfdisk": ("l", "d", "J", "s", "V", "g", "F", "T", "list", "dump", "json", "show-size", "verify", "list-free"),
        "gdisk": ("l",),
        "sgdisk": ("p", "i", "v", "P", "L", "print", "info", "verify", "pretend"),
        "parted": ("l", "list"),
    }.get(call.name, ())
    commands = [word.text for word in options.operands[1:]]
    if call.name == "parted" and commands and all(c in ("print", "p", "unit", "s", "B", "MiB", "GB") for c in commands):
        call.read_only()
        return
    if listing and options.has(*listing) and not options.has("Z", "z", "o", "zap-all", "zap", "clear", "n", "d"):
        call.read_only()
        return
    call.add("storage_change", f"{call.shown} changes a partition table", Risk.HIGH, Level.REMEDIATE)
    wipes = options.has("Z", "zap-all", "z", "zap", "o", "clear") if call.name == "sgdisk" else "mklabel" in commands
    if wipes:
        for word in options.operands:
            _device(call, word, "wipes the partition table of")


def _destination(options: Options, target_option: str = "t") -> tuple[Word | None, list[Word]]:
    explicit = options.value(target_option, "target-directory")
    if explicit is not None:
        return explicit, options.operands
    if len(options.operands) < 2:
        return None, options.operands
    return options.operands[-1], options.operands[:-1]


def copy(call: Call) -> None:
    """`cp`, `mv`, `install`, `ln`: the destination is written; `mv` also removes its sources."""
    short = {"install": "mogtS", "ln": "tS", "cp": "tS", "mv": "tS"}[call.name]
    options = parse_options(call.args, short, ("target-directory", "suffix", "mode", "owner", "group"))
    if call.name == "install" and options.has("d", "directory"):
        for word in options.operands:
            call.write(word)
        return
    destination, sources = _destination(options)
    if destination is None:
        if call.name == "ln" and sources:
            call.write(Word.literal(sources[0].text.rstrip("/").rsplit("/", 1)[-1] or "."))
        else:
            call.read_only(f"{call.name} without a destination does nothing")
        return
    call.write(destination)
    if call.name == "mv":
        for source in sources:
            if deletion_is_critical(source, call.ctx.cwds):
                call.add("destructive_tool", f"mv moves {source.raw} away", Risk.CRITICAL, Level.REMEDIATE)
            else:
                risk, code, path = write_risk(source, call.ctx.cwds)
                call.add(code, f"mv removes {path}", risk, Level.REMEDIATE)
    elif call.name != "ln":
        call.check_reads(sources)


def create(call: Call) -> None:
    """`mkdir`, `touch`, `mktemp`, `split`, `patch`: each named path is written."""
    options = parse_options(call.args, "mrdtpabClnoi", ("mode", "reference", "date", "time", "tmpdir", "suffix"))
    default = "/tmp/tmp.XXXXXXXXXX" if call.name == "mktemp" else "."
    for word in options.operands or [Word.literal(default)]:
        call.write(word)


_SYMBOLIC = r"[ugoa]*([-+=]([rwxXst]*|[ugo]))+"
_MODE = re.compile(rf"^{_SYMBOLIC}(,{_SYMBOLIC})*$|^[0-7]{{1,4}}$")
_ATTRIBUTES = re.compile(r"^[-+=][aAcCdDeFijmPsStTux]+$")


def permissions(call: Call) -> None:
    """`chmod`, `chown`, `chgrp`, `chattr`, `setfacl`: recursive changes of `/` or `/etc` are CRITICAL."""
    words = call.args
    needs_spec = call.name != "setfacl"
    spec: Word | None = None
    recursive = False
    targets: list[Word] = []
    index = 0
    while index < len(words):
        word, text = words[index], words[index].text
        index += 1
        mode_like = (_ATTRIBUTES if call.name == "chattr" else _MODE).match(text)
        if text == "--":
            targets += words[index:]
            break
        if needs_spec and spec is None and call.name in ("chmod", "chattr") and mode_like:
            spec = word
        elif text.startswith("--"):
            if text.startswith(("--reference", "--from")):
                needs_spec = needs_spec and not text.startswith("--reference")
                index += 0 if "=" in text else 1
            recursive = recursive or "recursive".startswith(text[2:])
        elif text.startswith("-") and len(text) > 1 and not word.dynamic:
            recursive = recursive or "R" in text
            index += 1 if call.name == "setfacl" and text[-1] in "mMxX" else 0
        elif needs_spec and spec is None:
            spec = word
        else:
            targets.append(word)
    if needs_spec and spec is None and targets:
        spec = targets.pop(0)
    floor = Risk.HIGH if recursive or call.name == "chattr" else Risk.MEDIUM
    for target in targets:
        call.write(target, floor=floor)
        if recursive and deletion_is_critical(target, call.ctx.cwds):
            call.add("destructive_tool", f"recursive {call.name} on {target.raw}", Risk.CRITICAL, Level.REMEDIATE)
    mode = spec.text if call.name == "chmod" and spec is not None else ""
    if re.search(r"[+=][rwxXt]*s", mode) or re.match(r"^0?[2467][0-7]{3}$", mode):
        call.add("privilege_escalation", f"chmod {mode} sets a set-id bit", Risk.HIGH, Level.REMEDIATE)


def tee(call: Call) -> None:
    """`tee file`: like a redirect, HIGH unless it writes nowhere."""
    options = parse_options(call.args)
    if not options.operands:
        call.read_only("tee copies input to output")
    for word in options.operands:
        call.write(word, floor=Risk.HIGH, code="file_write")


_SED_EXEC = re.compile(r"(^|[;\n{}])\s*([0-9$,/!]|/[^/]*/)*\s*e(\s|;|$)|s(.).*?\4.*?\4[gpIiMm0-9]*e")
_SED_WRITE = re.compile(r"(^|[;\n{}])\s*([0-9$,!]|/[^/]*/)*\s*[wW]\s+\S|s(.).*?\3.*?\3[gpIiMme0-9]*w\s*\S")


def sed(call: Call) -> None:
    """`sed`: read-only unless `-i`, `w` or `e` commands; `e` runs shell code."""
    options = parse_options(call.args, "efl", ("expression", "file", "line-length"))
    scripts = [word.text for word in options.values.get("e", []) + options.values.get("expression", [])]
    files = list(options.operands)
    if not scripts and not options.value("f", "file") and files:
        scripts.append(files.pop(0).text)
    if options.value("f", "file") is not None:
        call.add("arbitrary_code", "sed runs a script file whose contents are unknown", Risk.HIGH, Level.REMEDIATE)
    for script in scripts:
        if _SED_EXEC.search(script):
            call.unparsed("arbitrary_code", f"sed script runs shell commands: {script[:40]}")
        if _SED_WRITE.search(script):
            call.add("file_write", f"sed script writes files: {script[:40]}", Risk.HIGH, Level.REMEDIATE)
    if options.has("i", "in-place"):
        for word in files:
            call.write(word)
    else:
        call.read_only(operands=files)


_AWK_PIPE = re.compile(r"(?<!\|)\|(?!\|)")
_AWK_WRITE = re.compile(r"\bprint[f]?\b[^;{}]*>")


def awk(call: Call) -> None:
    """`awk`: read-only unless the program calls `system()`, pipes, or redirects output."""
    options = parse_options(
        call.args, "FvfeEil", ("field-separator", "assign", "file", "source", "exec", "include", "load")
    )
    programs = [word.text for word in options.values.get("e", []) + options.values.get("source", [])]
    files = list(options.operands)
    if options.value("f", "file", "E", "exec", "i", "include") is not None:
        if [w.text for w in options.values.get("i", [])] == ["inplace"]:
            for word in files[1:] if not programs and files else files:
                call.write(word)
        else:
            call.add("arbitrary_code", f"{call.name} runs a program file", Risk.HIGH, Level.REMEDIATE)
    if options.value("l", "load") is not None:
        call.add("arbitrary_code", f"{call.name} loads an extension", Risk.HIGH, Level.REMEDIATE)
    if not programs and files and options.value("f", "file", "E", "exec") is None:
        programs.append(files.pop(0).text)
    for program in programs:
        if "system" in program or _AWK_PIPE.search(program):
            call.unparsed("arbitrary_code", f"{call.name} program runs commands: {program[:40]}")
        if _AWK_WRITE.search(program):
            call.add("file_write", f"{call.name} program writes files: {program[:40]}", Risk.HIGH, Level.REMEDIATE)
    call.read_only(operands=files)


_FIND_OPTIONS = frozenset(
    {"-depth", "-d", "-xdev", "-mount", "-follow", "-noleaf", "-ignore_readdir_race", "-daystart"}
)
_FIND_VALUED_OPTIONS = frozenset({"-maxdepth", "-mindepth"})


def find(call: Call) -> None:
    """`find`: read-only, except `-delete`, `-exec`-style actions (classified in turn) and `-fprint`."""
    args = list(call.args)
    index = 0
    while index < len(args) and re.fullmatch(r"-[HLP]|-D|-O\d", args[index].text):
        index += 2 if args[index].text == "-D" else 1
    roots: list[Word] = []
    while index < len(args) and not args[index].prefix.startswith(("-", "(", "!")):
        roots.append(args[index])
        index += 1
    roots = roots or [Word.literal(".")]
    filtered = deletes = False
    inner: list[list[Word]] = []
    while index < len(args):
        text = args[index].text
        index += 1
        if text == "-delete":
            deletes = True
        elif text in ("-exec", "-execdir", "-ok", "-okdir"):
            command: list[Word] = []
            while index < len(args) and args[index].text not in (";", "+"):
                command.append(args[index])
                index += 1
            index += 1
            inner.append(command)
        elif text in ("-fprint", "-fprint0", "-fls", "-fprintf") and index < len(args):
            call.write(args[index], floor=Risk.HIGH, code="file_write")
            index += 2 if text == "-fprintf" else 1
        elif text in _FIND_VALUED_OPTIONS:
            index += 1
        elif text not in _FIND_OPTIONS and text not in ("-print", "-print0", "-prune", "-quit"):
            filtered = True
    if deletes:
        _destroy(call, f"{call.shown} deletes what it finds")
        for root in roots:
            if not filtered and deletion_is_critical(root, call.ctx.cwds):
                call.add(
                    "destructive_tool", f"find {root.raw} -delete removes everything", Risk.CRITICAL, Level.REMEDIATE
                )
    if not inner and not deletes:
        call.read_only(operands=roots)
    for command in inner:
        if not command:
            continue
        call.add("wrapper", f"find runs {command[0].raw} on what it finds", Risk.LOW, Level.OBSERVE)
        for root in roots:
            found = Word.literal(root.text.rstrip("/") + "/{}") if filtered else Word.unknown("{}", root.prefix)
            call.run([found if "{}" in word.text else word for word in command])


_ARCHIVE_SHORT = {"tar": "fCTXbHKLNVgI", "unzip": "dxP", "zip": "bnPtx"}
_ARCHIVE_RUNS = (
    "to-command",
    "checkpoint-action",
    "use-compress-program",
    "rsh-command",
    "info-script",
    "unzip-command",
)


def archive(call: Call) -> None:
    """`tar`, `zip`, `unzip`, `7z` and compressors: listing is read-only; extracting writes."""
    args = list(call.args)
    if call.name == "tar" and args and not args[0].text.startswith("-"):
        args[0] = Word.literal("-" + args[0].text)
    options = parse_options(args, _ARCHIVE_SHORT.get(call.name, "S"), ("file", "directory", *_ARCHIVE_RUNS))
    runs = any(flag.startswith(_ARCHIVE_RUNS) for flag in options.flags)
    if runs or (call.name == "tar" and options.has("I", "F")) or (call.name == "zip" and options.flags.count("T") > 1):
        call.add("arbitrary_code", f"{call.shown} runs a program", Risk.HIGH, Level.REMEDIATE)
    if call.name == "tar":
        if options.has("x", "extract", "get"):
            call.write(options.value("C", "directory") or Word.literal("."))
        elif options.has("c", "create", "r", "append", "u", "update", "A", "concatenate", "delete"):
            call.write(options.value("f", "file") or Word.literal("-"))
        else:
            call.read_only(operands=[])
    elif call.name == "unzip":
        if options.has("l", "v", "t", "Z", "p", "z"):
            call.read_only(operands=[])
        else:
            call.write(options.value("d") or Word.literal("."))
    elif call.name in ("zip", "7z", "7za"):
        if call.name != "zip" and options.operands and options.operands[0].text in ("l", "t", "i", "h"):
            call.read_only(operands=[])
        else:
            call.write(options.operands[0] if call.name == "zip" and options.operands else Word.literal("."))
            if options.has("m", "move"):
                _destroy(call, f"{call.name} -m deletes the originals")
    elif options.has("c", "stdout", "to-stdout", "l", "list", "t", "test", "h", "help", "V", "version"):
        call.read_only(operands=options.operands)
    else:
        for word in options.operands:
            call.write(word)


def output_option(call: Call) -> None:
    """Filters whose output file comes from an option or a second operand (`sort -o`, `uniq in out`)."""
    short = {"sort": "ktTSo", "uniq": "fsw", "iconv": "fto", "xxd": "lcgso", "dos2unix": "n", "unix2dos": "n"}[
        call.name
    ]
    options = parse_options(
        call.args, short, ("output", "key", "field-separator", "temporary-directory", "compress-program")
    )
    if options.value("compress-program") is not None:
        call.add("arbitrary_code", f"{call.name} runs a compression program", Risk.HIGH, Level.REMEDIATE)
    outputs = options.values.get("o", []) + options.values.get("output", [])
    operands = options.operands
    if len(operands) > 1 and (call.name == "uniq" or (call.name == "xxd" and options.has("r"))):
        outputs.append(operands[1])
    if call.name in ("dos2unix", "unix2dos"):
        outputs.extend(operands[1::2] if options.has("n") else operands)
    for word in outputs:
        call.write(word, floor=Risk.HIGH, code="file_write")
    if not outputs:
        call.read_only(operands=operands)


def editor(call: Call) -> None:
    """Interactive editors can change any file and run shell commands."""
    call.add("file_write", f"{call.name} is an interactive editor", Risk.HIGH, Level.REMEDIATE)


def storage_read_or_change(call: Call) -> None:
    """LVM, RAID, LUKS, ZFS and filesystem tools: queries are read-only, everything else HIGH."""
    text = " ".join(word.text for word in call.args)
    reads = {
        "lvm": r"^(lvs|vgs|pvs|lvdisplay|vgdisplay|pvdisplay|lvscan|vgscan|pvscan|version|help)\b",
        "mdadm": r"(^|\s)(--detail|-D|--examine|-E|--query|-Q|--detail-platform|--version|-V)\b",
        "cryptsetup": r"^(status|luksDump|isLuks|benchmark|--version|--help)\b",
        "zpool": r"^(status|list|iostat|get|history|events|--version|version)\b",
        "zfs": r"^(list|get|holds|diff|--version|version)\b",
        "btrfs": r"^(filesystem (show|df|usage)|subvolume (list|show)|device stats|scrub status|qgroup show)",
        "fsck": r"(^|\s)-n\b",
        "tune2fs": r"^-l\b",
        "xfs_repair": r"(^|\s)-n\b",
        "blockdev": r"^--(get|report)",
        "hdparm": r"^-[IiCgtT]+\b",
        "nvme": r"^(list|smart-log|id-ctrl|id-ns|error-log|get-log|list-subsys|show-regs|get-feature|version)\b",
        "badblocks": r"^(?!.*(-w|-n)\b)",
        "swapon": r"^(--show|-s|--summary|)$",
    }.get(call.name)
    if reads is not None and re.search(reads, text):
        call.read_only(operands=[])
        return
    destructive = re.search(
        r"(^|\s)(destroy|luksFormat|erase|luksErase|format|sanitize|--zero-superblock|-w|delete-ns|--security-erase\S*)(\s|$)",
        text,
    )
    call.add("storage_change", f"{call.shown} changes storage", Risk.HIGH, Level.REMEDIATE)
    if destructive or call.name in ("lvremove", "vgremove", "pvremove", "lvreduce", "blkdiscard", "mkswap"):
        _destroy(call, f"{call.shown} destroys data")
        for word in call.args:
            _device(call, word, "erases")


HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(READ_ONLY, read_only),
    **dict.fromkeys(DIAGNOSTIC, diagnostic),
    **dict.fromkeys(("rm", "unlink", "rmdir"), rm),
    **dict.fromkeys(("shred", "truncate"), shred),
    "dd": dd,
    **dict.fromkeys(("mkfs", "mkswap", "wipefs", "blkdiscard"), mkfs),
    **dict.fromkeys(("fdisk", "sfdisk", "gdisk", "cfdisk", "sgdisk", "parted", "partprobe"), partition),
    **dict.fromkeys(("cp", "mv", "install", "ln"), copy),
    **dict.fromkeys(("mkdir", "touch", "mktemp", "split", "csplit", "patch", "mkfifo", "mknod"), create),
    **dict.fromkeys(("chmod", "chown", "chgrp", "chattr", "setfacl"), permissions),
    "tee": tee,
    "sed": sed,
    **dict.fromkeys(("awk", "gawk", "mawk", "nawk"), awk),
    "find": find,
    **dict.fromkeys(("tar", "zip", "unzip", "7z", "7za", *_COMPRESSORS), archive),
    **dict.fromkeys(("sort", "uniq", "iconv", "xxd", "dos2unix", "unix2dos"), output_option),
    **dict.fromkeys(_EDITORS, editor),
    **dict.fromkeys(
        (
            *("lvm", "mdadm", "cryptsetup", "zpool", "zfs", "btrfs", "fsck", "tune2fs", "xfs_repair", "blockdev"),
            *("hdparm", "nvme", "badblocks", "resize2fs", "xfs_growfs", "lvremove", "vgremove", "pvremove"),
            *("lvreduce", "lvcreate", "lvextend", "lvresize", "vgcreate", "vgextend", "pvcreate", "vgchange"),
            *("lvchange", "lvrename", "swapon", "swapoff", "fstrim", "losetup", "dmsetup", "multipath"),
        ),
        storage_read_or_change,
    ),
}
"""Handlers for file, text and storage tools."""
