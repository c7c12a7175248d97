"""Declarative REST routes: each names its method, path, permission and models, so auth, parsing, OpenAPI and
the permission test all read one table.
"""

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from legator_mcp.app_context import AppContext
from legator_mcp.errors import InvalidRequest, PermissionDenied, Unauthenticated
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_mcp.rest._errors import error_response, validation_details

__all__ = ["RouteContext", "RouteSpec", "RouteTable", "authenticate_request", "parse_body", "parse_query"]

M = TypeVar("M", bound=BaseModel)

Handler = Callable[[Request, "RouteContext"], Awaitable[Response | BaseModel | dict[str, Any] | list[Any] | None]]


@dataclass(frozen=True)
class RouteContext:
    """What a route handler gets besides the request: the services, the caller and the request id."""

    services: AppContext
    principal: Principal
    request_id: str


@dataclass(frozen=True)
class RouteSpec:
    """One REST route and everything the framework needs to know about it."""

    method: str
    path: str
    handler: Handler
    permission: Permission | None
    summary: str
    public: bool = False
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    tag: str = "api"
    response_media_type: str = "application/json"


@dataclass
class RouteTable:
    """Collects route specs from every ``routes/<domain>.py`` module."""

    specs: list[RouteSpec] = field(default_factory=list[RouteSpec])

    def route(
        self,
        method: str,
        path: str,
        *,
        permission: Permission | None,
        summary: str,
        public: bool = False,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        tag: str = "api",
        response_media_type: str = "application/json",
    ) -> Callable[[Handler], Handler]:
        """Register a handler; ``permission=None`` with ``public=False`` means any authenticated caller."""

        def decorator(handler: Handler) -> Handler:
            self.specs.append(
                RouteSpec(
                    method, path, handler, permission, summary, public, body, query, response, status, tag,
                    response_media_type,
                )
            )  # fmt: skip
            return handler

        return decorator

    def starlette_routes(self) -> list[Route]:
        """Turn the table into Starlette routes (one endpoint per path, dispatching on method)."""
        by_path: dict[str, dict[str, RouteSpec]] = {}
        for spec in self.specs:
            by_path.setdefault(spec.path, {})[spec.method] = spec
        return [Route(path, _endpoint(methods), methods=list(methods)) for path, methods in by_path.items()]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <api key>'")
        return token.strip()
    return request.headers.get("x-api-key") or None


async def authenticate_request(request: Request, services: AppContext) -> Principal:
    """Identify the caller of a REST request.

    Raises:
        Unauthenticated: If no credential is presented or it is not valid.
    """
    if not services.settings.auth_enabled:
        return services.local_principal
    token = _bearer(request)
    if token is None:
        raise Unauthenticated("authentication required: send 'Authorization: Bearer <api key>'")
    return await services.auth.authenticate_api_key(token)


async def parse_body(request: Request, model: type[M]) -> M:
    """Parse and validate a JSON body.

    Raises:
        InvalidRequest: If the body is not JSON.
        pydantic.ValidationError: If it does not match ``model`` (mapped to 422).
    """
    raw = await request.body()
    if not raw.strip():
        raw = b"{}"
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest("the request body is not valid JSON", details={"reason": "invalid_json"}) from exc
    return model.model_validate(data)


def parse_query(request: Request, model: type[M]) -> M:
    """Validate query parameters (repeated keys become lists).

    Raises:
        pydantic.ValidationError: If they do not match ``model`` (mapped to 422).
    """
    data: dict[str, Any] = {}
    for key in request.query_params:
        values = request.query_params.getlist(key)
        data[key] = values if len(values) > 1 else values[0]
    return model.model_validate(data)


def _shape(result: Response | BaseModel | dict[str, Any] | list[Any] | None, status: int) -> Response:
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(status_code=204 if status == 200 else status)
    if isinstance(result, BaseModel):
        return JSONResponse(result.model_dump(mode="json"), status_code=status)
    return JSONResponse(result, status_code=status)


def _endpoint(methods: dict[str, RouteSpec]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        spec = methods.get(request.method) or (methods.get("GET") if request.method == "HEAD" else None)
        if spec is None:  # pragma: no cover - Starlette answers 405 before we get here
            return error_response(405, "method_not_allowed", "method not allowed")
        request.scope["legator.route"] = f"{spec.method} {spec.path}"
        services: AppContext = request.app.state.services
        request_id: str = request.scope.get("legator.request_id", "")
        surface = f"{spec.method} {spec.path}"
        if spec.public:
            principal = Principal(PrincipalKind.ANONYMOUS, "anonymous", "anonymous")
        else:
            try:
                principal = await authenticate_request(request, services)
            except Unauthenticated as exc:
                await services.auth.record_denied(
                    actor=None, surface=surface, required=spec.permission, reason="unauthenticated",
                    request_id=request_id,
                )  # fmt: skip
                raise exc
            if spec.permission is not None and not principal.has(spec.permission):
                await services.auth.record_denied(
                    actor=principal, surface=surface, required=spec.permission, reason="insufficient_permissions",
                    request_id=request_id,
                )  # fmt: skip
                raise PermissionDenied(
                    f"insufficient permissions (required: {spec.permission.value})",
                    details={"required_permission": spec.permission.value},
                )
            services.rate_limiter.check(principal.id)
        context = RouteContext(services=services, principal=principal.with_via("rest"), request_id=request_id)
        try:
            result = await spec.handler(request, context)
        except ValidationError as exc:
            return error_response(422, "invalid_request", "the request did not validate", validation_details(exc))
        return _shape(result, spec.status)

    return endpoint
