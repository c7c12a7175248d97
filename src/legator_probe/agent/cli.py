"""``legator-probe``: register, run, show status, install the systemd unit.

Exit codes: 0 success, 1 a runtime failure (registration refused, server unreachable, systemctl
failed), 2 a usage or configuration error (bad option, missing or malformed config file). Errors
are one line on stderr; no secret (token, credential) is ever printed.
"""

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from pydantic import ValidationError

from legator_probe import __version__
from legator_probe.agent.settings import (
    ConfigError,
    ProbeConfig,
    ProbeSettings,
    is_loopback_url,
    load_config,
    resolve_config_path,
    save_config,
)
from legator_probe.agent.status import read_status, status_path
from legator_probe.protocol.sanitize import sanitize

__all__ = ["main"]

_USAGE: Final = 2
_FAILURE: Final = 1


class _Failure(Exception):
    def __init__(self, message: str, code: int = _FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _warn(message: str) -> None:
    print(f"legator-probe: warning: {message}", file=sys.stderr)


def _load(path: Path) -> ProbeConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise _Failure(str(exc), _USAGE) from None


def _plain_http_warning(url: str) -> None:
    if url.startswith("http://") and not is_loopback_url(url):
        _warn(f"{url} is plain http:// to a non-loopback host: the credential and commands travel unencrypted")


# --- init -----------------------------------------------------------------------------------


def _tags(raw: str | None) -> list[str]:
    tags = [tag.strip() for tag in (raw or "").split(",")]
    return list(dict.fromkeys(tag for tag in tags if tag))


def _init(args: argparse.Namespace, settings: ProbeSettings) -> int:
    import anyio

    from legator_probe.agent.registration import RegistrationError, register

    path = resolve_config_path(args.config, settings)
    if path.exists() and not args.force:
        raise _Failure(f"a probe config already exists at {path}; pass --force to replace it")
    token: str | None = args.token or os.environ.get("LEGATOR_PROBE_TOKEN")
    if not token:
        raise _Failure("no registration token: pass --token or set LEGATOR_PROBE_TOKEN", _USAGE)
    server: str = args.server.rstrip("/")
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Failure(f"--server must be an http:// or https:// URL, not {server!r}", _USAGE)
    ca_file: Path | None = args.ca_file.resolve() if args.ca_file else None
    if ca_file is not None and not ca_file.is_file():
        raise _Failure(f"--ca-file {ca_file} does not exist", _USAGE)
    _plain_http_warning(server)
    hostname = args.hostname or settings.hostname or socket.gethostname()
    try:
        config = anyio.run(lambda: register(server, token, hostname=hostname, tags=_tags(args.tags), ca_file=ca_file))
    except RegistrationError as exc:
        raise _Failure(str(exc)) from None
    try:
        save_config(path, config)
    except OSError as exc:
        raise _Failure(f"cannot write {path}: {exc.strerror}") from None
    print(f"registered as {config.probe_id} (policy {config.policy.level}); config written to {path} (mode 0600)")
    return 0


# --- run ------------------------------------------------------------------------------------


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return sanitize(super().format(record))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": sanitize(record.getMessage()),
        }
        if record.exc_info:
            document["exception"] = sanitize(self.formatException(record.exc_info))
        return json.dumps(document)


