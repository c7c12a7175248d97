"""Helpers for whole-app tests."""

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import httpx
import uvicorn

from legator_mcp.app import LegatorApp, build_app
from legator_mcp.settings import Settings


@dataclass
class Running:
    """A started control plane and the admin key it created."""

    app: LegatorApp
    admin_key: str
    base_url: str

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        """An HTTP client to the app, authenticated with ``key`` (admin by default; '' for none)."""
        headers = {} if key == "" else {"Authorization": f"Bearer {key or self.admin_key}"}
        transport = httpx.ASGITransport(app=self.app.asgi)
        return httpx.AsyncClient(transport=transport, base_url=self.base_url, headers=headers)


@asynccontextmanager
async def serve(
    settings: Settings, *, port: int = 0, prepare: Callable[[LegatorApp], None] | None = None
) -> AsyncIterator[Running]:
    """Serve the control plane with uvicorn on loopback, with the server configuration ``legator serve`` uses.

    ``port`` 0 picks a free one; a fixed port lets a test restart a control plane where its probes expect it.
    ``prepare`` adjusts the built app before it starts (a test clock, say).
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(512)
    port = int(sock.getsockname()[1])
    app = build_app(settings.model_copy(update={"listen_addr": f"127.0.0.1:{port}"}))
    if prepare is not None:
        prepare(app)
    server = uvicorn.Server(app.server_config())
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(20):
                await app.started.wait()
            key = app.new_admin_key or (settings.data_dir / "admin-api-key").read_text(encoding="utf-8").strip()
            try:
                yield Running(app, key, f"http://127.0.0.1:{port}")
            finally:
                server.should_exit = True
    finally:
        sock.close()
