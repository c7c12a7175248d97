"""Output of a running command: capped copies for the result, sanitised chunks for streaming.

Every byte a command writes goes through :meth:`CommandOutput.feed`. The first ``max_bytes`` of each
stream are kept for the ``command_result`` (the full size is counted), and when the command streams,
pending bytes leave as ``output_chunk`` payloads once 16 KiB have gathered or 100 ms have passed.

Chunks are cut at line ends where possible, because the sanitiser works on text it can see whole: a
``password=…`` split across two chunks could slip through. A private key block is the one secret
that spans lines, so once a chunk opens one, later chunks are redacted until its ``END`` line.
"""

import codecs
import re
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Self, TypeAlias

import anyio
import anyio.abc

from legator_probe.protocol.payloads import OutputChunkPayload
from legator_probe.protocol.sanitize import REDACTED, sanitize
from legator_probe.protocol.types import OutputStream

__all__ = ["CHUNK_BYTES", "CHUNK_INTERVAL_S", "ChunkEmitter", "CommandOutput", "StreamRedactor", "decode_capped"]

CHUNK_BYTES: Final = 16 * 1024
"""A stream's pending output is sent once it reaches this size."""

CHUNK_INTERVAL_S: Final = 0.1
"""... or once its oldest pending byte is this old."""

ChunkEmitter: TypeAlias = Callable[[OutputChunkPayload], Awaitable[None]]
"""Sends one output chunk to the control plane."""

_KEY_BEGIN: Final = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_KEY_END: Final = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")


class StreamRedactor:
    """Sanitises consecutive pieces of one text stream, hiding private key blocks that span pieces."""

    def __init__(self) -> None:
        """Start outside any key block."""
        self._in_key = False

    def __call__(self, text: str) -> str:
        """Return ``text`` sanitised, given every earlier piece of the stream went through this object."""
        prefix = ""
        if self._in_key:
            end = _KEY_END.search(text)
            if end is None:
                return REDACTED if text else ""
            prefix, text = REDACTED, text[end.start() :]
            self._in_key = False
        begins = list(_KEY_BEGIN.finditer(text))
        if begins:
            ends = list(_KEY_END.finditer(text))
            self._in_key = not ends or ends[-1].start() < begins[-1].start()
        return prefix + sanitize(text)


def decode_capped(data: bytes) -> str:
    """Decode UTF-8 that may have been cut mid-character: invalid bytes become U+FFFD, a cut tail is dropped."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)


class _Stream:
    __slots__ = ("decoder", "head", "name", "pending", "redactor", "total")

    def __init__(self, name: OutputStream) -> None:
        self.name: OutputStream = name
        self.head = bytearray()
        self.total = 0
        self.pending = bytearray()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.redactor = StreamRedactor()


class CommandOutput:
    """Collects one command's stdout and stderr; an async context manager while the command runs.

    Attributes:
        request_id: The command's request id, copied into chunks.
        max_bytes: Bytes of each stream kept for the result.
    """

    def __init__(
        self,
        *,
        request_id: str,
        max_bytes: int,
        emit: ChunkEmitter | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        interval_s: float = CHUNK_INTERVAL_S,
    ) -> None:
        """Build the collector.

        Args:
            request_id: The command's request id.
            max_bytes: Bytes of each stream kept for the ``command_result``.
            emit: Sends chunks; ``None`` when the command does not stream.
            chunk_bytes: Size at which pending output is sent.
            interval_s: Age at which pending output is sent.
        """
        self.request_id = request_id
        self.max_bytes = max_bytes
        self._emit = emit
        self._chunk_bytes = chunk_bytes
        self._interval = interval_s
        self._streams: dict[OutputStream, _Stream] = {"stdout": _Stream("stdout"), "stderr": _Stream("stderr")}
        self._seq = 0
        self._lock = anyio.Lock()
        self._dirty = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        if self._emit is not None:
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
            self._task_group.start_soon(self._flush_periodically)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task_group is None:
            return
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(None, None, None)
        self._task_group = None
        if exc_type is None:
            for stream in self._streams.values():
                await self._flush(stream, final=True, timed=True)

    @property
    def seq(self) -> int:
        """Number of chunks emitted so far."""
        return self._seq

    async def feed(self, name: OutputStream, data: bytes) -> None:
        """Record output; may send chunks (and wait for room in the send queue)."""
        if not data:
            return
        stream = self._streams[name]
        stream.total += len(data)
        room = self.max_bytes - len(stream.head)
        if room > 0:
            stream.head += data[:room]
        if self._emit is None:
            return
        stream.pending += data
        if len(stream.pending) >= self._chunk_bytes:
            await self._flush(stream, final=False, timed=False)
        if stream.pending:
            self._dirty.set()

    def text(self, name: OutputStream) -> str:
        """The kept part of a stream, decoded and sanitised, for the result."""
        return sanitize(decode_capped(bytes(self._streams[name].head)))

    def total(self, name: OutputStream) -> int:
        """Full number of bytes the command wrote to a stream."""
        return self._streams[name].total

    @property
    def truncated(self) -> bool:
        """Whether either stream wrote more than ``max_bytes``."""
        return any(stream.total > self.max_bytes for stream in self._streams.values())

    async def _flush_periodically(self) -> None:
        while True:
            await self._dirty.wait()
            await anyio.sleep(self._interval)
            self._dirty = anyio.Event()
            for stream in self._streams.values():
                await self._flush(stream, final=False, timed=True)

    def _take(self, stream: _Stream, *, final: bool, timed: bool) -> bytes:
        """Remove and return the next piece to send: at most ``chunk_bytes``, cut at a line end if possible."""
        pending = stream.pending
        limit = self._chunk_bytes
        if len(pending) >= limit:
            newline = pending.rfind(b"\n", 0, limit)
            cut = newline + 1 if newline >= 0 else limit
        elif final:
            cut = len(pending)
        else:
            newline = pending.rfind(b"\n")
            cut = newline + 1 if newline >= 0 else (len(pending) if timed else 0)
        data = bytes(pending[:cut])
        del pending[:cut]
        return data

    async def _flush(self, stream: _Stream, *, final: bool, timed: bool) -> None:
        assert self._emit is not None
        async with self._lock:
            while data := self._take(stream, final=final, timed=timed):
                text = stream.decoder.decode(data, final=final and not stream.pending)
                if not text:
                    continue
                chunk = OutputChunkPayload(
                    request_id=self.request_id, seq=self._seq, stream=stream.name, data=stream.redactor(text)
                )
                self._seq += 1
                await self._emit(chunk)
