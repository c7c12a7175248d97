"""Path policy: which reads are sensitive, which writes touch the system, which deletions are fatal.

Paths are compared after `posixpath.normpath`, so `/etc/../` is `/` and `//etc` is `/etc`. The home
directory is kept symbolic as `~`. A relative path is resolved against every working directory the
command might run in; an unknown one (`None`) makes "whole directory" targets such as `.` or `*`
count as possibly `/`.
"""

import fnmatch
import posixpath
import re
from collections.abc import Iterable

from legator_mcp.policy._core import Risk
from legator_mcp.policy._syntax import Word

NULL_SINKS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty", "-", "/dev/zero"})
"""Write targets that change nothing on disk."""

_BLOCK_DEVICE = re.compile(
    r"/dev/(sd[a-z]+|hd[a-z]+|vd[a-z]+|xvd[a-z]+|nvme\d+n\d+|mmcblk\d+|md\d*|dm-\d+|loop\d+|sr\d+|nbd\d+|rbd\d+|"
    r"zd\d+|mtdblock\d+|mapper/|disk/|mem$|kmem$|port$|[a-z0-9_-]+/[a-z0-9_.-]+$)"
)
_TOP_LEVEL_SAFE = frozenset({"/tmp", "/var/tmp", "/lost+found"})
_CRITICAL_DIRS = frozenset(
    {"/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/local", "/usr/share", "/var/lib", "/etc/ssh"}
)
_CRITICAL_WRITES = ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/sudoers", "/etc/sudoers.d")
_CRITICAL_WRITE_EXACT = frozenset({"/proc/sysrq-trigger", "/sys/power/state", "/proc/sys/kernel/sysrq"})
_SYSTEM_WRITES = (
    *("/etc", "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/var/lib", "/var/spool/cron"),
    *("/root", "/proc", "/sys", "/run/systemd", "/opt", "/srv", "/var/spool/at", "/snap"),
)
_PERSISTENCE_FILES = re.compile(
    r"(^|/)(\.ssh(/.*)?|\.bashrc|\.bash_profile|\.bash_login|\.profile|\.zshrc|\.zprofile|\.kshrc|"
    r"\.config/autostart(/.*)?|\.config/systemd(/.*)?|\.kube/config|\.docker/config\.json)$"
)
_SENSITIVE_READS = re.compile(
    r"^(/etc/shadow-?|/etc/gshadow-?|/etc/ssl/private(/.*)?|/etc/pki/tls/private(/.*)?|"
    r"/etc/ssh/ssh_host_.*_key|/root/\.ssh(/.*)?|/etc/kubernetes/(admin\.conf|pki/.*)|/proc/\d+/environ|"
    r"/proc/self/environ|/var/lib/legator(/.*)?|/etc/legator(/.*)?)$"
    r"|(^|/)(id_rsa|id_dsa|id_ecdsa|id_ed25519)(_sk)?$|\.(pem|key|p12|pfx|keystore|jks)$"
    r"|(^|/)(\.aws/credentials|\.kube/config|\.docker/config\.json|\.netrc|\.pgpass|\.git-credentials|"
    r"\.vault-token|\.ssh/.*|\.gnupg/.*)$"
)


def normalize(text: str, cwd: str | None) -> str | None:
    """Return an absolute, normalised form of `text` (`~` kept symbolic), or None when unknowable."""
    if not text.startswith(("/", "~")):
        if cwd is None:
            return None
        text = posixpath.join(cwd, text)
    if text.startswith("~"):
        user, _, rest = text[1:].partition("/")
        if user:
            text = ("/root" if user == "root" else f"/home/{user}") + "/" + rest
        else:
            path = posixpath.normpath("~/" + rest)
            return "~" if path == "." else "/home" if path.startswith("..") else path
    return "/" + posixpath.normpath(text).lstrip("/")


def _whole_directory(text: str) -> bool:
    """Tell whether a relative path names its working directory or all of it (`.`, `..`, `*`, `./*`)."""
    parts = [part for part in text.split("/") if part]
    return not parts or all(part in (".", "..", "*", ".*", "*.*") for part in parts)


