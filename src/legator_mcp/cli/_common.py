"""Helpers shared by the CLI commands: settings from flags, one-line errors, output formatting."""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from legator_mcp.settings import Settings

__all__ = ["CliError", "add_settings_flags", "fail", "print_output", "settings_from_args"]


class CliError(Exception):
    """Raised by a command to stop with a one-line message and an exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, code: int) -> int:
    """Print ``legator: <message>`` to stderr and return ``code``."""
    print(f"legator: {message}", file=sys.stderr)
    return code


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override ``LEGATOR_*`` settings."""
    parser.add_argument("--data-dir", type=Path, help="data directory (LEGATOR_DATA_DIR)")
    parser.add_argument("--database-url", help="database URL (LEGATOR_DATABASE_URL)")
    parser.add_argument("--listen", help="HOST:PORT to bind (LEGATOR_LISTEN_ADDR)")


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Build settings from the environment plus flags; a bad value stops with exit code 2.

    Raises:
        CliError: With exit code 2 when the configuration does not validate.
    """
    overrides: dict[str, Any] = dict(extra)
    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = args.data_dir
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "listen", None):
        overrides["listen_addr"] = args.listen
    if getattr(args, "no_auth", False):
        overrides["auth_enabled"] = False
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        env = f"LEGATOR_{field.upper()}"
        raise CliError(f"configuration error: {field} ({env}): {first['msg']}", exit_code=2) from None


def print_output(data: Any, output: str, columns: list[str] | None = None) -> None:
    """Print ``data`` as JSON or as a plain table of ``columns``."""
    if output == "json" or columns is None:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    rows: list[dict[str, Any]] = cast(list[dict[str, Any]], data) if isinstance(data, list) else [data]
    table = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col), *(len(r[i]) for r in table)]) for i, col in enumerate(columns)]
    print("  ".join(col.upper().ljust(widths[i]) for i, col in enumerate(columns)))
    for r in table:
        print("  ".join(r[i].ljust(widths[i]) for i in range(len(columns))))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        items = cast(list[Any], value)
        return ",".join(str(v) for v in items)
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
