"""The ``/ws/probe`` endpoint: authenticate before the upgrade, admit at a bounded rate, then run a session."""

import logging

from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from legator_mcp.app_context import AppContext
from legator_mcp.errors import Unauthenticated
from legator_mcp.gateway._session import ProbeSession

__all__ = ["probe_route"]

logger = logging.getLogger("legator.gateway")


def _deny(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def _probe_socket(websocket: WebSocket) -> None:
    services: AppContext = websocket.app.state.services
    header = websocket.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        await websocket.send_denial_response(
            _deny(401, "unauthorized", "send 'Authorization: Bearer <probe credential>'")
        )
        return
    try:
        probe = await services.fleet.authenticate_probe(credential.strip())
    except Unauthenticated as exc:
        await services.audit.record(
            type="auth.probe_denied",
            actor="anonymous",
            summary="probe connection refused: invalid credential",
            detail={"remote": websocket.client.host if websocket.client else None, "reason": exc.message},
        )
        await websocket.send_denial_response(_deny(401, "unauthorized", "invalid probe credential"))
        return
    wait = services.hub.admit()
    if wait > 0:
        retry = max(1, round(wait))
        await websocket.send_denial_response(
            _deny(503, "backoff", "too many probes connecting; retry later", {"Retry-After": str(retry)})
        )
        return
    await websocket.accept()
    session = ProbeSession(websocket, probe=probe, services=services)
    await services.hub.attach(session)
    await session.run()


def probe_route() -> WebSocketRoute:
    """The gateway's route, mounted in the one Starlette app."""
    return WebSocketRoute("/ws/probe", _probe_socket)
