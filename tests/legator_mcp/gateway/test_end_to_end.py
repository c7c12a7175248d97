"""Real ``legator-probe`` processes against a real control plane on loopback: every command type through
REST and MCP, signed-instruction rejections, offline detection and reconnection after a restart.
"""

import json
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from tests.support.app import Running, serve
from tests.support.mcp import tool_error_code
from tests.support.probes import ProbeProcess, create_token, start_probe
from tests.support.waiting import until

from legator_mcp.audit.schemas import AuditQuery
from legator_mcp.commands.schemas import CommandStatus
from legator_mcp.errors import LegatorError, NotFound
from legator_mcp.events.service import Subscription
from legator_mcp.flows.run_command import CommandRequest
from legator_mcp.policy.schemas import Decision, PolicyDecision
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_mcp.settings import Settings
from legator_probe.protocol import COMMAND_PAYLOAD_ADAPTER, CommandMessage, new_message_id, sign_envelope
from legator_probe.protocol.signing import derive_probe_keypair

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"heartbeat_interval_s": 0.5, "offline_after_s": 3.0})


@pytest.fixture
async def cp(fast_settings: Settings) -> AsyncIterator[Running]:
    async with serve(fast_settings) as running:
        yield running


async def _wait_for(subscription: Subscription, event_type: str, probe_id: str, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        async for event in subscription:
            if event.type == event_type and event.probe_id == probe_id:
                return


async def _online_probe(cp: Running, tmp_path: Path, *, level: str = "remediate", name: str = "web-1") -> ProbeProcess:
    token = await create_token(cp.base_url, cp.admin_key, level=level)
    async with cp.app.services.events.subscribe("probe.online") as online:
        probe = await start_probe(cp.base_url, token, tmp_path / name, name)
        try:
            await _wait_for(online, "probe.online", probe.probe_id)
        except TimeoutError:
            probe.kill()
            raise AssertionError(
                f"probe never came online; log:\n{probe.log.read_text(errors='replace')[-3000:]}"
            ) from None
    return probe


async def test_every_command_type_runs_on_a_real_probe_through_rest(cp: Running, tmp_path: Path) -> None:
    probe = await _online_probe(cp, tmp_path)
    target = tmp_path / "managed.conf"
    try:
        async with cp.client() as client:

            async def run(body: dict[str, Any]) -> dict[str, Any]:
                response = await client.post(
                    f"/api/v1/probes/{probe.probe_id}/command?wait=true", json=body, timeout=60
                )
                assert response.status_code == 200, response.text
                return response.json()

            echoed = await run({"command": "echo", "args": ["hello from the probe"]})
            assert echoed["status"] == "ok" and echoed["exit_code"] == 0
            assert echoed["stdout"] == "hello from the probe\n"
            assert echoed["decision"] == "allow"

            script = await run({"command": "echo out; echo err >&2; exit 3"})
            assert (script["status"], script["exit_code"]) == ("error", 3)
            assert script["stderr"] == "err\n"

            secret = await run({"command": "echo", "args": ["password=hunter2"]})
            assert "hunter2" not in str(secret["stdout"])

            written = await run({"kind": "file_write", "spec": {"path": str(target), "content": "a = 1\n"}})
            assert written["status"] == "ok", written
            assert target.read_text(encoding="utf-8") == "a = 1\n"
            rewritten = await run({"kind": "file_write", "spec": {"path": str(target), "content": "a = 2\n"}})
            assert rewritten["data"]["backup_path"]
            assert Path(str(rewritten["data"]["backup_path"])).read_text(encoding="utf-8") == "a = 1\n"

            read = await run({"kind": "file_read", "spec": {"path": str(target)}})
            assert read["status"] == "ok" and "a = 2" in str(read["stdout"])

            processes = await run({"kind": "process", "spec": {"action": "list", "name_filter": "python"}})
            assert processes["status"] == "ok" and processes["data"]

            systemd = await run({"kind": "systemd", "spec": {"action": "status", "unit": "ssh.service"}})
            assert systemd["status"] in {"ok", "error"}
            if systemd["status"] == "error":
                assert systemd["error_code"] in {"unavailable", "nonzero_exit"}

            kubectl = await run({"kind": "kubectl", "spec": {"argv": ["version", "--client"]}, "timeout_s": 60})
            assert kubectl["status"] in {"ok", "error"}
            assert kubectl["error_code"] != "internal_error"

            fetched = await client.get(f"/api/v1/commands/{echoed['request_id']}")
            assert fetched.json()["stdout"] == "hello from the probe\n"

            background = await client.post(f"/api/v1/probes/{probe.probe_id}/command", json={"command": "sleep 30"})
            assert background.status_code == 202
            request_id = background.json()["request_id"]
            canceled = await client.post(f"/api/v1/commands/{request_id}/cancel")
            assert canceled.status_code == 200
            with anyio.fail_after(20):
                final = await cp.app.services.command_flow.result(request_id=request_id, wait_s=15)
            assert final.status is CommandStatus.CANCELED
    finally:
        probe.terminate()


async def test_mcp_tools_run_commands_on_a_real_probe(cp: Running, tmp_path: Path) -> None:
    probe = await _online_probe(cp, tmp_path)
    target = tmp_path / "via-mcp.txt"
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {cp.admin_key}"}, timeout=60)
    try:
        async with http, Client(streamable_http_client(f"{cp.base_url}/mcp", http_client=http)) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"legator_run_command", "legator_read_file", "legator_write_file", "legator_list_processes",
                    "legator_systemd", "legator_kubectl", "legator_get_command_result",
                    "legator_cancel_command"} <= names  # fmt: skip
            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            ran = await client.call_tool(
                "legator_run_command", {"probe_id": probe.probe_id, "command": "uname", "args": ["-s"]},
                progress_callback=on_progress,
            )  # fmt: skip
            assert not ran.is_error and ran.structured_content is not None
            assert ran.structured_content["stdout"].strip() == "Linux"
            assert seen, "the tool reports progress while it waits"

            wrote = await client.call_tool(
                "legator_write_file", {"probe_id": probe.probe_id, "path": str(target), "content": "from mcp\n"}
            )
            assert wrote.structured_content is not None and wrote.structured_content["status"] == "ok"
            assert target.read_text(encoding="utf-8") == "from mcp\n"
            read = await client.call_tool("legator_read_file", {"probe_id": probe.probe_id, "path": str(target)})
            assert read.structured_content is not None and "from mcp" in read.structured_content["stdout"]
            listed = await client.call_tool("legator_list_processes", {"probe_id": probe.probe_id})
            assert listed.structured_content is not None and listed.structured_content["status"] == "ok"
            unit = await client.call_tool(
                "legator_systemd", {"probe_id": probe.probe_id, "action": "status", "unit": "cron"}
            )
            assert unit.structured_content is not None and unit.structured_content["status"] in {"ok", "error"}
            kube = await client.call_tool(
                "legator_kubectl", {"probe_id": probe.probe_id, "args": ["version", "--client"]}
            )
            assert kube.structured_content is not None and kube.structured_content["error_code"] != "internal_error"
            again = await client.call_tool(
                "legator_get_command_result", {"request_id": ran.structured_content["request_id"]}
            )
            assert again.structured_content is not None and again.structured_content["status"] == "ok"
    finally:
        probe.terminate()


