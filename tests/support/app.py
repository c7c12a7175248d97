"""Helpers for whole-app tests."""

from dataclasses import dataclass

import httpx

from legator_mcp.app import LegatorApp


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
