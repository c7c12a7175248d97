"""Policy tools: list templates, dry-run the policy gate, and apply a template to a probe."""

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import Field, ValidationError

from legator_mcp.errors import InvalidRequest
from legator_mcp.flows.run_command import CommandRequest
from legator_mcp.mcp._context import McpContext
from legator_mcp.mcp._errors import caller
from legator_mcp.mcp._registry import McpRegistry
from legator_mcp.policy.schemas import PolicyApplied, PolicyDecision, PolicyEvaluate, PolicyTemplateList
from legator_mcp.principal import Permission

__all__ = ["register"]

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
# Applying a template can raise a probe to remediate and changes what every later command may do there.
APPLIES = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True)

ProbeId = Annotated[str, Field(min_length=1, max_length=64, description="The probe's id, e.g. prb-1a2b3c4d")]


def register(registry: McpRegistry) -> None:
    """Add the policy tools."""

    @registry.tool("legator_list_policies", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def list_policies(ctx: Context[McpContext]) -> PolicyTemplateList:
        """List policy templates: built-ins (observe-only, diagnose, full-remediate) and custom ones.

        Each has a level, allow/block command patterns, path rules and pre-approved patterns (high-risk commands
        matching them skip the approval queue; critical ones never do).
        """
        return await ctx.request_context.lifespan_context.services.policy.list_templates()

    @registry.tool("legator_evaluate_policy", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def evaluate_policy(
        ctx: Context[McpContext],
        probe_id: ProbeId,
        command: Annotated[
            str | None, Field(min_length=1, max_length=4096, description="A program to run, e.g. systemctl")
        ] = None,
        args: Annotated[list[str] | None, Field(max_length=256, description="Its arguments")] = None,
        kind: Annotated[
            str | None,
            Field(
                max_length=32, description="Instead of command: shell, file_read, file_write, process, systemd, kubectl"
            ),
        ] = None,
        spec: Annotated[dict[str, Any] | None, Field(description="The typed parameters for kind")] = None,
    ) -> PolicyDecision:
        """Answer "what would happen if I ran this on that probe?" without running anything.

        Give either command (+ args), or kind + spec. Returns allow, queue (a human must approve) or deny, with
        the risk, the indicators and the rule that decided. Use it before proposing a change.
        """
        try:
            request = PolicyEvaluate(probe_id=probe_id, command=command, args=args or [], kind=kind, spec=spec)
        except ValidationError as exc:
            raise InvalidRequest(str(exc.errors()[0]["msg"])[:300], details={"field": "command"}) from None
        request_kind, request_spec = request.as_command()
        return await ctx.request_context.lifespan_context.services.command_flow.evaluate(
            actor=caller(ctx), probe_id=probe_id, request=CommandRequest(kind=request_kind, spec=request_spec)
        )

    @registry.tool("legator_apply_policy", permission=Permission.FLEET_WRITE, annotations=APPLIES)
    async def apply_policy(
        ctx: Context[McpContext],
        probe_id: ProbeId,
        policy_id: Annotated[str, Field(min_length=1, max_length=64, description="A template id")],
    ) -> PolicyApplied:
        """Apply a policy template to a probe: its level and rules change and the probe is sent them, signed.

        Only on a human's explicit instruction. status is "applied_locally" when the probe is offline; it gets
        the policy when it reconnects.
        """
        services = ctx.request_context.lifespan_context.services
        return await services.policy.apply(actor=caller(ctx), probe_id=probe_id, policy_id=policy_id)
