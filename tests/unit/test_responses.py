"""The services' error answers: one JSON shape, a kind and a reason, never a bare 500 for input."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from common.errors import DataError
from common.web.responses import install_error_handlers


def app_raising(exc: BaseException) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    return app


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("exc", "status", "kind", "words"),
    [
        (MemoryError(), 413, "PayloadTooLarge", "more memory"),
        (DataError("x.npz: X contains NaN"), 422, "DataError", "NaN"),
        (RuntimeError("secret internals"), 500, "InternalError", "log"),
    ],
)
async def test_errors_have_a_kind_and_a_reason(
    exc: BaseException, status: int, kind: str, words: str
) -> None:
    transport = httpx.ASGITransport(app=app_raising(exc), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/boom")
    assert response.status_code == status
    body = response.json()
    assert body["error"] == kind and words in body["detail"], body
    assert "secret internals" not in response.text
