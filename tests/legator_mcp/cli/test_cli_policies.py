"""``legator policies …`` against a live control plane over loopback."""

import json
from dataclasses import dataclass

import anyio
import pytest
from tests.support.app import Running

from legator_mcp.cli import main

pytestmark = pytest.mark.anyio


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def _run(capsys: pytest.CaptureFixture[str], args: list[str]) -> Result:
    """Run ``legator`` in a worker thread (the live control plane keeps serving on the event loop)."""
    with anyio.fail_after(30):
        try:
            code = await anyio.to_thread.run_sync(main, args)
        except SystemExit as exc:  # argparse exits on bad flags, as it does for a user
            code = int(exc.code or 0)
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


async def _probe(live: Running) -> str:
    async with live.client() as admin:
        token = (await admin.post("/api/v1/tokens", json={"policy_level": "remediate"})).json()["token"]
    async with live.client("") as anonymous:
        registered = await anonymous.post("/api/v1/register", json={"token": token, "hostname": "cli-host"})
    return str(registered.json()["probe_id"])


@pytest.fixture
def cli(live: Running, monkeypatch: pytest.MonkeyPatch) -> Running:
    """The live control plane, with the CLI pointed at it."""
    monkeypatch.setenv("LEGATOR_API_KEY", live.admin_key)
    monkeypatch.setenv("LEGATOR_SERVER", live.base_url)
    return live


async def test_templates_are_created_shown_updated_applied_and_deleted_from_the_cli(
    cli: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = await _run(capsys, ["policies", "list"])
    assert listed.returncode == 0, listed.stderr
    assert all(name in listed.stdout for name in ("observe-only", "diagnose", "full-remediate"))

    created = await _run(
        capsys,
        ["policies", "create", "--name", "web", "--level", "diagnose", "--block", "curl *", "--block", "wget *",
         "--path-allow", "/var/log", "--preapprove", "systemctl restart nginx*", "-o", "json"],
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    template = json.loads(created.stdout)
    assert template["block_patterns"] == ["curl *", "wget *"] and template["path_allow"] == ["/var/log"]
    shown = await _run(capsys, ["policies", "show", template["id"]])
    assert shown.returncode == 0 and "level:   diagnose" in shown.stdout and "curl *, wget *" in shown.stdout

    # update changes only what it is given: --level, one list replaced, one emptied; the rest stays.
    updated = await _run(
        capsys,
        ["policies", "update", template["id"], "--level", "remediate", "--allow", "uptime", "--clear", "block",
         "-o", "json"],
    )  # fmt: skip
    assert updated.returncode == 0, updated.stderr
    after = json.loads(updated.stdout)
    assert (after["version"], after["level"], after["name"]) == (2, "remediate", "web")
    assert after["allow_patterns"] == ["uptime"] and after["block_patterns"] == []
    assert after["path_allow"] == ["/var/log"] and after["preapproved_patterns"] == ["systemctl restart nginx*"]

    probe_id = await _probe(cli)
    applied = await _run(capsys, ["policies", "apply", probe_id, template["id"]])
    assert applied.returncode == 0, applied.stderr
    assert f"policy {template['id']} (remediate) applied locally on {probe_id}" in applied.stdout
    in_use = await _run(capsys, ["policies", "delete", template["id"]])
    assert in_use.returncode == 1 and "conflict" in in_use.stderr
    assert (await _run(capsys, ["policies", "apply", probe_id, "diagnose"])).returncode == 0
    deleted = await _run(capsys, ["policies", "delete", template["id"]])
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    missing = await _run(capsys, ["policies", "show", template["id"]])
    assert missing.returncode == 1 and "not_found" in missing.stderr
    builtin = await _run(capsys, ["policies", "update", "diagnose", "--level", "observe"])
    assert builtin.returncode == 2 and "built-in" in builtin.stderr


async def test_evaluate_answers_for_a_program_a_script_and_a_typed_command(
    cli: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    probe_id = await _probe(cli)
    program = await _run(capsys, ["policies", "evaluate", probe_id, "--", "systemctl", "stop", "nginx"])
    assert program.returncode == 0, program.stderr
    assert program.stdout.startswith("QUEUE") and "rule approval_threshold" in program.stdout
    script = await _run(capsys, ["policies", "evaluate", probe_id, "--script", "uptime; df -h", "-o", "json"])
    assert script.returncode == 0 and json.loads(script.stdout)["decision"] == "allow"
    typed = await _run(
        capsys, ["policies", "evaluate", probe_id, "--kind", "file_read", "--spec", '{"path": "/etc/hostname"}']
    )
    assert typed.returncode == 0 and typed.stdout.startswith("ALLOW")
    unknown = await _run(capsys, ["policies", "evaluate", "prb-missing", "uptime"])
    assert unknown.returncode == 1 and "not_found" in unknown.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["policies", "create", "--name", "x", "--level", "god"], id="unknown-level"),
        pytest.param(["policies", "create", "--level", "observe"], id="missing-name"),
        pytest.param(["policies", "frobnicate"], id="unknown-action"),
        pytest.param(["policies", "update", "pol-x"], id="update-with-nothing"),
        pytest.param(["policies", "update", "pol-x", "--clear", "everything"], id="clear-unknown-list"),
        pytest.param(["policies", "evaluate", "prb-1"], id="evaluate-nothing"),
        pytest.param(["policies", "evaluate", "prb-1", "--kind", "shell"], id="kind-without-spec"),
        pytest.param(["policies", "evaluate", "prb-1", "--kind", "shell", "--spec", "{nope"], id="spec-not-json"),
        pytest.param(["policies", "evaluate", "prb-1", "--kind", "shell", "--spec", "[1]"], id="spec-not-object"),
        pytest.param(["policies", "evaluate", "prb-1", "--spec", "{}", "uptime"], id="spec-without-kind"),
        pytest.param(["policies", "evaluate", "prb-1", "--script", "ls", "uptime"], id="script-and-program"),
        pytest.param(["policies", "evaluate", "prb-1", "--script", "ls", "--kind", "shell"], id="two-forms"),
    ],
)
async def test_bad_flags_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    # Nothing listens there: a request would fail with exit 1, so a 2 comes from checking the flags alone.
    monkeypatch.setenv("LEGATOR_API_KEY", "lgk_unused")
    monkeypatch.setenv("LEGATOR_SERVER", "http://127.0.0.1:9")
    result = await _run(capsys, args)
    assert result.returncode == 2
    assert result.stderr.strip() and "Traceback" not in result.stderr
