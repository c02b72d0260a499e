"""The dealer's FastAPI app: ``create_app(settings)``."""

from __future__ import annotations

from fastapi import FastAPI

from common.web.app import create_service_app
from dealer.jobs import Dealer
from dealer.routes import router
from dealer.settings import DealerSettings, get_settings


def create_app(settings: DealerSettings | None = None) -> FastAPI:
    return create_service_app(
        title="data-appraisal dealer",
        description="Serves Beaver triples to both owners' workers (provider TTP). "
        "Holds no inputs; neither owner may run it for both.",
        service=Dealer(settings or get_settings()),
        routers=[router],
    )
