"""The composition root: build the database, services and adapters once, and tie their lifetimes together."""

import getpass
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from legator_mcp import __version__
from legator_mcp.app_context import AppContext
from legator_mcp.approval.service import ApprovalService
from legator_mcp.audit.service import AuditService
from legator_mcp.auth.service import AuthService
from legator_mcp.commands.service import CommandService
from legator_mcp.db.base import utcnow
from legator_mcp.db.migrate import upgrade
from legator_mcp.db.session import Database
from legator_mcp.events.service import EventBus
from legator_mcp.fleet.keys import KeyRing, load_or_create_master_key
from legator_mcp.fleet.service import FleetService
from legator_mcp.flows.fan_out import FanOutFlow
from legator_mcp.flows.job_scheduler import JobScheduler
from legator_mcp.flows.jobs import JobFlow
from legator_mcp.flows.run_command import CommandFlow
from legator_mcp.flows.stranded import StrandedApprovals
from legator_mcp.gateway.hub import Hub
from legator_mcp.gateway.server import probe_route
from legator_mcp.jobs.leader import SchedulerLock
from legator_mcp.jobs.schedule import RetryPolicy
from legator_mcp.jobs.service import JobService
from legator_mcp.mcp.server import build_mcp_server
from legator_mcp.observability import Metrics
from legator_mcp.policy.capacity import CapacityThresholds, HeartbeatCapacity
from legator_mcp.policy.service import PolicyService
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_mcp.ratelimit import RateLimiter
from legator_mcp.rest._errors import EXCEPTION_HANDLERS
from legator_mcp.rest._middleware import BodyLimitMiddleware, RequestContextMiddleware, SecurityHeadersMiddleware
from legator_mcp.rest.app import build_route_table
from legator_mcp.rest.openapi import build_openapi
from legator_mcp.settings import Settings

__all__ = ["LegatorApp", "build_app", "build_services", "local_operator", "start_services"]

logger = logging.getLogger("legator")


