"""The one REST error shape, ``{"error": {"code", "message", "details"?}}``, and the handlers that produce it."""

import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from legator_mcp.errors import LegatorError, RateLimited
from legator_probe.protocol.sanitize import sanitize

__all__ = ["EXCEPTION_HANDLERS", "error_response", "validation_details"]

logger = logging.getLogger("legator.rest")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    421: "misdirected_request",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Build the error body every route returns."""
    body: dict[str, Any] = {"code": code, "message": sanitize(message)}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def validation_details(exc: ValidationError) -> dict[str, Any]:
    """Field names and error kinds only: the rejected values are the caller's data."""
    fields = [
        {"field": ".".join(str(part) for part in err["loc"]) or "(body)", "type": err["type"], "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    return {"fields": fields}


async def _legator_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LegatorError)
    headers: dict[str, str] | None = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str((exc.details or {}).get("retry_after", 60))}
    if exc.http_status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="legator"'}
    return error_response(exc.http_status, exc.code, exc.message, exc.details or None, headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return error_response(422, "invalid_request", "the request did not validate", validation_details(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(
        exc.status_code,
        _HTTP_CODES.get(exc.status_code, "http_error"),
        str(exc.detail),
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "an internal error occurred; see the server log")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    LegatorError: _legator_error,
    ValidationError: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
"""Registered on the Starlette app; LegatorError subclasses are found by MRO lookup."""
