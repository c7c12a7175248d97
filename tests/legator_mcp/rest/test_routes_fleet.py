"""REST fleet routes: tokens, registration, probes, fleet roll-ups, permissions and malformed input."""

from typing import Any

import httpx
import pytest
from tests.support.app import Running

from legator_mcp.audit.schemas import AuditQuery
from legator_probe.protocol.payloads import HeartbeatPayload, HelloPayload

pytestmark = pytest.mark.anyio


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    return body["error"]


async def _key(running: Running, *permissions: str) -> str:
    name = "k-" + "-".join(permissions).replace(":", "-")
    async with running.client() as admin:
        created = await admin.post("/api/v1/auth/keys", json={"name": name, "permissions": list(permissions)})
    return created.json()["plain_key"]


async def _register(running: Running, hostname: str, **token: Any) -> dict[str, Any]:
    async with running.client() as admin:
        created = (await admin.post("/api/v1/tokens", json=token)).json()
    async with running.client("") as anonymous:
        response = await anonymous.post("/api/v1/register", json={"token": created["token"], "hostname": hostname})
    assert response.status_code == 201, response.text
    return response.json()


async def test_an_operator_issues_a_token_and_a_probe_registers_with_it(running: Running) -> None:
    operator = await _key(running, "fleet:write")
    async with running.client(operator) as client:
        created = await client.post("/api/v1/tokens", json={"tags": ["prod"], "expires_in": "15m"})
        assert created.status_code == 201
        token = created.json()
        assert token["token"].startswith("lrt_") and token["policy_level"] == "observe"
        assert token["install_command"] == (
            f"legator-probe init --server {running.base_url} --token {token['token']} && legator-probe run"
        )
        assert_error(await client.get("/api/v1/tokens"), 403, "forbidden")
    async with running.client("") as anonymous:
        registered = await anonymous.post(
            "/api/v1/register",
            json={"token": token["token"], "hostname": "web-1", "os": "linux", "arch": "amd64", "version": "0.1.0",
                  "tags": ["web"], "future_field": True},
        )  # fmt: skip
        again = await anonymous.post("/api/v1/register", json={"token": token["token"], "hostname": "web-2"})
    assert registered.status_code == 201
    body = registered.json()
    assert body["probe_id"].startswith("prb-") and body["credential"].startswith("lpc_")
    assert body["signing_key"]["algorithm"] == "ed25519"
    assert body["policy"] == {"policy_id": "default-observe", "level": "observe", "path_allow": [], "path_deny": [],
                              "version": 1}  # fmt: skip
    assert assert_error(again, 401, "unauthorized")["details"] == {"reason": "already_used"}
    async with running.client() as admin:
        listed = (await admin.get("/api/v1/tokens")).json()
        probe = (await admin.get(f"/api/v1/probes/{body['probe_id']}")).json()
    assert (listed["total"], listed["count"]) == (1, 0)
    assert token["token"] not in str(listed)
    assert (probe["hostname"], probe["tags"], probe["status"]) == ("web-1", ["prod", "web"], "pending")


async def test_only_admins_issue_remediate_tokens(running: Running) -> None:
    operator = await _key(running, "fleet:write")
    async with running.client(operator) as client:
        assert_error(await client.post("/api/v1/tokens", json={"policy_level": "remediate"}), 403, "forbidden")
    async with running.client() as admin:
        assert (await admin.post("/api/v1/tokens", json={"policy_level": "remediate"})).status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"hostname": "web-1"}, "token", id="no-token"),
        pytest.param({"token": "lrt_x"}, "hostname", id="no-hostname"),
        pytest.param({"token": "lrt_x", "hostname": "bad host!"}, "hostname", id="bad-hostname"),
        pytest.param({"token": "lrt_x", "hostname": "a" * 254}, "hostname", id="long-hostname"),
        pytest.param({"token": "lrt_x", "hostname": "web-1", "tags": ["white space"]}, "tags.0", id="bad-tag"),
        pytest.param({"token": "lrt_x", "hostname": "web-1", "tags": [f"t{n}" for n in range(33)]}, "tags",
                     id="too-many-tags"),
        pytest.param({"token": "x" * 300, "hostname": "web-1"}, "token", id="long-token"),
        pytest.param(["not", "an", "object"], "", id="not-an-object"),
    ],
)  # fmt: skip
async def test_malformed_registrations_get_422_naming_the_field(running: Running, body: object, field: str) -> None:
    async with running.client("") as anonymous:
        response = await anonymous.post("/api/v1/register", json=body)
    error = assert_error(response, 422, "invalid_request")
    fields = [f["field"] for f in error["details"]["fields"]]
    assert field in fields or (field == "" and fields)


