"""The hub: who is connected, signing and sending instructions, and tracking commands until their result.

One hub per control-plane process. It implements the fleet service's ``ProbeLink`` (disconnect, key rotation)
and is what the command flow dispatches through.
"""

import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from legator_mcp.commands.schemas import CommandRunRead, CommandStatus
from legator_mcp.commands.service import CommandService
from legator_mcp.db.base import utcnow
from legator_mcp.errors import LegatorError, ProbeUnavailable
from legator_mcp.fleet.keys import KeyRing
from legator_mcp.fleet.schemas import ProbeRead
from legator_mcp.gateway._admission import Admission, InventoryPacer
from legator_mcp.policy.schemas import ProbeRules
from legator_probe.protocol import (
    CancelMessage,
    CancelPayload,
    CommandMessage,
    CommandPayload,
    CommandResultPayload,
    KeyRotationMessage,
    KeyRotationPayload,
    OutputChunkPayload,
    PolicyUpdateMessage,
    PolicyUpdatePayload,
    RejectionPayload,
    SignedMessage,
    encode_public_key,
    new_message_id,
    sign_envelope,
)

if TYPE_CHECKING:
    from legator_mcp.gateway._session import ProbeSession

__all__ = ["Hub", "StreamItem"]

logger = logging.getLogger("legator.gateway")

INSTRUCTION_TTL = timedelta(seconds=120)
"""How long a signed instruction stays valid; the probe refuses it afterwards."""

_CHUNK_HISTORY = 2048


@dataclass
class StreamItem:
    """One item of a command's live stream: an output chunk, or the final run."""

    chunk: OutputChunkPayload | None = None
    run: CommandRunRead | None = None


@dataclass
class _Tracker:
    request_id: str
    probe_id: str
    envelope_id: str
    done: anyio.Event = field(default_factory=anyio.Event)
    run: CommandRunRead | None = None
    chunks: deque[OutputChunkPayload] = field(default_factory=lambda: deque[OutputChunkPayload](maxlen=_CHUNK_HISTORY))
    listeners: list[MemoryObjectSendStream[StreamItem]] = field(
        default_factory=list[MemoryObjectSendStream[StreamItem]]
    )
    watchers: list[Callable[[CommandRunRead], None]] = field(default_factory=list[Callable[[CommandRunRead], None]])


