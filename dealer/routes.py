"""The dealer's routes: a model owner asks it to serve a session."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from common.protocol import SessionId
from common.web.responses import responses
from common.web.routes import get_service
from common.web.schemas import API_PREFIX, DataOwnerKey, DealerJob, SessionView
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


@router.post(
    "/sessions/{session_id}/data-owner",
    status_code=201,
    tags=["sessions"],
    summary="A data owner gives the key of its link with the dealer for a session (data owners only)",
    description="Sent by the data owner's service when it accepts an invitation, before the model "
    "owner asks the dealer: the model owner never holds this key. The digest names the job the "
    "data owner accepted; the dealer serves the session only if the model owner's job matches.",
    responses=responses(401, 403, 409, 413, 422),
)
async def register_data_owner(
    *, session_id: SessionId, body: DataOwnerKey, service: Service, who: Peer
) -> dict[str, str]:
    service.register_data_owner(session_id, body, who)
    return {"session_id": session_id}
