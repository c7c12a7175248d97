"""Host inventory: OS, hardware, disks, interfaces, packages, services and users.

:func:`collect_inventory` blocks (it reads ``/proc``, ``/sys`` and runs ``ip``, ``dpkg-query``/``rpm``
and ``systemctl``), so the daemon calls it in a worker thread. Every source is optional: a missing
file or tool leaves its part empty, never fails the whole inventory.
"""

import ipaddress
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

from legator_probe.agent.metrics import memory
from legator_probe.protocol.payloads import (
    DiskInfo,
    InterfaceInfo,
    InventoryPayload,
    PackageInfo,
    ServiceInfo,
    UserInfo,
)

__all__ = [
    "MAX_PACKAGES",
    "PSEUDO_FILESYSTEMS",
    "collect_inventory",
    "disks",
    "interfaces",
    "os_release",
    "packages",
    "services",
    "users",
]

logger = logging.getLogger(__name__)

MAX_PACKAGES: Final = 5000
"""Most packages reported."""

_MAX_ENTRIES: Final = 2000
_TOOL_TIMEOUT_S: Final = 60.0

PSEUDO_FILESYSTEMS: Final = frozenset(
    "proc sysfs devtmpfs devpts tmpfs cgroup cgroup2 securityfs pstore debugfs tracefs configfs fusectl mqueue "
    "hugetlbfs bpf autofs binfmt_misc rpc_pipefs nsfs ramfs efivarfs selinuxfs squashfs nfsd fuse.lxcfs "
    "fuse.portal fuse.gvfsd-fuse".split()
)
"""File system types that are not disks and are left out of the inventory."""


def _run(argv: list[str]) -> str | None:
    """Run a tool and return its stdout, or ``None`` if it is missing, fails or takes too long."""
    program = shutil.which(argv[0])
    if program is None:
        return None
    try:
        completed = subprocess.run(
            [program, *argv[1:]],
            capture_output=True,
            timeout=_TOOL_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        logger.debug("inventory tool %s failed", argv[0], exc_info=True)
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.decode("utf-8", "replace")


def os_release(paths: tuple[Path, ...] = (Path("/etc/os-release"), Path("/usr/lib/os-release"))) -> dict[str, str]:
    """Parse ``os-release`` into a dict (empty when absent)."""
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() and not key.startswith("#"):
                values[key.strip()] = value.strip().strip("\"'")
        return values
    return {}


def _unescape_mount(field: str) -> str:
    """Undo the octal escapes of ``/proc/mounts`` (``\\040`` is a space)."""
    return field.encode("latin-1").decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")


def disks(mounts: Path = Path("/proc/mounts")) -> list[DiskInfo]:
    """Mounted disk file systems with their size and usage, pseudo file systems left out."""
    found: list[DiskInfo] = []
    seen: set[str] = set()
    try:
        lines = mounts.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) < 3 or parts[2] in PSEUDO_FILESYSTEMS:
            continue
        mount = _unescape_mount(parts[1])
        if mount in seen:
            continue
        try:
            stats = os.statvfs(mount)
        except OSError:
            continue
        total = stats.f_blocks * stats.f_frsize
        if total == 0:
            continue
        seen.add(mount)
        used = max(total - stats.f_bfree * stats.f_frsize, 0)
        found.append(DiskInfo(mount=mount, fstype=parts[2], total_bytes=total, used_bytes=used))
        if len(found) >= _MAX_ENTRIES:
            break
    return found


def _addresses_from_ip() -> dict[str, list[str]] | None:
    text = _run(["ip", "-j", "addr", "show"])
    if text is None:
        return None
    try:
        parsed = cast(list[dict[str, Any]], json.loads(text))
    except ValueError:
        return None
    result: dict[str, list[str]] = {}
    for link in parsed:
        name = str(link.get("ifname", ""))
        infos = cast(list[dict[str, Any]], link.get("addr_info", []))
        result[name] = [f"{info['local']}/{info['prefixlen']}" for info in infos if "local" in info]
    return result


