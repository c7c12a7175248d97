"""file_read and file_write against real files."""

import base64
import os
import stat
from pathlib import Path

import anyio
import pytest
from tests.legator_probe.agent._support import run_command

from legator_probe.protocol.sanitize import REDACTED

pytestmark = pytest.mark.anyio


async def _read(path: Path, **spec: object) -> tuple[str, str, dict[str, object]]:
    with anyio.fail_after(10):
        result = await run_command("file_read", {"path": str(path), **spec})
    assert result.status == "ok", result.error
    assert result.data is not None
    return result.stdout, str(result.data["encoding"]), dict(result.data)


async def test_file_read_returns_text_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("alpha\nbeta\n", encoding="utf-8")
    text, encoding, data = await _read(path)
    assert (text, encoding, data["size"], data["eof"], data["bytes_read"]) == ("alpha\nbeta\n", "utf-8", 11, True, 11)


async def test_file_read_honours_offset_and_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "digits"
    path.write_text("0123456789", encoding="utf-8")
    with anyio.fail_after(10):
        result = await run_command("file_read", {"path": str(path), "offset": 2, "max_bytes": 5})
    assert (result.stdout, result.truncated, result.stdout_bytes) == ("23456", True, 8)
    assert result.data is not None and result.data["eof"] is False


async def test_file_read_tails_lines_of_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i}\n" for i in range(50_000)), encoding="utf-8")
    text, _, data = await _read(path, tail_lines=3)
    assert text == "line 49997\nline 49998\nline 49999\n"
    assert data["offset"] == path.stat().st_size - len(text)


async def test_file_read_tails_a_file_without_a_size() -> None:
    text, _, _ = await _read(Path("/proc/self/status"), tail_lines=2)
    assert len(text.splitlines()) == 2


async def test_binary_content_comes_back_as_base64(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    payload = bytes(range(256)) + b"password=hunter2\n"
    path.write_bytes(payload)
    text, encoding, _ = await _read(path)
    decoded = base64.b64decode(text)
    assert encoding == "base64"
    assert decoded.startswith(bytes(range(256))) and b"hunter2" not in decoded and REDACTED.encode() in decoded


async def test_secrets_in_a_text_file_are_sanitised(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("DB_PASSWORD=s3cr3t-value\nPORT=80\n", encoding="utf-8")
    text, _, _ = await _read(path)
    assert "s3cr3t" not in text and "PORT=80" in text


@pytest.mark.parametrize(
    ("make", "code"),
    [
        pytest.param(lambda p: p / "missing", "not_found", id="missing"),
        pytest.param(lambda p: p, "is_directory", id="directory"),
        pytest.param(lambda p: (os.mkfifo(p / "fifo"), p / "fifo")[1], "not_regular_file", id="fifo"),
    ],
)
async def test_file_read_errors_have_stable_codes(tmp_path: Path, make: object, code: str) -> None:
    assert callable(make)
    path = make(tmp_path)
    with anyio.fail_after(10):
        result = await run_command("file_read", {"path": str(path)})
    assert (result.status, result.error_code) == ("error", code)


async def test_file_write_creates_a_file_with_a_diff(tmp_path: Path) -> None:
    path = tmp_path / "new.conf"
    with anyio.fail_after(10):
        result = await run_command("file_write", {"path": str(path), "content": "a\nb\n", "mode": 0o640})
    assert result.status == "ok" and result.data is not None
    assert path.read_text(encoding="utf-8") == "a\nb\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert (result.data["created"], result.data["backup_path"], result.data["bytes_written"]) == (True, None, 4)
    diff = result.data["diff"]
    assert isinstance(diff, dict) and (diff["lines_added"], diff["lines_removed"]) == (2, 0)


async def test_file_write_replaces_atomically_and_keeps_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    path.write_text("port=80\nhost=a\npassword=old-secret\n", encoding="utf-8")
    path.chmod(0o600)
    inode = path.stat().st_ino
    with path.open(encoding="utf-8") as old_handle:
        with anyio.fail_after(10):
            result = await run_command(
                "file_write", {"path": str(path), "content": "port=8080\nhost=a\npassword=new-secret\n"}
            )
        assert old_handle.read() == "port=80\nhost=a\npassword=old-secret\n"  # readers of the old file are unaffected
    assert result.status == "ok" and result.data is not None
    assert path.stat().st_ino != inode and stat.S_IMODE(path.stat().st_mode) == 0o600
    backup = Path(str(result.data["backup_path"]))
    assert backup.name.startswith("app.conf.legator-bak-")
    assert await anyio.Path(backup).read_text(encoding="utf-8") == "port=80\nhost=a\npassword=old-secret\n"
    names = sorted([p.name async for p in anyio.Path(tmp_path).iterdir()])
    assert names == sorted(["app.conf", backup.name])  # no temp file left
    diff = result.data["diff"]
    assert isinstance(diff, dict) and (diff["lines_added"], diff["lines_removed"]) == (2, 2)
    unified = str(diff["unified"])
    assert "+port=8080" in unified and "-port=80" in unified
    assert "old-secret" not in unified and "new-secret" not in unified


async def test_file_write_applies_owner_and_group(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing ownership needs root")
    path = tmp_path / "owned"
    with anyio.fail_after(10):
        result = await run_command(
            "file_write", {"path": str(path), "content": "x", "owner": "nobody", "group": "root"}
        )
    assert result.status == "ok"
    assert (path.stat().st_uid, path.stat().st_gid) == (65534, 0)


async def test_file_write_follows_a_symlink_and_decodes_base64(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to(target)
    content = base64.b64encode(b"\x00\x01new").decode()
    with anyio.fail_after(10):
        result = await run_command(
            "file_write", {"path": str(link), "content": content, "encoding": "base64", "backup": False}
        )
    assert result.status == "ok" and result.data is not None
    assert link.is_symlink() and target.read_bytes() == b"\x00\x01new"
    assert result.data["diff"] == {
        "lines_added": None,
        "lines_removed": None,
        "unified": "",
        "skipped": "binary content",
    }


@pytest.mark.parametrize(
    ("name", "spec", "code"),
    [
        pytest.param("nodir/f", {}, "not_found", id="missing-parent"),
        pytest.param(".", {}, "is_directory", id="directory"),
        pytest.param("f", {"owner": "no-such-user-legator"}, "invalid_owner", id="unknown-owner"),
    ],
)
async def test_file_write_errors_have_stable_codes(tmp_path: Path, name: str, spec: dict[str, str], code: str) -> None:
    with anyio.fail_after(10):
        result = await run_command("file_write", {"path": str(tmp_path / name), "content": "x", **spec})
    assert (result.status, result.error_code) == ("error", code)
    assert not (tmp_path / "f").exists()