async def test_an_observe_probe_refuses_a_correctly_signed_file_write(cp: Running, tmp_path: Path) -> None:
    probe = await _online_probe(cp, tmp_path, level="observe")
    target = tmp_path / "must-not-exist"
    services = cp.app.services
    try:
        denied = await services.command_flow.run(
            actor=Principal.system("tester"), probe_id=probe.probe_id, wait=True,
            request=CommandRequest(kind="file_write", spec={"path": str(target), "content": "x"}),
        )  # fmt: skip
        assert denied.status is CommandStatus.DENIED  # the control plane's gate refuses first

        # Now act as a compromised control plane: skip the gate and send a properly signed file_write.
        command = COMMAND_PAYLOAD_ADAPTER.validate_python(
            {"kind": "file_write", "spec": {"path": str(target), "content": "x"}, "request_id": "cmd-bypass-1",
             **services.hub.signed_fields(probe.probe_id)}
        )  # fmt: skip
        allow = PolicyDecision(
            decision=Decision.ALLOW, risk="medium", required_level="remediate", probe_level="observe",
            policy_id=None, parsed=True, programs=[], indicators=[], rationale=["bypassed in a test"],
        )  # fmt: skip
        await services.commands.create(
            actor=Principal.system("compromised"), command=command, decision=allow, status=CommandStatus.DISPATCHED
        )
        await services.hub.dispatch(command)
        run = await services.hub.wait("cmd-bypass-1", timeout=20)
        assert run is not None and run.status is CommandStatus.REFUSED
        assert not target.exists()
        page = await services.audit.search(AuditQuery(probe_id=probe.probe_id))
        assert "probe.instruction_rejected" in {event.type for event in page.events}
    finally:
        probe.terminate()