def _ipv4_by_ioctl(name: str) -> str | None:
    import fcntl
    import struct

    packed = struct.pack("256s", name.encode("utf-8")[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            address = fcntl.ioctl(sock.fileno(), 0x8915, packed)[20:24]  # SIOCGIFADDR
            netmask = fcntl.ioctl(sock.fileno(), 0x891B, packed)[20:24]  # SIOCGIFNETMASK
        except OSError:
            return None
    prefix = bin(int.from_bytes(netmask, "big")).count("1")
    return f"{socket.inet_ntoa(address)}/{prefix}"


def _addresses_best_effort(names: list[str]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {name: [] for name in names}
    for name in names:
        if (ipv4 := _ipv4_by_ioctl(name)) is not None:
            result[name].append(ipv4)
    try:
        lines = Path("/proc/net/if_inet6").read_text(encoding="ascii").splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) == 6 and parts[5] in result:
            address = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
            result[parts[5]].append(f"{address}/{int(parts[2], 16)}")
    return result


def interfaces(sys_net: Path = Path("/sys/class/net")) -> list[InterfaceInfo]:
    """Network interfaces (loopback left out) with MAC and addresses in CIDR form."""
    try:
        names = [name for _, name in socket.if_nameindex() if name != "lo"]
    except OSError:
        return []
    addresses = _addresses_from_ip() or _addresses_best_effort(names)
    found: list[InterfaceInfo] = []
    for name in names:
        try:
            mac: str | None = (sys_net / name / "address").read_text(encoding="ascii").strip()
        except OSError:
            mac = None
        if not mac or mac == "00:00:00:00:00:00":
            mac = None
        found.append(InterfaceInfo(name=name, mac=mac, addresses=addresses.get(name, [])))
    return found


def packages(limit: int = MAX_PACKAGES) -> list[PackageInfo]:
    """Installed packages from ``dpkg-query`` (manager ``apt``) or ``rpm -qa`` (manager ``rpm``)."""
    text = _run(["dpkg-query", "-W", "-f", "${Package}\\t${Version}\\t${db:Status-Abbrev}\\n"])
    manager = "apt"
    if text is None:
        text = _run(["rpm", "-qa", "--queryformat", "%{NAME}\\t%{VERSION}-%{RELEASE}\\n"])
        manager = "rpm"
    if text is None:
        return []
    found: list[PackageInfo] = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0]:
            continue
        if len(fields) > 2 and not fields[2].startswith("ii"):
            continue  # dpkg lists removed packages whose config files remain
        found.append(PackageInfo(name=fields[0], version=fields[1], manager=manager))
        if len(found) >= limit:
            break
    return found


def services() -> list[ServiceInfo]:
    """Systemd services with their active and sub state; empty when systemd is not running."""
    if not Path("/run/systemd/system").is_dir():
        return []
    text = _run(["systemctl", "list-units", "--type=service", "--all", "--no-pager", "--output=json"])
    if text is None:
        return []
    try:
        units = cast(list[dict[str, Any]], json.loads(text))
    except ValueError:
        return []
    found: list[ServiceInfo] = []
    for unit in units[:_MAX_ENTRIES]:
        name = str(unit.get("unit", ""))
        if name:
            found.append(
                ServiceInfo(
                    name=name.removesuffix(".service"), state=str(unit.get("active", "")), sub_state=unit.get("sub")
                )
            )
    return found


def users(passwd: Path = Path("/etc/passwd")) -> list[UserInfo]:
    """Local accounts from ``/etc/passwd`` (name, uid, login shell)."""
    try:
        lines = passwd.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    found: list[UserInfo] = []
    for line in lines:
        fields = line.split(":")
        if len(fields) < 7 or not fields[2].isdigit():
            continue
        found.append(UserInfo(name=fields[0], uid=int(fields[2]), shell=fields[6] or None))
        if len(found) >= _MAX_ENTRIES:
            break
    return found


def collect_inventory(*, hostname: str) -> InventoryPayload:
    """Collect the whole inventory (blocking; call it in a worker thread)."""
    release = os_release()
    version = release.get("PRETTY_NAME") or " ".join(
        part for part in (release.get("NAME"), release.get("VERSION_ID")) if part
    )
    return InventoryPayload(
        hostname=hostname,
        os=platform.system().lower(),
        os_version=version or platform.version(),
        kernel=platform.release(),
        arch=platform.machine(),
        cpus=os.cpu_count() or 0,
        mem_total_bytes=memory()[0],
        disks=disks(),
        interfaces=interfaces(),
        packages=packages(),
        services=services(),
        users=users(),
        collected_at=datetime.now(UTC),
    )
