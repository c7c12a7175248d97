"""Import rules: adapters → flows → services → stores → db, and the probe stands alone."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ADAPTERS = ("legator_mcp.mcp", "legator_mcp.rest", "legator_mcp.gateway", "legator_mcp.ui", "legator_mcp.cli")
NOT_DOMAINS = {"db", "mcp", "rest", "gateway", "ui", "cli", "flows"}
DOMAINS = {
    p.name for p in (SRC / "legator_mcp").iterdir() if (p / "__init__.py").exists() and p.name not in NOT_DOMAINS
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(p): _imports(p) for p in SRC.rglob("*.py") if "migrations" not in p.parts}


def _starts(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _domain(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[0] == "legator_mcp" and parts[1] in DOMAINS:
        return parts[1]
    return None


def test_the_module_table_is_not_empty() -> None:
    assert "legator_mcp.app" in MODULES and "legator_probe.protocol.messages" in MODULES


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("legator_probe")))
def test_the_probe_never_imports_the_control_plane_or_its_stack(module: str) -> None:
    banned = [i for i in MODULES[module] if _starts(i, "legator_mcp", "sqlalchemy", "mcp", "starlette", "alembic")]
    assert banned == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("legator_probe.protocol")))
def test_the_protocol_package_does_no_io(module: str) -> None:
    banned = [i for i in MODULES[module] if _starts(i, "anyio", "asyncio", "websockets", "socket", "subprocess")]
    assert banned == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _starts(m, *ADAPTERS)))
def test_adapters_hold_no_sql_and_reach_no_store_or_model(module: str) -> None:
    imports = MODULES[module]
    assert [i for i in imports if _starts(i, "sqlalchemy")] == []
    stores = [i for i in imports if _domain(i) and i.split(".")[2] in {"store", "models", "_chain"}]
    assert stores == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _domain(m)))
def test_domains_reach_other_domains_only_through_their_services(module: str) -> None:
    own = _domain(module)
    crossing = [
        i for i in MODULES[module] if _domain(i) and _domain(i) != own and i.split(".")[2] not in {"service", "schemas"}
    ]
    assert crossing == []
    upward = [i for i in MODULES[module] if _starts(i, *ADAPTERS, "legator_mcp.flows", "legator_mcp.app")]
    assert upward == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _starts(m, "legator_mcp.db")))
def test_the_db_layer_depends_on_nothing_above_it(module: str) -> None:
    above = [i for i in MODULES[module] if _domain(i) or _starts(i, *ADAPTERS, "legator_mcp.flows")]
    assert above == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _starts(m, "legator_mcp.flows")))
def test_flows_use_services_not_stores(module: str) -> None:
    assert [i for i in MODULES[module] if _domain(i) and i.split(".")[2] in {"store", "models"}] == []
    assert [i for i in MODULES[module] if _starts(i, *ADAPTERS)] == []