def local_operator() -> Principal:
    """The identity of someone at this machine's console (stdio MCP, ``--no-auth``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - no passwd entry in some containers
        user = "unknown"
    return Principal(PrincipalKind.USER, f"local:{user}", f"local-{user}", frozenset({Permission.ADMIN}))


def build_services(settings: Settings) -> AppContext:
    """Construct every service (no I/O happens here)."""
    database = Database(settings.effective_database_url)
    metrics = Metrics()
    audit = AuditService(database=database)
    auth = AuthService(database=database, audit=audit)
    events = EventBus()
    # The master key is read (or created) on first use, or by start_services; building stays I/O-free.
    keyring = KeyRing(lambda: load_or_create_master_key(settings))
    fleet = FleetService(database=database, audit=audit, events=events, settings=settings, keyring=keyring)
    approvals = ApprovalService(database=database, audit=audit, events=events)
    policy = PolicyService(database=database, audit=audit, fleet=fleet)
    if settings.capacity_from_heartbeat:
        thresholds = CapacityThresholds(settings.capacity_limited_pct, settings.capacity_degraded_pct)
        policy.add_capacity_provider(HeartbeatCapacity(fleet=fleet, thresholds=thresholds))
    commands = CommandService(database=database, audit=audit, events=events)
    hub = Hub(
        commands=commands, keyring=keyring, admit_per_second=settings.probe_admit_per_second,
        admit_burst=settings.probe_admit_burst, max_handshakes=settings.probe_max_handshakes,
        handshake_queue_s=settings.probe_handshake_queue_s, inventory_per_second=settings.probe_inventory_per_second,
        inventory_max_delay_s=settings.probe_inventory_max_delay_s,
    )  # fmt: skip
    fleet.attach_link(hub)
    policy.attach_hub(hub)
    command_flow = CommandFlow(fleet=fleet, policy=policy, commands=commands, approvals=approvals, hub=hub)
    retry_defaults = RetryPolicy(
        max_attempts=settings.jobs_retry_max_attempts, initial_backoff_s=settings.jobs_retry_initial_backoff,
        multiplier=settings.jobs_retry_multiplier, max_backoff_s=settings.jobs_retry_max_backoff,
    )  # fmt: skip
    jobs = JobService(database=database, audit=audit, events=events, fleet=fleet, retry_defaults=retry_defaults)
    job_flow = JobFlow(jobs=jobs, command_flow=command_flow, approvals=approvals, hub=hub, fleet=fleet)
    return AppContext(
        settings=settings,
        database=database,
        audit=audit,
        auth=auth,
        approvals=approvals,
        events=events,
        fleet=fleet,
        policy=policy,
        commands=commands,
        hub=hub,
        command_flow=command_flow,
        fan_out=FanOutFlow(fleet=fleet, command_flow=command_flow, links=hub),
        stranded=StrandedApprovals(flow=command_flow, commands=commands, approvals=approvals, links=hub),
        metrics=metrics,
        rate_limiter=RateLimiter(settings.rate_limit_per_minute),
        local_principal=local_operator(),
        started_at=utcnow(),
        version=__version__,
        jobs=jobs,
        job_flow=job_flow,
        job_scheduler=JobScheduler(jobs=jobs, flow=job_flow, events=events, lock=SchedulerLock(database)),
    )


async def start_services(services: AppContext) -> str | None:
    """Migrate the database and create the first admin key when the database is new.

    Returns:
        The new admin key, if one was created (it is also in ``<data-dir>/admin-api-key``).
    """
    services.settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade(services.database)
    await anyio.to_thread.run_sync(services.fleet.keyring.load)
    # Commands dispatched before a restart whose results can no longer arrive are finished as "lost".
    await services.commands.expire_overdue()
    if services.settings.auth_enabled:
        return await services.auth.ensure_bootstrap_key(services.settings.data_dir)
    return None


class LegatorApp:
    """The running control plane: the ASGI app plus handles tests and the CLI need."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services = build_services(settings)
        self.mcp, self.mcp_registry = build_mcp_server(
            self.services, http_auth=settings.auth_enabled, base_url=settings.public_url,
            local_principal=None if settings.auth_enabled else self.services.local_principal,
        )  # fmt: skip
        self.route_table = build_route_table()
        self.new_admin_key: str | None = None
        self.started = anyio.Event()
        """Set once the database is migrated and the MCP session manager runs (requests can be served)."""
        self.asgi = self._build_asgi()

    def server_config(self, **overrides: Any) -> uvicorn.Config:
        """The uvicorn configuration every server of this app uses (``legator serve`` and the tests alike)."""
        options: dict[str, Any] = {
            "log_config": None,
            "lifespan": "on",
            "server_header": False,
            # The sans-I/O websockets implementation holds about half the memory per connection of the legacy one
            # (61 vs 127 KiB measured with 1,000 idle sockets): a gateway of 10,000 probes is mostly connections.
            "ws": "websockets-sansio",
            # An oversized probe frame is refused by the transport (close 1009) before it is buffered whole.
            "ws_max_size": self.settings.max_frame_bytes,
            # No transport pings: probes heartbeat, and the offline sweep closes a connection silent for
            # offline_after_s. Pings every 20 s to 10,000 probes cost CPU, and a pong delayed by a busy probe
            # would drop a healthy connection (seen: 8,877 "1011 keepalive ping timeout" closes in a swarm run).
            "ws_ping_interval": None,
            "ws_ping_timeout": None,
        }
        return uvicorn.Config(self.asgi, **(options | overrides))

    def _transport_security(self) -> TransportSecuritySettings:
        port = self.settings.port
        hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *self.settings.mcp_allowed_hosts]
        origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*", *self.settings.mcp_allowed_origins]
        if self.settings.host not in {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}:
            hosts += [self.settings.host, f"{self.settings.host}:{port}"]
        if self.settings.public_url:
            from urllib.parse import urlsplit

            parts = urlsplit(self.settings.public_url)
            if parts.netloc:
                hosts.append(parts.netloc)
                origins.append(f"{parts.scheme}://{parts.netloc}")
        return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins)

    def _build_asgi(self) -> Starlette:
        mcp_http = self.mcp.streamable_http_app(
            streamable_http_path="/mcp",
            transport_security=self._transport_security(),
            max_request_body_size=self.settings.max_body_bytes,
            host=self.settings.host,
        )
        mcp_routes: list[BaseRoute] = [
            Route(route.path, endpoint=mcp_http) for route in mcp_http.routes if isinstance(route, Route)
        ]

        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
            self.new_admin_key = await start_services(self.services)
            try:
                async with self.mcp.session_manager.run(), anyio.create_task_group() as background:
                    background.start_soon(self.services.fleet.run_sweeper)
                    background.start_soon(self.services.approvals.run_reaper)
                    background.start_soon(self.services.stranded.run)
                    if self.settings.jobs_scheduler_enabled:
                        background.start_soon(self.services.job_scheduler.run)
                    self.started.set()
                    yield {}
                    background.cancel_scope.cancel()
            finally:
                await self.services.database.dispose()

        app = Starlette(
            routes=[*self.route_table.starlette_routes(), probe_route(), *mcp_routes],
            middleware=[
                Middleware(RequestContextMiddleware, metrics=self.services.metrics),
                Middleware(SecurityHeadersMiddleware, hsts=(self.settings.public_url or "").startswith("https://")),
                Middleware(BodyLimitMiddleware, max_bytes=self.settings.max_body_bytes),
            ],
            exception_handlers=EXCEPTION_HANDLERS,
            lifespan=lifespan,
        )
        app.state.services = self.services
        app.state.openapi = build_openapi(self.route_table.specs, version=self.services.version)
        return app


def build_app(settings: Settings) -> LegatorApp:
    """Build the control plane for ``settings``."""
    return LegatorApp(settings)
