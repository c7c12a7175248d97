"""Test doubles at the probe's true boundaries: a fake gateway and a recording emitter.

:class:`FakeGateway` is a real ``websockets.asyncio.server`` on 127.0.0.1 that authenticates the
bearer credential before the upgrade and speaks ``ProbeProtocol(Side.GATEWAY)``, signing with keys
from ``derive_probe_keypair`` exactly as the control plane does.
"""

import ipaddress
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import anyio
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from legator_probe.agent.commands._runner import ExecEnv
from legator_probe.agent.executor import Executor
from legator_probe.agent.policy import LocalPolicy
from legator_probe.agent.settings import PolicyConfig, ProbeConfig, ProbeSettings, SigningKeyConfig
from legator_probe.protocol.commands import COMMAND_PAYLOAD_ADAPTER
from legator_probe.protocol.connection import DEFAULT_MAX_FRAME_BYTES, Event, ProbeProtocol, Side
from legator_probe.protocol.messages import (
    CancelMessage,
    CommandMessage,
    HelloMessage,
    SignedMessage,
    new_message_id,
)
from legator_probe.protocol.payloads import (
    CancelPayload,
    CommandResultPayload,
    ErrorPayload,
    OutputChunkPayload,
    RejectionPayload,
    WelcomePayload,
)
from legator_probe.protocol.signing import derive_probe_keypair, encode_public_key, sign_envelope
from legator_probe.protocol.types import CapabilityLevel

MASTER = bytes(range(32))
PROBE_ID = "prb-test"
CREDENTIAL = "lpc_test-credential-0123456789"

_T = TypeVar("_T")


def now() -> datetime:
    return datetime.now(UTC)


def signed_fields(probe_id: str = PROBE_ID) -> dict[str, Any]:
    return {"probe_id": probe_id, "nonce": uuid.uuid4().hex, "expires_at": now() + timedelta(minutes=5)}


def command_message(kind: str, spec: dict[str, Any], *, request_id: str | None = None, **fields: Any) -> CommandMessage:
    """An unsigned command message (the executor does not look at signatures)."""
    payload = COMMAND_PAYLOAD_ADAPTER.validate_python(
        {"kind": kind, "spec": spec, "request_id": request_id or uuid.uuid4().hex[:12], **signed_fields(), **fields}
    )
    return CommandMessage(id=new_message_id(), ts=now(), payload=payload)


@dataclass
class RecordingEmitter:
    """An executor emitter that records everything and lets tests wait for results."""

    chunks: list[OutputChunkPayload] = field(default_factory=lambda: [])
    results: dict[str, CommandResultPayload] = field(default_factory=lambda: {})
    rejections: list[RejectionPayload] = field(default_factory=lambda: [])
    errors: list[ErrorPayload] = field(default_factory=lambda: [])
    order: list[str] = field(default_factory=lambda: [])
    """``chunk:<request_id>``/``result:<request_id>`` in arrival order."""
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    def _notify(self) -> None:
        self._arrived.set()
        self._arrived = anyio.Event()

    async def chunk(self, payload: OutputChunkPayload) -> None:
        self.chunks.append(payload)
        self.order.append(f"chunk:{payload.request_id}")
        self._notify()

    async def result(self, payload: CommandResultPayload) -> None:
        assert payload.request_id not in self.results, "a command reported twice"
        self.results[payload.request_id] = payload
        self.order.append(f"result:{payload.request_id}")
        self._notify()

    async def rejection(self, payload: RejectionPayload) -> None:
        self.rejections.append(payload)

    async def error(self, payload: ErrorPayload) -> None:
        self.errors.append(payload)

    async def wait(self, request_id: str) -> CommandResultPayload:
        while request_id not in self.results:
            await self._arrived.wait()
        return self.results[request_id]

    def output(self, request_id: str, stream: str = "stdout") -> str:
        return "".join(c.data for c in self.chunks if c.request_id == request_id and c.stream == stream)

    async def wait_output(self, request_id: str, text: str) -> None:
        """Wait until the streamed stdout of ``request_id`` contains ``text``."""
        while text not in self.output(request_id):
            await self._arrived.wait()


@asynccontextmanager
async def running_executor(
    *,
    level: CapabilityLevel = "remediate",
    env: dict[str, str] | None = None,
    max_concurrent: int = 8,
    kill_grace_s: float = 2.0,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    **policy: Any,
) -> AsyncIterator[tuple[Executor, RecordingEmitter]]:
    """An entered executor with a recording emitter and a policy at ``level``."""
    emitter = RecordingEmitter()
    local = LocalPolicy(PolicyConfig(level=level, **policy))
    exec_env = ExecEnv(dict(os.environ) if env is None else env, kill_grace_s=kill_grace_s)
    async with Executor(
        emitter=emitter,
        policy=lambda: local,
        exec_env=exec_env,
        max_concurrent=max_concurrent,
        max_frame_bytes=max_frame_bytes,
    ) as ex:
        yield ex, emitter


async def run_command(kind: str, spec: dict[str, Any], **fields: Any) -> CommandResultPayload:
    """Run one command at level remediate and return its result."""
    async with running_executor() as (executor, emitter):
        message = command_message(kind, spec, **fields)
        executor.submit(message)
        return await emitter.wait(message.payload.request_id)