async def test_bad_tokens_are_401_and_audited_without_the_token(running: Running) -> None:
    async with running.client("") as anonymous:
        response = await anonymous.post("/api/v1/register", json={"token": "lrt_" + "a" * 64, "hostname": "web-1"})
        broken = await anonymous.post(
            "/api/v1/register", content=b"{nope", headers={"content-type": "application/json"}
        )
    assert_error(response, 401, "unauthorized")
    assert_error(broken, 422, "invalid_request")
    events = (await running.app.services.audit.search(AuditQuery(type="auth.registration_denied"))).events
    assert len(events) == 1 and "a" * 64 not in events[0].model_dump_json()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param({"expires_in": "soon"}, 422, id="bad-duration"),
        pytest.param({"expires_in": "99999d"}, 422, id="too-long"),
        pytest.param({"policy_level": "root"}, 422, id="bad-level"),
        pytest.param({"tags": "prod"}, 422, id="tags-not-a-list"),
        pytest.param({"multi_use": "perhaps"}, 422, id="bad-bool"),
        pytest.param({"unknown": 1}, 422, id="unknown-field"),
    ],
)
async def test_malformed_token_requests_are_4xx(running: Running, body: dict[str, Any], status: int) -> None:
    async with running.client() as admin:
        assert_error(await admin.post("/api/v1/tokens", json=body), status, "invalid_request")


async def test_probes_are_listed_paged_filtered_tagged_and_deleted(running: Running) -> None:
    async with running.client() as admin:
        ids = [(await _register(running, f"web-{n}", tags=["web"]))["probe_id"] for n in range(3)]
        await _register(running, "db-1", tags=["db"])
        page = (await admin.get("/api/v1/probes", params={"limit": 2})).json()
        assert (len(page["probes"]), page["total"], page["has_more"]) == (2, 4, True)
        rest = (await admin.get("/api/v1/probes", params={"limit": 2, "cursor": page["next_cursor"]})).json()
        assert len(rest["probes"]) == 2 and rest["next_cursor"] is None
        web = (await admin.get("/api/v1/probes", params={"tag": "web", "status": "pending"})).json()
        assert web["total"] == 3
        assert_error(await admin.get("/api/v1/probes", params={"status": "sleeping"}), 422, "invalid_request")
        assert_error(await admin.get("/api/v1/probes", params={"limit": "0"}), 422, "invalid_request")
        assert_error(await admin.get("/api/v1/probes", params={"cursor": "zzz"}), 422, "invalid_request")

        tagged = await admin.put(f"/api/v1/probes/{ids[0]}/tags", json={"tags": ["Edge", "web"]})
        assert tagged.json() == {"probe_id": ids[0], "tags": ["edge", "web"]}
        assert_error(await admin.put(f"/api/v1/probes/{ids[0]}/tags", json={"tags": "edge"}), 422, "invalid_request")
        assert_error(await admin.put("/api/v1/probes/prb-00000000/tags", json={"tags": []}), 404, "not_found")
        assert (await admin.get("/api/v1/fleet/tags")).json() == {"tags": {"db": 1, "edge": 1, "web": 3}}
        by_tag = (await admin.get("/api/v1/fleet/by-tag/EDGE")).json()
        assert (by_tag["tag"], by_tag["total"], by_tag["probes"][0]["id"]) == ("edge", 1, ids[0])
        assert (await admin.get("/api/v1/fleet/by-tag/none")).json()["total"] == 0

        deleted = await admin.delete(f"/api/v1/probes/{ids[1]}")
        assert deleted.json() == {"deleted": ids[1], "disconnected": False}
        assert_error(await admin.get(f"/api/v1/probes/{ids[1]}"), 404, "not_found")
        assert_error(await admin.delete(f"/api/v1/probes/{ids[1]}"), 404, "not_found")


