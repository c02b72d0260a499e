"""The model owner's FastAPI app: ``create_app(settings)``."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from common.web.app import create_service_app
from model_owner.negotiation import ModelOwner
from model_owner.routes import router
from model_owner.settings import ModelOwnerSettings, get_settings


def create_app(
    settings: ModelOwnerSettings | None = None, client: httpx.AsyncClient | None = None
) -> FastAPI:
    """The app; ``client`` replaces the peer client (tests join the apps in-process with it)."""
    service = ModelOwner(settings or get_settings(), client)
    return create_service_app(
        title="data-appraisal model owner",
        description="Holds the model θ̂ and the test set; opens appraisal sessions with data "
        "owners and runs its side of each session's MPC. Only the score or the accept bit of each "
        "candidate is revealed.",
        service=service,
        routers=[router],
    )
