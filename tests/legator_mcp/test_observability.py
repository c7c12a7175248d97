"""Logging: uvicorn's spurious error after a WebSocket denial is dropped, every other record still gets through."""

import logging
from collections.abc import Iterator

import pytest

from legator_mcp.observability import configure_logging


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def collected() -> Iterator[_Collect]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging("INFO", "json")
    configure_logging("INFO", "json")  # idempotent: the filter is installed once
    handler = _Collect()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_the_denial_artifact_is_dropped_and_real_uvicorn_errors_are_kept(collected: _Collect) -> None:
    uvicorn_errors = logging.getLogger("uvicorn.error")
    uvicorn_errors.error("ASGI callable returned without completing handshake.")
    uvicorn_errors.error("Exception in ASGI application")
    assert collected.messages == ["Exception in ASGI application"]
    assert len(uvicorn_errors.filters) == 1
