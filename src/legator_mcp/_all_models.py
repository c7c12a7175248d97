"""Import every domain's models so the metadata Alembic compares against is complete."""

from legator_mcp.approval import models as approval_models
from legator_mcp.audit import models as audit_models
from legator_mcp.auth import models as auth_models
from legator_mcp.commands import models as command_models
from legator_mcp.db.base import Base
from legator_mcp.fleet import models as fleet_models
from legator_mcp.jobs import models as job_models
from legator_mcp.policy import models as policy_models

metadata = Base.metadata

MODEL_MODULES = (
    approval_models, audit_models, auth_models, command_models, fleet_models, job_models, policy_models,
)  # fmt: skip
"""Every module whose tables belong in the schema; importing them registers the tables on ``metadata``."""

__all__ = ["MODEL_MODULES", "metadata"]
