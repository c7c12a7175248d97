#!/usr/bin/env python
"""Job scheduler throughput: how many of N due job runs are sent to their probes within 2 s of their due time.

The control plane's real services run in this process (database, fleet, policy, command flow, hub, job service,
job scheduler with its leader lock). N probes are registered through the fleet service and "connected" as
in-process sessions attached to the real hub: a session records the moment the hub hands it the **signed**
``command`` envelope (what a WebSocket session would write to its socket), then answers with a
``command_result`` through the hub like a probe would, so every run also goes on to ``success``.

Each run's latency is (moment its signed command reached the session) − (its due time). Two shapes:

* ``--shape fanout`` (default): one job targeting a tag carried by all N probes, due at one instant;
* ``--shape jobs``: N jobs, one probe each, all due at the same instant (N fires to record).

Run with the project venv, e.g. ``.venv/bin/python bench/scheduler_throughput.py --probes 1000``
(``--database-url postgresql+asyncpg://…`` for PostgreSQL). Not a test: it asserts nothing; it prints a table
and optionally writes JSON. Every wait is bounded.
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import update

from legator_mcp.app import build_services, start_services
from legator_mcp.fleet.schemas import RegistrationRequest, TokenCreate
from legator_mcp.flows.job_scheduler import JobScheduler
from legator_mcp.gateway.hub import Hub
from legator_mcp.jobs.leader import SchedulerLock
from legator_mcp.jobs.models import Job
from legator_mcp.jobs.schemas import JobCreate, JobRead, JobRunQuery, JobRunRead
from legator_mcp.principal import Principal
from legator_mcp.settings import Settings
from legator_probe.protocol import CommandResultPayload

ADMIN = Principal.system("bench")


class SimSession:
    """Stands where a WebSocket session would: receives signed envelopes from the hub, answers results."""

    def __init__(
        self, probe_id: str, hub: Hub, arrivals: dict[str, float], answer: bool, all_sent: tuple[anyio.Event, int]
    ) -> None:
        self.probe_id = probe_id
        self._all_sent = all_sent
        self.done = anyio.Event()
        self._hub = hub
        self._arrivals = arrivals
        self._answer = answer
        self._replies: set[asyncio.Task[None]] = set()
        """Reply tasks in flight, referenced until done (the event loop keeps only weak references)."""

    async def send_signed(self, signed: Any) -> None:
        payload = signed.payload if hasattr(signed, "payload") else None
        request_id = getattr(payload, "request_id", None)
        if request_id is None:  # policy pushes etc.
            return
        signed.model_dump_json()  # what the session's protocol does before the frame goes out
        self._arrivals[request_id] = time.time()
        event, expected = self._all_sent
        if len(self._arrivals) >= expected:
            event.set()
        if self._answer:
            result = CommandResultPayload(request_id=request_id, status="ok", exit_code=0, stdout="ok\n")
            reply = asyncio.get_running_loop().create_task(self._hub.on_result(self.probe_id, result))
            self._replies.add(reply)
            reply.add_done_callback(self._replies.discard)

    async def close(self, *, code: int = 1000, reason: str = "") -> None:
        self.done.set()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="legator-sched-bench-"))
    settings = Settings(_env_file=None, data_dir=work, database_url=args.database_url, log_format="text")  # pyright: ignore[reportCallIssue]
    services = build_services(settings)
    await start_services(services)
    token = await services.fleet.create_token(
        actor=ADMIN, request=TokenCreate(multi_use=True, tags=["bench"], policy_level="observe")
    )
    started = time.perf_counter()
    probe_ids: list[str] = []
    for index in range(args.probes):
        registered = await services.fleet.register(
            request=RegistrationRequest(token=token.token, hostname=f"sim-{index:05d}")
        )
        probe_ids.append(registered.probe_id)
    register_s = time.perf_counter() - started
    arrivals: dict[str, float] = {}
    all_sent: tuple[anyio.Event, int] = (anyio.Event(), args.probes)
    for probe_id in probe_ids:
        session = SimSession(probe_id, services.hub, arrivals, answer=not args.no_answer, all_sent=all_sent)
        await services.hub.attach(session)  # pyright: ignore[reportArgumentType]

    lead = timedelta(seconds=args.lead)
    if args.shape == "fanout":
        jobs = [
            await services.jobs.create_job(
                actor=ADMIN,
                job=JobCreate.model_validate(
                    {"name": "bench", "command": "true", "schedule": "1h",
                     "target": {"kind": "tag", "value": "bench"}}
                ),
            )
        ]  # fmt: skip
    else:
        jobs: list[JobRead] = []
        for probe_id in probe_ids:
            jobs.append(
                await services.jobs.create_job(
                    actor=ADMIN,
                    job=JobCreate.model_validate(
                        {"name": f"bench-{probe_id}", "command": "true", "schedule": "1h",
                         "target": {"kind": "probe", "value": probe_id}}
                    ),
                )
            )  # fmt: skip
    # Every job due at one instant (as if they shared a cron minute), once: the next fire is an hour later.
    due_at = datetime.now(UTC) + lead
    async with services.database.write() as session:  # a bench-only shortcut: line the jobs up on one due time
        await session.execute(update(Job).values(next_run_at=due_at))
    setup_s = time.perf_counter() - started

    scheduler = JobScheduler(
        jobs=services.jobs,
        flow=services.job_flow,
        events=services.events,
        lock=SchedulerLock(services.database),
        max_concurrency=args.concurrency,
    )
    runs: list[JobRunRead] = []
    settled_s = 0.0
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.run)
        with anyio.fail_after(60):
            await scheduler.leading.wait()
        with anyio.fail_after(args.lead + args.timeout):
            await all_sent[0].wait()
        sent_at = time.perf_counter()
        with anyio.fail_after(args.timeout):
            while await services.jobs.active_runs(limit=1):
                await services.jobs.event_log.wait(1.0)
        settled_s = time.perf_counter() - sent_at
        cursor: str | None = None
        while True:
            page = await services.jobs.list_runs(JobRunQuery(limit=500, cursor=cursor))
            runs.extend(page.runs)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        group.cancel_scope.cancel()
    latencies = sorted(arrivals[r.request_id] - r.scheduled_for.timestamp() for r in runs if r.request_id in arrivals)
    statuses: dict[str, int] = {}
    for run in runs:
        statuses[run.status.value] = statuses.get(run.status.value, 0) + 1
    within = sum(1 for value in latencies if value <= 2.0)
    result = {
        "shape": args.shape,
        "concurrency": args.concurrency,
        "probes": args.probes,
        "database": services.database.dialect,
        "runs": len(runs),
        "statuses": statuses,
        "sent": len(latencies),
        "sent_within_2s": within,
        "latency_s": {
            "min": round(latencies[0], 3),
            "p50": round(statistics.median(latencies), 3),
            "p95": round(latencies[int(len(latencies) * 0.95) - 1], 3),
            "max": round(latencies[-1], 3),
        }
        if latencies
        else None,
        "all_final_after_last_send_s": round(settled_s, 1),
        "register_s": round(register_s, 1),
        "setup_s": round(setup_s, 1),
    }
    await services.database.dispose()
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--shape", choices=["fanout", "jobs"], default="fanout")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--lead", type=float, default=5.0, help="seconds from setup to the due time")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on each wait (seconds)")
    parser.add_argument("--concurrency", type=int, default=64, help="sends in flight at once (the default's)")
    parser.add_argument("--no-answer", action="store_true", help="simulated probes do not answer")
    parser.add_argument("--json", type=Path, help="also write the result here")
    return parser


if __name__ == "__main__":
    arguments = _parser().parse_args()
    outcome = anyio.run(main, arguments)
    text = json.dumps(outcome, indent=2)
    if arguments.json:
        arguments.json.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
