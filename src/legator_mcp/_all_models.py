"""Import every domain's models so the metadata Alembic compares against is complete."""

from legator_mcp.audit import models as audit_models
from legator_mcp.auth import models as auth_models
from legator_mcp.db.base import Base

metadata = Base.metadata

MODEL_MODULES = (audit_models, auth_models)
"""Every module whose tables belong in the schema; importing them registers the tables on ``metadata``."""

__all__ = ["MODEL_MODULES", "metadata"]
