"""Session keys, the data owner's policy and the callback token, through the in-process apps.

The three apps are the real ones (tests/test_services_api.py joins them in-process); only the MPC
worker is a stand-in: ``common.web.sessions.start_party`` is replaced by :class:`FakeWorkers`, which
records each worker's :class:`PartyConfig` and starts a trivial process that exits with an error
(``fail``), runs until stopped (``hang``) or writes a result file and exits 0 (``complete``). No
test here depends on the MPC transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr, ValidationError

from common.errors import Conflict, NotFound
from common.ml.examples import ExampleSplit
from common.protocol import DEFAULT_CHUNK_ROWS, JobSpec, SessionKeys
from common.runtime.config import PartyConfig
from common.runtime.supervisor import Party
from common.web.routes import openapi_schema
from common.web.schemas import SessionState, SessionView
from common.web.store import SessionStore
from data_owner.settings import DataOwnerSettings
from tests.apps import (
    DEALER,
    DO,
    MO,
    TOKENS,
    Apps,
    assert_error,
    make_apps,
    open_session,
    session_at,
)

TERMINAL = {"completed", "failed", "expired", "cancelled", "rejected"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class FakeWorkers:
    """Stands in for ``common.runtime.supervisor.start_party``: records configs, starts no MPC worker."""

    mode: str = "fail"  # fail (after candidate 0 entered the MPC) | fail_early | hang | complete
    configs: list[PartyConfig] = field(default_factory=list)
    parties: list[Party] = field(default_factory=list)

    def of(self, role: str) -> list[PartyConfig]:
        return [c for c in self.configs if c.role == role]

    async def started(self, count: int) -> None:
        """Wait until ``count`` workers were started (each in a supervisor task's thread)."""
        for _ in range(1000):
            if len(self.parties) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{len(self.parties)} workers started, expected {count}")

    def start(self, config: PartyConfig, workdir: Path) -> Party:
        self.configs.append(config)
        party = Party(config, workdir / f"{config.role}.json", workdir / f"{config.role}.log")
        if self.mode == "complete" and config.role == "dealer":
            Path(config.result_file).write_text(json.dumps({"role": "dealer"}))
        elif self.mode == "complete":
            revealed = config.role == "model_owner" or config.job.reveal_to == "both"
            results = [
                {
                    "candidate": c.name,
                    "score": -0.5 if revealed else None,
                    "accept": None,
                    "seconds": 0.1,
                    "method": config.job.method,
                    "bytes_sent": 1000,
                    "bytes_received": 2000,
                    "rounds": 10,
                    "peak_rss_mb": 100.0,
                }
                for c in config.job.candidates
            ]
            Path(config.result_file).write_text(json.dumps({"results": results}))
        elif self.mode == "fail":  # joined, candidate 0 entered the MPC, then the worker failed
            events = [{"event": "joined", "total": len(config.job.candidates)}]
            events.append({"event": "started", "index": 0})
            Path(config.progress_file).write_text("".join(json.dumps(e) + "\n" for e in events))
        command = {
            "fail": ["false"],
            "fail_early": ["false"],
            "hang": ["sleep", "60"],
            "complete": ["true"],
        }[self.mode]
        party.process = subprocess.Popen(command, start_new_session=True)
        self.parties.append(party)
        return party


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> FakeWorkers:
    fake = FakeWorkers()
    monkeypatch.setattr("common.web.sessions.start_party", fake.start)
    return fake


async def settle(timeout: float = 10.0) -> None:
    """Wait for every session supervisor (and the peer notifications it sends at its end)."""
    tasks = [
        t for t in asyncio.all_tasks() if "_supervise" in getattr(t.get_coro(), "__qualname__", "")
    ]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


class Recorder(httpx.AsyncBaseTransport):
    """Records every request that reaches one in-process app."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[tuple[str, str, bytes]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path, request.content))
        return await self.inner.handle_async_request(request)

    def bodies(self, method: str, path: str) -> list[dict[str, Any]]:
        return [json.loads(b) for m, p, b in self.requests if (m, p) == (method, path)]


Build = Callable[..., Apps]


@pytest.fixture
async def stack(
    tmp_path: Path, digits_split: ExampleSplit, workers: FakeWorkers
) -> AsyncIterator[Build]:
    made: list[Apps] = []

    def build(**overrides: Any) -> Apps:
        apps = make_apps(tmp_path / f"stack{len(made)}", digits_split, **overrides)
        for host in ("do.test", "dealer.test"):
            apps.router.apps[host] = Recorder(apps.router.apps[host])  # type: ignore[assignment]
        made.append(apps)
        return apps

    yield build
    for apps in made:
        for app in (apps.mo, apps.do, apps.dealer):
            manager = app.state.service.sessions
            for session_id in manager.running():
                with contextlib.suppress(Conflict, NotFound):
                    await manager.stop(session_id, "the test ended", SessionState.FAILED)
    await settle()
    for apps in made:
        for app in (apps.mo, apps.do, apps.dealer):
            await app.state.service.sessions.shutdown()


def recorder(apps: Apps, host: str) -> Recorder:
    transport = apps.router.apps[host]
    assert isinstance(transport, Recorder)
    return transport


async def ended(apps: Apps, session_id: str, seconds: float = 20) -> dict[str, dict[str, Any]]:
    """Each side's final view of a session (a side that never heard of it is left out)."""
    views: dict[str, dict[str, Any]] = {}
    for base, token in ((MO, TOKENS["mo"]), (DO, TOKENS["do"]), (DEALER, TOKENS["dealer"])):
        async with apps.client(base, token) as c:
            for _ in range(int(seconds / 0.05)):
                response = await c.get(f"/v1/sessions/{session_id}")
                if response.status_code == 404:
                    break
                if response.json()["state"] in TERMINAL:
                    views[base] = response.json()
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"session {session_id} is still live at {base}")
    await settle()
    return views


# --------------------------------------------------------------------------------------------
# Session keys
# --------------------------------------------------------------------------------------------


async def every_get_response(apps: Apps, session_ids: list[str]) -> str:
    """The text of every GET route of every service, with every token that may call it."""
    texts = []
    callers = {
        MO: [TOKENS["mo"]],
        DO: [TOKENS["do"], TOKENS["mo@do"]],
        DEALER: [TOKENS["dealer"], TOKENS["mo@dealer"]],
    }
    for base, app in ((MO, apps.mo), (DO, apps.do), (DEALER, apps.dealer)):
        paths = [p for p, ops in openapi_schema(app)["paths"].items() if "get" in ops]
        for token in callers[base]:
            operator = token == callers[base][0]
            async with apps.client(base, token) as c:
                for path in paths:
                    if path == "/v1/metrics" and not operator:  # the operator's alone
                        assert (await c.get(path)).status_code == 403
                        continue
                    for session_id in session_ids:
                        url = path.replace("{session_id}", session_id)
                        url = url.replace("{dataset_id}", "candidate_01")
                        response = await c.get(url, params={"model_owner": "model-owner"})
                        assert response.status_code == 200, (base, url, response.text)
                        texts.append(response.text)
    return "\n".join(texts)


