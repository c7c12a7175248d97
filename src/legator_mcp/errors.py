"""Legator's error hierarchy.

Services raise these; each adapter maps them once (REST in ``rest/_errors.py``, MCP in ``mcp/_errors.py``,
the probe gateway in ``gateway/``). ``code`` is the stable machine string every adapter shows.

* LegatorError
    * NotFound              (404)
    * Conflict              (409)
    * InvalidRequest        (422)
    * Unauthenticated       (401)
    * PermissionDenied      (403)
        * PolicyDenied      (403)
    * ApprovalRequired      (409, carries approval_id)
    * PayloadTooLarge       (413)
    * RateLimited           (429)
    * ProbeUnavailable      (503)
    * ServiceUnavailable    (503)
"""

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "ApprovalRequired",
    "Conflict",
    "InvalidRequest",
    "LegatorError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PolicyDenied",
    "ProbeUnavailable",
    "RateLimited",
    "ServiceUnavailable",
    "Unauthenticated",
]


class LegatorError(Exception):
    """An anticipated failure raised by the service layer."""

    code: ClassVar[str] = "legator_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] | None = dict(details) if details else None


class NotFound(LegatorError):
    """Raised when the addressed entity does not exist (or the caller may not know it exists)."""

    code = "not_found"
    http_status = 404


class Conflict(LegatorError):
    """Raised when a write collides with existing state (duplicate name, stale transition)."""

    code = "conflict"
    http_status = 409


class InvalidRequest(LegatorError):
    """Raised when arguments are well-formed but not acceptable (bad cron, unknown permission)."""

    code = "invalid_request"
    http_status = 422


class Unauthenticated(LegatorError):
    """Raised when a request carries no credential, or one that is unknown, expired or revoked."""

    code = "unauthorized"
    http_status = 401


class PermissionDenied(LegatorError):
    """Raised when an authenticated principal lacks the permission an action requires."""

    code = "forbidden"
    http_status = 403


class PolicyDenied(PermissionDenied):
    """Raised when the policy engine denies an action outright."""

    code = "policy_denied"


class ApprovalRequired(LegatorError):
    """Raised when an action was queued for human approval instead of running."""

    code = "approval_required"
    http_status = 409

    def __init__(self, message: str, *, approval_id: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, details={"approval_id": approval_id, **(details or {})})
        self.approval_id = approval_id


class PayloadTooLarge(LegatorError):
    """Raised when a request body exceeds the configured limit."""

    code = "request_too_large"
    http_status = 413


class RateLimited(LegatorError):
    """Raised when a principal exceeds its request rate."""

    code = "rate_limited"
    http_status = 429


class ProbeUnavailable(LegatorError):
    """Raised when a command needs a probe that is not connected."""

    code = "probe_unavailable"
    http_status = 503


class ServiceUnavailable(LegatorError):
    """Raised when a dependency (database, adapter) cannot serve the request right now."""

    code = "service_unavailable"
    http_status = 503
