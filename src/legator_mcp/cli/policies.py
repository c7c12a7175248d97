"""``legator policies …``: list, create, change and delete policy templates, apply one, dry-run the gate (REST)."""

import argparse
import json
from typing import Any

from legator_mcp.cli._client import client_flags, request
from legator_mcp.cli._common import CliError, print_output

__all__ = ["add_commands"]

_LEVELS = ["observe", "diagnose", "remediate"]
_COLUMNS = ["id", "name", "level", "builtin", "version", "block_patterns", "allow_patterns"]
_LISTS = {
    "allow": "allow_patterns",
    "block": "block_patterns",
    "path-allow": "path_allow",
    "path-deny": "path_deny",
    "preapprove": "preapproved_patterns",
}
"""Repeatable flags naming a template's pattern and path lists, and the field each fills."""


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``legator policies``."""
    policies = sub.add_parser("policies", help="policy templates: what probes may run").add_subparsers(
        dest="policies_command", required=True
    )
    listing = policies.add_parser("list", help="list templates, built-ins first")
    client_flags(listing)
    listing.set_defaults(handler=_list)

    for verb, text, handler in (("show", "show one template", _show), ("delete", "delete a custom template", _delete)):
        command = policies.add_parser(verb, help=text)
        client_flags(command)
        command.add_argument("id")
        command.set_defaults(handler=handler)

    create = policies.add_parser("create", help="create a custom template")
    client_flags(create)
    create.add_argument("--name", required=True)
    create.add_argument("--description")
    create.add_argument("--level", choices=_LEVELS, default="observe")
    _list_flags(create)
    create.set_defaults(handler=_create)

    update = policies.add_parser(
        "update", help="change a custom template: given fields replace the current ones, the rest are kept"
    )
    client_flags(update)
    update.add_argument("id")
    update.add_argument("--name")
    update.add_argument("--description")
    update.add_argument("--level", choices=_LEVELS)
    _list_flags(update)
    update.add_argument(
        "--clear", action="append", choices=sorted(_LISTS), default=[], help="empty that list (repeatable)"
    )
    update.set_defaults(handler=_update)

    apply = policies.add_parser("apply", help="apply a template to a probe (pushed to it, signed)")
    client_flags(apply)
    apply.add_argument("probe_id")
    apply.add_argument("policy_id")
    apply.set_defaults(handler=_apply)

    evaluate = policies.add_parser("evaluate", help="what would happen if a command ran on a probe (nothing runs)")
    client_flags(evaluate)
    evaluate.add_argument("probe_id")
    form = evaluate.add_mutually_exclusive_group()
    form.add_argument("--script", help="a shell script, e.g. 'systemctl restart nginx && journalctl -n 5'")
    form.add_argument("--kind", choices=["shell", "file_read", "file_write", "process", "systemd", "kubectl"])
    evaluate.add_argument("--spec", help="with --kind: its parameters as JSON")
    evaluate.add_argument("argv", nargs="*", help="or a program and its arguments (after --)")
    evaluate.set_defaults(handler=_evaluate)


def _list_flags(parser: argparse.ArgumentParser) -> None:
    for flag, field in _LISTS.items():
        parser.add_argument(f"--{flag}", dest=field, action="append", metavar="PATTERN", help="repeatable")


def _list(args: argparse.Namespace) -> int:
    body = request(args, "GET", "/api/v1/policies").json()
    print_output(body if args.output == "json" else body["templates"], args.output, _COLUMNS)
    return 0


def _print_template(template: dict[str, Any]) -> None:
    kind = "built-in" if template["builtin"] else f"custom, version {template['version']}"
    print(f"policy {template['id']}: {template['name']} ({kind})")
    print(f"level:   {template['level']}")
    if template["description"]:
        print(f"about:   {template['description']}")
    for label, field in (("allow", "allow_patterns"), ("block", "block_patterns"), ("paths", "path_allow"),
                         ("deny", "path_deny"), ("preapproved", "preapproved_patterns")):  # fmt: skip
        if template[field]:
            print(f"{label + ':':<9}{', '.join(template[field])}")


def _show(args: argparse.Namespace) -> int:
    template = request(args, "GET", f"/api/v1/policies/{args.id}").json()
    if args.output == "json":
        print_output(template, "json")
    else:
        _print_template(template)
    return 0


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    given = {"name": args.name, "description": args.description, "level": args.level}
    given |= {field: getattr(args, field) for field in _LISTS.values()}
    return {key: value for key, value in given.items() if value is not None}


def _done(args: argparse.Namespace, template: dict[str, Any], verb: str) -> int:
    if args.output == "json":
        print_output(template, "json")
    else:
        print(f"policy {template['id']} ({template['name']}) {verb}, version {template['version']}")
    return 0


def _create(args: argparse.Namespace) -> int:
    template = request(args, "POST", "/api/v1/policies", json=_fields(args)).json()
    return _done(args, template, "created")


def _update(args: argparse.Namespace) -> int:
    changes = _fields(args)
    if not changes and not args.clear:
        raise CliError("nothing to change: give --name, --level, a pattern flag or --clear", exit_code=2)
    current = request(args, "GET", f"/api/v1/policies/{args.id}").json()
    if current["builtin"]:
        raise CliError(f"{args.id} is a built-in template and cannot be changed; create a custom one", exit_code=2)
    body = {key: current[key] for key in ("name", "description", "level", *_LISTS.values())}
    body |= {_LISTS[flag]: [] for flag in args.clear} | changes
    template = request(args, "PUT", f"/api/v1/policies/{args.id}", json=body).json()
    return _done(args, template, "updated")


def _delete(args: argparse.Namespace) -> int:
    request(args, "DELETE", f"/api/v1/policies/{args.id}")
    print(f"policy {args.id} deleted")
    return 0


def _apply(args: argparse.Namespace) -> int:
    applied = request(args, "POST", f"/api/v1/probes/{args.probe_id}/apply-policy/{args.policy_id}").json()
    if args.output == "json":
        print_output(applied, "json")
    else:
        status = applied["status"].replace("_", " ")
        note = f"; {applied['note']}" if applied["note"] else ""
        print(
            f"policy {applied['policy_id']} ({applied['level']}) {status} on {applied['probe_id']}, "
            f"version {applied['version']}{note}"
        )
    return 0


def _evaluate_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.kind is not None:
        if args.spec is None or args.argv:
            raise CliError("--kind needs --spec (JSON) and no program arguments", exit_code=2)
        try:
            spec = json.loads(args.spec)
        except json.JSONDecodeError as exc:
            raise CliError(f"--spec is not JSON: {exc.msg}", exit_code=2) from None
        if not isinstance(spec, dict):
            raise CliError("--spec must be a JSON object", exit_code=2)
        return {"probe_id": args.probe_id, "kind": args.kind, "spec": spec}
    if args.spec is not None:
        raise CliError("--spec goes with --kind", exit_code=2)
    if args.script is not None:
        if args.argv:
            raise CliError("give --script or a program with its arguments, not both", exit_code=2)
        return {"probe_id": args.probe_id, "command": args.script}
    if not args.argv:
        raise CliError("give --script, --kind with --spec, or a program and its arguments", exit_code=2)
    return {"probe_id": args.probe_id, "command": args.argv[0], "args": args.argv[1:]}


def _evaluate(args: argparse.Namespace) -> int:
    decision = request(args, "POST", "/api/v1/policies/evaluate", json=_evaluate_body(args)).json()
    if args.output == "json":
        print_output(decision, "json")
        return 0
    print(f"{decision['decision'].upper()}  (risk {decision['risk']}, needs {decision['required_level']}, "
          f"probe at {decision['probe_level']}, rule {decision['rule']}, policy {decision['policy_id']})")  # fmt: skip
    for line in decision["rationale"]:
        print(f"  - {line}")
    return 0
