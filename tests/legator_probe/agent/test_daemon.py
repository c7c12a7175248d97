"""The daemon against a real WebSocket gateway on 127.0.0.1 that signs like the control plane."""

import gc
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
import pytest
from tests.legator_probe.agent._support import (
    MASTER,
    FakeGateway,
    command_message,
    fast_settings,
    make_tls,
    now,
    signed_fields,
    wait_gone,
    write_config,
)

from legator_probe.agent.daemon import ProbeDaemon
from legator_probe.agent.settings import load_config
from legator_probe.agent.status import read_status, status_path
from legator_probe.protocol import _ed25519
from legator_probe.protocol.messages import (
    CommandMessage,
    CommandResultMessage,
    ErrorMessage,
    HeartbeatMessage,
    InventoryMessage,
    KeyRotationMessage,
    OutputChunkMessage,
    PolicyUpdateMessage,
    RejectionMessage,
    new_message_id,
)
from legator_probe.protocol.payloads import BackoffPayload, InventoryPayload, KeyRotationPayload, PolicyUpdatePayload
from legator_probe.protocol.signing import derive_probe_keypair, encode_public_key, sign_envelope

pytestmark = pytest.mark.anyio


class _FixedRandom(random.Random):
    """``random()`` always returns 0.5, so ``uniform(a, b)`` is the midpoint."""

    def random(self) -> float:
        return 0.5


class _Sleeps:
    """An injected ``sleep`` that records delays and returns at once; stops the daemon after ``limit``."""

    def __init__(self, limit: int, daemon: Callable[[], ProbeDaemon]) -> None:
        self.delays: list[float] = []
        self.limit = limit
        self.daemon = daemon
        self.called = anyio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.called.set()
        if len(self.delays) >= self.limit:
            self.daemon().request_stop()
        await anyio.lowlevel.checkpoint()


async def test_hello_then_welcome_then_inventory_and_heartbeats() -> None:
    gateway = FakeGateway(heartbeat_interval_s=0.05)
    with anyio.fail_after(20):
        async with gateway.running():
            daemon = ProbeDaemon(fast_settings(), gateway.config())
            async with daemon.running():
                session = await gateway.next_session()
                await daemon.wait_connected()
                inventory = await session.expect(InventoryMessage)
                beats = [await session.expect(HeartbeatMessage) for _ in range(3)]
            await session.closed.wait()
    hello = session.protocol.hello
    assert hello is not None and (hello.probe_id, hello.hostname) == ("prb-test", "probe-host")
    assert {"shell", "file_read", "file_write", "process"} <= set(hello.capabilities)
    assert inventory.payload.hostname == "probe-host" and inventory.payload.cpus > 0
    assert all(beat.payload.mem_total_bytes > 0 and beat.payload.uptime_s > 0 for beat in beats)
    assert session.close_code == 1000


async def test_the_inventory_is_not_kept_alive_between_two_collections() -> None:
    gateway = FakeGateway(heartbeat_interval_s=0.05)
    with anyio.fail_after(20):
        async with gateway.running(), ProbeDaemon(fast_settings(), gateway.config()).running():
            session = await gateway.next_session()
            received = await session.expect(InventoryMessage)
            await session.expect(HeartbeatMessage)
            await session.expect(HeartbeatMessage)  # the inventory loop is asleep by now
            gc.collect()
            alive = [o for o in gc.get_objects() if isinstance(o, InventoryPayload)]
    assert [id(o) for o in alive] == [id(received.payload)]


async def test_a_signed_command_streams_chunks_then_one_result() -> None:
    gateway = FakeGateway()
    with anyio.fail_after(20):
        async with gateway.running(), ProbeDaemon(fast_settings(), gateway.config()).running():
            session = await gateway.next_session()
            sent = await session.send_command("shell", {"script": "echo one; sleep 0.2; echo two"}, stream=True)
            result = await session.expect(CommandResultMessage)
    chunks = [e.payload for e in session.seen if isinstance(e, OutputChunkMessage)]
    assert result.payload.request_id == sent.payload.request_id and result.payload.status == "ok"
    assert "".join(c.data for c in chunks) == "one\ntwo\n" == result.payload.stdout
    assert [c.seq for c in chunks] == list(range(len(chunks))) and len(chunks) >= 2
    assert session.seen.index(result) > max(
        session.seen.index(e) for e in session.seen if isinstance(e, OutputChunkMessage)
    )


