"""Job tools and resources through the SDK client: annotations, create and run, follow a run (get, poll, output,
events), resources, and error codes.
"""

import json

import anyio
import pytest
from mcp import Client
from mcp.types import TextResourceContents
from tests.support.app import Running
from tests.support.mcp import tool_error_code

from legator_mcp.mcp.server import build_mcp_server
from legator_mcp.principal import Permission, Principal, PrincipalKind

pytestmark = pytest.mark.anyio

AGENT = Principal(
    PrincipalKind.API_KEY, "k-agent", "agent",
    frozenset({Permission.COMMAND_EXEC, Permission.FLEET_READ, Permission.FLEET_WRITE}),
)  # fmt: skip


async def test_an_agent_creates_runs_and_follows_a_job(running: Running) -> None:
    server, _ = build_mcp_server(running.app.services, local_principal=AGENT)
    with anyio.fail_after(10):
        await running.app.services.job_scheduler.leading.wait()
    async with Client(server) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        for name in ("legator_list_jobs", "legator_get_job_run", "legator_poll_job_active"):
            annotations = tools[name].annotations
            assert annotations is not None and annotations.read_only_hint, name
        run_hints = tools["legator_run_job"].annotations
        assert run_hints is not None and run_hints.destructive_hint
        assert tools["legator_get_job_run"].output_schema is not None

        created = await client.call_tool(
            "legator_create_job",
            {"name": "uptime", "command": {"kind": "shell", "spec": {"argv": ["uptime"]}},
             "target": {"kind": "probe", "value": "prb-nowhere"}, "schedule": "15m",
             "retry_policy": {"max_attempts": 1}},
        )  # fmt: skip
        assert not created.is_error, created.content
        assert created.structured_content is not None
        job = created.structured_content
        assert job["schedule_kind"] == "interval" and job["owner"] == "api_key:agent"

        ran = await client.call_tool("legator_run_job", {"job_id": job["id"]})
        assert ran.structured_content is not None
        run = ran.structured_content["runs"][0]
        polled = await client.call_tool("legator_poll_job_active", {"job_id": job["id"], "wait_ms": 15000})
        assert polled.structured_content is not None
        assert polled.structured_content["completed"] and polled.structured_content["active"] == 0
        got = await client.call_tool("legator_get_job_run", {"run_id": run["id"]})
        assert got.structured_content is not None
        assert got.structured_content["run"]["status"] == "failed" and got.structured_content["terminal"]
        output = await client.call_tool("legator_stream_job_run_output", {"run_id": run["id"], "wait_ms": 0})
        assert output.structured_content is not None
        assert output.structured_content["terminal"] and output.structured_content["chunks"] == []
        events = await client.call_tool("legator_stream_job_events", {"run_id": run["id"], "limit": 10})
        assert events.structured_content is not None
        types = [e["type"] for e in events.structured_content["events"]]
        assert types == ["job.run.queued", "job.run.failed"]
        since = events.structured_content["next_since"]
        quiet = await client.call_tool(
            "legator_stream_job_events", {"run_id": run["id"], "since": since, "wait_ms": 50}
        )
        assert quiet.structured_content is not None and quiet.structured_content["count"] == 0
        runs = await client.call_tool("legator_list_job_runs", {"job_id": job["id"], "status": "failed"})
        assert runs.structured_content is not None and runs.structured_content["count"] == 1

        retried = await client.call_tool("legator_retry_job_run", {"job_id": job["id"], "run_id": run["id"]})
        assert retried.structured_content is not None and retried.structured_content["run"]["attempt"] == 2
        done = await client.call_tool("legator_cancel_job_run", {"job_id": job["id"], "run_id": run["id"]})
        assert tool_error_code(done) == "invalid_transition"
        missing = await client.call_tool("legator_get_job_run", {"run_id": "nope"})
        assert tool_error_code(missing) == "not_found"

        listed = await client.read_resource("legator://jobs/list")
        content = listed.contents[0]
        assert isinstance(content, TextResourceContents)
        assert json.loads(content.text)["jobs"][0]["id"] == job["id"]
        active = await client.read_resource("legator://jobs/active-runs")
        assert isinstance(active.contents[0], TextResourceContents)
        assert "count" in json.loads(active.contents[0].text)
        one = await client.read_resource(f"legator://jobs/runs/{run['id']}")
        assert isinstance(one.contents[0], TextResourceContents)
        assert json.loads(one.contents[0].text)["run"]["id"] == run["id"]
