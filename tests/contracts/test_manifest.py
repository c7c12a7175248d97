"""contracts/ lists the stable MCP tools, resources and REST routes; the code must match, and the lists only grow."""

import json
import subprocess
from pathlib import Path

import pytest

from legator_mcp.app import build_services
from legator_mcp.mcp.server import build_mcp_server
from legator_mcp.rest.app import build_route_table
from legator_mcp.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"


def _read(name: str) -> list[str]:
    lines = (CONTRACTS / name).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def _code_names(tmp_path: Path) -> dict[str, set[str]]:
    services = build_services(Settings(_env_file=None, data_dir=tmp_path))  # pyright: ignore[reportCallIssue]
    _server, registry = build_mcp_server(services)
    routes = {f"{spec.method} {spec.path}" for spec in build_route_table().specs}
    routes |= {"GET /mcp", "POST /mcp", "DELETE /mcp"}
    return {
        "mcp-tools.txt": set(registry.tool_permissions),
        "mcp-resources.txt": set(registry.resource_permissions),
        "rest-routes.txt": routes,
    }


@pytest.mark.parametrize("name", ["mcp-tools.txt", "mcp-resources.txt", "rest-routes.txt"])
def test_contract_files_are_sorted_without_duplicates(name: str) -> None:
    entries = _read(name)
    assert entries == sorted(set(entries))


@pytest.mark.parametrize("name", ["mcp-tools.txt", "mcp-resources.txt", "rest-routes.txt"])
def test_the_code_serves_exactly_the_contracted_names(name: str, tmp_path: Path) -> None:
    code = _code_names(tmp_path)[name]
    contracted = set(_read(name))
    assert sorted(contracted - code) == [], "contracted but missing from the code"
    assert sorted(code - contracted) == [], "served but not in the contract (append it)"


@pytest.mark.parametrize("name", ["mcp-tools.txt", "mcp-resources.txt", "rest-routes.txt", "wire-protocol.schema.json"])
def test_contracts_are_append_only_across_history(name: str) -> None:
    path = f"contracts/{name}"
    log = subprocess.run(
        ["git", "log", "--format=%H", "--", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=True,
        timeout=30,
    )
    current = (CONTRACTS / name).read_text(encoding="utf-8")
    for commit in log.stdout.split()[:200]:
        old = subprocess.run(
            ["git", "show", f"{commit}:{path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            encoding="utf-8",
            check=False,
            timeout=30,
        )
        if old.returncode != 0:
            continue
        if name.endswith(".json"):
            old_defs = set(json.loads(old.stdout).get("$defs", {}))
            assert old_defs <= set(json.loads(current).get("$defs", {})), f"definitions removed since {commit[:8]}"
        else:
            removed = {line for line in old.stdout.splitlines() if line.strip() and not line.startswith("#")}
            removed -= set(current.splitlines())
            assert removed == set(), f"removed since {commit[:8]}"
