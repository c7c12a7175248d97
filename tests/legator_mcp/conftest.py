"""Fixtures for whole-app tests: a started control plane in-process and a real server on loopback."""

from collections.abc import AsyncIterator

import pytest
from tests.support.app import Running, serve

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
    async with serve(settings) as running:
        yield running
