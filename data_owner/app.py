"""The data owner's FastAPI app: ``create_app(settings)``."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from common.web.app import create_service_app
from data_owner.invitations import DataOwner
from data_owner.routes import UPLOAD_PATH, router
from data_owner.settings import DataOwnerSettings, get_settings


def create_app(
    settings: DataOwnerSettings | None = None, client: httpx.AsyncClient | None = None
) -> FastAPI:
    """The app; ``client`` replaces the peer client (tests join the apps in-process with it)."""
    service = DataOwner(settings or get_settings(), client)
    return create_service_app(
        title="data-appraisal data owner",
        description="Registers candidate data sets and serves their public metadata; accepts or "
        "refuses appraisal sessions by policy; runs its side of each session's MPC.",
        service=service,
        routers=[router],
        upload_limits={UPLOAD_PATH: service.settings.max_upload_bytes},
    )
