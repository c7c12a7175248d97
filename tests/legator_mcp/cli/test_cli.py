"""The ``legator`` command as a user runs it: real processes, real exit codes."""

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from tests.support.app import Running

pytestmark = pytest.mark.anyio

LEGATOR = [sys.executable, "-m", "legator_mcp"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEGATOR, *args], capture_output=True, text=True, encoding="utf-8", timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        pytest.param(["serve", "--listen", "nonsense"], {}, "listen_addr", id="bad-listen-flag"),
        pytest.param(["serve"], {"LEGATOR_LISTEN_ADDR": "1.2.3.4:99999"}, "LEGATOR_LISTEN_ADDR", id="bad-listen-env"),
        pytest.param(["db", "current", "--database-url", "mysql://x"], {}, "database_url", id="bad-db-url"),
        pytest.param(["serve"], {"LEGATOR_MAX_BODY_BYTES": "lots"}, "max_body_bytes", id="bad-body-limit"),
        pytest.param(["serve"], {"LEGATOR_AUTH_ENABLED": "maybe"}, "auth_enabled", id="bad-bool"),
    ],
)
def test_bad_configuration_prints_one_line_and_exits_2(args: list[str], env: dict[str, str], needle: str) -> None:
    result = run(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("legator: configuration error:") and needle in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_flags_exit_2_with_usage() -> None:
    result = run("serve", "--bogus")
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_db_upgrade_and_current_report_the_head_revision(tmp_path: Path) -> None:
    upgraded = run("db", "upgrade", "--data-dir", str(tmp_path))
    current = run("db", "current", "--data-dir", str(tmp_path))
    assert upgraded.returncode == 0, upgraded.stderr
    revision = re.search(r"\b(\w{4,})\s+(\w{4,})\s*$", current.stdout.strip())
    assert revision is not None and revision.group(1) == revision.group(2)


def test_start_refuses_a_database_from_a_newer_legator(tmp_path: Path) -> None:
    assert run("db", "upgrade", "--data-dir", str(tmp_path)).returncode == 0
    conn = sqlite3.connect(tmp_path / "legator.db")
    conn.execute("UPDATE alembic_version SET version_num = 'fffffffffff1'")
    conn.commit()
    conn.close()
    result = run("db", "upgrade", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "newer than this Legator knows" in result.stderr and "Traceback" not in result.stderr


def test_backup_writes_a_verified_private_copy_and_prunes_old_ones(tmp_path: Path) -> None:
    assert run("db", "upgrade", "--data-dir", str(tmp_path)).returncode == 0
    backups = tmp_path / "backups"
    backups.mkdir()
    old = backups / "legator-20000101T000000Z.db"
    old.write_bytes(b"stale")
    os.utime(old, (946684800, 946684800))
    result = run("backup", "--data-dir", str(tmp_path), "--keep-days", "7", "--output", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True and report["check"] == "PRAGMA integrity_check ok"
    assert report["removed"] == [str(old)] and not old.exists()
    copy = Path(report["path"])
    assert copy.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(copy)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"audit_events", "api_keys", "users", "alembic_version"} <= tables


async def test_audit_verify_reports_a_tampered_row_by_its_sequence(live: Running) -> None:
    env = {"LEGATOR_API_KEY": live.admin_key}
    ok = await _arun(["audit", "verify", "--server", live.base_url], env)
    assert ok.returncode == 0, ok.stderr
    assert "audit chain OK" in ok.stdout
    conn = sqlite3.connect(live.app.settings.data_dir / "legator.db")
    conn.execute("UPDATE audit_events SET summary = 'nothing to see' WHERE seq = 1")
    conn.commit()
    conn.close()
    broken = await _arun(["audit", "verify", "--server", live.base_url], env)
    assert broken.returncode == 1
    assert "BROKEN at seq 1" in broken.stdout


async def test_audit_search_and_export_over_rest(live: Running) -> None:
    env = {"LEGATOR_API_KEY": live.admin_key}
    search = await _arun(["audit", "search", "--server", live.base_url, "--type", "auth.key_created"], env)
    assert search.returncode == 0, search.stderr
    assert "auth.key_created" in search.stdout
    export = await _arun(["audit", "export", "--server", live.base_url, "--format", "csv"], env)
    assert export.returncode == 0
    assert export.stdout.splitlines()[0].startswith("id,timestamp,type,probe_id,actor,summary")


async def test_client_commands_without_a_key_exit_2(live: Running, tmp_path: Path) -> None:
    result = await _arun(["me", "--server", live.base_url], {"LEGATOR_API_KEY": "", "LEGATOR_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "no API key" in result.stderr


async def _arun(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``legator`` without blocking the event loop that serves the live control plane."""
    with anyio.fail_after(60):
        done = await anyio.run_process([*LEGATOR, *args], env={**os.environ, **env}, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())