ALLOW = PolicyDecision(
    decision=Decision.ALLOW, risk="low", required_level="observe", probe_level="remediate",
    policy_id=None, parsed=True, programs=[], indicators=[], rationale=["sent directly by a test"],
)  # fmt: skip


@pytest.mark.parametrize("attack", ["wrong_key", "wrong_probe", "expired", "replayed"])
async def test_forged_expired_and_replayed_instructions_are_rejected_and_audited(
    cp: Running, tmp_path: Path, attack: str
) -> None:
    probe = await _online_probe(cp, tmp_path)
    services = cp.app.services
    marker = tmp_path / f"ran-{attack}"
    try:
        fields = services.hub.signed_fields(probe.probe_id)
        if attack == "wrong_probe":
            fields["probe_id"] = "prb-someone-else"
        if attack == "expired":
            fields["expires_at"] = fields["expires_at"].replace(year=2020)
        command = COMMAND_PAYLOAD_ADAPTER.validate_python(
            {"kind": "shell", "spec": {"argv": ["touch", str(marker)]}, "request_id": f"cmd-{attack}", **fields}
        )
        identity = await services.fleet.signing_identity(probe.probe_id)
        if attack == "wrong_key":
            key_id, key = derive_probe_keypair(b"\x01" * 32, probe.probe_id, identity.generation)
        else:
            key_id = services.fleet.keyring.key_id(probe.probe_id, identity.generation)
            key = services.fleet.keyring.private_key(probe.probe_id, identity.generation)
        message = sign_envelope(CommandMessage(id=new_message_id(), ts=fields["expires_at"], payload=command),
                                key_id=key_id, private_key=key)  # fmt: skip
        session = services.hub._sessions[probe.probe_id]
        if attack == "replayed":
            # The genuine instruction runs once…
            await services.commands.create(actor=Principal.system("t"), command=command, decision=ALLOW,
                                           status=CommandStatus.DISPATCHED)  # fmt: skip
            async with services.events.subscribe("command.*") as done:
                await session.send_signed(message)
                with anyio.fail_after(20):
                    async for event in done:
                        if event.detail and event.detail.get("request_id") == command.request_id:
                            break
            assert marker.exists()
            marker.unlink()
        # …and the forged, expired, misdirected or replayed one is refused, reported and audited.
        async with services.events.subscribe("probe.instruction_rejected") as rejected:
            await session.send_signed(message)
            with anyio.fail_after(20):
                event = await anext(aiter(rejected))
        assert event.detail is not None
        expected = {"wrong_key": {"unknown_key", "bad_signature"}, "wrong_probe": {"wrong_probe"},
                    "expired": {"expired"}, "replayed": {"replayed"}}[attack]  # fmt: skip
        assert event.detail["reason"] in expected
        page = await services.audit.search(AuditQuery(type="probe.instruction_rejected", probe_id=probe.probe_id))
        assert page.events and page.events[0].detail is not None and page.events[0].detail["reason"] in expected
        assert not marker.exists()
    finally:
        probe.terminate()


