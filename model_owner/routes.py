"""The model owner's routes: its public model metadata, retraining, and opening sessions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from common.web.responses import responses
from common.web.routes import get_service
from common.web.schemas import API_PREFIX, ModelInfo, SessionCreate, SessionView
from common.web.security import Operator
from model_owner.negotiation import ModelOwner

Service = Annotated[ModelOwner, Depends(get_service)]
router = APIRouter(prefix=API_PREFIX)


@router.get(
    "/model",
    response_model=ModelInfo,
    tags=["model"],
    summary="Public model metadata",
    responses=responses(401, 403),
)
async def model_info(*, service: Service, who: Operator) -> ModelInfo:
    return service.info


@router.post(
    "/model/train",
    response_model=ModelInfo,
    tags=["model"],
    summary="Retrain θ̂ from the files",
    responses=responses(401, 403, 409),
)
async def retrain(*, service: Service, who: Operator) -> ModelInfo:
    return await service.retrain()


@router.post(
    "/sessions",
    response_model=SessionView,
    status_code=201,
    tags=["sessions"],
    summary="Open an appraisal session with a data owner",
    description="Negotiates synchronously (metadata, proposal, dealer) and starts the MPC. The "
    "returned session is `accepted` (follow it with GET /v1/sessions/{id}), or `rejected`, "
    "`failed` or `expired` with a reason.",
    responses=responses(401, 403, 413, 422),
)
async def open_session(*, body: SessionCreate, service: Service, who: Operator) -> SessionView:
    return await service.open_session(body)
