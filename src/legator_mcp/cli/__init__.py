"""The ``legator`` command: run the control plane, bridge MCP over stdio, and operate it over REST."""

import argparse
import sys
from collections.abc import Sequence

from legator_mcp.cli import _client, _local, _serve, jobs, policies
from legator_mcp.cli._common import CliError, fail

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and flag of ``legator``."""
    parser = argparse.ArgumentParser(prog="legator", description="Legator: an MCP-first fleet control plane.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve.add_commands(sub)
    _local.add_commands(sub)
    _client.add_commands(sub)
    jobs.add_commands(sub)
    policies.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``legator`` and return its exit code (2 for bad flags or configuration)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CliError as exc:
        return fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
