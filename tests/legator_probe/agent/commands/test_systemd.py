"""systemd commands: a missing systemctl, a host without systemd, and the argv/parsing against a stand-in."""

from pathlib import Path

import anyio
import pytest
from pydantic import JsonValue
from tests.legator_probe.agent._support import command_message, running_executor

from legator_probe.agent.commands._runner import ExecEnv

pytestmark = pytest.mark.anyio


async def _run(
    spec: dict[str, object], env: dict[str, str]
) -> tuple[str, str | None, dict[str, JsonValue] | None, str]:
    with anyio.fail_after(10):
        async with running_executor(env=env) as (executor, emitter):
            message = command_message("systemd", spec)
            executor.submit(message)
            result = await emitter.wait(message.payload.request_id)
    return result.status, result.error_code, result.data, result.stdout


def _fake_tools(directory: Path) -> dict[str, str]:
    """A PATH with systemctl/journalctl stand-ins that log their argv and answer like the real ones."""
    log = directory / "calls.log"
    systemctl = directory / "systemctl"
    systemctl.write_text(
        f"""#!/bin/sh
echo "systemctl $*" >> {log}
case "$1" in
  status) echo "* nginx.service - web server"; echo "   Active: inactive (dead)"; exit 3 ;;
  show) printf 'Id=nginx.service\\nActiveState=inactive\\nSubState=dead\\n' ;;
  list-units) echo '[{{"unit":"nginx.service","load":"loaded","active":"active","sub":"running"}}]' ;;
  restart) exit 0 ;;
esac
""",
        encoding="utf-8",
    )
    journalctl = directory / "journalctl"
    journalctl.write_text(f'#!/bin/sh\necho "journalctl $*" >> {log}\necho "line 1"\n', encoding="utf-8")
    for tool in (systemctl, journalctl):
        tool.chmod(0o755)
    return {"PATH": f"{directory}:/usr/bin:/bin"}


async def test_a_missing_systemctl_is_unavailable(tmp_path: Path) -> None:
    status, code, _, _ = await _run({"action": "status", "unit": "nginx.service"}, {"PATH": str(tmp_path)})
    assert (status, code) == ("error", "unavailable")


async def test_systemctl_on_a_host_without_systemd_is_unavailable(tmp_path: Path) -> None:
    tool = tmp_path / "systemctl"
    tool.write_text(
        '#!/bin/sh\necho "System has not been booted with systemd as init system (PID 1). Can\'t operate." >&2\n'
        'echo "Failed to connect to bus: Host is down" >&2\nexit 1\n',
        encoding="utf-8",
    )
    tool.chmod(0o755)
    status, code, _, _ = await _run({"action": "restart", "unit": "nginx.service"}, {"PATH": str(tmp_path)})
    assert (status, code) == ("error", "unavailable")


async def test_status_of_an_inactive_unit_is_ok_with_its_properties(tmp_path: Path) -> None:
    status, code, data, stdout = await _run({"action": "status", "unit": "nginx.service"}, _fake_tools(tmp_path))
    assert (status, code) == ("ok", None)
    assert data is not None and data["properties"] == {
        "Id": "nginx.service",
        "ActiveState": "inactive",
        "SubState": "dead",
    }
    assert "Active: inactive" in stdout
    calls = (tmp_path / "calls.log").read_text(encoding="utf-8").splitlines()
    assert calls[0] == "systemctl status --no-pager --full --lines=100 -- nginx.service"


async def test_list_parses_units_and_journal_tails_the_unit(tmp_path: Path) -> None:
    env = _fake_tools(tmp_path)
    _, _, listed, _ = await _run({"action": "list"}, env)
    status, _, _, stdout = await _run({"action": "journal", "unit": "nginx.service", "lines": 5}, env)
    assert listed is not None and listed["units"] == [
        {"unit": "nginx.service", "load": "loaded", "active": "active", "sub": "running"}
    ]
    assert (status, stdout) == ("ok", "line 1\n")
    calls = (tmp_path / "calls.log").read_text(encoding="utf-8").splitlines()
    assert "journalctl --no-pager --output=short-iso --lines=5 --unit=nginx.service" in calls


async def test_a_restart_reports_the_unit_state_afterwards(tmp_path: Path) -> None:
    status, _, data, _ = await _run({"action": "restart", "unit": "nginx.service"}, _fake_tools(tmp_path))
    assert status == "ok" and data is not None
    properties = data["properties"]
    assert isinstance(properties, dict) and properties["ActiveState"] == "inactive"
    assert "systemctl restart --no-pager -- nginx.service" in (tmp_path / "calls.log").read_text(encoding="utf-8")


def test_exec_env_path_defaults_to_the_os_default() -> None:
    assert ExecEnv({}).path
