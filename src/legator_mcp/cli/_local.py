"""Commands that work on the database directly: ``legator db upgrade|current`` and ``legator backup``."""

import argparse
from pathlib import Path

import anyio

from legator_mcp.backup.service import BackupService
from legator_mcp.cli._common import CliError, add_settings_flags, print_output, settings_from_args
from legator_mcp.db.migrate import SchemaTooNew, current_revision, head_revision, upgrade
from legator_mcp.db.session import Database
from legator_mcp.errors import LegatorError
from legator_mcp.settings import Settings

__all__ = ["add_commands"]


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``db`` and ``backup``."""
    db = sub.add_parser("db", help="database schema: upgrade or show the current revision")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, text in (("upgrade", "apply pending migrations"), ("current", "show the schema revision")):
        cmd = db_sub.add_parser(name, help=text)
        add_settings_flags(cmd)
        cmd.set_defaults(handler=_db, action=name)

    backup = sub.add_parser("backup", help="write a verified online backup of the database")
    add_settings_flags(backup)
    backup.add_argument("--dest", type=Path, help="backup directory (default <data-dir>/backups)")
    backup.add_argument("--keep-days", type=_positive_int, help="delete backups older than N days afterwards")
    backup.add_argument("--output", choices=["table", "json"], default="table")
    backup.set_defaults(handler=_backup)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of days, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


async def _with_db(settings: Settings, action: str) -> dict[str, str | None]:
    database = Database(settings.effective_database_url)
    try:
        if action == "upgrade":
            revision = await upgrade(database)
        else:
            revision = await current_revision(database)
    finally:
        await database.dispose()
    return {"database": settings.effective_database_url.split("@")[-1], "revision": revision, "head": head_revision()}


def _db(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        result = anyio.run(_with_db, settings, args.action)
    except SchemaTooNew as exc:
        raise CliError(exc.message, exit_code=2) from None
    print_output(result, "table", ["database", "revision", "head"])
    return 0


async def _run_backup(settings: Settings, dest: Path, keep_days: int | None) -> dict[str, object]:
    database = Database(settings.effective_database_url)
    try:
        result = await BackupService(database=database).backup(destination=dest, keep_days=keep_days)
    finally:
        await database.dispose()
    return result.model_dump()


def _backup(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    dest = args.dest or settings.data_dir / "backups"
    try:
        result = anyio.run(_run_backup, settings, dest, args.keep_days)
    except LegatorError as exc:
        raise CliError(f"backup failed: {exc.message}") from None
    print_output(result, args.output, ["path", "size_bytes", "verified", "check", "schema_revision", "removed"])
    return 0