async def test_a_killed_probe_goes_offline_and_probes_reconnect_after_a_restart(
    fast_settings: Settings, tmp_path: Path
) -> None:
    port = _free_port()
    async with serve(fast_settings, port=port) as cp:
        first = await _online_probe(cp, tmp_path, name="a")
        second = await _online_probe(cp, tmp_path, name="b")
        try:
            stored = await until(lambda: _inventory_received_at(cp, second.probe_id))
            async with cp.app.services.events.subscribe("probe.offline") as offline:
                first.kill()
                await _wait_for(offline, "probe.offline", first.probe_id, timeout=20)
            assert (await cp.app.services.fleet.get_probe(first.probe_id)).status == "offline"
        except BaseException:
            second.kill()
            raise
    # The control plane is gone; the second probe keeps retrying until it comes back on the same port.
    try:
        async with serve(fast_settings, port=port) as restarted:
            async with restarted.app.services.events.subscribe("probe.online") as online:
                if not restarted.app.services.hub.is_connected(second.probe_id):
                    await _wait_for(online, "probe.online", second.probe_id, timeout=45)
            async with restarted.client() as client:
                response = await client.post(
                    f"/api/v1/probes/{second.probe_id}/command?wait=true", json={"command": "true"}, timeout=60
                )
            assert response.status_code == 200 and response.json()["status"] == "ok"
            # Its host did not change, and the welcome said which inventory is on file: it was not resent.
            await until(lambda: "inventory unchanged" in second.log.read_text(encoding="utf-8", errors="replace"))
            assert await _inventory_received_at(restarted, second.probe_id) == stored
    finally:
        second.terminate()


async def test_a_probe_waits_for_the_inventory_slot_its_welcome_gave(fast_settings: Settings, tmp_path: Path) -> None:
    paced = fast_settings.model_copy(update={"probe_inventory_per_second": 0.01, "probe_inventory_max_delay_s": 3600.0})
    async with serve(paced) as cp:
        first = await _online_probe(cp, tmp_path, name="first")
        second: ProbeProcess | None = None
        try:
            await until(lambda: _inventory_received_at(cp, first.probe_id))  # the first slot is now
            second = await _online_probe(cp, tmp_path, name="second")  # the next one is 100 s away
            log = second.log
            await until(lambda: "the slot the control plane gave" in log.read_text(encoding="utf-8", errors="replace"))
            # It is connected and heartbeating, but keeps its inventory for its slot.
            seen = await until(lambda: _last_seen(cp, second.probe_id))
            assert seen is not None
            await until(lambda: _seen_after(cp, second.probe_id, seen, heartbeats=2))
            assert await _inventory_received_at(cp, second.probe_id) is None
        finally:
            first.terminate()
            if second is not None:
                second.terminate()


async def _last_seen(cp: Running, probe_id: str) -> datetime | None:
    return (await cp.app.services.fleet.get_probe(probe_id)).last_seen_at


async def _seen_after(cp: Running, probe_id: str, since: datetime, heartbeats: int = 1) -> bool:
    last = await _last_seen(cp, probe_id)
    return last is not None and (last - since).total_seconds() >= heartbeats * 0.4


async def _inventory_received_at(cp: Running, probe_id: str) -> datetime | None:
    try:
        return (await cp.app.services.fleet.get_inventory(probe_id)).received_at
    except NotFound:
        return None


