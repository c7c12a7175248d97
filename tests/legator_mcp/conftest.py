"""Fixtures for whole-app tests: a started control plane in-process and a real server on loopback."""

import socket
from collections.abc import AsyncIterator

import anyio
import pytest
import uvicorn
from tests.support.app import Running

from legator_mcp.app import build_app
from legator_mcp.settings import Settings


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    """The control plane with its lifespan entered (migrated, admin key created), served in-process."""
    app = build_app(settings)
    async with app.asgi.router.lifespan_context(app.asgi):
        assert app.new_admin_key is not None
        yield Running(app, app.new_admin_key, "http://127.0.0.1:8080")


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Running]:
    """The control plane served by uvicorn on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    settings = settings.model_copy(update={"listen_addr": f"127.0.0.1:{port}"})
    app = build_app(settings)
    server = uvicorn.Server(app.server_config())
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(15):
            await app.started.wait()
        assert app.new_admin_key is not None
        try:
            yield Running(app, app.new_admin_key, f"http://127.0.0.1:{port}")
        finally:
            server.should_exit = True
    sock.close()
