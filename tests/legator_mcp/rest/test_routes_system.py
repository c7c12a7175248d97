"""System routes: health, readiness, version, metrics and the OpenAPI document."""

import pytest
from tests.support.app import Running

from legator_mcp.db.session import Database

pytestmark = pytest.mark.anyio


async def test_health_readiness_and_version_need_no_credentials(running: Running) -> None:
    async with running.client("") as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        version = await client.get("/version")
    assert (health.status_code, health.text) == (200, "ok\n")
    assert ready.json() == {"status": "ready", "database": "sqlite"}
    assert version.json()["version"] == running.app.services.version


async def test_readiness_fails_with_503_when_the_database_does_not_answer(running: Running) -> None:
    working = running.app.services.database
    running.app.services.database = Database("postgresql+asyncpg://nobody@127.0.0.1:1/none")  # closed port
    try:
        async with running.client("") as client:
            ready = await client.get("/readyz")
    finally:
        await running.app.services.database.dispose()
        running.app.services.database = working
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "service_unavailable"


async def test_metrics_count_requests_by_route_and_need_fleet_read(running: Running) -> None:
    async with running.client() as client:
        await client.get("/api/v1/me")
        metrics = await client.get("/metrics")
    async with running.client("") as anonymous:
        refused = await anonymous.get("/metrics")
    assert metrics.status_code == 200
    assert 'legator_http_requests_total{method="GET",route="/api/v1/me",status="200"}' in metrics.text
    assert refused.status_code == 401


async def test_openapi_describes_every_route_with_its_permission(running: Running) -> None:
    async with running.client("") as client:
        document = (await client.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    for spec in running.app.route_table.specs:
        operation = document["paths"][spec.path][spec.method.lower()]
        assert operation["x-required-permission"] == (spec.permission.value if spec.permission else None)
        if not spec.public:
            assert "401" in operation["responses"]
    schemas = document["components"]["schemas"]
    assert {"ApiKeyCreate", "AuditPage", "Error"} <= set(schemas)
