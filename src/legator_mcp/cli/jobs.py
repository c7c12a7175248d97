"""``legator jobs …``: define, run and follow jobs over the REST API."""

import argparse
import json
from typing import Any

from legator_mcp.cli._client import client_flags, params, request
from legator_mcp.cli._common import CliError, print_output

__all__ = ["add_commands"]

_JOB_COLUMNS = ["id", "name", "schedule", "target", "enabled", "last_status", "next_run_at"]
_RUN_COLUMNS = ["id", "probe_id", "attempt", "status", "scheduled_for", "exit_code", "admission_decision", "error"]


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``legator jobs``."""
    jobs = sub.add_parser("jobs", help="scheduled and on-demand jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    listing = jobs.add_parser("list", help="list jobs")
    client_flags(listing)
    listing.set_defaults(handler=_list)

    for verb, helptext, handler in (
        ("show", "show one job", _show),
        ("run", "run a job now on every target", _run),
        ("enable", "enable a job's schedule", _enable),
        ("disable", "disable a job's schedule", _disable),
        ("delete", "delete a job and its run history", _delete),
    ):
        command = jobs.add_parser(verb, help=helptext)
        client_flags(command)
        command.add_argument("id")
        command.set_defaults(handler=handler)

    create = jobs.add_parser("create", help="create a job")
    client_flags(create)
    create.add_argument("--name", required=True)
    what = create.add_mutually_exclusive_group(required=True)
    what.add_argument("--command", help="a shell script")
    what.add_argument("--spec", help='a typed command as JSON, e.g. {"kind": "systemd", "spec": {…}}')
    create.add_argument("--target", required=True, help="probe:ID, tag:TAG, selector:k=v,k2=v2 or all")
    create.add_argument("--schedule", help="interval (30s, 5m, 1h30m) or cron in UTC ('*/5 * * * *')")
    create.add_argument("--timeout", type=float, help="seconds before the probe kills the command")
    create.add_argument("--max-attempts", type=int)
    create.add_argument("--initial-backoff", help="seconds or 5s/2m")
    create.add_argument("--multiplier", type=float)
    create.add_argument("--max-backoff", help="seconds or 5m")
    create.add_argument("--disabled", action="store_true", help="create it with its schedule off")
    create.set_defaults(handler=_create)

    runs = jobs.add_parser("runs", help="list runs (of one job, or of all)")
    client_flags(runs)
    runs.add_argument("id", nargs="?", help="only this job's runs")
    runs.add_argument("--probe-id")
    runs.add_argument("--status", choices=["queued", "pending", "running", "success", "failed", "canceled", "denied"])
    runs.add_argument("--started-after")
    runs.add_argument("--started-before")
    runs.add_argument("--limit", type=int, default=50)
    runs.add_argument("--cursor")
    runs.set_defaults(handler=_runs)

    cancel = jobs.add_parser("cancel", help="cancel one run, or every active run of a job")
    client_flags(cancel)
    cancel.add_argument("id")
    cancel.add_argument("--run", help="only this run")
    cancel.set_defaults(handler=_cancel)

    retry = jobs.add_parser("retry", help="retry a failed, canceled or denied run (a new attempt)")
    client_flags(retry)
    retry.add_argument("id")
    retry.add_argument("run")
    retry.set_defaults(handler=_retry)


def _target(text: str) -> dict[str, Any]:
    kind, _, value = text.partition(":")
    if kind == "all":
        return {"kind": "all"}
    if kind not in {"probe", "tag", "selector"} or not value:
        raise CliError("--target must be probe:ID, tag:TAG, selector:k=v,… or all", exit_code=2)
    return {"kind": kind, "value": value}


def _shown_job(job: dict[str, Any]) -> dict[str, Any]:
    target = job["target"]
    value = target.get("value")
    shown = target["kind"] if value is None else f"{target['kind']}:{value}"
    return {**job, "target": shown, "schedule": job.get("schedule") or "on demand"}


def _list(args: argparse.Namespace) -> int:
    body = request(args, "GET", "/api/v1/jobs").json()
    if args.output == "json":
        print_output(body, "json")
    else:
        print_output([_shown_job(job) for job in body["jobs"]], "table", _JOB_COLUMNS)
    return 0


def _show(args: argparse.Namespace) -> int:
    print_output(request(args, "GET", f"/api/v1/jobs/{args.id}").json(), "json")
    return 0


def _create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "target": _target(args.target), "enabled": not args.disabled}
    if args.command is not None:
        body["command"] = args.command
    else:
        try:
            body["command"] = json.loads(args.spec)
        except json.JSONDecodeError as exc:
            raise CliError(f"--spec is not JSON: {exc.msg}", exit_code=2) from None
    if args.schedule:
        body["schedule"] = args.schedule
    if args.timeout is not None:
        body["timeout_s"] = args.timeout
    retry = {
        key: value
        for key, value in (
            ("max_attempts", args.max_attempts), ("initial_backoff", args.initial_backoff),
            ("multiplier", args.multiplier), ("max_backoff", args.max_backoff),
        )
        if value is not None
    }  # fmt: skip
    if retry:
        body["retry_policy"] = retry
    job = request(args, "POST", "/api/v1/jobs", json=body).json()
    if args.output == "json":
        print_output(job, "json")
    else:
        print(f"job {job['id']} created; next run {job.get('next_run_at') or 'on demand'}")
    return 0


def _print_runs(args: argparse.Namespace, runs: list[dict[str, Any]], body: dict[str, Any]) -> None:
    if args.output == "json":
        print_output(body, "json")
    else:
        print_output(runs, "table", _RUN_COLUMNS)


def _run(args: argparse.Namespace) -> int:
    body = request(args, "POST", f"/api/v1/jobs/{args.id}/run").json()
    _print_runs(args, body["runs"], body)
    return 0


def _runs(args: argparse.Namespace) -> int:
    query = params(args, ["probe_id", "status", "started_after", "started_before", "limit", "cursor"])
    path = f"/api/v1/jobs/{args.id}/runs" if args.id else "/api/v1/jobs/runs"
    body = request(args, "GET", path, params=query).json()
    _print_runs(args, body["runs"], body)
    if args.output != "json" and body.get("next_cursor"):
        print(f"(more: --cursor {body['next_cursor']})")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    if args.run:
        body = request(args, "POST", f"/api/v1/jobs/{args.id}/runs/{args.run}/cancel").json()
        _print_runs(args, [body["run"]], body)
    else:
        body = request(args, "POST", f"/api/v1/jobs/{args.id}/cancel").json()
        print_output(body, "json")
    return 0


def _retry(args: argparse.Namespace) -> int:
    body = request(args, "POST", f"/api/v1/jobs/{args.id}/runs/{args.run}/retry").json()
    _print_runs(args, [body["run"]], body)
    return 0


def _enable(args: argparse.Namespace) -> int:
    job = request(args, "POST", f"/api/v1/jobs/{args.id}/enable").json()
    print_output(_shown_job(job), args.output, _JOB_COLUMNS)
    return 0


def _disable(args: argparse.Namespace) -> int:
    job = request(args, "POST", f"/api/v1/jobs/{args.id}/disable").json()
    print_output(_shown_job(job), args.output, _JOB_COLUMNS)
    return 0


def _delete(args: argparse.Namespace) -> int:
    request(args, "DELETE", f"/api/v1/jobs/{args.id}")
    print(f"job {args.id} deleted")
    return 0