async def test_a_signed_cancel_stops_the_command() -> None:
    gateway = FakeGateway()
    with anyio.fail_after(20):
        async with gateway.running(), ProbeDaemon(fast_settings(), gateway.config()).running():
            session = await gateway.next_session()
            sent = await session.send_command("shell", {"script": "echo up; exec sleep 300"}, stream=True)
            await session.expect(OutputChunkMessage)
            await session.cancel(sent.payload.request_id)
            result = await session.expect(CommandResultMessage)
            await session.cancel("not-running")
            error = await session.expect(ErrorMessage)
    assert (result.payload.status, result.payload.error_code) == ("canceled", "canceled")
    assert error.payload.code == "unknown_request"


async def test_a_command_with_a_bad_signature_is_rejected_and_never_runs(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    gateway = FakeGateway()
    with anyio.fail_after(20):
        async with gateway.running(), ProbeDaemon(fast_settings(), gateway.config()).running():
            session = await gateway.next_session()
            genuine = gateway.sign(command_message("shell", {"argv": ["true"]}))
            assert isinstance(genuine, CommandMessage)
            evil = command_message("shell", {"argv": ["touch", str(target)]}, request_id=genuine.payload.request_id)
            forged = evil.model_copy(update={"sig": genuine.sig})  # a valid signature, for another payload
            await session.send_signed(forged)
            rejection = await session.expect(RejectionMessage)
            other_key, other_private = derive_probe_keypair(bytes(32 * [7]), "prb-test", 0)
            foreign = sign_envelope(
                command_message("shell", {"argv": ["true"]}), key_id=other_key, private_key=other_private
            )
            await session.send_signed(foreign)
            unknown = await session.expect(RejectionMessage)
    assert (rejection.payload.ref_id, rejection.payload.reason) == (forged.id, "bad_signature")
    assert unknown.payload.reason == "unknown_key"
    assert not target.exists()
    assert not any(isinstance(e, CommandResultMessage) for e in session.seen)


async def test_an_observe_probe_refuses_a_correctly_signed_file_write(tmp_path: Path) -> None:
    target = tmp_path / "f"
    gateway = FakeGateway()
    with anyio.fail_after(20):
        async with gateway.running(), ProbeDaemon(fast_settings(), gateway.config(level="observe")).running():
            session = await gateway.next_session()
            sent = await session.send_command("file_write", {"path": str(target), "content": "x"})
            rejection = await session.expect(RejectionMessage)
            result = await session.expect(CommandResultMessage)
    assert (rejection.payload.ref_id, rejection.payload.reason) == (sent.id, "policy")
    assert (result.payload.status, result.payload.error_code) == ("refused", "policy_refused")
    assert not target.exists()


async def test_policy_updates_and_key_rotations_apply_and_persist(tmp_path: Path) -> None:
    gateway = FakeGateway()
    path = tmp_path / "probe.json"
    with anyio.fail_after(20):
        async with gateway.running():
            config = gateway.config(level="remediate")
            write_config(path, config)
            async with ProbeDaemon(fast_settings(), config, config_path=path).running():
                session = await gateway.next_session()
                update = PolicyUpdatePayload(policy_id="observe-only", level="observe", version=2, **signed_fields())
                await session.send_signed(
                    gateway.sign(PolicyUpdateMessage(id=new_message_id(), ts=now(), payload=update))
                )
                new_key, new_private = derive_probe_keypair(MASTER, "prb-test", 1)
                rotation = KeyRotationPayload(
                    new_key_id=new_key,
                    new_public_key=encode_public_key(new_private.public_key()),
                    overlap_s=600,
                    **signed_fields(),
                )
                await session.send_signed(
                    gateway.sign(KeyRotationMessage(id=new_message_id(), ts=now(), payload=rotation))
                )
                gateway.key_id, gateway.private_key = new_key, new_private
                await session.send_command("file_write", {"path": str(tmp_path / "x"), "content": "x"})
                refused = await session.expect(CommandResultMessage)
                await session.send_command("shell", {"argv": ["true"]})
                accepted = await session.expect(CommandResultMessage)
    saved = load_config(path)
    assert refused.payload.status == "refused"  # the new policy holds; the new key verified both commands
    assert accepted.payload.status == "ok"
    assert (saved.policy.level, saved.policy.version) == ("observe", 2)
    assert [k.key_id for k in saved.signing_keys] == [derive_probe_keypair(MASTER, "prb-test", 0)[0], new_key]
    assert saved.signing_keys[0].not_after is not None and saved.signing_keys[1].not_after is None
    assert (path.stat().st_mode & 0o777) == 0o600


async def test_the_daemon_reconnects_after_the_server_drops() -> None:
    gateway = FakeGateway()
    holder: list[ProbeDaemon] = []
    sleeps = _Sleeps(limit=100, daemon=lambda: holder[0])
    with anyio.fail_after(20):
        async with gateway.running():
            daemon = ProbeDaemon(fast_settings(), gateway.config(), sleep=sleeps, rng=_FixedRandom())
            holder.append(daemon)
            async with daemon.running():
                first = await gateway.next_session()
                await first.expect(InventoryMessage)
                await first.close(1011)
                second = await gateway.next_session()
                await second.expect(InventoryMessage)
                assert daemon.connected
    assert second.protocol.hello is not None
    assert sleeps.delays == [0.5]  # full jitter on a 1 s ceiling, with random() = 0.5


async def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _delays(config_url: str, limit: int, tmp_path: Path, **settings: object) -> tuple[list[float], Path]:
    gateway = FakeGateway()
    holder: list[ProbeDaemon] = []
    sleeps = _Sleeps(limit=limit, daemon=lambda: holder[0])
    path = tmp_path / "probe.json"
    config = gateway.config(server_url=config_url)
    write_config(path, config)
    daemon = ProbeDaemon(fast_settings(**settings), config, config_path=path, sleep=sleeps, rng=_FixedRandom())
    holder.append(daemon)
    await daemon.serve(handle_signals=False)
    return sleeps.delays, path


async def test_failed_dials_back_off_exponentially_with_full_jitter_up_to_the_cap(tmp_path: Path) -> None:
    port = await _closed_port()
    with anyio.fail_after(20):
        delays, _ = await _delays(f"http://127.0.0.1:{port}", 7, tmp_path, backoff_cap_s=16.0)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


async def _with_gateway(
    tmp_path: Path, prepare: Callable[[FakeGateway], None], limit: int
) -> tuple[list[float], Path, FakeGateway]:
    gateway = FakeGateway()
    prepare(gateway)
    async with gateway.running():
        delays, path = await _delays(gateway.url, limit, tmp_path)
    return delays, path, gateway


async def test_an_auth_failure_waits_a_steady_delay_and_is_reported(tmp_path: Path) -> None:
    def wrong_credential(gateway: FakeGateway) -> None:
        gateway.credential = "lpc_something-else"

    with anyio.fail_after(20):
        delays, path, gateway = await _with_gateway(tmp_path, wrong_credential, 3)
    assert delays == [60.0, 60.0, 60.0] and gateway.rejected == 3 and not gateway.sessions
    status = read_status(status_path(path))
    assert status is not None and status.outcome == "stopped"


async def test_an_overloaded_gateway_is_retried_after_its_retry_after(tmp_path: Path) -> None:
    def busy(gateway: FakeGateway) -> None:
        gateway.reject_with = (429, {"Retry-After": "7"})

    with anyio.fail_after(20):
        delays, _, _ = await _with_gateway(tmp_path, busy, 2)
    assert delays == [7.0 * 1.05, 7.0 * 1.05]


async def test_status_file_records_an_auth_failure(tmp_path: Path) -> None:
    gateway = FakeGateway()
    gateway.credential = "lpc_other"
    observed: list[str] = []
    holder: list[ProbeDaemon] = []
    path = tmp_path / "probe.json"

    async def sleep(_delay: float) -> None:
        status = read_status(status_path(path))
        observed.append(status.outcome if status else "none")
        holder[0].request_stop()

    with anyio.fail_after(20):
        async with gateway.running():
            config = gateway.config(credential="lpc_test-credential-0123456789")
            write_config(path, config)
            daemon = ProbeDaemon(fast_settings(), config, config_path=path, sleep=sleep)
            holder.append(daemon)
            await daemon.serve(handle_signals=False)
    assert observed == ["auth_failed"]


async def test_wss_is_verified_against_the_ca_file(tmp_path: Path) -> None:
    ca_file, tls = make_tls(tmp_path)
    gateway = FakeGateway()
    holder: list[ProbeDaemon] = []
    sleeps = _Sleeps(limit=1, daemon=lambda: holder[0])
    with anyio.fail_after(20):
        async with gateway.running(tls=tls):
            assert gateway.url.startswith("https://")
            trusting = ProbeDaemon(fast_settings(), gateway.config(ca_file=ca_file))
            async with trusting.running():
                await gateway.next_session()
                await trusting.wait_connected()
            untrusting = ProbeDaemon(fast_settings(), gateway.config(), sleep=sleeps)
            holder.append(untrusting)
            await untrusting.serve(handle_signals=False)
    assert [a.kind for a in untrusting.attempts] == ["failed"] and len(gateway.sessions) == 1


async def test_a_backoff_message_is_obeyed() -> None:
    gateway = FakeGateway()
    holder: list[ProbeDaemon] = []
    sleeps = _Sleeps(limit=1, daemon=lambda: holder[0])
    with anyio.fail_after(20):
        async with gateway.running():
            daemon = ProbeDaemon(fast_settings(), gateway.config(), sleep=sleeps, rng=_FixedRandom())
            holder.append(daemon)
            async with daemon.running():
                session = await gateway.next_session()
                session.protocol.send_backoff(BackoffPayload(retry_after_s=5))
                await session.flush()
                await sleeps.called.wait()
    assert sleeps.delays == [5.0 * 1.05] and daemon.attempts[0].kind == "retry_after"


async def test_stop_drains_running_commands_then_closes_with_1000() -> None:
    gateway = FakeGateway()
    with anyio.fail_after(20):
        async with gateway.running():
            daemon = ProbeDaemon(fast_settings(drain_timeout_s=10), gateway.config())
            async with daemon.running():
                session = await gateway.next_session()
                await session.send_command("shell", {"script": "echo up; sleep 0.3; echo finished"}, stream=True)
                await session.expect(OutputChunkMessage)
                daemon.request_stop()
                result = await session.expect(CommandResultMessage)
            await session.closed.wait()
    assert (result.payload.status, result.payload.stdout) == ("ok", "up\nfinished\n")
    assert session.close_code == 1000


async def test_stop_cancels_commands_that_outlive_the_drain() -> None:
    gateway = FakeGateway()
    with anyio.fail_after(20):
        async with gateway.running():
            daemon = ProbeDaemon(fast_settings(drain_timeout_s=0.2), gateway.config())
            async with daemon.running():
                session = await gateway.next_session()
                await session.send_command("shell", {"script": "echo up; exec sleep 300"}, stream=True)
                await session.expect(OutputChunkMessage)
                daemon.request_stop()
                result = await session.expect(CommandResultMessage)
            await session.closed.wait()
    assert (result.payload.status, result.payload.error) == ("canceled", "the probe is shutting down")
    assert session.close_code == 1000


async def test_results_finished_while_offline_are_delivered_after_reconnecting() -> None:
    gateway = FakeGateway()
    holder: list[ProbeDaemon] = []

    async def sleep(_delay: float) -> None:
        await holder[0].executor.wait_idle()  # reconnect only once the command finished while offline

    with anyio.fail_after(20):
        async with gateway.running():
            daemon = ProbeDaemon(fast_settings(), gateway.config(), sleep=sleep)
            holder.append(daemon)
            async with daemon.running():
                first = await gateway.next_session()
                sent = await first.send_command("shell", {"script": "echo up; sleep 0.3; echo done"}, stream=True)
                await first.expect(OutputChunkMessage)
                await first.close(1001)
                second = await gateway.next_session()
                result = await second.expect(CommandResultMessage)
    assert not any(isinstance(e, CommandResultMessage) for e in first.seen)
    assert (result.payload.request_id, result.payload.stdout) == (sent.payload.request_id, "up\ndone\n")


async def _probe_process(config: Path, log: Path, *python_options: str, **env: str) -> anyio.abc.Process:
    with log.open("wb") as stderr:
        return await anyio.open_process(
            [sys.executable, *python_options, "-m", "legator_probe.agent", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
        )


IDLE_PROBE_NEVER_IMPORTS = (
    "legator_probe.agent.commands.shell",
    "legator_probe.agent.commands.files",
    "legator_probe.agent.commands.process",
    "legator_probe.agent.commands.systemd",
    "legator_probe.agent.commands.kubectl",
    "difflib",
    "legator_probe.agent.registration",
    "httpx",
    "legator_probe.protocol.schema",
    "legator_mcp",
)
"""Modules a connected probe that has run no command must not have imported: each would stay resident."""


async def test_an_idle_probe_imports_no_command_modules_and_verifies_without_cryptography(tmp_path: Path) -> None:
    # The real ``legator-probe run`` with ``python -X importtime``, which lists every module the process imports.
    gateway = FakeGateway(heartbeat_interval_s=0.05)
    log = tmp_path / "probe.log"
    with anyio.fail_after(30):
        async with gateway.running():
            config = write_config(tmp_path / "probe.json", gateway.config())
            process = await _probe_process(config, log, "-X", "importtime")
            async with process:
                session = await gateway.next_session()
                await session.expect(InventoryMessage)
                await session.expect(HeartbeatMessage)
                await session.cancel("no-such-request")  # signed: answered only after its signature was verified
                assert (await session.expect(ErrorMessage)).payload.code == "unknown_request"
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0
    lines = log.read_text(encoding="utf-8").splitlines()
    imported = {line.rpartition("|")[2].strip() for line in lines if line.startswith("import time:")}
    assert "legator_probe.agent.daemon" in imported
    never = [*IDLE_PROBE_NEVER_IMPORTS, *(["cryptography"] if _ed25519.load_libcrypto() else [])]
    assert sorted(m for m in imported if m.partition(".")[0] in never or m in never) == []


async def test_sigterm_drains_the_running_command_and_exits_cleanly(tmp_path: Path) -> None:
    gateway = FakeGateway()
    with anyio.fail_after(30):
        async with gateway.running():
            config = write_config(tmp_path / "probe.json", gateway.config())
            process = await _probe_process(config, tmp_path / "probe.log")
            async with process:
                session = await gateway.next_session()
                await session.send_command("shell", {"script": "echo up; sleep 0.5; echo done"}, stream=True)
                await session.expect(OutputChunkMessage)
                process.send_signal(signal.SIGTERM)
                result = await session.expect(CommandResultMessage)
                await session.closed.wait()
                assert await process.wait() == 0
    assert (result.payload.status, result.payload.stdout) == ("ok", "up\ndone\n")
    assert session.close_code == 1000
    status = read_status(status_path(config))
    assert status is not None and status.outcome == "stopped"


async def test_a_second_sigint_forces_exit_and_still_kills_commands(tmp_path: Path) -> None:
    gateway = FakeGateway()
    with anyio.fail_after(30):
        async with gateway.running():
            config = write_config(tmp_path / "probe.json", gateway.config())
            process = await _probe_process(config, tmp_path / "probe.log", LEGATOR_PROBE_DRAIN_TIMEOUT_S="60")
            async with process:
                session = await gateway.next_session()
                await session.send_command("shell", {"script": "sleep 300 & echo $!; wait"}, stream=True)
                chunk = await session.expect(OutputChunkMessage)
                process.send_signal(signal.SIGINT)
                while True:  # signals arrive asynchronously: a refused command proves the first was handled
                    await session.send_command("shell", {"argv": ["true"]})
                    refused = await session.expect(CommandResultMessage)
                    if refused.payload.error_code == "shutting_down":
                        break
                process.send_signal(signal.SIGINT)
                assert await process.wait() == 1
            await wait_gone(int(chunk.payload.data.split()[0]))  # the drain was cut short, the command killed
