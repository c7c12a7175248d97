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


def _backoff(wait: float) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(wait)))}
    return _deny(503, "backoff", "too many probes connecting; retry later", headers)


async def _probe_socket(websocket: WebSocket) -> None:
    services: AppContext = websocket.app.state.services
    header = websocket.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        await websocket.send_denial_response(
            _deny(401, "unauthorized", "send 'Authorization: Bearer <probe credential>'")
        )
        return
    # Queue for a handshake slot before the credential is looked up: in a storm the database is busy enough.
    wait = await services.hub.admit()
    if wait > 0:
        await websocket.send_denial_response(_backoff(wait))
        return
    session: ProbeSession | None = None
    try:
        session = await _authenticated_session(websocket, services, credential.strip())
    finally:
        if session is None:
            services.hub.handshake_finished()
    if session is not None:
        await session.run()


async def _authenticated_session(websocket: WebSocket, services: AppContext, credential: str) -> ProbeSession | None:
    """Authenticate and accept the connection; ``None`` if it was refused (the refusal is sent and audited)."""
    try:
        authenticated = await services.fleet.authenticate_probe(credential)
    except Unauthenticated as exc:
        await services.audit.record(
            type="auth.probe_denied",
            actor="anonymous",
            summary="probe connection refused: invalid credential",
            detail={"remote": websocket.client.host if websocket.client else None, "reason": exc.message},
        )
        await websocket.send_denial_response(_deny(401, "unauthorized", "invalid probe credential"))
        return None
    await websocket.accept()
    session = ProbeSession(websocket, probe=authenticated, services=services)
    await services.hub.attach(session)
    return session


def probe_route() -> WebSocketRoute:
    """The gateway's route, mounted in the one Starlette app."""
    return WebSocketRoute("/ws/probe", _probe_socket)