def _critical_directory(path: str) -> bool:
    if path == "~" or path == "/":
        return True
    parts = path.strip("/").split("/")
    if path.startswith("/") and len(parts) == 1:
        return path not in _TOP_LEVEL_SAFE
    if path.startswith("/home/") and len(parts) == 2:
        return False
    return path in _CRITICAL_DIRS


def _critical_path(path: str) -> bool:
    """A normalised path whose recursive removal (or the removal of everything in it) wrecks the host."""
    if _critical_directory(path):
        return True
    head, tail = posixpath.split(path)
    if tail in ("*", ".*", "*.*", "?*") and _critical_directory(head or "/"):
        return True
    parts = path.strip("/").split("/")
    # A pattern in the first component (`/e*`, `/[a-z]*`) could match /etc.
    return path.startswith("/") and any(char in parts[0] for char in "*?[")


def deletion_is_critical(word: Word, cwds: Iterable[str | None]) -> bool:
    """Tell whether recursively removing `word` could remove `/`, `~` or a top-level system directory."""
    text = word.prefix if word.dynamic else word.text
    for cwd in cwds:
        if not text:
            return True  # fully dynamic: an empty variable or `$(…)` can expand to anything
        path = normalize(text, cwd)
        if path is None:
            if _whole_directory(text):
                return True
            continue
        if _critical_path(path):
            return True
    return False


def is_block_device(text: str) -> bool:
    """Tell whether `text` names a disk, partition, mapper or raw-memory device."""
    return _BLOCK_DEVICE.match(posixpath.normpath(text) if text.startswith("/") else text) is not None


def write_risk(word: Word, cwds: Iterable[str | None]) -> tuple[Risk, str, str]:
    """Classify a write to `word`.

    Returns:
        The risk, the indicator code (`file_write`, `system_path_write` or `block_device_write`) and
        the resolved path (or the raw word) for the message.
    """
    if word.dynamic and not word.prefix.startswith("/"):
        return Risk.MEDIUM, "file_write", word.raw
    worst: tuple[Risk, str, str] = (Risk.MEDIUM, "file_write", word.raw)
    for cwd in cwds:
        path = normalize(word.prefix if word.dynamic else word.text, cwd)
        if path is None:
            continue
        found = _path_write_risk(path, dynamic=word.dynamic)
        if found[0] > worst[0]:
            worst = found
    return worst


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _path_write_risk(path: str, *, dynamic: bool) -> tuple[Risk, str, str]:
    if path.startswith("/dev/"):
        if path in NULL_SINKS or path.startswith("/dev/fd/") or path.startswith("/dev/shm/"):
            return Risk.MEDIUM, "file_write", path
        if is_block_device(path) or dynamic:
            return Risk.CRITICAL, "block_device_write", path
        return Risk.CRITICAL, "system_path_write", path
    if _under(path, _CRITICAL_WRITES) or path in _CRITICAL_WRITE_EXACT or _under(path, ("/boot",)):
        return Risk.CRITICAL, "system_path_write", path
    if dynamic and any(root.startswith(path.rstrip("/") + "/") for root in _CRITICAL_WRITES):
        return Risk.CRITICAL, "system_path_write", path
    if path == "/" or _under(path, _SYSTEM_WRITES) or _PERSISTENCE_FILES.search(path):
        return Risk.HIGH, "system_path_write", path
    return Risk.MEDIUM, "file_write", path


def read_is_sensitive(word: Word, cwds: Iterable[str | None]) -> str | None:
    """Return the resolved path when reading `word` could expose secrets, else None."""
    text = word.prefix if word.dynamic else word.text
    for cwd in cwds:
        path = normalize(text, cwd) if text else None
        candidate = path or text
        if not candidate:
            continue
        if _SENSITIVE_READS.search(candidate) or (word.glob and _glob_reaches_secret(candidate)):
            return candidate
    return None


def _glob_reaches_secret(pattern: str) -> bool:
    samples = ("/etc/shadow", "/etc/gshadow", "/root/.ssh/id_rsa", "/etc/ssl/private/server.key")
    return any(fnmatch.fnmatchcase(sample, pattern) for sample in samples)
