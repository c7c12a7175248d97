"""Run commands on probes, fetch and stream their results."""

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from legator_mcp.commands.schemas import CommandRunRead, CommandStatus, PendingCommands
from legator_mcp.flows.run_command import CommandRequest
from legator_mcp.principal import Permission
from legator_mcp.rest._errors import error_response
from legator_mcp.rest._routing import RouteContext, RouteTable, parse_body, parse_query

__all__ = ["CommandBody", "register"]


class CommandBody(BaseModel):
    """A command: typed (``kind`` + ``spec``), or the compatible shell form (``command`` + ``args``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["shell", "file_read", "file_write", "process", "systemd", "kubectl"] | None = None
    spec: dict[str, Any] | None = None
    command: str | None = Field(
        default=None, min_length=1, max_length=65536, description="Shell form: a program or script"
    )
    args: list[str] | None = Field(
        default=None, description="Shell form: arguments (then command is run without a shell)"
    )
    timeout_s: float = Field(default=30, gt=0, le=3600)
    request_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    stream: bool = True

    @model_validator(mode="after")
    def _one_form(self) -> "CommandBody":
        if (self.kind is None) == (self.command is None):
            raise ValueError("give either kind and spec, or command (and optional args)")
        if self.kind is not None and self.spec is None:
            raise ValueError("spec is required with kind")
        return self

    def to_request(self) -> CommandRequest:
        """The flow's request for this body."""
        if self.command is not None:
            spec: dict[str, Any] = (
                {"argv": [self.command, *self.args]} if self.args is not None else {"script": self.command}
            )
            return CommandRequest(
                kind="shell", spec=spec, timeout_s=self.timeout_s, request_id=self.request_id, stream=self.stream
            )
        assert self.kind is not None and self.spec is not None
        return CommandRequest(
            kind=self.kind, spec=self.spec, timeout_s=self.timeout_s, request_id=self.request_id, stream=self.stream
        )


class WaitQuery(BaseModel):
    """``wait=true`` returns the result; otherwise the handle comes back at once (202)."""

    model_config = ConfigDict(extra="forbid")

    wait: bool = False


def _decision_header(run: CommandRunRead) -> dict[str, str]:
    return {"X-Legator-Policy-Decision": run.decision}


def register(table: RouteTable) -> None:
    """Add the command routes."""

    @table.route("POST", "/api/v1/probes/{id}/command", permission=Permission.COMMAND_EXEC,
                 summary="Run a command on a probe (policy first)", body=CommandBody, query=WaitQuery,
                 response=CommandRunRead, tag="commands")  # fmt: skip
    async def run_command(request: Request, ctx: RouteContext) -> Response:
        query = parse_query(request, WaitQuery)
        body = await parse_body(request, CommandBody)
        run = await ctx.services.command_flow.run(
            actor=ctx.principal, probe_id=request.path_params["id"], request=body.to_request(), wait=query.wait
        )
        if run.status is CommandStatus.DENIED:
            return error_response(
                403, "policy_denied", "; ".join(run.rationale.get("rationale", [])) or "denied by policy",
                details={"request_id": run.request_id, "risk": run.risk, "required_level": run.required_level,
                         "policy": run.rationale},
                headers=_decision_header(run),
            )  # fmt: skip
        status = 200 if run.finished else 202
        return JSONResponse(run.model_dump(mode="json"), status_code=status, headers=_decision_header(run))

    @table.route("GET", "/api/v1/commands/pending", permission=Permission.COMMAND_EXEC,
                 summary="Commands awaiting their result", response=PendingCommands, tag="commands")  # fmt: skip
    async def pending(request: Request, ctx: RouteContext) -> PendingCommands:
        return PendingCommands(pending=await ctx.services.commands.pending(), in_flight=ctx.services.hub.in_flight)

    @table.route("GET", "/api/v1/commands/{requestId}", permission=Permission.COMMAND_EXEC,
                 summary="A command's status and result", response=CommandRunRead, tag="commands")  # fmt: skip
    async def get_command(request: Request, ctx: RouteContext) -> CommandRunRead:
        return await ctx.services.command_flow.result(request_id=request.path_params["requestId"])

    @table.route("POST", "/api/v1/commands/{requestId}/cancel", permission=Permission.COMMAND_EXEC,
                 summary="Cancel a running command", response=CommandRunRead, tag="commands")  # fmt: skip
    async def cancel_command(request: Request, ctx: RouteContext) -> CommandRunRead:
        return await ctx.services.command_flow.cancel(actor=ctx.principal, request_id=request.path_params["requestId"])

    @table.route("GET", "/api/v1/commands/{requestId}/stream", permission=Permission.COMMAND_EXEC,
                 summary="Server-sent events: output chunks, then the result", tag="commands",
                 response_media_type="text/event-stream")  # fmt: skip
    async def stream_command(request: Request, ctx: RouteContext) -> StreamingResponse:
        request_id = request.path_params["requestId"]
        run = await ctx.services.commands.get(request_id)

        async def events() -> AsyncIterator[str]:
            yield ": connected\n\n"
            if run.finished or not ctx.services.hub.is_tracking(request_id):
                final = await ctx.services.commands.get(request_id)
                yield f"event: result\ndata: {json.dumps(final.model_dump(mode='json'))}\n\n"
                return
            async for item in ctx.services.hub.stream(request_id):
                if item.chunk is not None:
                    yield f"event: output\ndata: {item.chunk.model_dump_json()}\n\n"
                if item.run is not None:
                    yield f"event: result\ndata: {json.dumps(item.run.model_dump(mode='json'))}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-store"})