async def wait_gone(pid: int) -> None:
    """Wait until process ``pid`` has exited (a zombie counts as exited), without polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class GatewaySession:
    """The gateway's side of one probe connection."""

    def __init__(self, gateway: "FakeGateway", websocket: ServerConnection) -> None:
        self.gateway = gateway
        self.websocket = websocket
        self.protocol = ProbeProtocol(Side.GATEWAY)
        self.seen: list[Event] = []
        self.welcomed = anyio.Event()
        self.closed = anyio.Event()
        self.close_code: int | None = None
        self._cursor = 0
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def flush(self) -> None:
        for frame in self.protocol.data_to_send():
            await self.websocket.send(frame)

    async def serve(self) -> None:
        try:
            async for raw in self.websocket:
                assert isinstance(raw, str)
                self.protocol.receive_text(raw)
                for event in self.protocol.events_received():
                    if isinstance(event, HelloMessage) and self.gateway.auto_welcome:
                        self.protocol.send_welcome(
                            WelcomePayload(
                                heartbeat_interval_s=self.gateway.heartbeat_interval_s,
                                server_time=now(),
                                policy_level=self.gateway.policy_level,
                            )
                        )
                    self.seen.append(event)
                await self.flush()
                if self.protocol.welcome is not None:
                    self.welcomed.set()
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.websocket.close_code
            self.closed.set()
            self._notify()

    async def expect(self, kind: type[_T]) -> _T:
        """The next event of type ``kind`` the agent sent (earlier events of other types are skipped)."""
        while True:
            while self._cursor < len(self.seen):
                event = self.seen[self._cursor]
                self._cursor += 1
                if isinstance(event, kind):
                    return event
            if self.closed.is_set():
                raise AssertionError(f"the connection closed before a {kind.__name__} arrived")
            await self._changed.wait()

    async def send_signed(self, message: SignedMessage) -> None:
        self.protocol.send_signed(message)
        await self.flush()

    async def send_command(self, kind: str, spec: dict[str, Any], **fields: Any) -> CommandMessage:
        message = self.gateway.sign(command_message(kind, spec, **fields))
        await self.send_signed(message)
        return message

    async def cancel(self, request_id: str) -> None:
        payload = CancelPayload(request_id=request_id, **signed_fields())
        await self.send_signed(self.gateway.sign(CancelMessage(id=new_message_id(), ts=now(), payload=payload)))

    async def close(self, code: int = 1000) -> None:
        await self.websocket.close(code)
        await self.closed.wait()


class FakeGateway:
    """A real WebSocket server standing in for the control plane's ``/ws/probe``."""

    def __init__(
        self,
        *,
        probe_id: str = PROBE_ID,
        credential: str = CREDENTIAL,
        heartbeat_interval_s: float = 30.0,
        policy_level: CapabilityLevel = "observe",
    ) -> None:
        self.probe_id = probe_id
        self.credential = credential
        self.heartbeat_interval_s = heartbeat_interval_s
        self.policy_level: CapabilityLevel = policy_level
        self.auto_welcome = True
        self.reject_with: tuple[int, dict[str, str]] | None = None
        self.rejected = 0
        self.key_id, self.private_key = derive_probe_keypair(MASTER, probe_id, 0)
        self.url = ""
        self.sessions: list[GatewaySession] = []
        self._handed_out = 0
        self._arrived = anyio.Event()

    def sign(self, message: SignedMessage) -> Any:
        return sign_envelope(message, key_id=self.key_id, private_key=self.private_key)

    def config(self, *, level: CapabilityLevel = "remediate", **overrides: Any) -> ProbeConfig:
        fields: dict[str, Any] = {
            "server_url": self.url,
            "probe_id": self.probe_id,
            "credential": self.credential,
            "signing_keys": [
                SigningKeyConfig(key_id=self.key_id, public_key=encode_public_key(self.private_key.public_key()))
            ],
            "policy": PolicyConfig(policy_id="test", level=level, version=1),
            **overrides,
        }
        return ProbeConfig.model_validate(fields)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.reject_with is not None:
            self.rejected += 1
            status, headers = self.reject_with
            response = connection.respond(HTTPStatus(status), "refused\n")
            for name, value in headers.items():
                response.headers[name] = value
            return response
        if request.path != "/ws/probe":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if request.headers.get("Authorization") != f"Bearer {self.credential}":
            self.rejected += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid credential\n")
        return None

    async def _handler(self, websocket: ServerConnection) -> None:
        session = GatewaySession(self, websocket)
        self.sessions.append(session)
        self._arrived.set()
        self._arrived = anyio.Event()
        await session.serve()

    async def next_session(self) -> GatewaySession:
        """The next connection, once its handshake completed."""
        while self._handed_out >= len(self.sessions):
            await self._arrived.wait()
        session = self.sessions[self._handed_out]
        self._handed_out += 1
        await session.welcomed.wait()
        return session

    @asynccontextmanager
    async def running(self, *, tls: ssl.SSLContext | None = None) -> AsyncIterator["FakeGateway"]:
        async with serve(self._handler, "127.0.0.1", 0, process_request=self._process_request, ssl=tls) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
            yield self


def make_tls(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A private CA (written to ``ca.pem``) and a server context for 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    start, end = now() - timedelta(days=1), now() + timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("legator test CA"))
        .issuer_name(name("legator test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = directory / "server.pem"
    chain.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    return ca_path, context


def fast_settings(**overrides: Any) -> ProbeSettings:
    """Settings with short timeouts for tests (no environment read beyond the defaults)."""
    values: dict[str, Any] = {
        "open_timeout_s": 5.0,
        "close_timeout_s": 2.0,
        "drain_timeout_s": 5.0,
        "ping_interval_s": None,
        "hostname": "probe-host",
        **overrides,
    }
    return ProbeSettings(**values)


def write_config(path: Path, config: ProbeConfig) -> Path:
    from legator_probe.agent.settings import save_config

    save_config(path, config)
    return path
