"""The dealer's routes: a model owner asks it to serve a session."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from common.web.responses import responses
from common.web.routes import get_service
from common.web.schemas import API_PREFIX, DealerJob, SessionView
from common.web.security import Peer
from dealer.jobs import Dealer

Service = Annotated[Dealer, Depends(get_service)]
router = APIRouter(prefix=API_PREFIX)


@router.post(
    "/sessions",
    response_model=SessionView,
    status_code=201,
    tags=["sessions"],
    summary="Serve Beaver triples for a session (model owners only)",
    responses=responses(401, 403, 409, 413, 422, 503),
)
async def join(*, body: DealerJob, service: Service, who: Peer) -> SessionView:
    return service.join(body, who)
