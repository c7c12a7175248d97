"""The bundle of services every adapter works on, built once by the composition root (:mod:`legator_mcp.app`)."""

from dataclasses import dataclass
from datetime import datetime

from legator_mcp.approval.service import ApprovalService
from legator_mcp.audit.service import AuditService
from legator_mcp.auth.service import AuthService
from legator_mcp.commands.service import CommandService
from legator_mcp.db.session import Database
from legator_mcp.events.service import EventBus
from legator_mcp.fleet.service import FleetService
from legator_mcp.flows.fan_out import FanOutFlow
from legator_mcp.flows.job_scheduler import JobScheduler
from legator_mcp.flows.jobs import JobFlow
from legator_mcp.flows.run_command import CommandFlow
from legator_mcp.flows.stranded import StrandedApprovals
from legator_mcp.gateway.hub import Hub
from legator_mcp.jobs.service import JobService
from legator_mcp.observability import Metrics
from legator_mcp.policy.service import PolicyService
from legator_mcp.principal import Principal
from legator_mcp.ratelimit import RateLimiter
from legator_mcp.settings import Settings

__all__ = ["AppContext"]


@dataclass
class AppContext:
    """Services and shared state; MCP tools reach it through the lifespan context, REST through ``app.state``."""

    settings: Settings
    database: Database
    audit: AuditService
    auth: AuthService
    approvals: ApprovalService
    events: EventBus
    fleet: FleetService
    policy: PolicyService
    commands: CommandService
    hub: Hub
    command_flow: CommandFlow
    fan_out: FanOutFlow
    stranded: StrandedApprovals
    """Releases (or closes) what an approval left waiting when the process that should have acted stopped."""
    metrics: Metrics
    rate_limiter: RateLimiter
    local_principal: Principal
    """Who a caller is when no credential can exist: ``--no-auth`` mode, or the embedded stdio MCP server."""
    started_at: datetime
    version: str
    jobs: JobService
    job_flow: JobFlow
    job_scheduler: JobScheduler