async def test_wrong_credentials_never_upgrade_and_garbage_frames_do_not_hurt_the_gateway(cp: Running) -> None:
    import websockets.asyncio.client as ws_client
    import websockets.exceptions
    from websockets.exceptions import InvalidStatus

    url = cp.base_url.replace("http://", "ws://") + "/ws/probe"
    for headers in ({}, {"Authorization": "Bearer lpc_" + "0" * 64}, {"Authorization": "Basic x"}):
        with pytest.raises(InvalidStatus) as info:
            async with ws_client.connect(url, additional_headers=headers, open_timeout=5):
                pass
        assert info.value.response.status_code == 401
    token = await create_token(cp.base_url, cp.admin_key)
    async with httpx.AsyncClient(base_url=cp.base_url) as client:
        registered = await client.post("/api/v1/register", json={"token": token, "hostname": "noisy"})
        credential = registered.json()["credential"]
    async with ws_client.connect(url, additional_headers={"Authorization": f"Bearer {credential}"}) as noisy:
        for garbage in ("not json", "{}", '{"type": "command"}', "[1,2,3]", '{"id": 1}', "x" * 100):
            try:
                await noisy.send(garbage)
            except websockets.exceptions.ConnectionClosed:
                break
        with anyio.fail_after(10):
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                while True:
                    await noisy.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    async with ws_client.connect(
        url, additional_headers={"Authorization": f"Bearer {credential}"}, max_size=None
    ) as oversized:
        await oversized.send("x" * (cp.app.settings.max_frame_bytes + 1))
        with anyio.fail_after(10), pytest.raises(websockets.exceptions.ConnectionClosed) as too_big:
            while True:
                await oversized.recv()
    assert too_big.value.rcvd is not None and too_big.value.rcvd.code in {1008, 1009}
    async with httpx.AsyncClient(base_url=cp.base_url) as client:
        assert (await client.get("/healthz")).status_code == 200


