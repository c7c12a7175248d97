"""Operator commands over the REST API: ``legator keys|users|audit|approvals|me``."""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from legator_mcp.cli._common import CliError, print_output

__all__ = ["add_commands", "client_flags", "params", "request"]

DEFAULT_SERVER = "http://127.0.0.1:8080"


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=os.environ.get("LEGATOR_SERVER", DEFAULT_SERVER), help="control plane URL")
    parser.add_argument(
        "--api-key-file",
        type=Path,
        help="file holding the API key (default: LEGATOR_API_KEY, then ./legator-data/admin-api-key)",
    )
    parser.add_argument("--output", "-o", choices=["table", "json"], default="table")


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register the REST client commands."""
    me = sub.add_parser("me", help="show who the API key belongs to")
    _client_flags(me)
    me.set_defaults(handler=_me)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    k_list = keys.add_parser("list", help="list API keys")
    _client_flags(k_list)
    k_list.set_defaults(handler=_keys_list)
    k_create = keys.add_parser("create", help="create an API key (printed once)")
    _client_flags(k_create)
    k_create.add_argument("--name", required=True)
    k_create.add_argument("--permission", "-p", action="append", required=True, help="repeat for several")
    k_create.add_argument("--grant", action="append", default=[], help="tenant:<id>, org:<id> or scope:<id>")
    k_create.add_argument("--expires-in", help="lifetime such as 720h or 30d")
    k_create.set_defaults(handler=_keys_create)
    k_delete = keys.add_parser("delete", help="revoke an API key")
    _client_flags(k_delete)
    k_delete.add_argument("id")
    k_delete.set_defaults(handler=_keys_delete)

    users = sub.add_parser("users", help="manage users").add_subparsers(dest="users_command", required=True)
    u_list = users.add_parser("list", help="list users")
    _client_flags(u_list)
    u_list.set_defaults(handler=_users_list)
    u_create = users.add_parser("create", help="create a user (password read from LEGATOR_NEW_PASSWORD or stdin)")
    _client_flags(u_create)
    u_create.add_argument("--username", required=True)
    u_create.add_argument("--role", required=True, choices=["admin", "operator", "viewer", "custom"])
    u_create.add_argument("--display-name", default="")
    u_create.add_argument("--permission", "-p", action="append", default=[])
    u_create.set_defaults(handler=_users_create)
    u_delete = users.add_parser("delete", help="delete a user")
    _client_flags(u_delete)
    u_delete.add_argument("id")
    u_delete.set_defaults(handler=_users_delete)

    audit = sub.add_parser("audit", help="search, export and verify the audit log").add_subparsers(
        dest="audit_command", required=True
    )
    a_search = audit.add_parser("search", help="search audit events, newest first")
    _client_flags(a_search)
    for flag in ("--type", "--actor", "--probe-id", "--since", "--until", "--cursor"):
        a_search.add_argument(flag)
    a_search.add_argument("--limit", type=int, default=50)
    a_search.set_defaults(handler=_audit_search)
    a_export = audit.add_parser("export", help="export audit events as JSON lines or CSV to stdout")
    _client_flags(a_export)
    a_export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    for flag in ("--type", "--actor", "--probe-id", "--since", "--until"):
        a_export.add_argument(flag)
    a_export.set_defaults(handler=_audit_export)
    a_verify = audit.add_parser("verify", help="verify the hash chain; exit 1 when a link is broken")
    _client_flags(a_verify)
    a_verify.set_defaults(handler=_audit_verify)

    approvals = sub.add_parser("approvals", help="review and decide approval requests").add_subparsers(
        dest="approvals_command", required=True
    )
    ap_list = approvals.add_parser("list", help="list approval requests, newest first")
    _client_flags(ap_list)
    ap_list.add_argument("--status", choices=["pending", "approved", "denied", "expired", "consumed"])
    ap_list.add_argument("--probe-id")
    ap_list.add_argument("--limit", type=int, default=50)
    ap_list.add_argument("--cursor")
    ap_list.set_defaults(handler=_approvals_list)
    ap_show = approvals.add_parser("show", help="show what a request will run, where, why and the risk")
    _client_flags(ap_show)
    ap_show.add_argument("id")
    ap_show.set_defaults(handler=_approvals_show)
    for verb, decision in (("approve", "approved"), ("deny", "denied")):
        ap_decide = approvals.add_parser(verb, help=f"{verb} a request as the caller's identity")
        _client_flags(ap_decide)
        ap_decide.add_argument("id")
        ap_decide.add_argument("--reason", help="why, recorded in the audit log")
        ap_decide.set_defaults(handler=_approvals_decide, decision=decision)


def _api_key(args: argparse.Namespace) -> str:
    if args.api_key_file is not None:
        try:
            return args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"cannot read --api-key-file: {exc.strerror}", exit_code=2) from None
    key = os.environ.get("LEGATOR_API_KEY", "").strip()
    if key:
        return key
    default = Path(os.environ.get("LEGATOR_DATA_DIR", "./legator-data")) / "admin-api-key"
    if default.exists():
        return default.read_text(encoding="utf-8").strip()
    raise CliError("no API key: set LEGATOR_API_KEY or pass --api-key-file", exit_code=2)


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {_api_key(args)}"}
    try:
        response = httpx.request(method, args.server.rstrip("/") + path, headers=headers, timeout=60, **kwargs)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {args.server}: {exc}") from None
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {response.status_code}"
        raise CliError(message, exit_code=1)
    return response


def _params(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _me(args: argparse.Namespace) -> int:
    print_output(_request(args, "GET", "/api/v1/me").json(), args.output, ["id", "kind", "name", "permissions"])
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    keys = _request(args, "GET", "/api/v1/auth/keys").json()["keys"]
    print_output(keys, args.output, ["id", "name", "key_prefix", "permissions", "expires_at", "last_used_at"])
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "permissions": args.permission, "grants": args.grant}
    if args.expires_in:
        body["expires_in"] = args.expires_in
    created = _request(args, "POST", "/api/v1/auth/keys", json=body).json()
    if args.output == "json":
        print_output(created, "json")
    else:
        print(f"key id:  {created['key']['id']}\napi key: {created['plain_key']}\n{created['warning']}")
    return 0


def _keys_delete(args: argparse.Namespace) -> int:
    _request(args, "DELETE", f"/api/v1/auth/keys/{args.id}")
    print(f"deleted key {args.id}")
    return 0


def _users_list(args: argparse.Namespace) -> int:
    users = _request(args, "GET", "/api/v1/users").json()["users"]
    print_output(users, args.output, ["id", "username", "role", "enabled", "last_login_at"])
    return 0


def _users_create(args: argparse.Namespace) -> int:
    password = os.environ.get("LEGATOR_NEW_PASSWORD") or sys.stdin.readline().rstrip("\n")
    body = {
        "username": args.username, "password": password, "role": args.role,
        "display_name": args.display_name, "permissions": args.permission,
    }  # fmt: skip
    print_output(_request(args, "POST", "/api/v1/users", json=body).json(), args.output, ["id", "username", "role"])
    return 0


def _users_delete(args: argparse.Namespace) -> int:
    _request(args, "DELETE", f"/api/v1/users/{args.id}")
    print(f"deleted user {args.id}")
    return 0


def _audit_search(args: argparse.Namespace) -> int:
    params = _params(args, ["type", "actor", "probe_id", "since", "until", "cursor", "limit"])
    page = _request(args, "GET", "/api/v1/audit", params=params).json()
    print_output(page["events"] if args.output == "table" else page, args.output,
                 ["seq", "ts", "type", "actor", "probe_id", "summary"] if args.output == "table" else None)  # fmt: skip
    if args.output == "table" and page.get("next_cursor"):
        print(f"(more: --cursor {page['next_cursor']})")
    return 0


def _audit_export(args: argparse.Namespace) -> int:
    path = "/api/v1/audit/export" if args.format == "jsonl" else "/api/v1/audit/export/csv"
    response = _request(args, "GET", path, params=_params(args, ["type", "actor", "probe_id", "since", "until"]))
    sys.stdout.write(response.text)
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    result = _request(args, "GET", "/api/v1/audit/verify").json()
    if args.output == "json":
        print_output(result, "json")
    elif result["ok"]:
        print(f"audit chain OK: {result['checked']} events verified")
    else:
        broken = result["first_broken"]
        print(
            f"audit chain BROKEN at seq {broken['seq']} (event {broken['id']}): {broken['reason']}; "
            f"{result['checked']} events checked"
        )
    return 0 if result["ok"] else 1


_APPROVAL_COLUMNS = ["id", "status", "risk_level", "probe_ids", "requester", "reason", "expires_at"]


def _approvals_list(args: argparse.Namespace) -> int:
    page = _request(
        args, "GET", "/api/v1/approvals", params=_params(args, ["status", "probe_id", "limit", "cursor"])
    ).json()
    if args.output == "json":
        print_output(page, "json")
        return 0
    print_output(page["approvals"], "table", _APPROVAL_COLUMNS)
    print(f"({page['pending_count']} pending)")
    if page.get("next_cursor"):
        print(f"(more: --cursor {page['next_cursor']})")
    return 0


def _print_approval(approval: dict[str, Any]) -> None:
    print(f"approval {approval['id']}: {approval['status']}  (risk {approval['risk_level']})")
    print(f"requested by {approval['requester']} at {approval['created_at']}; expires {approval['expires_at']}")
    print(f"why:     {approval['reason']}")
    print(f"probes:  {', '.join(approval['probe_ids'])}")
    print(f"digest:  {approval['payload_sha256']}")
    print("command: " + json.dumps(approval["command"], indent=2, ensure_ascii=False).replace("\n", "\n         "))
    votes = approval["approvals"]
    print(f"votes ({len(votes)}/{approval['required_approvals']} approvals needed):")
    for vote in votes:
        print(f"  {vote['ts']}  {vote['approver']}  {vote['decision']}  {vote.get('reason') or ''}")


def _approvals_show(args: argparse.Namespace) -> int:
    approval = _request(args, "GET", f"/api/v1/approvals/{args.id}").json()
    if args.output == "json":
        print_output(approval, "json")
    else:
        _print_approval(approval)
    return 0


def _approvals_decide(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"decision": args.decision}
    if args.reason:
        body["reason"] = args.reason
    result = _request(args, "POST", f"/api/v1/approvals/{args.id}/decide", json=body).json()
    if args.output == "json":
        print_output(result, "json")
    else:
        request = result["request"]
        print(f"approval {request['id']}: {result['status']} (request is now {request['status']})")
    return 0


client_flags = _client_flags
"""Add ``--server``, ``--api-key-file`` and ``--output`` to a subcommand (shared by the other client modules)."""
request = _request
"""Call the REST API as the configured key; a 4xx/5xx answer becomes a :class:`CliError` with its code."""
params = _params
"""The named flags that were given, as query parameters."""
