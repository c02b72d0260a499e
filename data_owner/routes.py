"""The data owner's routes: its data sets' metadata, uploads, invitations and budgets."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from common.protocol import DatasetId
from common.web.responses import responses
from common.web.routes import get_service
from common.web.schemas import API_PREFIX, BudgetView, DatasetMeta, Invitation, InvitationReply
from common.web.security import Caller, Operator, Peer
from data_owner.invitations import DataOwner

UPLOAD_PATH = f"{API_PREFIX}/datasets"


Service = Annotated[DataOwner, Depends(get_service)]
router = APIRouter(prefix=API_PREFIX)


@router.get(
    "/datasets",
    response_model=list[DatasetMeta],
    tags=["datasets"],
    summary="Public metadata of every data set",
    responses=responses(401),
)
async def list_datasets(*, service: Service, who: Caller) -> list[DatasetMeta]:
    return list(service.registry.meta.values())


@router.get(
    "/datasets/{dataset_id}",
    response_model=DatasetMeta,
    tags=["datasets"],
    summary="One data set's public metadata",
    responses=responses(401, 404),
)
async def get_dataset(*, dataset_id: str, service: Service, who: Caller) -> DatasetMeta:
    return service.registry.get(dataset_id)


@router.post(
    "/datasets",
    response_model=DatasetMeta,
    status_code=201,
    tags=["datasets"],
    summary="Upload a candidate data set (operator only)",
    description="The body is the file itself (`.npz` with arrays X and y, or `.parquet` or `.csv` "
    "with the label in the last column); its size is limited by DATA_OWNER_MAX_UPLOAD_BYTES.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
    responses=responses(401, 403, 409, 413, 422),
)
async def upload_dataset(
    *,
    request: Request,
    service: Service,
    who: Operator,
    id: Annotated[DatasetId, Query(description="the new dataset's id")],
    format: Annotated[
        Literal["npz", "parquet", "csv"], Query(description="the file's format")
    ] = "npz",
) -> DatasetMeta:
    return await service.registry.add(id, f".{format}", request.stream())


@router.post(
    "/invitations",
    response_model=InvitationReply,
    tags=["sessions"],
    summary="A model owner proposes a session (model owners only)",
    responses=responses(401, 403, 409, 413, 422),
)
async def invite(*, body: Invitation, service: Service, who: Peer) -> InvitationReply:
    return await service.invite(body, who)


@router.get(
    "/budget",
    response_model=BudgetView,
    tags=["policy"],
    summary="A model owner's remaining leakage budget (its own; the operator names one)",
    responses=responses(401, 403, 404, 422),
)
async def budget(
    *,
    service: Service,
    who: Caller,
    model_owner: Annotated[
        str | None, Query(description="operator only: whose budget (a model owner's name)")
    ] = None,
) -> BudgetView:
    return service.budget(who, model_owner)
