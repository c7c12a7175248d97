"""``legator jobs …`` against a live control plane over loopback."""

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
        code = await anyio.to_thread.run_sync(main, args)
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


async def test_jobs_are_created_listed_run_and_deleted_from_the_cli(
    live: Running, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEGATOR_API_KEY", live.admin_key)
    monkeypatch.setenv("LEGATOR_SERVER", live.base_url)
    created = await _run(
        capsys,
        ["jobs", "create", "--name", "df", "--command", "df -h", "--target", "probe:prb-none", "--schedule",
         "*/10 * * * *", "--max-attempts", "2", "--initial-backoff", "15s", "-o", "json"],
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    assert job["retry_policy"]["initial_backoff"] == 15.0 and job["schedule"] == "*/10 * * * *"
    listed = await _run(capsys, ["jobs", "list"])
    assert listed.returncode == 0 and job["id"] in listed.stdout and "probe:prb-none" in listed.stdout
    ran = await _run(capsys, ["jobs", "run", job["id"], "-o", "json"])
    assert ran.returncode == 0, ran.stderr
    run_id = json.loads(ran.stdout)["runs"][0]["id"]
    runs = await _run(capsys, ["jobs", "runs", job["id"]])
    assert runs.returncode == 0 and run_id in runs.stdout
    disabled = await _run(capsys, ["jobs", "disable", job["id"], "-o", "json"])
    assert json.loads(disabled.stdout)["enabled"] is False
    bad = await _run(capsys, ["jobs", "create", "--name", "x", "--command", "true", "--target", "probe:p", "--schedule",
                       "nope nope"])  # fmt: skip
    assert bad.returncode == 1 and "invalid_request" in bad.stderr
    bad_target = await _run(capsys, ["jobs", "create", "--name", "x", "--command", "true", "--target", "moon"])
    assert bad_target.returncode == 2
    deleted = await _run(capsys, ["jobs", "delete", job["id"]])
    assert deleted.returncode == 0
    missing = await _run(capsys, ["jobs", "show", job["id"]])
    assert missing.returncode == 1 and "not_found" in missing.stderr
