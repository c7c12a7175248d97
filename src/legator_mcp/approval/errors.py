"""Errors specific to the approval queue; adapters map them by their base class, callers match on ``code``.

* Conflict
    * ApprovalExpired       (409, ``approval_expired``)
    * ApprovalDecided       (409, ``approval_decided``)
    * ApprovalConsumed      (409, ``approval_consumed``)
    * ApprovalNotApproved   (409, ``approval_not_approved``)
    * AlreadyVoted          (409, ``approval_already_voted``)
* PermissionDenied
    * SelfApproval          (403, ``self_approval``)
* LegatorError
    * ApprovalTampered      (409, ``approval_tampered``)
"""

from legator_mcp.errors import Conflict, LegatorError, PermissionDenied

__all__ = [
    "AlreadyVoted",
    "ApprovalConsumed",
    "ApprovalDecided",
    "ApprovalExpired",
    "ApprovalNotApproved",
    "ApprovalTampered",
    "SelfApproval",
]


class ApprovalExpired(Conflict):
    """Raised when a request is decided or consumed after it expired."""

    code = "approval_expired"


class ApprovalDecided(Conflict):
    """Raised when a vote arrives for a request that is no longer pending."""

    code = "approval_decided"


class ApprovalConsumed(Conflict):
    """Raised when an approval whose action was already released is consumed again."""

    code = "approval_consumed"


class ApprovalNotApproved(Conflict):
    """Raised when a request that is not (yet) approved is consumed."""

    code = "approval_not_approved"


class AlreadyVoted(Conflict):
    """Raised when a principal votes a second time on the same request."""

    code = "approval_already_voted"


class SelfApproval(PermissionDenied):
    """Raised when the requester tries to approve their own request."""

    code = "self_approval"


class ApprovalTampered(LegatorError):
    """Raised when a stored request no longer matches the digest it was approved under; nothing runs."""

    code = "approval_tampered"
    http_status = 409
