"""Errors to HTTP responses, in one place: ``{"error": "<ClassName>", "detail": "<message>"}``.

An :class:`~common.errors.AppraisalError` answers with its own ``status_code``; a malformed request
with 422 naming the fields; anything unexpected with a bare 500 that points to the log (never a
traceback in a response body). :func:`responses` lists, for a route's OpenAPI entry, the errors that
route can return, each with an example.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import AppraisalError
from common.web.schemas import ErrorBody

log = logging.getLogger("data_appraisal.web")

_KIND = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    503: "Unavailable",
}

# What each status means on these APIs, with an example body (the OpenAPI of each route lists
# only the statuses it can return: see responses()).
_MEANING: dict[int, tuple[str, str]] = {
    401: ("missing or wrong bearer token", "the bearer token is not valid for this service"),
    403: (
        "a valid token, but not one allowed here",
        "only this service's operator token may do this",
    ),
    404: (
        "no such session or data set (for this caller)",
        "no session 'f00'; GET /v1/sessions lists them",
    ),
    409: (
        "the session or data set is in a state that forbids this",
        "session f00 is already completed",
    ),
    413: (
        "the request body is larger than the limit",
        "the request body has 2000000 bytes; the limit is 1000000",
    ),
    422: ("a malformed or out-of-range request", "datasets: List should have at least 1 item"),
    503: (
        "the service is at capacity; retry later",
        "the dealer already serves 16 sessions; retry later",
    ),
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that can answer with these error statuses."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, example = _MEANING[status]
        kind = _KIND.get(status, "Error")
        out[status] = {
            "model": ErrorBody,
            "description": description,
            "content": {"application/json": {"example": {"error": kind, "detail": example}}},
        }
    return out


def error_response(status: int, kind: str, detail: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        ErrorBody(error=kind, detail=detail).model_dump(), status_code=status, headers=headers
    )


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {message}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppraisalError)
    async def appraisal_error(request: Request, exc: AppraisalError) -> JSONResponse:
        return error_response(exc.status_code, type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "ValidationError", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code, _KIND.get(exc.status_code, "HTTPError"), str(exc.detail)
        )

    @app.exception_handler(MemoryError)
    async def out_of_memory(request: Request, exc: MemoryError) -> JSONResponse:
        # Input that needs more memory than the service has is the caller's to shrink; the
        # service itself goes on (the allocation failed, nothing was half-built).
        log.warning("out of memory on %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            413, "PayloadTooLarge", "the request needs more memory than this service can give it"
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            500, "InternalError", "an unexpected error; the service's log has the details"
        )