def configure_logging(settings: ProbeSettings) -> None:
    """Send sanitised log records to stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))


def _run(args: argparse.Namespace, settings: ProbeSettings) -> int:
    import anyio

    from legator_probe.agent._memory import fix_mmap_threshold, limit_malloc_arenas
    from legator_probe.agent.daemon import ProbeDaemon

    limit_malloc_arenas()
    fix_mmap_threshold()
    path = resolve_config_path(args.config, settings)
    config = _load(path)
    configure_logging(settings)
    daemon = ProbeDaemon(settings, config, config_path=path)
    anyio.run(daemon.serve)
    return _FAILURE if daemon.force_exit else 0


# --- status ---------------------------------------------------------------------------------


def _status(args: argparse.Namespace, settings: ProbeSettings) -> int:
    path = resolve_config_path(args.config, settings)
    config = _load(path)
    status = read_status(status_path(path))
    if args.json:
        document = {
            "probe_id": config.probe_id,
            "server_url": config.server_url,
            "policy": config.policy.model_dump(mode="json"),
            "signing_keys": [key.key_id for key in config.signing_keys],
            "tags": config.tags,
            "config": str(path),
            "connection": status.model_dump(mode="json") if status else None,
        }
        print(json.dumps(document, indent=2))
        return 0
    policy = config.policy
    rows = [
        ("probe id", config.probe_id),
        ("server", config.server_url),
        ("policy", f"{policy.policy_id} (level {policy.level}, version {policy.version})"),
        ("signing keys", ", ".join(key.key_id for key in config.signing_keys)),
        ("tags", ", ".join(config.tags) or "-"),
        ("config", str(path)),
    ]
    if status is None:
        rows.append(("connection", "unknown (the probe has not run yet)"))
    else:
        when = status.updated_at.isoformat(timespec="seconds")
        rows.append(("connection", f"{status.outcome} at {when}" + (f": {status.detail}" if status.detail else "")))
        if status.last_connected_at is not None:
            rows.append(("last connected", status.last_connected_at.isoformat(timespec="seconds")))
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        print(f"{label + ':':<{width}} {value}")
    return 0


# --- service --------------------------------------------------------------------------------


def _service_install(args: argparse.Namespace, settings: ProbeSettings) -> int:
    from legator_probe.agent.service import ServiceError, enable_unit, profile_for, render_unit, write_unit

    path = resolve_config_path(args.config, settings).absolute()
    config = _load(path)
    profile = profile_for(config.policy.level) if args.profile == "auto" else args.profile
    try:
        unit = write_unit(args.unit_dir, render_unit(config_path=path, profile=profile))
        print(f"wrote {unit} (profile {profile})")
        if args.no_enable:
            print("not enabled (--no-enable); run: systemctl daemon-reload && systemctl enable --now " + unit.name)
        else:
            enable_unit(unit.name)
            print(f"enabled and started {unit.name}")
    except ServiceError as exc:
        raise _Failure(str(exc)) from None
    return 0


def _version(_args: argparse.Namespace, _settings: ProbeSettings) -> int:
    print(f"legator-probe {__version__}")
    return 0


# --- parser ---------------------------------------------------------------------------------

_Handler = Callable[[argparse.Namespace, ProbeSettings], int]


def _parser() -> argparse.ArgumentParser:
    from legator_probe.agent.service import DEFAULT_UNIT_DIR

    parser = argparse.ArgumentParser(prog="legator-probe", description="The Legator probe agent.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: _Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def config_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--config",
            type=Path,
            help="config file (default: $LEGATOR_PROBE_CONFIG, /etc/legator/probe.json as root, "
            "else ~/.config/legator/probe.json)",
        )

    init = command("init", _init, "register with the control plane and write the config file")
    init.add_argument("--server", required=True, help="control plane URL, e.g. https://legator.example:8443")
    init.add_argument("--token", help="one-time registration token (or set LEGATOR_PROBE_TOKEN)")
    init.add_argument("--tags", help="comma-separated tags, e.g. web,eu-west")
    init.add_argument("--hostname", help="register under this name (default: $LEGATOR_HOSTNAME or the host name)")
    init.add_argument("--ca-file", type=Path, help="CA bundle that signed the control plane's certificate")
    init.add_argument("--force", action="store_true", help="replace an existing config")
    config_option(init)

    run = command("run", _run, "connect to the control plane and execute signed commands")
    config_option(run)

    status = command("status", _status, "show the probe's identity, policy and last connection outcome")
    status.add_argument("--json", action="store_true", help="print JSON")
    config_option(status)

    service = command("service", _version, "manage the systemd service")
    service_commands = service.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    install = service_commands.add_parser("install", help="write (and enable) the systemd unit")
    install.set_defaults(handler=_service_install)
    install.add_argument("--unit-dir", type=Path, default=DEFAULT_UNIT_DIR, help="default: %(default)s")
    install.add_argument(
        "--profile",
        choices=("auto", "hardened", "remediate"),
        default="auto",
        help="sandbox of the unit; auto picks hardened below the remediate level (default: auto)",
    )
    install.add_argument("--no-enable", action="store_true", help="only write the unit; do not run systemctl")
    config_option(install)

    command("version", _version, "print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``legator-probe`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = ProbeSettings.from_env()
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        print(f"legator-probe: error: invalid setting LEGATOR_PROBE_{field.upper()}: {first['msg']}", file=sys.stderr)
        return _USAGE
    handler: _Handler = args.handler
    try:
        return handler(args, settings)
    except _Failure as exc:
        print(f"legator-probe: error: {exc}", file=sys.stderr)
        return exc.code
