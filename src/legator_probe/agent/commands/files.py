"""The ``file_read`` and ``file_write`` command kinds; blocking functions run in a worker thread.

``file_read`` returns the content in ``stdout``: sanitised UTF-8 text, or base64 when the bytes are
not text (``data.encoding`` says which). Binary content is sanitised too, byte for byte, before it
is encoded. Only regular files are read: a FIFO would block and a device would bypass path rules.

``file_write`` replaces a file atomically: the new content goes to a temporary file in the same
directory, is flushed to disk, gets its mode and owner, and is renamed over the target; a crash
leaves the old file or the new one, never a mix. The old file is first copied to
``<path>.legator-bak-<UTC timestamp>``. A symlink is followed: its target is replaced, the link stays.
"""

import base64
import codecs
import difflib
import grp
import os
import pwd
import shutil
import stat
import tempfile
from datetime import UTC, datetime
from typing import Final

from pydantic import JsonValue

from legator_probe.agent.commands._runner import Outcome
from legator_probe.protocol.commands import MAX_FILE_READ_BYTES, FileReadSpec, FileWriteSpec
from legator_probe.protocol.sanitize import sanitize

__all__ = ["DIFF_LINES", "read_file", "write_file"]

DIFF_LINES: Final = 200
"""Lines of unified diff returned by ``file_write``."""

_BLOCK: Final = 64 * 1024
_DIFF_MAX_BYTES: Final = 4 * 1024 * 1024


def _open_error(exc: OSError, path: str) -> Outcome:
    if isinstance(exc, FileNotFoundError):
        return Outcome.failure("not_found", f"{path} does not exist")
    if isinstance(exc, PermissionError):
        return Outcome.failure("permission_denied", f"permission denied: {path}")
    if isinstance(exc, IsADirectoryError):
        return Outcome.failure("is_directory", f"{path} is a directory")
    return Outcome.failure("io_error", f"cannot access {path}: {exc.strerror}")


def _read_at(fd: int, offset: int, count: int) -> bytes:
    chunks: list[bytes] = []
    while count > 0:
        data = os.pread(fd, min(count, _BLOCK), offset)
        if not data:
            break
        chunks.append(data)
        offset += len(data)
        count -= len(data)
    return b"".join(chunks)


def _tail(fd: int, size: int, lines: int, limit: int) -> tuple[bytes, int, bool]:
    """Return the last ``lines`` lines (at most ``limit`` bytes), their offset, and whether lines were cut."""
    if size == 0:  # procfs and friends report no size: read forward
        data = _read_at(fd, 0, MAX_FILE_READ_BYTES)
        start = 0
    else:  # read backwards until the buffer holds one newline more than needed, or enough bytes
        start, data = size, b""
        while start > 0 and data.count(b"\n") <= lines and len(data) <= limit:
            step = min(_BLOCK, start)
            start -= step
            data = _read_at(fd, start, step) + data
    end = start + len(data)
    content = b"".join(data.splitlines(keepends=True)[-lines:])
    cut = len(content) > limit
    if cut:
        content = content[-limit:]
    return content, end - len(content), cut


def _is_text(data: bytes, *, cut: bool) -> bool:
    if b"\x00" in data:
        return False
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(data, final=not cut)
    except UnicodeDecodeError:
        return False
    return True