async def test_health_inventory_summary_rotation_and_cleanup(running: Running) -> None:
    fleet = running.app.services.fleet
    async with running.client() as admin:
        probe_id = (await _register(running, "web-1", tags=["web"]))["probe_id"]
        unknown = (await admin.get(f"/api/v1/probes/{probe_id}/health")).json()
        assert (unknown["score"], unknown["status"]) == (0, "unknown")
        await fleet.probe_connected(
            probe_id=probe_id, hello=HelloPayload(probe_id=probe_id, version="1", hostname="web-1")
        )
        await fleet.record_heartbeat(
            probe_id=probe_id,
            heartbeat=HeartbeatPayload(uptime_s=1, load=(0, 0, 0), mem_total_bytes=10, mem_used_bytes=1,
                                       disk_total_bytes=10, disk_used_bytes=9),
        )  # fmt: skip
        health = (await admin.get(f"/api/v1/probes/{probe_id}/health")).json()
        assert health["status"] == "degraded" and health["reasons"][0]["check"] == "disk"
        assert_error(await admin.get(f"/api/v1/probes/{probe_id}/inventory"), 404, "not_found")
        summary = (await admin.get("/api/v1/fleet/summary")).json()
        assert summary["by_status"]["degraded"] == 1 and summary["connected"] == [probe_id]
        inventory = (await admin.get("/api/v1/fleet/inventory", params={"tag": "web", "status": "degraded"})).json()
        assert inventory["aggregates"]["total_probes"] == 1
        assert_error(await admin.get("/api/v1/fleet/inventory", params={"limit": "x"}), 422, "invalid_request")

        rotated = (await admin.post(f"/api/v1/probes/{probe_id}/rotate-key")).json()
        assert (rotated["status"], rotated["probe_id"], rotated["generation"]) == ("rotated", probe_id, 2)
        assert_error(await admin.post("/api/v1/probes/prb-00000000/rotate-key"), 404, "not_found")

        assert (await admin.post("/api/v1/fleet/cleanup")).json() == {"removed": [], "count": 0}
        await fleet.probe_disconnected(probe_id=probe_id, reason="test")
        assert_error(await admin.post("/api/v1/fleet/cleanup", params={"older_than": "never"}), 422, "invalid_request")
        cleaned = (await admin.post("/api/v1/fleet/cleanup", params={"older_than": "1ms"})).json()
        assert cleaned == {"removed": [probe_id], "count": 1}


@pytest.mark.parametrize(
    ("method", "path", "permission"),
    [
        pytest.param("GET", "/api/v1/probes", "fleet:read", id="list"),
        pytest.param("GET", "/api/v1/fleet/summary", "fleet:read", id="summary"),
        pytest.param("POST", "/api/v1/tokens", "fleet:write", id="tokens"),
        pytest.param("POST", "/api/v1/fleet/cleanup", "fleet:write", id="cleanup"),
        pytest.param("PUT", "/api/v1/probes/prb-00000000/tags", "fleet:write", id="tags"),
        pytest.param("GET", "/api/v1/tokens", "admin", id="list-tokens"),
    ],
)
async def test_fleet_routes_check_their_permission(running: Running, method: str, path: str, permission: str) -> None:
    viewer = await _key(running, "audit:read")
    async with running.client(viewer) as client:
        error = assert_error(await client.request(method, path, json={"tags": []}), 403, "forbidden")
    assert error["details"] == {"required_permission": permission}
