"""Malformed input on every REST route gives a 4xx in the one error shape, never a 500."""

import re

import pytest
from tests.support.app import Running

pytestmark = pytest.mark.anyio

BAD_BODIES: list[tuple[bytes, str]] = [
    (b"{not json", "application/json"),
    (b"[]", "application/json"),
    (b'{"unexpected": {"deeply": [1, 2, {"x": null}]}}', "application/json"),
    (b'"a string"', "application/json"),
    (b"\xff\xfe\x00garbage", "application/octet-stream"),
    (b'{"name": 12, "permissions": "admin", "tags": {}, "kind": [], "spec": 5, "command": ""}', "application/json"),
]
BAD_PATH_VALUES = ["x", "../../etc/passwd", "%00", "a" * 300, "prb-00000000", "'; DROP TABLE probes; --"]
BAD_QUERIES = [
    {"limit": "-1"},
    {"limit": "many"},
    {"cursor": "@@@"},
    {"since": "yesterday"},
    {"status": "exploded"},
    {"older_than": "forever"},
    {"wait": "perhaps"},
]


def _fill(path: str, value: str) -> str:
    return re.sub(r"{[^}]+}", value, path)


async def test_no_route_answers_500_to_malformed_input(running: Running) -> None:
    specs = [s for s in running.app.route_table.specs if s.path not in {"/metrics", "/api/v1/metrics"}]
    checked = 0
    async with running.client() as client:
        for spec in specs:
            for value in BAD_PATH_VALUES if "{" in spec.path else ["-"]:
                url = _fill(spec.path, value)
                for query in BAD_QUERIES:
                    response = await client.request(spec.method, url, params=query)
                    assert response.status_code < 500, (spec.method, url, query, response.text)
                    checked += 1
                if spec.method in {"POST", "PUT", "PATCH"}:
                    for body, content_type in BAD_BODIES:
                        response = await client.request(
                            spec.method, url, content=body, headers={"content-type": content_type}
                        )
                        assert response.status_code < 500, (spec.method, url, body, response.text)
                        if response.status_code >= 400:
                            assert set(response.json()) == {"error"}
                        checked += 1
    assert checked > 500
