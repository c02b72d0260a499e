"""The routes every service has: health, its OpenAPI schema, its metrics, and its sessions (list,
get, cancel)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse

from common.errors import NotFound
from common.web.metrics import CONTENT_TYPE, exposition
from common.web.responses import responses
from common.web.schemas import API_PREFIX, CancelRequest, Health, SessionState, SessionView
from common.web.security import Caller, Operator, SchemaReader
from common.web.sessions import SessionManager
from common.web.settings import OPERATOR

VERSION = "0.2.0"


def get_service(request: Request) -> Any:
    """The service object of the app (each party's routes type it: ``Annotated[X, Depends(...)]``)."""
    return request.app.state.service


def get_manager(request: Request) -> SessionManager:
    manager: SessionManager = request.app.state.service.sessions
    return manager


Manager = Annotated[SessionManager, Depends(get_manager)]


def may_see(who: str, view: SessionView) -> bool:
    """The operator sees every session; a peer only the sessions it is party to."""
    return who in (OPERATOR, view.counterpart, f"session:{view.id}")


def visible(manager: SessionManager, session_id: str, who: str) -> SessionView:
    view = manager.store.get(session_id)
    if not may_see(who, view):  # as if it did not exist: ids are not probed
        raise NotFound(f"no session {session_id!r}; GET /v1/sessions lists them")
    return view


health_router = APIRouter(prefix=API_PREFIX, tags=["health"])


@health_router.get("/health", response_model=Health, summary="Liveness (no token needed)")
async def health(request: Request) -> Health:
    return Health(service=request.app.title, version=VERSION)


@health_router.get(
    "/openapi.json",
    summary="This API's OpenAPI schema (public only with DOCS=public; the page: /v1/docs)",
    responses=responses(401),
)
async def openapi(request: Request, who: SchemaReader) -> dict[str, Any]:
    return openapi_schema(request.app)


@health_router.get(
    "/metrics",
    summary="Sessions by state, MPC seconds and bytes (Prometheus text format; operator only)",
    response_class=PlainTextResponse,
    responses={**responses(401, 403), 200: {"content": {CONTENT_TYPE: {}}}},
)
async def metrics(request: Request, manager: Manager, who: Operator) -> PlainTextResponse:
    text = exposition(
        manager.store, service=request.app.title, version=VERSION, live=len(manager.running())
    )
    return PlainTextResponse(text, media_type=CONTENT_TYPE)


sessions_router = APIRouter(prefix=f"{API_PREFIX}/sessions", tags=["sessions"])


@sessions_router.get(
    "",
    response_model=list[SessionView],
    summary="List sessions, newest first (a peer sees only its own)",
    responses=responses(401, 422),
)
async def list_sessions(
    *,
    manager: Manager,
    who: Caller,
    state: SessionState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[SessionView]:
    return [v for v in manager.store.all(limit=limit, state=state) if may_see(who, v)]


@sessions_router.get(
    "/{session_id}",
    response_model=SessionView,
    summary="A session, its progress and its results",
    responses=responses(401, 403, 404),
)
async def get_session(*, session_id: str, manager: Manager, who: Caller) -> SessionView:
    return visible(manager, session_id, who)


@sessions_router.post(
    "/{session_id}/cancel",
    response_model=SessionView,
    summary="Cancel a session; stops this party's worker and tells the peers",
    responses=responses(401, 403, 404, 409, 422),
)
async def cancel_session(
    *, session_id: str, manager: Manager, who: Caller, body: CancelRequest | None = None
) -> SessionView:
    visible(manager, session_id, who)
    body = body or CancelRequest()
    return await manager.stop(
        session_id,
        f"{body.reason} (reported by {who})",
        SessionState(body.outcome),
        # the other peers hear of it before this side's worker stops (a peer's report too: the
        # dealer hears of a data owner's cancel only through the model owner, while the broken
        # connection that stopping the worker causes would reach it directly)
        notify_first=True,
    )


def openapi_schema(app: Any) -> dict[str, Any]:
    """The app's OpenAPI document (built once)."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is None:
        app.openapi_schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
    return dict(app.openapi_schema)