class Hub:
    """Live probe sessions of this process and the commands in flight to them."""

    def __init__(
        self,
        *,
        commands: CommandService,
        keyring: KeyRing,
        admit_per_second: float = 200.0,
        admit_burst: int = 500,
        max_handshakes: int = 64,
        handshake_queue_s: float = 10.0,
        inventory_per_second: float = 50.0,
        inventory_max_delay_s: float = 600.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._commands = commands
        self._keys = keyring
        self._clock = clock
        self._sessions: dict[str, ProbeSession] = {}
        self._trackers: dict[str, _Tracker] = {}
        self._by_envelope: dict[str, str] = {}
        self._admission = Admission(
            per_second=admit_per_second, burst=admit_burst, max_handshakes=max_handshakes,
            queue_wait_s=handshake_queue_s,
        )  # fmt: skip
        self._inventories = InventoryPacer(per_second=inventory_per_second, max_delay_s=inventory_max_delay_s)

    # -- connections ------------------------------------------------------------------------------------------

    @property
    def admission_saturated(self) -> bool:
        """Whether every handshake slot is taken right now (new connections queue for one)."""
        return self._admission.saturated

    async def admit(self) -> float:
        """Admit one new probe connection: 0 means admitted, otherwise retry after that many seconds.

        Waits (bounded) in a FIFO queue for a handshake slot, then takes a token from the rate bucket. An
        admitted connection holds its slot until :meth:`handshake_finished`.
        """
        wait = await self._admission.wait_for_slot()
        if wait > 0:
            return wait
        wait = self._admission.take_token()
        if wait > 0:
            self._admission.release_slot()
        return wait

    def inventory_delay(self) -> float:
        """How long a probe completing its handshake now waits before sending its connect-time inventory."""
        return round(self._inventories.delay(), 3)

    def handshake_finished(self) -> None:
        """An admitted connection completed (or abandoned) its handshake: its slot goes to the next in line."""
        self._admission.release_slot()

    async def attach(self, session: "ProbeSession") -> None:
        """Make ``session`` the live connection of its probe, closing any older one cleanly."""
        old = self._sessions.get(session.probe_id)
        self._sessions[session.probe_id] = session
        if old is not None and old is not session:
            await old.close(code=4000, reason="replaced by a newer connection")

    def detach(self, session: "ProbeSession") -> bool:
        """Forget ``session``; returns whether it was still the probe's live connection."""
        if self._sessions.get(session.probe_id) is session:
            del self._sessions[session.probe_id]
            return True
        return False

    @property
    def connection_count(self) -> int:
        """How many probes are connected to this process."""
        return len(self._sessions)

    def connected_probe_ids(self) -> list[str]:
        """The ids of probes connected to this process."""
        return sorted(self._sessions)

    # -- ProbeLink (for the fleet service) --------------------------------------------------------------------

    def is_connected(self, probe_id: str) -> bool:
        """Whether the probe has a live connection here."""
        return probe_id in self._sessions

    def heard_within(self, probe_id: str, seconds: float) -> bool:
        """Whether the probe's connection here delivered a frame in the last ``seconds``."""
        session = self._sessions.get(probe_id)
        return session is not None and session.heard_within(seconds)

    async def disconnect(self, probe_id: str, *, code: int, reason: str) -> None:
        """Close the probe's connection, if any, and wait (briefly) until it is gone."""
        session = self._sessions.get(probe_id)
        if session is not None:
            await session.close(code=code, reason=reason)
            with anyio.move_on_after(5):
                await session.done.wait()

    async def push_key_rotation(self, probe: ProbeRead, *, new_generation: int, overlap_s: int) -> None:
        """Tell the probe its new verification key, signed with the key it trusts now.

        Raises:
            ProbeUnavailable: If the probe is not connected.
        """
        new_key = self._keys.private_key(probe.id, new_generation).public_key()
        payload = KeyRotationPayload(
            **self._signed_fields(probe.id),
            new_key_id=self._keys.key_id(probe.id, new_generation),
            new_public_key=encode_public_key(new_key),
            overlap_s=overlap_s,
        )
        message = KeyRotationMessage(id=new_message_id(), ts=self._clock(), payload=payload)
        session = await self._send(probe.id, message)
        # Frames leave in order: everything queued after the rotation is signed with the key it announces.
        session.signing_generation = new_generation

    async def push_policy(self, probe: ProbeRead, *, rules: ProbeRules) -> None:
        """Send the probe its policy (level, version, command patterns and path rules) as a signed ``policy_update``.

        Raises:
            ProbeUnavailable: If the probe is not connected.
        """
        payload = PolicyUpdatePayload(
            **self._signed_fields(probe.id),
            policy_id=probe.policy_id,
            level=probe.policy_level,
            allow_patterns=rules.allow_patterns,
            block_patterns=rules.block_patterns,
            path_allow=rules.path_allow,
            path_deny=rules.path_deny,
            version=probe.policy_version,
        )
        message = PolicyUpdateMessage(id=new_message_id(), ts=self._clock(), payload=payload)
        await self._send(probe.id, message)

    # -- commands -----------------------------------------------------------------------------------------------

    def signed_fields(self, probe_id: str) -> dict[str, Any]:
        """``probe_id``, a fresh nonce and an expiry, for a new signed instruction."""
        return self._signed_fields(probe_id)

    def _signed_fields(self, probe_id: str) -> dict[str, Any]:
        return {"probe_id": probe_id, "nonce": secrets.token_hex(16), "expires_at": self._clock() + INSTRUCTION_TTL}

    async def dispatch(self, command: CommandPayload) -> None:
        """Sign and send a command, and start tracking it.

        Raises:
            ProbeUnavailable: If the probe is not connected here.
        """
        await self._send_tracked(command)

    async def dispatch_many(self, commands: Sequence[CommandPayload]) -> dict[str, LegatorError]:
        """Sign, send and track several commands.

        Returns:
            The commands that were not sent, by request id, with why (``ProbeUnavailable``: not connected here;
            a deleted probe's connection is closed when it is deleted).
        """
        failed: dict[str, LegatorError] = {}
        for command in commands:
            try:
                await self._send_tracked(command)
            except ProbeUnavailable as exc:
                failed[command.request_id] = exc
        return failed

    async def _send_tracked(self, command: CommandPayload) -> None:
        message = CommandMessage(id=new_message_id(), ts=self._clock(), payload=command)
        tracker = _Tracker(command.request_id, command.probe_id, message.id)
        self._trackers[command.request_id] = tracker
        self._by_envelope[message.id] = command.request_id
        try:
            await self._send(command.probe_id, message)
        except ProbeUnavailable:
            self._forget(tracker)
            raise

    async def cancel(self, run: CommandRunRead) -> None:
        """Ask the probe to cancel a running command (signed).

        Raises:
            ProbeUnavailable: If the probe is not connected.
        """
        payload = CancelPayload(**self._signed_fields(run.probe_id), request_id=run.request_id)
        message = CancelMessage(id=new_message_id(), ts=self._clock(), payload=payload)
        await self._send(run.probe_id, message)

    async def _send(self, probe_id: str, message: SignedMessage) -> "ProbeSession":
        """Sign ``message`` with the key generation the probe's connection trusts and queue it; returns the session.

        The connection learns that generation when it authenticates and follows the rotations sent through it, so
        signing needs no database read (a rotation made elsewhere while the probe is connected here stays pending
        until it reconnects, and until then the key it trusts is still the right one).
        """
        session = self._sessions.get(probe_id)
        if session is None:
            raise ProbeUnavailable(f"probe {probe_id} is not connected", details={"probe_id": probe_id})
        generation = session.signing_generation
        signed = sign_envelope(
            message,
            key_id=self._keys.key_id(probe_id, generation),
            private_key=self._keys.private_key(probe_id, generation),
        )
        await session.send_signed(signed)
        return session

    async def wait(self, request_id: str, *, timeout: float) -> CommandRunRead | None:
        """Wait up to ``timeout`` seconds for a tracked command's result; ``None`` if it did not come."""
        tracker = self._trackers.get(request_id)
        if tracker is None:
            return None
        with anyio.move_on_after(timeout):
            await tracker.done.wait()
        return tracker.run

    def watch(self, request_id: str, callback: Callable[[CommandRunRead], None]) -> bool:
        """Call ``callback`` with the command's final run when it completes; ``False`` (and no call) when it is not
        tracked here (it finished already, or runs elsewhere). The callback must not block."""
        tracker = self._trackers.get(request_id)
        if tracker is None:
            return False
        tracker.watchers.append(callback)
        return True

    def unwatch(self, request_id: str, callback: Callable[[CommandRunRead], None]) -> None:
        """Stop a :meth:`watch`."""
        tracker = self._trackers.get(request_id)
        if tracker is not None and callback in tracker.watchers:
            tracker.watchers.remove(callback)

    def is_tracking(self, request_id: str) -> bool:
        """Whether this process is waiting for the command's result."""
        return request_id in self._trackers

    @property
    def in_flight(self) -> int:
        """How many commands this process is tracking."""
        return len(self._trackers)

    async def stream(self, request_id: str) -> AsyncIterator[StreamItem]:
        """Yield a command's output chunks (those so far, then live) and finally its run.

        Yields nothing when the command is not tracked here (it finished earlier, or runs elsewhere).
        """
        tracker = self._trackers.get(request_id)
        if tracker is None:
            return
        send, receive = anyio.create_memory_object_stream[StreamItem](4096)
        for chunk in list(tracker.chunks):
            send.send_nowait(StreamItem(chunk=chunk))
        if tracker.run is not None:
            send.send_nowait(StreamItem(run=tracker.run))
            send.close()
        else:
            tracker.listeners.append(send)
        async with receive:
            async for item in receive:
                yield item

    # -- inbound from sessions --------------------------------------------------------------------------------

    def on_chunk(self, probe_id: str, chunk: OutputChunkPayload) -> None:
        """Record a streamed output chunk from ``probe_id``."""
        tracker = self._trackers.get(chunk.request_id)
        if tracker is None or tracker.probe_id != probe_id:
            return
        tracker.chunks.append(chunk)
        for listener in list(tracker.listeners):
            try:
                listener.send_nowait(StreamItem(chunk=chunk))
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                tracker.listeners.remove(listener)
                listener.close()

    async def on_result(self, probe_id: str, result: CommandResultPayload) -> None:
        """Persist a command's result and wake whoever waits for it."""
        run = await self._commands.record_result(probe_id=probe_id, result=result)
        tracker = self._trackers.get(result.request_id)
        if tracker is not None and tracker.probe_id == probe_id:
            self._complete(tracker, run or await self._commands.get(result.request_id))

    async def on_rejection(self, probe_id: str, rejection: RejectionPayload) -> None:
        """A probe refused a signed instruction; finish the command it was, if any."""
        request_id = self._by_envelope.get(rejection.ref_id)
        if request_id is None:
            return
        run = await self._commands.fail(
            request_id=request_id,
            status=CommandStatus.REFUSED,
            error_code=f"rejected_{rejection.reason}",
            error=f"the probe rejected the instruction: {rejection.reason} {rejection.detail}".strip(),
        )
        tracker = self._trackers.get(request_id)
        if tracker is not None:
            self._complete(tracker, run or await self._commands.get(request_id))

    async def expire(
        self, request_id: str, *, status: CommandStatus, error_code: str, error: str
    ) -> CommandRunRead | None:
        """Finish a tracked command from the control plane's side (timeout, probe gone)."""
        run = await self._commands.fail(request_id=request_id, status=status, error_code=error_code, error=error)
        tracker = self._trackers.get(request_id)
        if tracker is not None:
            self._complete(tracker, run or await self._commands.get(request_id))
        return run

    def _complete(self, tracker: _Tracker, run: CommandRunRead) -> None:
        tracker.run = run
        tracker.done.set()
        for listener in tracker.listeners:
            try:
                listener.send_nowait(StreamItem(run=run))
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            listener.close()
        tracker.listeners.clear()
        for watcher in tracker.watchers:
            watcher(run)
        tracker.watchers.clear()
        self._forget(tracker)

    def _forget(self, tracker: _Tracker) -> None:
        self._trackers.pop(tracker.request_id, None)
        self._by_envelope.pop(tracker.envelope_id, None)

    def tracked_for(self, probe_id: str) -> list[str]:
        """Request ids in flight to ``probe_id``."""
        return [t.request_id for t in self._trackers.values() if t.probe_id == probe_id]
