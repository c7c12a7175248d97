"""Errors specific to jobs; adapters map them by their base class, callers match on ``code``.

* Conflict
    * InvalidTransition     (409, ``invalid_transition``)
"""

from legator_mcp.errors import Conflict

__all__ = ["InvalidTransition"]


class InvalidTransition(Conflict):
    """Raised when a run is asked to move to a state its current state does not allow (a final run)."""

    code = "invalid_transition"
