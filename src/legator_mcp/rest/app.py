"""Assemble the REST route table from every domain's routes module."""

from collections.abc import Callable

from legator_mcp.rest._routing import RouteTable
from legator_mcp.rest.routes import approvals, audit, auth, commands, fleet, fleet_commands, jobs, policies, system

__all__ = ["REGISTRARS", "build_route_table"]

REGISTRARS: list[Callable[[RouteTable], None]] = [
    system.register,
    auth.register,
    audit.register,
    fleet.register,
    approvals.register,
    commands.register,
    fleet_commands.register,
    policies.register,
    jobs.register,
]


def build_route_table() -> RouteTable:
    """Return the table of every REST route."""
    table = RouteTable()
    for register in REGISTRARS:
        register(table)
    return table