def _encode(data: bytes, *, cut: bool, max_output_bytes: int) -> tuple[str, str, bool]:
    """Return ``(content, encoding, cut_further)`` with secrets redacted, within ``max_output_bytes``."""
    if _is_text(data, cut=cut):
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final=not cut)
        return sanitize(text), "utf-8", False
    redacted = sanitize(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
    room = max_output_bytes // 4 * 3
    shortened = len(redacted) > room
    return base64.b64encode(redacted[:room]).decode("ascii"), "base64", shortened


def read_file(spec: FileReadSpec, *, max_output_bytes: int) -> Outcome:
    """Read a regular file: ``max_bytes`` from ``offset``, or its last ``tail_lines`` lines.

    Returns:
        ``ok`` with the content in ``stdout`` and ``data`` = ``{path, size, offset, bytes_read,
        encoding, eof, mode, uid, gid, mtime}``; ``stdout_bytes`` is the size of the file from
        ``offset`` and ``truncated`` says that not all of it was returned. ``error`` with
        ``not_found``, ``permission_denied``, ``is_directory`` or ``not_regular_file``.
    """
    path = spec.path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        return _open_error(exc, path)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            return Outcome.failure("is_directory", f"{path} is a directory")
        if not stat.S_ISREG(info.st_mode):
            return Outcome.failure("not_regular_file", f"{path} is not a regular file")
        limit = min(spec.max_bytes, max_output_bytes)
        if spec.tail_lines is not None:
            data, offset, cut = _tail(fd, info.st_size, spec.tail_lines, limit)
            eof, remaining = True, len(data)
        else:
            offset = spec.offset
            data = _read_at(fd, offset, limit + 1)
            eof = len(data) <= limit
            data = data[:limit]
            cut = not eof
            remaining = max(info.st_size - offset, len(data))
    except OSError as exc:
        return _open_error(exc, path)
    finally:
        os.close(fd)
    content, encoding, shortened = _encode(data, cut=cut, max_output_bytes=max_output_bytes)
    details: dict[str, JsonValue] = {
        "path": path,
        "size": info.st_size,
        "offset": offset,
        "bytes_read": len(data),
        "encoding": encoding,
        "eof": eof and not shortened,
        "mode": f"{stat.S_IMODE(info.st_mode):04o}",
        "uid": info.st_uid,
        "gid": info.st_gid,
        "mtime": datetime.fromtimestamp(info.st_mtime, UTC).isoformat().replace("+00:00", "Z"),
    }
    return Outcome("ok", stdout=content, stdout_bytes=remaining, truncated=cut or shortened or not eof, data=details)


# --- write ----------------------------------------------------------------------------------


def _diff(path: str, old: bytes | None, new: bytes) -> dict[str, JsonValue]:
    if len(new) + len(old or b"") > _DIFF_MAX_BYTES:
        return {"lines_added": None, "lines_removed": None, "unified": "", "skipped": "too large to diff"}
    if b"\x00" in new or b"\x00" in (old or b""):
        return {"lines_added": None, "lines_removed": None, "unified": "", "skipped": "binary content"}
    try:
        before = (old or b"").decode("utf-8").splitlines()
        after = new.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return {"lines_added": None, "lines_removed": None, "unified": "", "skipped": "binary content"}
    lines = list(difflib.unified_diff(before, after, fromfile=path, tofile=path, lineterm=""))
    body = [line for line in lines[2:] if not line.startswith("@@")]
    return {
        "lines_added": sum(1 for line in body if line.startswith("+")),
        "lines_removed": sum(1 for line in body if line.startswith("-")),
        "unified": sanitize("\n".join(lines[:DIFF_LINES])),
        "unified_truncated": len(lines) > DIFF_LINES,
    }


def _ids(spec: FileWriteSpec, existing: os.stat_result | None) -> tuple[int, int] | Outcome:
    uid = existing.st_uid if existing else -1
    gid = existing.st_gid if existing else -1
    try:
        if spec.owner is not None:
            uid = pwd.getpwnam(spec.owner).pw_uid
        if spec.group is not None:
            gid = grp.getgrnam(spec.group).gr_gid
    except KeyError:
        return Outcome.failure("invalid_owner", f"no such user or group: {spec.owner or ''}:{spec.group or ''}")
    return uid, gid


def _backup(target: str, existing: os.stat_result) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    backup = f"{target}.legator-bak-{stamp}"
    shutil.copy2(target, backup)
    os.chown(backup, existing.st_uid, existing.st_gid)
    return backup


def write_file(spec: FileWriteSpec) -> Outcome:
    """Atomically write a file, keeping a backup of the old one (see the module docstring).

    Returns:
        ``ok`` with ``data`` = ``{path, bytes_written, backup_path, created, mode, uid, gid, diff:
        {lines_added, lines_removed, unified}}``; ``error`` with ``not_found`` (no parent
        directory), ``is_directory``, ``permission_denied``, ``invalid_owner`` or ``io_error``.
    """
    target = os.path.realpath(spec.path)
    parent = os.path.dirname(target)
    content = spec.content_bytes()
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        return _open_error(exc, spec.path)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        return Outcome.failure("is_directory", f"{spec.path} is a directory")
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        return Outcome.failure("not_regular_file", f"{spec.path} is not a regular file")
    if not os.path.isdir(parent):
        return Outcome.failure("not_found", f"directory {parent} does not exist")
    ids = _ids(spec, existing)
    if isinstance(ids, Outcome):
        return ids
    mode = spec.mode if spec.mode is not None else (stat.S_IMODE(existing.st_mode) if existing else 0o644)
    tmp: str | None = None
    try:
        old = None
        if existing is not None and existing.st_size <= _DIFF_MAX_BYTES:
            with open(target, "rb") as handle:
                old = handle.read()
        backup = _backup(target, existing) if existing is not None and spec.backup else None
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(target)}.", suffix=".legator-tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if ids != (-1, -1):
                os.fchown(handle.fileno(), *ids)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        tmp = None
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        final = os.stat(target)
    except OSError as exc:
        return _open_error(exc, spec.path)
    finally:
        if tmp is not None:
            os.unlink(tmp)
    return Outcome(
        "ok",
        stdout=f"wrote {len(content)} bytes to {target}\n",
        data={
            "path": target,
            "bytes_written": len(content),
            "backup_path": backup,
            "created": existing is None,
            "mode": f"{stat.S_IMODE(final.st_mode):04o}",
            "uid": final.st_uid,
            "gid": final.st_gid,
            "diff": _diff(target, old, content),
        },
    )
