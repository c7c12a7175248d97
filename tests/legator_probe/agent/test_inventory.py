"""Inventory and heartbeat metrics from this host's real /proc, /sys and tools."""

from pathlib import Path

import pytest

from legator_probe.agent import inventory
from legator_probe.agent.metrics import collect_heartbeat, disk_usage, memory, uptime_s


def test_the_inventory_describes_this_host() -> None:
    payload = inventory.collect_inventory(hostname="host-a")
    assert payload.hostname == "host-a" and payload.os == "linux" and payload.kernel and payload.arch
    assert payload.cpus > 0 and payload.mem_total_bytes > 0
    assert any(disk.mount == "/" and disk.total_bytes > 0 for disk in payload.disks)
    assert any(user.name == "root" and user.uid == 0 for user in payload.users)
    assert all(iface.name != "lo" for iface in payload.interfaces)


def test_os_release_and_mounts_are_parsed(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12"\n# comment\nID=debian\n', encoding="utf-8")
    assert inventory.os_release((tmp_path / "missing", release)) == {
        "NAME": "Debian GNU/Linux",
        "VERSION_ID": "12",
        "ID": "debian",
    }
    mounts = tmp_path / "mounts"
    mounts.write_text(
        f"proc /proc proc rw 0 0\ntmpfs /run tmpfs rw 0 0\n/dev/x {tmp_path} ext4 rw 0 0\n/dev/x / ext4 rw 0 0\n",
        encoding="utf-8",
    )
    assert [(d.mount, d.fstype) for d in inventory.disks(mounts)] == [(str(tmp_path), "ext4"), ("/", "ext4")]


def test_missing_sources_leave_their_part_empty(tmp_path: Path) -> None:
    assert inventory.users(tmp_path / "passwd") == []
    assert inventory.disks(tmp_path / "mounts") == []
    assert inventory.os_release((tmp_path / "none",)) == {}


def test_installed_packages_are_listed_when_a_package_manager_exists() -> None:
    packages = inventory.packages(limit=10)
    if not packages:
        pytest.skip("no dpkg-query or rpm on this host")
    assert len(packages) == 10 and all(p.name and p.version and p.manager in ("apt", "rpm") for p in packages)


def test_heartbeat_metrics_are_real(tmp_path: Path) -> None:
    beat = collect_heartbeat(running_commands=2)
    assert beat.uptime_s > 0 and beat.mem_total_bytes >= beat.mem_used_bytes > 0
    assert beat.disk_total_bytes >= beat.disk_used_bytes > 0 and beat.running_commands == 2
    assert uptime_s(tmp_path) == 0.0 and memory(tmp_path) == (0, 0) and disk_usage(str(tmp_path / "x")) == (0, 0)