def state_bytes(apps: Apps) -> bytes:
    """Every file the three services keep: SQLite files (with WAL), model cache, worker dirs."""
    files = [p for side in ("mo", "do", "dealer") for p in (apps.tmp / side).rglob("*")]
    assert any(p.name == "sessions.db" for p in files)
    return b"".join(p.read_bytes() for p in files if p.is_file())


@pytest.mark.anyio
async def test_keys_reach_each_worker_config_and_nothing_else(
    stack: Build, workers: FakeWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    workers.mode = "hang"
    apps = stack()
    view = await open_session(apps, datasets=["candidate_01", "candidate_02"])
    assert view["state"] == "accepted", view
    await workers.started(3)
    (mo,), (do,), (dealer,) = (
        workers.of("model_owner"),
        workers.of("data_owner"),
        workers.of("dealer"),
    )
    assert mo.keys and do.keys and dealer.keys
    # each worker has exactly the keys of its own two links, and both ends of a link agree
    assert mo.keys.mo_do and mo.keys.mo_dealer and mo.keys.do_dealer is None
    assert do.keys.mo_dealer is None and dealer.keys.mo_do is None
    assert do.keys.mo_do == mo.keys.mo_do
    assert dealer.keys.mo_dealer == mo.keys.mo_dealer
    assert do.keys.do_dealer == dealer.keys.do_dealer
    keys = [mo.keys.mo_do, mo.keys.mo_dealer, do.keys.do_dealer]
    assert all(k is not None and len(k) == 64 for k in keys) and len(set(keys)) == 3
    for config in (mo, do, dealer):
        assert config.session_id == view["id"]
        assert config.allow_insecure_tfp is False
    # over REST each key went only from the one party that made it to the one that needs it:
    # the model owner's two keys in the invitation and the dealer job, the data owner's own key of
    # its link with the dealer straight to the dealer; the model owner never held that one
    (invitation,) = recorder(apps, "do.test").bodies("POST", "/v1/invitations")
    assert invitation["keys"] == {"mo_do": keys[0], "mo_dealer": None, "do_dealer": None}
    (job,) = recorder(apps, "dealer.test").bodies("POST", "/v1/sessions")
    assert job["keys"] == {"mo_do": None, "mo_dealer": keys[1], "do_dealer": None}
    (registered,) = recorder(apps, "dealer.test").bodies(
        "POST", f"/v1/sessions/{view['id']}/data-owner"
    )
    assert registered["key"] == keys[2]
    sent_by_mo = [b for _, _, b in recorder(apps, "do.test").requests]
    sent_by_mo += [b for _, p, b in recorder(apps, "dealer.test").requests if p == "/v1/sessions"]
    assert sent_by_mo and all(keys[2].encode() not in body for body in sent_by_mo)
    # the services keep no copy once the workers are started
    for _ in range(200):
        if all(p.config.keys is None for p in workers.parties):
            break
        await asyncio.sleep(0.01)
    assert all(p.config.keys is None for p in workers.parties)
    # no GET response, stored file or log line carries a key, while live or after the end
    for _ in range(2):
        texts = await every_get_response(apps, [view["id"]])
        stored = state_bytes(apps)
        for key in keys:
            assert key is not None
            assert key not in texts
            assert key.encode() not in stored
            assert key not in caplog.text
        async with apps.client(MO, TOKENS["mo"]) as c:
            response = await c.post(f"/v1/sessions/{view['id']}/cancel")
            assert response.status_code in (200, 409)
        views = await ended(apps, view["id"])
        assert {v["state"] for v in views.values()} == {"cancelled"}, views


@pytest.mark.anyio
async def test_keys_are_checked_by_the_data_owner_and_the_dealer(
    stack: Build, workers: FakeWorkers
) -> None:
    """The dealer takes the model owner ↔ dealer key from the model owner and the data owner ↔
    dealer key from the data owner (for the same job), and nothing else."""
    apps = stack()
    invitation = await valid_invitation(apps)
    sid = invitation["session_id"]
    job = {
        "session_id": sid,
        "job": invitation["job"],
        "rendezvous": invitation["rendezvous"],
        "deadlines": invitation["deadlines"],
    }
    mine = {"mo_dealer": "a" * 64}
    digest = JobSpec.model_validate(invitation["job"]).digest().hex()
    theirs = {"job_digest": digest, "key": "b" * 64}
    async with apps.client(DEALER, TOKENS["mo@dealer"]) as dealer:
        response = await dealer.post("/v1/sessions", json=job)
        assert_error(response, 422, "ConfigError", "mo-dealer")
        response = await dealer.post("/v1/sessions", json={**job, "keys": {"mo_dealer": "xyz"}})
        assert_error(response, 422, "ValidationError", "keys.mo_dealer")
        with_theirs = {**job, "keys": {**mine, "do_dealer": "c" * 64}}
        response = await dealer.post("/v1/sessions", json=with_theirs)
        assert_error(response, 422, "ConfigError", "only the data owner gives that one")
        gloo = {**job, "keys": mine, "job": {**job["job"], "transport": "gloo"}}
        assert_error(
            await dealer.post("/v1/sessions", json=gloo), 422, "ValidationError", "transport"
        )
        tfp = {**job, "keys": mine, "job": {**job["job"], "provider": "TFP"}}
        assert_error(await dealer.post("/v1/sessions", json=tfp), 403, "Forbidden", "TTP")
        response = await dealer.post("/v1/sessions", json={**job, "keys": mine})
        assert_error(response, 409, "Conflict", "no data owner has registered its key")
        # a model owner cannot register the data owner's key in its place
        response = await dealer.post(f"/v1/sessions/{sid}/data-owner", json=theirs)
        assert_error(response, 403, "Forbidden", "only a data owner")
        assert (await dealer.get("/v1/sessions")).json() == []  # nothing recorded
    async with apps.client(DEALER, TOKENS["do@dealer"]) as dealer:
        other = {**theirs, "job_digest": "0" * 64}
        assert (
            await dealer.post(f"/v1/sessions/{'e' * 32}/data-owner", json=other)
        ).status_code == 201
        assert (await dealer.post(f"/v1/sessions/{sid}/data-owner", json=theirs)).status_code == 201
        response = await dealer.post(f"/v1/sessions/{sid}/data-owner", json=theirs)
        assert_error(response, 409, "Conflict", "already has a data owner's key")  # first come
        response = await dealer.post("/v1/sessions", json={**job, "keys": mine})
        assert_error(response, 403, "Forbidden", "model owner's token")
    async with apps.client(DEALER, TOKENS["mo@dealer"]) as dealer:
        wrong_job = {**job, "session_id": "e" * 32, "keys": mine}
        response = await dealer.post("/v1/sessions", json=wrong_job)
        assert_error(response, 409, "Conflict", "accepted another job")
        response = await dealer.post("/v1/sessions", json={**job, "keys": mine})
        assert response.status_code == 201, response.text
    await workers.started(1)
    (config,) = workers.of("dealer")  # each key from the party of its link
    assert config.keys == SessionKeys(mo_dealer=mine["mo_dealer"], do_dealer=theirs["key"])


# --------------------------------------------------------------------------------------------
# Tampered invitations
# --------------------------------------------------------------------------------------------


async def valid_invitation(
    apps: Apps, datasets: tuple[str, ...] = ("candidate_01", "candidate_02")
) -> dict[str, Any]:
    async with apps.client(DO, TOKENS["mo@do"]) as do:
        metas = [(await do.get(f"/v1/datasets/{d}")).json() for d in datasets]
    return {
        "session_id": uuid.uuid4().hex,
        "model_owner": "model-owner",
        "label_encoding": "integer",
        "job": {
            "n_features": 64,
            "n_classes": 10,
            "n_train": 100,
            "n_test": 400,
            "candidates": [{"name": m["id"], "n_samples": m["n_samples"]} for m in metas],
            "feature_bound": max(m["feature_bound"] for m in metas),
        },
        "rendezvous": "tcp://127.0.0.1:29999",
        "dealer_url": DEALER,
        "keys": SessionKeys(mo_do="d" * 64).model_dump(),
        "deadlines": {"rendezvous_seconds": 5, "compute_seconds": 5},
    }


def tampered(base: dict[str, Any], job: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {**base, **top, "session_id": uuid.uuid4().hex, "job": {**base["job"], **(job or {})}}


@pytest.mark.anyio
async def test_tampered_invitations_are_rejected_with_their_reason(
    stack: Build, workers: FakeWorkers
) -> None:
    apps = stack()
    base = await valid_invitation(apps)
    cands = base["job"]["candidates"]
    bound = base["job"]["feature_bound"]
    # the data owner's policy and data: refused, and recorded as rejected
    refused = {
        "samples": tampered(base, {"candidates": [{**cands[0], "n_samples": 7}, cands[1]]}),
        "above the job's feature bound": tampered(base, {"feature_bound": bound / 2}),
        "has 64 features, the model 65": tampered(base, {"n_features": 65}),
        "only 2 classes": tampered(base, {"n_classes": 2}),
        "no pre-shared key for the MPC link(s) mo-do": tampered(base, keys=None),
        "that key is the data owner's to make": tampered(
            base, keys={"mo_do": "b" * 64, "do_dealer": "c" * 64}
        ),
        "is not one of model owner 'model-owner''s": tampered(base, rendezvous="tcp://evil.test:1"),
        "does not trust": tampered(base, dealer_url="http://evil.test"),
        "unknown dataset 'candidate_42'": tampered(
            base, {"candidates": [*cands, {"name": "candidate_42", "n_samples": 3}]}
        ),
    }
    # an inconsistent or out-of-range job breaks the contract: 422 naming the field, not recorded
    malformed = {
        "job.method": tampered(base, {"method": "magic"}),
        "job.steps": tampered(base, {"steps": 0}),
        "job.steps: Input should be less than or equal to 10000": tampered(base, {"steps": 10_001}),
        "job.lr": tampered(base, {"lr": 1e7}),
        "job.feature_bound: the feature bound must be a power of two": tampered(
            base, {"feature_bound": bound * 1.5}
        ),
        "listed twice": tampered(base, {"candidates": [cands[0], cands[0]]}),
        "job.transport: Extra inputs are not permitted": tampered(base, {"transport": "gloo"}),
        "datasets: Extra inputs are not permitted": tampered(base, datasets=["candidate_01"]),
        "keys.mo_do": tampered(base, keys={"mo_do": "not-hex", "do_dealer": "c" * 64}),
        "rendezvous": tampered(base, rendezvous="http://127.0.0.1:1"),
    }
    async with apps.client(DO, TOKENS["mo@do"]) as do:
        for words, invitation in refused.items():
            reply = (await do.post("/v1/invitations", json=invitation)).json()
            assert reply["accepted"] is False and words in reply["reason"], (words, reply)
            recorded = await session_at(apps, DO, TOKENS["do"], invitation["session_id"])
            assert recorded["state"] == "rejected" and words in recorded["reason"]
        for where, invitation in malformed.items():
            response = await do.post("/v1/invitations", json=invitation)
            assert_error(response, 422, "ValidationError", where)
            assert "not-hex" not in response.text
            response = await do.get(f"/v1/sessions/{invitation['session_id']}")
            assert_error(response, 404, "NotFound")
        assert workers.configs == []  # no worker started for any of them
        reply = (await do.post("/v1/invitations", json=base)).json()
        assert reply == {"accepted": True, "reason": None}
    await workers.started(1)
    (config,) = workers.of("data_owner")  # the owners' key, and its own key with the dealer
    assert config.keys is not None and config.keys.mo_do == base["keys"]["mo_do"]
    (registered,) = recorder(apps, "dealer.test").bodies(
        "POST", f"/v1/sessions/{base['session_id']}/data-owner"
    )
    assert config.keys.do_dealer == registered["key"]
    await ended(apps, base["session_id"])


# --------------------------------------------------------------------------------------------
# TFP and reveal_to
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tfp_is_refused_unless_both_owners_allow_it(
    stack: Build, workers: FakeWorkers
) -> None:
    apps = stack()
    async with apps.client(MO, TOKENS["mo"]) as mo:
        response = await mo.post(
            "/v1/sessions",
            json={"data_owner_url": DO, "datasets": ["candidate_01"], "provider": "TFP"},
        )
    assert_error(response, 422, "ConfigError", "MODEL_OWNER_ALLOW_INSECURE_TFP", "read")

    apps = stack(mo={"allow_insecure_tfp": True})
    view = await open_session(apps, provider="TFP")
    assert view["state"] == "rejected"
    for words in (
        "refuses provider TFP",
        "generates every Beaver triple",
        "read",
        "DATA_OWNER_ALLOW_INSECURE_TFP",
    ):
        assert words in view["reason"], view["reason"]
    assert workers.configs == []

    workers.mode = "hang"
    apps = stack(mo={"allow_insecure_tfp": True}, do={"allow_insecure_tfp": True})
    view = await open_session(apps, provider="TFP")
    assert view["state"] == "accepted", view
    async with apps.client(MO, TOKENS["mo"]) as mo:
        assert (await mo.post(f"/v1/sessions/{view['id']}/cancel")).status_code == 200
    views = await ended(apps, view["id"])
    assert DEALER not in views  # the dealer is not asked for a TFP session
    assert recorder(apps, "dealer.test").bodies("POST", "/v1/sessions") == []
    assert views[DO]["job"]["provider"] == "TFP"
    (mo,), (do,) = workers.of("model_owner"), workers.of("data_owner")
    assert mo.allow_insecure_tfp and do.allow_insecure_tfp
    assert mo.job.provider == do.job.provider == "TFP"
    assert do.keys and do.keys.mo_do == (mo.keys and mo.keys.mo_do)


@pytest.mark.anyio
async def test_reveal_to_model_owner_reaches_every_worker_and_hides_the_data_owners_results(
    stack: Build, workers: FakeWorkers
) -> None:
    workers.mode = "complete"
    apps = stack()
    view = await open_session(
        apps, datasets=["candidate_01", "candidate_02"], reveal_to="model_owner"
    )
    views = await ended(apps, view["id"])
    assert {v["state"] for v in views.values()} == {"completed"}, views
    assert {v["job"]["reveal_to"] for v in views.values()} == {"model_owner"}
    assert {c.job.reveal_to for c in workers.configs} == {"model_owner"}
    assert [r["score"] for r in views[MO]["results"]] == [-0.5, -0.5]
    theirs = views[DO]["results"]
    assert len(theirs) == 2 and all(r["score"] is None and r["accept"] is None for r in theirs)
    assert all(r["bytes_sent"] == 1000 for r in theirs)  # the cost is still reported

    # the default is 'both', or the model owner's MODEL_OWNER_REVEAL_TO
    view = await open_session(apps)
    assert view["job"]["reveal_to"] == "both"
    assert (await ended(apps, view["id"]))[DO]["results"][0]["score"] == -0.5
    apps = stack(mo={"reveal_to": "model_owner"}, do={"require_reveal_to_both": True})
    view = await open_session(apps)
    assert view["state"] == "rejected" and view["job"]["reveal_to"] == "model_owner"
    assert "requires to see every revealed result" in view["reason"]
    view = await open_session(apps, reveal_to="both")
    assert (await ended(apps, view["id"]))[DO]["state"] == "completed"


# --------------------------------------------------------------------------------------------
# Leakage budget
# --------------------------------------------------------------------------------------------


async def budget(apps: Apps, token: str, **params: str) -> httpx.Response:
    async with apps.client(DO, token) as do:
        return await do.get("/v1/budget", params=params)


@pytest.mark.anyio
async def test_budgets_of_sessions_and_candidates_are_lifetime_totals(
    stack: Build, workers: FakeWorkers
) -> None:
    apps = stack(do={"budget_sessions": 2, "budget_candidates": 3})
    two = ["candidate_01", "candidate_02"]
    first = await open_session(apps, datasets=two)
    assert first["state"] != "rejected", first
    refused = await open_session(apps, datasets=two)
    assert refused["state"] == "rejected"
    for words in ("2 candidates", "candidate budget", "2 of 3 candidates used", "GET /v1/budget"):
        assert words in refused["reason"], refused["reason"]
    second = await open_session(apps, datasets=["candidate_03"])
    assert second["state"] != "rejected", second
    await ended(apps, first["id"])
    await ended(apps, second["id"])  # a session that failed mid-run counts: scores may have leaked
    refused = await open_session(apps, datasets=["candidate_04"])
    assert refused["state"] == "rejected"
    assert "session budget" in refused["reason"] and "2 of 2 sessions" in refused["reason"]

    mine = (await budget(apps, TOKENS["mo@do"])).json()
    assert mine == {
        "model_owner": "model-owner",
        "sessions": {"used": 2, "limit": 2, "remaining": 0},
        # each session's worker failed once its first candidate had entered the MPC: of the
        # first session's two candidates only one is charged
        "candidates": {"used": 2, "limit": 3, "remaining": 1},
        "sessions_last_24h": {"used": 2, "limit": 100, "remaining": 98},
        "epsilon_spent": 0.0,
        "candidates_without_noise": 2,
    }
    assert (await budget(apps, TOKENS["do"], model_owner="model-owner")).json() == mine
    assert_error(await budget(apps, TOKENS["do"]), 422, "ConfigError", "model_owner")
    assert_error(await budget(apps, TOKENS["do"], model_owner="nobody"), 404, "NotFound")
    assert_error(await budget(apps, TOKENS["mo@do"], model_owner="other"), 403, "Forbidden")
    assert_error(await budget(apps, "wrong"), 401, "Unauthorized")

    # a per-model-owner override replaces only the limits it names
    apps = stack(do={"budgets": {"model-owner": {"candidates": 1}}})
    refused = await open_session(apps, datasets=two)
    assert refused["state"] == "rejected" and "0 of 1 candidates used" in refused["reason"]
    mine = (await budget(apps, TOKENS["mo@do"])).json()
    assert mine["sessions"]["limit"] == 100 and mine["candidates"] == {
        "used": 0,
        "limit": 1,
        "remaining": 1,
    }


@pytest.mark.anyio
async def test_a_session_that_failed_before_any_candidate_entered_the_mpc_costs_nothing(
    stack: Build, workers: FakeWorkers
) -> None:
    """A worker that cannot start (a missing file, a wrong path) revealed nothing: no charge."""
    workers.mode = "fail_early"
    apps = stack(do={"budget_sessions": 1, "budget_candidates": 1})
    for _ in range(3):  # three times the budget, each failed before the MPC
        view = await open_session(apps, datasets=["candidate_01"])
        assert view["state"] != "rejected", view
        at_do = (await ended(apps, view["id"]))[DO]
        assert at_do["state"] == "failed" and at_do["charged"] == 0
    mine = (await budget(apps, TOKENS["mo@do"])).json()
    assert mine["sessions"]["used"] == 0 and mine["candidates"]["used"] == 0
    assert mine["sessions_last_24h"]["used"] == 0
    workers.mode = "fail"  # this one's candidate entered the MPC: charged
    view = await open_session(apps, datasets=["candidate_01"])
    assert (await ended(apps, view["id"]))[DO]["charged"] == 1
    refused = await open_session(apps, datasets=["candidate_02"])
    assert refused["state"] == "rejected" and "session budget" in refused["reason"]


def test_budget_settings_load_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATA_OWNER_BUDGET_SESSIONS", "5")
    monkeypatch.setenv("DATA_OWNER_BUDGETS", '{"acme": {"sessions": 1}, "big": {"candidates": 10}}')
    settings = DataOwnerSettings()
    assert settings.budget("acme") == (1, 1000)
    assert settings.budget("big") == (5, 10)
    assert settings.budget("other") == (5, 1000)
    assert not settings.allow_insecure_tfp and not settings.require_reveal_to_both
    assert settings.max_noise_epsilon is None
    monkeypatch.setenv("DATA_OWNER_MAX_NOISE_EPSILON", "0.5")
    assert DataOwnerSettings().max_noise_epsilon == 0.5
    monkeypatch.setenv("DATA_OWNER_MAX_NOISE_EPSILON", "0")
    with pytest.raises(ValidationError, match="max_noise_epsilon"):
        DataOwnerSettings()
    monkeypatch.delenv("DATA_OWNER_MAX_NOISE_EPSILON")
    assert settings.min_noise_epsilon == 1e-3  # the default minimum applies to every noisy job
    monkeypatch.setenv("DATA_OWNER_MIN_NOISE_EPSILON", "0.25")
    assert DataOwnerSettings().min_noise_epsilon == 0.25
    monkeypatch.setenv("DATA_OWNER_MAX_NOISE_EPSILON", "0.1")  # no ε could pass both
    with pytest.raises(ValidationError, match=r"max_noise_epsilon 0\.1 is below min_noise_epsilon"):
        DataOwnerSettings()
    monkeypatch.delenv("DATA_OWNER_MAX_NOISE_EPSILON")
    for bad in ("0", "-1", "nan"):
        monkeypatch.setenv("DATA_OWNER_MIN_NOISE_EPSILON", bad)
        with pytest.raises(ValidationError, match="min_noise_epsilon"):
            DataOwnerSettings()
    monkeypatch.delenv("DATA_OWNER_MIN_NOISE_EPSILON")
    monkeypatch.setenv("DATA_OWNER_BUDGETS", '{"acme": {"session": 1}}')  # a typo is refused
    with pytest.raises(ValidationError, match="session"):
        DataOwnerSettings()


# --------------------------------------------------------------------------------------------
# Calibrated noise
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_noise_is_influence_only_and_reaches_every_worker_with_v_bound(
    stack: Build, workers: FakeWorkers
) -> None:
    apps = stack()
    async with apps.client(MO, TOKENS["mo"]) as mo:
        body = {"data_owner_url": DO, "datasets": ["candidate_01"], "noise_epsilon": 1.0}
        response = await mo.post("/v1/sessions", json={**body, "method": "gradient-norm"})
        assert_error(response, 422, "ValidationError", "noise_epsilon", "'influence' only")
        response = await mo.post("/v1/sessions", json={**body, "noise_epsilon": 0})
        assert_error(response, 422, "ValidationError", "noise_epsilon")
        assert (await mo.get("/v1/sessions")).json() == []
    assert workers.configs == []

    workers.mode = "complete"
    view = await open_session(apps, datasets=["candidate_01", "candidate_02"], noise_epsilon=0.5)
    views = await ended(apps, view["id"])
    assert {v["state"] for v in views.values()} == {"completed"}, views
    assert views[MO]["job"]["noise_epsilon"] == views[DO]["job"]["noise_epsilon"] == 0.5
    (invitation,) = recorder(apps, "do.test").bodies("POST", "/v1/invitations")
    bound = invitation["job"]["v_bound"]
    assert invitation["job"]["noise_epsilon"] == 0.5
    assert views[MO]["job"]["v_bound"] == views[DO]["job"]["v_bound"] == bound
    assert len(workers.configs) == 3
    assert {(c.job.noise_epsilon, c.job.v_bound) for c in workers.configs} == {(0.5, bound)}
    # a power of two at or above the model's largest column norm: v's size to a factor of two
    with np.load(apps.tmp / "mo" / "model.npz") as f:
        largest = float(np.linalg.norm(f["v"], axis=0).max())
    assert math.log2(bound) % 1 == 0 and largest <= bound < 2 * largest

    view = await open_session(apps)  # without noise the job has neither
    views = await ended(apps, view["id"])
    assert views[MO]["job"]["noise_epsilon"] is None and views[DO]["job"]["noise_epsilon"] is None
    invitation = recorder(apps, "do.test").bodies("POST", "/v1/invitations")[-1]
    assert invitation["job"]["noise_epsilon"] is None and invitation["job"]["v_bound"] is None


@pytest.mark.anyio
async def test_max_noise_epsilon_requires_noise_and_epsilon_spent_is_counted(
    stack: Build, workers: FakeWorkers
) -> None:
    apps = stack(do={"max_noise_epsilon": 1.0})
    refused = {
        "the job has no noise": await open_session(apps),
        "the job has ε = 2": await open_session(apps, noise_epsilon=2.0),
    }
    for words, view in refused.items():
        assert view["state"] == "rejected", view
        for required in (words, "requires calibrated noise with ε ≤ 1", "MAX_NOISE_EPSILON"):
            assert required in view["reason"], view["reason"]
        assert (await session_at(apps, DO, TOKENS["do"], view["id"]))["state"] == "rejected"
    assert workers.configs == []

    two = ["candidate_01", "candidate_02"]
    workers.mode = "complete"  # every candidate revealed, so every one is charged
    accepted = [
        await open_session(apps, datasets=two, noise_epsilon=0.5),
        await open_session(apps, datasets=["candidate_03"], noise_epsilon=1.0),
    ]
    for view in accepted:
        assert view["state"] != "rejected", view
        await ended(apps, view["id"])
    mine = (await budget(apps, TOKENS["mo@do"])).json()
    assert mine["epsilon_spent"] == 2.0 and mine["candidates_without_noise"] == 0
    assert mine["sessions"]["used"] == 2 and mine["candidates"]["used"] == 3  # rejections free

    # an invitation sent directly: noise needs a v_bound (422) and both must be finite
    base = tampered(await valid_invitation(apps), {"noise_epsilon": 0.5, "v_bound": 4.0})
    async with apps.client(DO, TOKENS["mo@do"]) as do:
        no_bound = tampered(base, {"v_bound": None})
        response = await do.post("/v1/invitations", json=no_bound)
        assert_error(response, 422, "ValidationError", "v_bound")
        response = await do.post("/v1/invitations", json=tampered(base, {"method": "finetune"}))
        assert_error(response, 422, "ValidationError", "'influence' only")
        infinite = json.dumps(tampered(base, {"v_bound": math.inf}))  # Python's json: Infinity
        headers = {"Content-Type": "application/json"}
        response = await do.post("/v1/invitations", content=infinite, headers=headers)
        assert_error(response, 422, "ValidationError", "v_bound must be a power of two")
    assert len(workers.of("data_owner")) == 2  # the two accepted sessions only


@pytest.mark.anyio
async def test_a_tiny_epsilon_is_refused_by_the_contract_and_by_the_data_owners_minimum(
    stack: Build, workers: FakeWorkers
) -> None:
    """Finding 2 at the services: ε = 1e-15 (which MAX_NOISE_EPSILON=1 let through) is refused by
    the model owner's own contract, by the data owner's parsing of an invitation sent directly,
    and an ε that fits the ring but is below DATA_OWNER_MIN_NOISE_EPSILON by the policy."""
    apps = stack(do={"max_noise_epsilon": 1.0, "min_noise_epsilon": 0.01})
    view = await open_session(apps, noise_epsilon=1e-15)
    assert view["state"] == "rejected", view
    for words in ("noise_epsilon", "ε = 1e-15 is below the smallest ε", "below 2⁴⁰"):
        assert words in view["reason"], view["reason"]

    base = tampered(await valid_invitation(apps), {"noise_epsilon": 0.5, "v_bound": 4.0})
    async with apps.client(DO, TOKENS["mo@do"]) as do:
        response = await do.post("/v1/invitations", json=tampered(base, {"noise_epsilon": 1e-15}))
        assert_error(response, 422, "ValidationError", "noise_epsilon", "ε = 1e-15 is below")

    view = await open_session(apps, noise_epsilon=0.001)  # fits the ring, below the policy's
    assert view["state"] == "rejected", view
    for words in ("refuses noise with ε = 0.001", "below its minimum 0.01", "MIN_NOISE_EPSILON"):
        assert words in view["reason"], view["reason"]
    assert workers.configs == []
    mine = (await budget(apps, TOKENS["mo@do"])).json()
    assert mine["epsilon_spent"] == 0.0 and mine["sessions"]["used"] == 0  # refusals are free


@pytest.mark.anyio
async def test_chunk_rows_reaches_every_worker_and_the_data_owner_caps_it(
    stack: Build, workers: FakeWorkers
) -> None:
    """The session's public chunk_rows is the job's (every party's worker cuts the candidate the
    same way); a data owner refuses chunks larger than its DATA_OWNER_MAX_CHUNK_ROWS (its memory)
    before any worker starts, and the default is the protocol's."""
    workers.mode = "complete"
    apps = stack(do={"max_chunk_rows": 1000})
    view = await open_session(apps, chunk_rows=1001)
    assert view["state"] == "rejected", view
    for words in ("chunks of 1001 rows", "(1000, DATA_OWNER_MAX_CHUNK_ROWS)"):
        assert words in view["reason"], view["reason"]
    assert workers.configs == []

    view = await open_session(apps, chunk_rows=1000, softmax_chunks=4)
    views = await ended(apps, view["id"])
    assert {v["state"] for v in views.values()} == {"completed"}, views
    assert {v["job"]["chunk_rows"] for v in views.values()} == {1000}
    assert {(c.job.chunk_rows, c.job.softmax_chunks) for c in workers.configs} == {(1000, 4)}
    assert len(workers.configs) == 3  # model owner, data owner, dealer

    default = await open_session(stack(), datasets=["candidate_02"])
    assert (default["job"]["chunk_rows"], default["job"]["softmax_chunks"]) == (
        DEFAULT_CHUNK_ROWS,
        1,
    )


def test_the_appraise_client_sends_noise_epsilon_and_chunk_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from common.client import ModelOwnerClient
    from common.errors import SessionEnded

    sent: list[dict[str, Any]] = []

    def fake_open(self: ModelOwnerClient, body: dict[str, Any]) -> SessionView:
        sent.append(body)
        return SessionView(
            id="a",
            role="model_owner",
            state=SessionState.REJECTED,
            counterpart=DO,
            method="influence",
            datasets=body["datasets"],
            reason="refused",
        )

    monkeypatch.setattr(ModelOwnerClient, "open_session", fake_open)
    with ModelOwnerClient(MO.replace("mo.test", "127.0.0.1"), "t") as client:
        for epsilon, rows in ((0.5, 100), (None, None)):
            with pytest.raises(SessionEnded, match="refused"):
                client.appraise(
                    data_owner=DO,
                    datasets=["x"],
                    noise_epsilon=epsilon,
                    chunk_rows=rows,
                    softmax_chunks=None if rows is None else 3,
                )
    assert sent[0]["noise_epsilon"] == 0.5 and "noise_epsilon" not in sent[1]
    assert sent[0]["chunk_rows"] == 100 and "chunk_rows" not in sent[1]
    assert sent[0]["softmax_chunks"] == 3 and "softmax_chunks" not in sent[1]


# --------------------------------------------------------------------------------------------
# The one-session callback token
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_callback_token_is_tied_to_its_session_and_expires_with_it(
    stack: Build, workers: FakeWorkers
) -> None:
    workers.mode = "hang"
    apps = stack()
    a = await open_session(apps, datasets=["candidate_01"])
    b = await open_session(apps, datasets=["candidate_02"])
    assert a["state"] == b["state"] == "accepted"
    invitations = recorder(apps, "do.test").bodies("POST", "/v1/invitations")
    token = {inv["session_id"]: inv["callback_token"] for inv in invitations}
    assert len(set(token.values())) == 2
    async with apps.client(MO, token[a["id"]]) as c:
        assert (await c.get(f"/v1/sessions/{a['id']}")).json()["state"] == "accepted"
        for response in (
            await c.get(f"/v1/sessions/{b['id']}"),
            await c.post(f"/v1/sessions/{b['id']}/cancel"),
            await c.get("/v1/sessions"),
            await c.get("/v1/model"),
            await c.get("/v1/openapi.json"),
            await c.post("/v1/sessions", json={"data_owner_url": DO, "datasets": ["x"]}),
        ):
            assert_error(response, 403, "Forbidden")
        response = await c.post(f"/v1/sessions/{a['id']}/cancel", json={"reason": "done here"})
        assert response.status_code == 200 and response.json()["state"] == "cancelled"
        assert_error(await c.get(f"/v1/sessions/{a['id']}"), 401, "Unauthorized")
        assert_error(await c.post(f"/v1/sessions/{a['id']}/cancel"), 401, "Unauthorized")
    # b's token expires when b ends by any other way too
    async with apps.client(MO, TOKENS["mo"]) as c:
        assert (await c.post(f"/v1/sessions/{b['id']}/cancel")).status_code == 200
    async with apps.client(MO, token[b["id"]]) as c:
        assert_error(await c.get(f"/v1/sessions/{b['id']}"), 401, "Unauthorized")
    await ended(apps, a["id"])
    await ended(apps, b["id"])
    for session_token in token.values():  # the tokens are not kept on disk either
        assert session_token.encode() not in state_bytes(apps)


@pytest.mark.anyio
async def test_a_session_ended_by_a_peer_during_negotiation_starts_no_worker(
    stack: Build, workers: FakeWorkers
) -> None:
    """The data owner's worker fails at once and reports it before the dealer has answered."""
    apps = stack()
    slow = recorder(apps, "dealer.test")

    class Slow(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            for _ in range(200):  # until the data owner's failure reached the model owner
                if any(c.role == "data_owner" for c in workers.configs):
                    await settle(timeout=5)
                    break
                await asyncio.sleep(0.01)
            return await slow.handle_async_request(request)

    apps.router.apps["dealer.test"] = Slow()  # type: ignore[assignment]
    view = await open_session(apps)
    assert view["state"] == "failed" and "data owner" in view["reason"], view
    views = await ended(apps, view["id"])
    assert workers.of("model_owner") == []
    assert views[DEALER]["state"] == "failed"  # told, and its worker stopped


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


def test_a_session_file_of_version_0_1_is_migrated_and_loses_nothing(tmp_path: Path) -> None:
    """0.1 copied the job's fields into columns (reveal, params, ...) and charged no candidates;
    the file is rebuilt in place: every row keeps its state, reason, progress and results (old
    results had one ``bytes`` figure), and each non-rejected session is charged every candidate
    it listed, since any may have been revealed."""
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, role TEXT NOT NULL, state TEXT NOT NULL, "
        "counterpart TEXT NOT NULL, method TEXT NOT NULL, datasets TEXT NOT NULL, reveal TEXT NOT "
        "NULL, params TEXT NOT NULL, rendezvous TEXT, reason TEXT, progress TEXT NOT NULL, "
        "results TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, "
        "reveal_to TEXT NOT NULL DEFAULT 'both', noise_epsilon REAL)"
    )
    old_result = {
        "candidate": "x",
        "method": "influence",
        "score": -0.5,
        "accept": None,
        "seconds": 1.0,
        "bytes": 1234,
        "rounds": 9,
        "peak_rss_mb": 100.0,
    }
    db.execute(
        "INSERT INTO sessions VALUES ('a', 'data_owner', 'completed', 'mo', 'influence', "
        "'[\"x\", \"y\"]', 'score', '{}', NULL, NULL, '{\"done\": 2, \"total\": 2}', ?, 1, 1, "
        "'both', 0.5)",
        (json.dumps([old_result]),),
    )
    db.execute(
        "INSERT INTO sessions VALUES ('r', 'data_owner', 'rejected', 'mo', 'influence', "
        "'[\"z\"]', 'score', '{}', NULL, 'no', '{\"done\": 0, \"total\": 0}', '[]', 2, 2, "
        "'both', NULL)"
    )
    db.commit()
    db.close()
    store = SessionStore(path)
    a = store.get("a")
    assert a.state == SessionState.COMPLETED and a.job is None and a.charged == 2
    assert a.results[0].bytes_sent == 1234 and a.results[0].score == -0.5
    assert store.get("r").reason == "no" and store.get("r").charged == 0
    assert store.usage("mo") == (1, 2)  # the rejected session costs nothing
    assert store.noise_usage("mo") == (1.0, 0)
    store.close()
    again = SessionStore(path)  # a migrated file opens as it is
    assert again.get("a").results == a.results
    again.close()


def test_a_wildcard_advertise_host_is_refused(tmp_path: Path, digits_split: ExampleSplit) -> None:
    """The model owner's worker binds exactly the advertised host for the rendezvous."""
    from common.errors import ConfigError
    from model_owner.app import create_app as model_owner_app
    from model_owner.settings import ModelOwnerSettings

    for host in ("0.0.0.0", "::", "[::]"):
        settings = ModelOwnerSettings(
            demo=True,
            advertise_host=host,
            state_dir=tmp_path,
            train=digits_split.train,
            test=digits_split.test,
        )
        with pytest.raises(ConfigError, match="MODEL_OWNER_ADVERTISE_HOST"):
            model_owner_app(settings)


def test_path_settings_are_resolved_where_the_service_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The documented relative defaults (and relative values) name files in the directory the
    service was started in, not wherever a worker runs."""
    from model_owner.settings import ModelOwnerSettings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_OWNER_DATA_DIR", "candidates")
    settings = DataOwnerSettings()
    assert settings.data_dir == tmp_path / "candidates"
    assert settings.state_dir == tmp_path / "state" / "data_owner"
    assert settings.database_path == tmp_path / "state" / "data_owner" / "sessions.db"
    mo = ModelOwnerSettings(train=Path("data/train.npz"), tls_ca=Path("~/ca.pem"))
    assert mo.train == tmp_path / "data" / "train.npz" and mo.test == tmp_path / "data" / "test.npz"
    assert mo.tls_ca == Path.home() / "ca.pem"


@pytest.mark.anyio
async def test_a_token_refused_over_plain_http_fails_the_session_with_that_cause(
    tmp_path: Path, digits_split: ExampleSplit
) -> None:
    """The model owner's own refusal to send its token in clear to another machine is named as
    such, and the session fails (it did not expire: no peer was ever asked)."""
    from model_owner.app import create_app as model_owner_app
    from model_owner.settings import ModelOwnerSettings

    app = model_owner_app(
        ModelOwnerSettings(
            api_token=SecretStr(TOKENS["mo"]),
            data_owners={"do": {"url": "http://do.invalid:8001", "token": TOKENS["mo@do"]}},
            dealer_token=SecretStr(TOKENS["mo@dealer"]),
            train=digits_split.train,
            test=digits_split.test,
            state_dir=tmp_path,
        )
    )  # its real peer client, with the plain-HTTP guard
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {TOKENS['mo']}"}
    async with httpx.AsyncClient(transport=transport, base_url=MO, headers=headers) as mo:
        body = {"data_owner_url": "http://do.invalid:8001", "datasets": ["candidate_01"]}
        response = await mo.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["state"] == "failed", view
    assert "refusing to send a bearer token over plain HTTP to do.invalid" in view["reason"]
    await app.state.service.sessions.shutdown()


@pytest.mark.anyio
async def test_behind_nat_the_worker_binds_another_address_than_it_advertises(
    stack: Build, workers: FakeWorkers
) -> None:
    workers.mode = "hang"
    apps = stack(
        mo={"advertise_host": "mo.example.org", "rendezvous_bind": "10.0.0.5"},
        do={
            "model_owners": {
                "model-owner": {"token": TOKENS["mo@do"], "rendezvous_hosts": ["mo.example.org"]}
            }
        },
    )
    view = await open_session(apps)
    assert view["state"] == "accepted" and view["rendezvous"].startswith("tcp://mo.example.org:")
    await workers.started(3)
    (mo,), (do,) = workers.of("model_owner"), workers.of("data_owner")
    assert mo.listen_host == "10.0.0.5" and do.listen_host is None
    assert mo.rendezvous == do.rendezvous == view["rendezvous"]  # the others connect there
    async with apps.client(MO, TOKENS["mo"]) as c:
        assert (await c.post(f"/v1/sessions/{view['id']}/cancel")).status_code == 200
    await ended(apps, view["id"])


# --------------------------------------------------------------------------------------------
# Identity: a data owner cannot pose as the model owner at another (issue 12, finding 1)
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_data_owner_cannot_pose_as_the_model_owner_at_another(
    stack: Build, workers: FakeWorkers, tmp_path: Path, digits_split: ExampleSplit
) -> None:
    """Data owner A records what the model owner sends it (its token, an invitation) and replays
    it at data owner B in the model owner's name, with a rendezvous on A's own host: B refuses
    before any worker starts, because A never held a token B knows, and B connects and reports
    only where it is configured to for that model owner."""
    from data_owner.app import create_app as data_owner_app
    from data_owner.settings import DataOwnerSettings

    at_b = "model-owner-at-data-owner-b-0123456789"
    apps = stack(
        mo={
            "data_owners": {
                "data-owner": {"url": DO, "token": TOKENS["mo@do"]},
                "bank": {"url": "http://do2.test", "token": at_b},
            }
        }
    )
    b_settings = DataOwnerSettings(
        api_token=SecretStr("data-owner-b-operator-0123456789abcd"),
        model_owners={
            "model-owner": {
                "token": at_b,
                "callback_url": MO,
                "rendezvous_hosts": ["127.0.0.1"],
            }
        },
        dealers={"dealer": {"url": DEALER, "token": "data-owner-b-at-dealer-0123456789abc"}},
        data_dir=apps.data_dir,
        state_dir=tmp_path / "bank",
    )
    b_app = data_owner_app(b_settings, client=httpx.AsyncClient(transport=apps.router))
    apps.router.apps["do2.test"] = Recorder(httpx.ASGITransport(app=b_app))  # type: ignore[assignment]
    workers.mode = "hang"
    # an ordinary session with A, whose invitation A records
    view = await open_session(apps)
    assert view["state"] == "accepted", view
    (recorded,) = recorder(apps, "do.test").bodies("POST", "/v1/invitations")
    forged = {**recorded, "session_id": uuid.uuid4().hex, "rendezvous": "tcp://do.test:29999"}
    async with apps.client("http://do2.test", TOKENS["mo@do"]) as as_a:  # the token A was sent
        response = await as_a.post("/v1/invitations", json=forged)
        assert_error(response, 401, "Unauthorized")
        assert_error(await as_a.get("/v1/datasets"), 401, "Unauthorized")
    # even with B's own token for the model owner (say it leaked), A's host is not a rendezvous
    # host B connects to for that model owner, and B would report only to its configured URL
    async with apps.client("http://do2.test", at_b) as leaked:
        reply = (await leaked.post("/v1/invitations", json=forged)).json()
    assert reply["accepted"] is False and "'do.test' is not one of model owner" in reply["reason"]
    assert [c.role for c in workers.configs].count("data_owner") == 1  # A's genuine one only
    async with apps.client(MO, TOKENS["mo"]) as c:
        assert (await c.post(f"/v1/sessions/{view['id']}/cancel")).status_code == 200
    await ended(apps, view["id"])
    await b_app.state.service.sessions.shutdown()


@pytest.mark.anyio
async def test_the_data_owner_reports_only_to_its_configured_callback(
    stack: Build, workers: FakeWorkers
) -> None:
    """An invitation cannot name where the data owner POSTs (no SSRF): it has no such field, and
    the end of a session is reported at the callback URL configured for that model owner."""
    apps = stack()
    base = await valid_invitation(apps)
    async with apps.client(DO, TOKENS["mo@do"]) as do:
        response = await do.post(
            "/v1/invitations", json={**base, "callback_url": "http://169.254.169.254/latest"}
        )
    assert_error(response, 422, "ValidationError", "callback_url")
    workers.mode = "fail"
    view = await open_session(apps)
    await ended(apps, view["id"])
    reports = [
        (m, p) for m, p, _ in recorder(apps, "dealer.test").requests if p.endswith("/cancel")
    ]
    assert reports  # the model owner told the dealer; the data owner told the model owner:
    mo_view = await session_at(apps, MO, TOKENS["mo"], view["id"])
    assert (
        "the data owner's side failed" in (mo_view["reason"] or "") or mo_view["state"] == "failed"
    )


@pytest.mark.anyio
async def test_a_model_whose_influence_statistic_would_leave_the_range_is_refused_before_inviting(
    stack: Build, workers: FakeWorkers
) -> None:
    """Without noise nothing public bounds v, so the model owner checks its own v against the
    fixed-point range (common.protocol.model_owner_problem) before it invites anyone: a 422
    naming the sizes and the range, no invitation sent, no worker started. Its worker checks again."""
    apps = stack()
    model = apps.mo.state.service.model
    model.state = model.state.__class__(
        **{**vars(model.state), "v": model.state.v * 1e10}  # a v 10¹⁰ times too large
    )
    async with apps.client(MO, TOKENS["mo"]) as mo:
        response = await mo.post(
            "/v1/sessions", json={"data_owner_url": DO, "datasets": ["candidate_01"]}
        )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "the influence statistic" in detail and "above 2⁴⁰" in detail, detail
    assert recorder(apps, "do.test").bodies("POST", "/v1/invitations") == []
    assert workers.configs == []
