"""The systemd unit of the probe and its installation.

Two hardening profiles, because the probe's job decides how much systemd may fence it in:

* ``remediate`` — for probes that may change the host. Commands the probe runs inherit its
  sandbox, so ``ProtectSystem=strict`` would make every ``file_write`` to ``/etc`` and every package
  install fail, ``PrivateTmp`` would show commands a private ``/tmp``, and ``NoNewPrivileges``
  would break ``sudo``/setuid helpers. Only settings that do not change what a command sees are kept.
* ``hardened`` — for ``observe``/``diagnose`` probes: the file system is read-only except the
  probe's config directory, kernel tunables/modules/cgroups are protected, no privilege gain.
  Reads, ``ps``, ``journalctl`` and ``systemctl status`` still work. A later ``policy_update`` to
  ``remediate`` needs ``legator-probe service install --profile remediate`` (the probe warns).

Both use ``KillMode=mixed``: on stop systemd sends SIGTERM only to the probe, which drains its
commands (``drain_timeout_s``) and kills their process groups itself; anything left is SIGKILLed
after ``TimeoutStopSec``. Processes a command starts on purpose (``nohup …&``) live in the
probe's cgroup and end when the service stops or restarts.
"""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final, Literal, TypeAlias

from legator_probe.protocol.types import CapabilityLevel

__all__ = [
    "DEFAULT_UNIT_DIR",
    "UNIT_NAME",
    "Profile",
    "ServiceError",
    "enable_unit",
    "probe_command",
    "profile_for",
    "render_unit",
    "write_unit",
]

UNIT_NAME: Final = "legator-probe.service"
"""Name of the installed unit."""

DEFAULT_UNIT_DIR: Final = Path("/etc/systemd/system")
"""Where units are installed by default."""

Profile: TypeAlias = Literal["hardened", "remediate"]
"""Hardening profile of the unit (see the module docstring)."""

PROFILE_ENV: Final = "LEGATOR_PROBE_SERVICE_PROFILE"
"""Environment variable the unit sets so the probe knows its sandbox."""


class ServiceError(Exception):
    """Raised when the unit cannot be written or systemd refuses to enable it; ``str`` is one line."""


def profile_for(level: CapabilityLevel) -> Profile:
    """The profile that lets a probe at ``level`` do its job: ``remediate`` needs the open one."""
    return "remediate" if level == "remediate" else "hardened"


def probe_command() -> list[str]:
    """The argv that starts this probe: the ``legator-probe`` script next to the interpreter, else ``-m``."""
    script = Path(sys.executable).with_name("legator-probe")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "legator_probe.agent"]


def render_unit(*, config_path: Path, profile: Profile, command: list[str] | None = None) -> str:
    """Return the unit file text.

    Args:
        config_path: The probe config the service runs with.
        profile: ``hardened`` or ``remediate``.
        command: The probe's argv prefix (default :func:`probe_command`).
    """
    exec_start = shlex.join([*(command or probe_command()), "run", "--config", str(config_path)])
    lines = [
        "# Written by 'legator-probe service install'. Re-run it to change the profile.",
        "[Unit]",
        "Description=Legator probe agent",
        "Wants=network-online.target",
        "After=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        f"Environment={PROFILE_ENV}={profile}",
        "Environment=PYTHONUNBUFFERED=1",
        "Restart=always",
        "RestartSec=5",
        "KillMode=mixed",
        "TimeoutStopSec=30",
        "LimitNOFILE=65536",
        "OOMScoreAdjust=-500",
    ]
    if profile == "hardened":
        lines += [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            f"ReadWritePaths={config_path.parent}",
            "ProtectHome=read-only",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "RestrictSUIDSGID=yes",
            "RestrictRealtime=yes",
            "RestrictNamespaces=yes",
            "LockPersonality=yes",
            "SystemCallArchitectures=native",
            "CapabilityBoundingSet=~CAP_SYS_MODULE CAP_SYS_BOOT CAP_SYS_TIME CAP_MKNOD CAP_SYS_RAWIO",
        ]
    else:
        lines += [
            "# remediate profile: no file-system or privilege sandbox, because commands inherit it.",
            "ProtectKernelModules=yes",
            "LockPersonality=yes",
        ]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def write_unit(unit_dir: Path, text: str, *, name: str = UNIT_NAME) -> Path:
    """Write the unit file (mode 0644) and return its path.

    Raises:
        ServiceError: The directory does not exist or is not writable.
    """
    if not unit_dir.is_dir():
        raise ServiceError(f"unit directory {unit_dir} does not exist")
    path = unit_dir / name
    try:
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)
    except OSError as exc:
        raise ServiceError(f"cannot write {path}: {exc.strerror}") from None
    return path


def enable_unit(name: str = UNIT_NAME) -> None:
    """``systemctl daemon-reload`` then ``systemctl enable --now <name>``.

    Raises:
        ServiceError: systemctl is missing or one of the calls failed.
    """
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise ServiceError("systemctl not found; start the probe with your init system instead")
    for argv in ([systemctl, "daemon-reload"], [systemctl, "enable", "--now", name]):
        completed = subprocess.run(argv, capture_output=True, text=True, check=False, encoding="utf-8")
        if completed.returncode != 0:
            detail = (completed.stderr or completed.stdout).strip().splitlines()
            raise ServiceError(f"{' '.join(argv[1:])} failed: {detail[0] if detail else completed.returncode}")
