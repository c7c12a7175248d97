"""Metrics (Prometheus) and structured logging with request ids."""

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from legator_probe.protocol.sanitize import sanitize

__all__ = ["Metrics", "configure_logging", "request_id_var"]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("legator_request_id", default=None)
"""The id of the HTTP/MCP request being served, stamped on every log line and audit event."""


class Metrics:
    """The control plane's Prometheus metrics, in a registry of its own (one per app instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "legator_http_requests_total", "HTTP requests by route and status", ["method", "route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.http_latency = Histogram(
            "legator_http_request_duration_seconds", "HTTP request latency by route", ["method", "route"],
            registry=self.registry,
        )  # fmt: skip
        self.mcp_calls = Counter(
            "legator_mcp_tool_calls_total", "MCP tool calls by tool and outcome", ["tool", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.audit_events = Counter(
            "legator_audit_events_total", "Audit events written by this process", ["type"], registry=self.registry
        )
        self.uptime_started = Gauge(
            "legator_start_time_seconds", "Unix time the control plane started", registry=self.registry
        )
        self.uptime_started.set_to_current_time()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": sanitize(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc"] = sanitize(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return sanitize(super().format(record))


def _not_a_denial_artifact(record: logging.LogRecord) -> bool:
    """Drop uvicorn's spurious error after a WebSocket denial response on the sans-I/O implementation.

    Every refused probe (401, 503 back-off) would otherwise log "ASGI callable returned without completing
    handshake." at ERROR, although the client got its response (uvicorn PR #3138 fixes it upstream). The
    gateway always either accepts or denies, so the message carries nothing for us.
    """
    return record.getMessage() != "ASGI callable returned without completing handshake."


_PER_CONNECTION = frozenset(
    {
        '%s - "WebSocket %s" [accepted]',
        '%s - "WebSocket %s" 403',
        '%s - "WebSocket %s" %d',
        "connection open",
        "connection closed",
        "connection rejected (%d %s)",
    }
)
"""uvicorn's and websockets' line per WebSocket opened, refused or closed."""


def _per_connection_only_when_debugging(record: logging.LogRecord) -> bool:
    """Keep the per-connection lines of the WebSocket server for ``DEBUG`` only.

    With thousands of probes, a reconnect storm wrote several of them per probe per attempt (over 100,000
    lines, and ~5 % of the gateway's CPU in one run); what an operator needs is logged and audited by the
    gateway itself (probe online/offline, refused credentials).
    """
    if record.levelno != logging.INFO or record.msg not in _PER_CONNECTION:
        return True
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send logs to stderr, as JSON lines (default) or text, through the credential sanitiser."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if fmt == "json" else _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    uvicorn_errors = logging.getLogger("uvicorn.error")
    ours = (_not_a_denial_artifact, _per_connection_only_when_debugging)
    uvicorn_errors.filters[:] = [f for f in uvicorn_errors.filters if f not in ours]
    for keep in ours:
        uvicorn_errors.addFilter(keep)
    for noisy in ("uvicorn.access", "httpx", "httpcore", "mcp.server.streamable_http_manager"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level]))
