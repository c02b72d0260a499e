"""The app factory every service uses: error shape, body limit, health, OpenAPI, session routes.

A service is an object with ``settings``, ``sessions`` (its :class:`SessionManager`),
``identities()`` and optionally ``authorize()`` and ``aclose()``; :func:`create_service_app` puts it
on ``app.state.service``, where the routes' dependencies find it, and shuts it down with the app.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import PayloadTooLarge
from common.web.docs import install_docs, is_open
from common.web.responses import error_response, install_error_handlers
from common.web.routes import VERSION, health_router, sessions_router
from common.web.security import identify


class BodyLimit:
    """Reject request bodies over a size limit with 413, whether or not they declare a length."""

    def __init__(self, app: ASGIApp, limit: int, overrides: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.overrides = overrides or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.overrides.get(scope["path"], self.limit)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = error_response(
                413,
                "PayloadTooLarge",
                f"the request body has {int(declared)} bytes; the limit is {limit}",
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(
                        f"the request body is larger than the limit of {limit} bytes"
                    )
            return message

        await self.app(scope, limited, send)


class Authenticate:
    """Answer 401 to a request without a token this service knows, before its body is read or
    parsed (a malformed body from a stranger gets 401, not 422). Which identity may do what is
    still each route's dependency; only the health check and the docs (:func:`docs.is_open`)
    need no token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = scope["app"].state.service if scope["type"] == "http" else None
        if service is None or is_open(scope["path"], service.settings.docs):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            detail = "send the API token as 'Authorization: Bearer <token>'"
        elif identify(service.identities(), token.strip()) is None:
            detail = "the bearer token is not valid for this service"
        else:
            await self.app(scope, receive, send)
            return
        await error_response(401, "Unauthorized", detail)(scope, receive, send)


def create_service_app(
    *,
    title: str,
    description: str,
    service: Any,
    routers: Sequence[APIRouter],
    upload_limits: dict[str, int] | None = None,
) -> FastAPI:
    """The FastAPI app of one service (its own routers after the shared ones)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.sessions.shutdown()
        close = getattr(service, "aclose", None)
        if close is not None:
            await close()

    # the schema and the docs page are this project's own routes (common/web/docs.py)
    app = FastAPI(
        title=title,
        description=description,
        version=VERSION,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=service.settings.max_request_bytes, overrides=upload_limits)
    app.add_middleware(Authenticate)  # the outermost: before the body is read
    install_docs(app, service.settings.docs)
    app.include_router(health_router)
    app.include_router(sessions_router)
    for router in routers:
        app.include_router(router)
    app.state.service = service
    return app