async def _mcp(cp: Running, key: str) -> tuple[httpx2.AsyncClient, Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    return http, Client(streamable_http_client(f"{cp.base_url}/mcp", http_client=http))


async def test_a_high_risk_write_waits_for_another_admin_and_runs_exactly_once(cp: Running, tmp_path: Path) -> None:
    probe = await _online_probe(cp, tmp_path)
    target = Path("/etc") / f"legator-e2e-{uuid.uuid4().hex[:8]}.conf"
    async with cp.client() as admin:
        created = await admin.post("/api/v1/auth/keys", json={"name": "second-admin", "permissions": ["admin"]})
    second_key = created.json()["plain_key"]
    http_a, client_a = await _mcp(cp, cp.admin_key)
    http_b, client_b = await _mcp(cp, second_key)
    try:
        async with http_a, client_a, http_b, client_b:
            queued = await client_a.call_tool(
                "legator_write_file", {"probe_id": probe.probe_id, "path": str(target), "content": "approved\n"}
            )
            assert not queued.is_error and queued.structured_content is not None
            result = queued.structured_content
            assert result["status"] == "pending_approval" and result["risk"] in {"high", "critical"}
            assert result["approval_id"] and result["how_to_approve"] and result["rationale"]
            assert not target.exists()

            own = await client_a.call_tool(
                "legator_decide_approval", {"approval_id": result["approval_id"], "decision": "approved"}
            )
            assert tool_error_code(own) == "self_approval"
            assert not target.exists()

            approved = await client_b.call_tool(
                "legator_decide_approval", {"approval_id": result["approval_id"], "decision": "approved"}
            )
            assert not approved.is_error, approved.content
            finished = await client_a.call_tool(
                "legator_get_command_result", {"request_id": result["request_id"], "wait_s": 30}
            )
            assert finished.structured_content is not None and finished.structured_content["status"] == "ok"
            assert target.read_text(encoding="utf-8") == "approved\n"

            again = await client_b.call_tool(
                "legator_decide_approval", {"approval_id": result["approval_id"], "decision": "approved"}
            )
            assert again.is_error
            writes = await cp.app.services.audit.search(AuditQuery(type="command.result", probe_id=probe.probe_id))
            assert [e.detail["request_id"] for e in writes.events if e.detail].count(result["request_id"]) == 1
    finally:
        target.unlink(missing_ok=True)
        probe.terminate()


async def test_an_expired_or_tampered_approval_never_runs(cp: Running, tmp_path: Path) -> None:
    probe = await _online_probe(cp, tmp_path)
    services = cp.app.services
    expired_target = Path("/etc") / f"legator-e2e-{uuid.uuid4().hex[:8]}.conf"
    tampered_target = Path("/etc") / f"legator-e2e-{uuid.uuid4().hex[:8]}.conf"
    requester = Principal(PrincipalKind.API_KEY, "requester", "requester", frozenset({Permission.ADMIN}))
    approver = Principal(PrincipalKind.API_KEY, "approver", "approver", frozenset({Permission.ADMIN}))
    try:
        expiring = await services.command_flow.run(
            actor=requester, probe_id=probe.probe_id, wait=False,
            request=CommandRequest(kind="file_write", spec={"path": str(expired_target), "content": "late\n"}),
        )  # fmt: skip
        assert expiring.status is CommandStatus.PENDING_APPROVAL and expiring.approval_id
        db = sqlite3.connect(cp.app.settings.data_dir / "legator.db")
        db.execute(
            "UPDATE approvals SET expires_at = '2000-01-01 00:00:00.000000' WHERE id = ?", (expiring.approval_id,)
        )
        db.commit()
        with pytest.raises(LegatorError) as info:
            await services.approvals.decide(approver=approver, approval_id=expiring.approval_id, decision="approved")
        assert info.value.code == "approval_expired"
        settled = await services.command_flow.result(request_id=expiring.request_id)
        assert settled.status is CommandStatus.DENIED and not expired_target.exists()

        tampered = await services.command_flow.run(
            actor=requester, probe_id=probe.probe_id, wait=False,
            request=CommandRequest(kind="file_write", spec={"path": str(tampered_target), "content": "benign\n"}),
        )  # fmt: skip
        assert tampered.approval_id
        (action_text,) = db.execute("SELECT action FROM approvals WHERE id = ?", (tampered.approval_id,)).fetchone()
        action = json.loads(action_text)
        action["spec"]["content"] = "evil\n"
        db.execute("UPDATE approvals SET action = ? WHERE id = ?", (json.dumps(action), tampered.approval_id))
        db.commit()
        db.close()
        await services.approvals.decide(approver=approver, approval_id=tampered.approval_id, decision="approved")
        still = await services.commands.get(tampered.request_id)
        assert still.status is not CommandStatus.OK and not tampered_target.exists()
        page = await services.audit.search(AuditQuery(type="approval.tamper_detected"))
        assert page.events
    finally:
        expired_target.unlink(missing_ok=True)
        tampered_target.unlink(missing_ok=True)
        probe.terminate()


async def test_key_rotation_keeps_commands_flowing_and_delete_really_disconnects(cp: Running, tmp_path: Path) -> None:
    probe = await _online_probe(cp, tmp_path)
    services = cp.app.services
    try:
        before = await services.fleet.signing_identity(probe.probe_id)
        async with cp.client() as client:
            rotated = await client.post(f"/api/v1/probes/{probe.probe_id}/rotate-key")
            assert rotated.status_code == 200, rotated.text
            after = await services.fleet.signing_identity(probe.probe_id)
            assert after.generation == before.generation + 1 and after.key_id != before.key_id
            ran = await client.post(
                f"/api/v1/probes/{probe.probe_id}/command?wait=true", json={"command": "true"}, timeout=60
            )
            assert ran.status_code == 200 and ran.json()["status"] == "ok", ran.text  # signed with the new key

            deleted = await client.delete(f"/api/v1/probes/{probe.probe_id}")
            assert deleted.status_code == 200
        assert not services.hub.is_connected(probe.probe_id)
        with pytest.raises(LegatorError) as info:
            await services.fleet.authenticate_probe(json.loads(probe.config.read_text(encoding="utf-8"))["credential"])
        assert info.value.code == "unauthorized"
    finally:
        probe.kill()  # its credential is revoked; graceful shutdown is covered by the agent tests
