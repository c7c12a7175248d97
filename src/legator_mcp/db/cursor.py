"""Opaque keyset-pagination cursors for newest-first listings ordered by ``(created_at, id)``."""

import base64
import binascii
from datetime import datetime

from legator_mcp.errors import InvalidRequest

__all__ = ["decode_cursor", "encode_cursor"]

_SEP = "|"


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """The cursor that continues a newest-first listing after the row ``(created_at, row_id)``."""
    raw = f"{created_at.isoformat()}{_SEP}{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, *, what: str) -> tuple[datetime, str]:
    """The ``(created_at, id)`` a cursor from :func:`encode_cursor` stands for.

    Raises:
        InvalidRequest: If the cursor was not produced by :func:`encode_cursor` (the message names ``what``
            is being listed, and ``details.field`` is ``cursor``).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, sep, row_id = raw.partition(_SEP)
        created_at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"invalid {what} cursor", details={"field": "cursor"}) from exc
    if not sep or not row_id or created_at.tzinfo is None:
        raise InvalidRequest(f"invalid {what} cursor", details={"field": "cursor"})
    return created_at, row_id
