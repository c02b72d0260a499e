"""The three services' real apps joined in-process by httpx's ASGITransport (tests' helpers).

The apps are the real ones (real SQLite, real negotiation between the apps); only the network is
in-process: a :class:`Router` sends each request to the app of its host.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from common.ml.examples import ExampleSplit
from data_owner.app import create_app as data_owner_app
from data_owner.settings import DataOwnerSettings
from dealer.app import create_app as dealer_app
from dealer.settings import DealerSettings
from model_owner.app import create_app as model_owner_app
from model_owner.settings import ModelOwnerSettings

MO, DO, DEALER = "http://mo.test", "http://do.test", "http://dealer.test"
# every relationship its own token, each at least 32 bytes (common.web.settings.MIN_TOKEN_BYTES)
TOKENS = {
    "mo": "mo-operator-secret-0123456789abcdef",
    "do": "do-operator-secret-0123456789abcdef",
    "dealer": "dealer-operator-secret-0123456789ab",
    "mo@do": "model-owner-at-data-owner-0123456789",
    "mo@dealer": "model-owner-at-dealer-0123456789abc",
    "do@dealer": "data-owner-at-dealer-0123456789abcd",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Router(httpx.AsyncBaseTransport):
    """Routes requests by host to in-process apps; any other host is unreachable."""

    def __init__(self) -> None:
        self.apps: dict[str, httpx.ASGITransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self.apps.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        return await transport.handle_async_request(request)


@dataclass
class Apps:
    mo: Any
    do: Any
    dealer: Any
    router: Router
    data_dir: Path
    tmp: Path

    def client(self, base: str, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(transport=self.router, base_url=base, headers=headers)


def settings_for(
    tmp: Path, split: ExampleSplit, data_dir: Path, **overrides: Any
) -> dict[str, Any]:
    mo_settings: dict[str, Any] = {
        "api_token": SecretStr(TOKENS["mo"]),
        "data_owners": {"data-owner": {"url": DO, "token": TOKENS["mo@do"]}},
        "dealer_token": SecretStr(TOKENS["mo@dealer"]),
        "dealer_url": DEALER,
        "train": split.train,
        "test": split.test,
        "state_dir": tmp / "mo",
        "rendezvous_ports": "29600-29699",
        "rendezvous_timeout": 60,
    }
    mo = ModelOwnerSettings(**{**mo_settings, **overrides.pop("mo", {})})
    do_settings: dict[str, Any] = {
        "api_token": SecretStr(TOKENS["do"]),
        "model_owners": {
            "model-owner": {
                "token": TOKENS["mo@do"],
                "callback_url": MO,
                "rendezvous_hosts": ["127.0.0.1"],
            }
        },
        "dealers": {"dealer": {"url": DEALER, "token": TOKENS["do@dealer"]}},
        "data_dir": data_dir,
        "state_dir": tmp / "do",
    }
    do = DataOwnerSettings(**{**do_settings, **overrides.pop("do", {})})
    dealer = DealerSettings(
        api_token=SecretStr(TOKENS["dealer"]),
        model_owners={"model-owner": {"token": TOKENS["mo@dealer"]}},
        data_owners={"data-owner": {"token": TOKENS["do@dealer"]}},
        state_dir=tmp / "dealer",
        **overrides.pop("dealer", {}),
    )
    return {"mo": mo, "do": do, "dealer": dealer}


def make_apps(tmp: Path, split: ExampleSplit, **overrides: Any) -> Apps:
    data_dir = tmp / "data"
    if not data_dir.exists():
        data_dir.mkdir(parents=True)
        for c in split.candidates:
            shutil.copy(c, data_dir)
    s = settings_for(tmp, split, data_dir, **overrides)
    router = Router()
    client = httpx.AsyncClient(transport=router)
    apps = Apps(
        mo=model_owner_app(s["mo"], client=client),
        do=data_owner_app(s["do"], client=client),
        dealer=dealer_app(s["dealer"]),
        router=router,
        data_dir=data_dir,
        tmp=tmp,
    )
    for host, app in (("mo.test", apps.mo), ("do.test", apps.do), ("dealer.test", apps.dealer)):
        router.apps[host] = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return apps


@pytest.fixture
async def apps(tmp_path: Path, digits_split: ExampleSplit) -> AsyncIterator[Apps]:
    made = make_apps(tmp_path, digits_split)
    yield made
    for app in (made.mo, made.do, made.dealer):
        await app.state.service.sessions.shutdown()


def assert_error(response: httpx.Response, status: int, kind: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == kind, body
    for word in words:
        assert word in body["detail"], body


async def open_session(apps: Apps, **body: Any) -> dict[str, Any]:
    payload = {"data_owner_url": DO, "datasets": ["candidate_01"], **body}
    async with apps.client(MO, TOKENS["mo"]) as mo:
        response = await mo.post("/v1/sessions", json=payload)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def session_at(apps: Apps, base: str, token: str, session_id: str) -> dict[str, Any]:
    async with apps.client(base, token) as c:
        response = await c.get(f"/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def finished(
    apps: Apps, base: str, token: str, session_id: str, seconds: float = 180
) -> dict[str, Any]:
    end = time.monotonic() + seconds
    while True:
        view = await session_at(apps, base, token, session_id)
        if view["state"] in ("completed", "failed", "expired", "cancelled", "rejected"):
            return view
        assert time.monotonic() < end, view
        await asyncio.sleep(0.2)
