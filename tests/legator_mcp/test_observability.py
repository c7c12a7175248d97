"""Logging: uvicorn's spurious error after a WebSocket denial is dropped, per-connection lines only show when
debugging, every other record still gets through."""

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
    assert len(uvicorn_errors.filters) == 2


def test_per_connection_lines_are_kept_for_debugging_only(collected: _Collect) -> None:
    uvicorn_errors = logging.getLogger("uvicorn.error")

    def one_connection() -> None:
        uvicorn_errors.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/ws/probe")
        uvicorn_errors.info("connection open")
        uvicorn_errors.info("connection rejected (%d %s)", 503, "Service Unavailable")
        uvicorn_errors.info("connection closed")
        uvicorn_errors.info("Application startup complete.")
        uvicorn_errors.warning("connection open")  # not the routine line: kept

    one_connection()
    assert collected.messages == ["Application startup complete.", "connection open"]
    collected.messages.clear()
    logging.getLogger().setLevel(logging.DEBUG)
    one_connection()
    assert collected.messages[:2] == ['127.0.0.1:5000 - "WebSocket /ws/probe" [accepted]', "connection open"]
    assert len(collected.messages) == 6
