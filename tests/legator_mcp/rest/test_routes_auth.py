"""REST identity routes: keys and users, credentials, the error shape and the body limit."""

import os
import stat

import pytest
from tests.support.app import Running

from legator_mcp.audit.schemas import AuditQuery
from legator_mcp.auth.service import ADMIN_KEY_FILE

pytestmark = pytest.mark.anyio


def assert_error(body: object, code: str) -> None:
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


async def test_first_start_writes_the_admin_key_to_a_private_file(running: Running) -> None:
    path = running.app.settings.data_dir / ADMIN_KEY_FILE
    assert path.read_text(encoding="utf-8").strip() == running.admin_key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert running.admin_key.startswith("lgk_") and len(running.admin_key) == 68


async def test_me_describes_the_calling_key(running: Running) -> None:
    async with running.client() as client:
        response = await client.get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["name"] == "bootstrap-admin"
    assert response.json()["permissions"] == ["admin"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-credential"),
        pytest.param({"Authorization": "Bearer lgk_" + "0" * 64}, id="unknown-key"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="wrong-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
        pytest.param({"Authorization": "Bearer not-a-legator-key"}, id="not-a-key"),
    ],
)
async def test_requests_without_a_valid_key_get_401_in_the_error_shape(
    running: Running, headers: dict[str, str]
) -> None:
    async with running.client("") as client:
        response = await client.get("/api/v1/me", headers=headers)
    assert response.status_code == 401
    assert_error(response.json(), "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_created_key_works_once_shown_and_is_stored_hashed(running: Running) -> None:
    async with running.client() as client:
        created = await client.post("/api/v1/auth/keys", json={"name": "reader", "permissions": ["fleet:read"]})
        assert created.status_code == 201
        plain = created.json()["plain_key"]
        listed = (await client.get("/api/v1/auth/keys")).json()
    assert all("plain_key" not in key and plain not in str(key) for key in listed["keys"])
    async with running.client(plain) as reader:
        assert (await reader.get("/api/v1/me")).json()["permissions"] == ["fleet:read"]
        forbidden = await reader.get("/api/v1/auth/keys")
    assert forbidden.status_code == 403
    assert_error(forbidden.json(), "forbidden")
    assert forbidden.json()["error"]["details"] == {"required_permission": "admin"}


async def test_a_deleted_key_stops_working(running: Running) -> None:
    async with running.client() as client:
        created = (await client.post("/api/v1/auth/keys", json={"name": "tmp", "permissions": ["fleet:read"]})).json()
        assert (await client.delete(f"/api/v1/auth/keys/{created['key']['id']}")).status_code == 204
        again = await client.delete(f"/api/v1/auth/keys/{created['key']['id']}")
    assert again.status_code == 404
    assert_error(again.json(), "not_found")
    async with running.client(created["plain_key"]) as gone:
        assert (await gone.get("/api/v1/me")).status_code == 401


async def test_an_expired_key_is_refused(running: Running) -> None:
    async with running.client() as client:
        created = (
            await client.post(
                "/api/v1/auth/keys", json={"name": "short", "permissions": ["admin"], "expires_in": "1ms"}
            )
        ).json()
    async with running.client(created["plain_key"]) as expired:
        response = await expired.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["error"]["details"] == {"reason": "expired"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"permissions": ["admin"]}, "name", id="missing-name"),
        pytest.param({"name": "x", "permissions": []}, "permissions", id="no-permissions"),
        pytest.param({"name": "x", "permissions": ["root"]}, "permissions.0", id="unknown-permission"),
        pytest.param({"name": "x", "permissions": ["admin"], "grants": ["team:1"]}, "grants", id="bad-grant"),
        pytest.param({"name": "x", "permissions": ["admin"], "expires_in": "soon"}, "expires_in", id="bad-duration"),
        pytest.param({"name": "x", "permissions": ["admin"], "extra": 1}, "extra", id="unknown-field"),
        pytest.param([1, 2], "", id="not-an-object"),
    ],
)
async def test_invalid_key_requests_get_422_naming_the_field(running: Running, body: object, field: str) -> None:
    async with running.client() as client:
        response = await client.post("/api/v1/auth/keys", json=body)
    assert response.status_code == 422
    assert_error(response.json(), "invalid_request")
    fields = [f["field"] for f in response.json()["error"]["details"]["fields"]]
    assert field in fields or (field == "" and fields)


async def test_malformed_json_gets_a_clear_error_not_a_500(running: Running) -> None:
    async with running.client() as client:
        response = await client.post(
            "/api/v1/auth/keys", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    assert response.json()["error"]["details"] == {"reason": "invalid_json"}


async def test_bodies_over_the_limit_get_413(running: Running) -> None:
    limit = running.app.settings.max_body_bytes
    async with running.client() as client:
        response = await client.post("/api/v1/users", content=b"x" * (limit + 1))
        streamed = await client.post("/api/v1/users", content=_chunks(limit + 10))
    assert response.status_code == 413
    assert_error(response.json(), "request_too_large")
    assert streamed.status_code == 413


async def _chunks(total: int):  # type: ignore[no-untyped-def]  # an async generator of request body chunks
    sent = 0
    while sent < total:
        yield b"y" * 65536
        sent += 65536


async def test_users_are_created_listed_and_deleted_without_exposing_passwords(running: Running) -> None:
    async with running.client() as client:
        created = await client.post(
            "/api/v1/users", json={"username": "alice", "password": "correct horse battery", "role": "operator"}
        )
        assert created.status_code == 201
        user = created.json()
        assert "password" not in str(user) and "argon2" not in str(user)
        assert "command:exec" in user["permissions"]
        duplicate = await client.post(
            "/api/v1/users", json={"username": "alice", "password": "another long password", "role": "viewer"}
        )
        assert duplicate.status_code == 409
        assert_error(duplicate.json(), "conflict")
        assert [u["username"] for u in (await client.get("/api/v1/users")).json()["users"]] == ["alice"]
        assert (await client.delete(f"/api/v1/users/{user['id']}")).status_code == 204


async def test_short_passwords_are_rejected(running: Running) -> None:
    async with running.client() as client:
        response = await client.post("/api/v1/users", json={"username": "bob", "password": "short", "role": "viewer"})
    assert response.status_code == 422


async def test_unknown_paths_and_methods_use_the_error_shape(running: Running) -> None:
    async with running.client() as client:
        missing = await client.get("/api/v1/nope")
        wrong_method = await client.put("/api/v1/me")
    assert missing.status_code == 404
    assert_error(missing.json(), "not_found")
    assert wrong_method.status_code == 405
    assert_error(wrong_method.json(), "method_not_allowed")


async def test_responses_carry_security_headers_and_a_request_id(running: Running) -> None:
    async with running.client() as client:
        response = await client.get("/api/v1/me", headers={"X-Request-ID": "trace-123"})
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"] == "trace-123"


async def test_denied_requests_are_audited(running: Running) -> None:
    async with running.client("") as anonymous:
        await anonymous.get("/api/v1/auth/keys")
    page = await running.app.services.audit.search(AuditQuery(type="auth.authorization_denied"))
    assert page.events and page.events[0].detail is not None
    assert page.events[0].detail["reason"] == "unauthenticated"
