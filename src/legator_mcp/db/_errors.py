"""Translate database exceptions into Legator errors at one boundary."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import IntegrityError, OperationalError

from legator_mcp.errors import Conflict, ServiceUnavailable

__all__ = ["map_db_errors"]


@contextmanager
def map_db_errors(conflict_message: str = "the record conflicts with an existing one") -> Iterator[None]:
    """Map driver errors raised inside the block to :mod:`legator_mcp.errors` types.

    Raises:
        Conflict: On a unique or foreign-key violation.
        ServiceUnavailable: When the database cannot be reached or is locked past its timeout.
    """
    try:
        yield
    except IntegrityError as exc:
        raise Conflict(conflict_message) from exc
    except OperationalError as exc:
        raise ServiceUnavailable("the database is unavailable") from exc
