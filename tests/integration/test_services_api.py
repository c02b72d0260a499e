"""API tests of the three services, joined in-process by httpx's ASGITransport.

The apps are the real ones (real SQLite, real negotiation between the apps); only the network is
in-process. One test runs a real MPC session this way (its workers rendezvous over TCP); the others
stop before any worker starts. End-to-end tests with uvicorn processes are in test_services_e2e.py.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from common.errors import ConfigError
from common.ml.examples import ExampleSplit
from common.runtime.local import plaintext_scores
from common.web.routes import openapi_schema
from common.web.schemas import SessionState
from common.web.settings import PLACEHOLDER
from common.web.store import SessionStore
from data_owner.app import create_app as data_owner_app
from data_owner.settings import DataOwnerSettings
from dealer.app import create_app as dealer_app
from dealer.settings import DealerSettings
from model_owner.app import create_app as model_owner_app
from model_owner.settings import ModelOwnerSettings
from tests.apps import (
    DEALER,
    DO,
    MO,
    TOKENS,
    Apps,
    assert_error,
    finished,
    make_apps,
    open_session,
    session_at,
)

# --------------------------------------------------------------------------------------------
# Health, authentication, the error shape
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_health_needs_no_token(apps: Apps) -> None:
    for base in (MO, DO, DEALER):
        async with apps.client(base, None) as c:
            response = await c.get("/v1/health")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"


@pytest.mark.anyio
async def test_every_other_route_needs_a_valid_token(apps: Apps) -> None:
    checked = 0
    for base, app in ((MO, apps.mo), (DO, apps.do), (DEALER, apps.dealer)):
        for path, operations in openapi_schema(app)["paths"].items():
            if path == "/v1/health":
                continue
            for method in operations:
                url = path.replace("{session_id}", "0" * 32).replace("{dataset_id}", "x")
                for token in (None, "wrong-token", TOKENS["mo"] if base != MO else TOKENS["do"]):
                    async with apps.client(base, token) as c:
                        response = await c.request(method.upper(), url)
                    assert_error(response, 401, "Unauthorized")
                    assert response.headers["www-authenticate"] == "Bearer"
                    checked += 1
    assert checked >= 3 * 12  # every service's routes were found and tried


def test_placeholder_secrets_are_refused_outside_the_demo(
    tmp_path: Path, digits_split: ExampleSplit
) -> None:
    strong = "a-real-secret-of-at-least-32-bytes-0"
    with pytest.raises(ConfigError, match="DATA_OWNER_API_TOKEN is unset or the placeholder"):
        data_owner_app(DataOwnerSettings(state_dir=tmp_path / "a", data_dir=tmp_path / "d"))
    peer = {"model-owner": {"token": "change-me", "rendezvous_hosts": ["x"]}}
    with pytest.raises(ConfigError, match=r"DATA_OWNER_MODEL_OWNERS\['model-owner'\].token"):
        data_owner_app(
            DataOwnerSettings(
                api_token=SecretStr(strong),
                model_owners=peer,
                state_dir=tmp_path / "b",
                data_dir=tmp_path,
            )
        )
    with pytest.raises(ConfigError, match="MODEL_OWNER_DEALER_TOKEN"):
        model_owner_app(
            ModelOwnerSettings(
                api_token=SecretStr(strong),
                state_dir=tmp_path / "c",
                train=digits_split.train,
                test=digits_split.test,
            )
        )
    # a token too short to resist guessing, or one shared by two relationships, is refused too
    with pytest.raises(ConfigError, match=r"DATA_OWNER_API_TOKEN is 5 bytes long: .* at least 32"):
        data_owner_app(DataOwnerSettings(api_token=SecretStr("short"), state_dir=tmp_path / "g"))
    shared = {"model-owner": {"token": strong, "rendezvous_hosts": ["x"]}}
    with pytest.raises(ConfigError, match="are the same token"):
        data_owner_app(
            DataOwnerSettings(
                api_token=SecretStr(strong), model_owners=shared, state_dir=tmp_path / "h"
            )
        )
    with pytest.raises(ConfigError, match="DEALER_API_TOKEN"):
        dealer_app(DealerSettings(state_dir=tmp_path / "e"))
    demo = dealer_app(DealerSettings(state_dir=tmp_path / "f", demo=True))
    assert demo.state.service.settings.api_token.get_secret_value() == PLACEHOLDER


@pytest.mark.anyio
async def test_malformed_bodies_get_422_naming_the_field(apps: Apps) -> None:
    async with apps.client(MO, TOKENS["mo"]) as mo:
        response = await mo.post("/v1/sessions", content=b"{not json")
        assert_error(response, 422, "ValidationError")
        response = await mo.post("/v1/sessions", json={"data_owner_url": DO, "datasets": []})
        assert_error(response, 422, "ValidationError", "datasets")
        response = await mo.post(
            "/v1/sessions", json={"data_owner_url": DO, "datasets": ["a"], "method": "magic"}
        )
        assert_error(response, 422, "ValidationError", "method")
        response = await mo.post(
            "/v1/sessions", json={"data_owner_url": DO, "datasets": ["a"], "reveal": "threshold"}
        )
        assert_error(response, 422, "ValidationError", "threshold: reveal 'threshold' needs")
        response = await mo.post(
            "/v1/sessions", json={"data_owner_url": DO, "datasets": ["../etc/passwd"]}
        )
        assert_error(response, 422, "ValidationError", "datasets")
        response = await mo.post(
            "/v1/sessions", json={"data_owner_url": DO, "datasets": ["a"], "stepz": 3}
        )
        assert_error(response, 422, "ValidationError", "stepz")
        response = await mo.post("/v1/sessions", content=b"x" * 2_000_000)
        assert_error(response, 413, "PayloadTooLarge", "limit")


@pytest.mark.anyio
async def test_unknown_session_is_404_and_finished_session_cannot_be_cancelled(
    apps: Apps,
) -> None:
    async with apps.client(MO, TOKENS["mo"]) as mo:
        assert_error(await mo.get(f"/v1/sessions/{'0' * 32}"), 404, "NotFound", "/v1/sessions")
    view = await open_session(apps, datasets=["no_such_dataset"])
    async with apps.client(MO, TOKENS["mo"]) as mo:
        response = await mo.post(f"/v1/sessions/{view['id']}/cancel")
    assert_error(response, 409, "Conflict", "rejected")


# --------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_datasets_serve_metadata_only(apps: Apps, digits_split: ExampleSplit) -> None:
    async with apps.client(DO, TOKENS["mo@do"]) as do:
        listed = (await do.get("/v1/datasets")).json()
        one = (await do.get("/v1/datasets/candidate_03")).json()
        missing = await do.get("/v1/datasets/candidate_99")
    assert [d["id"] for d in listed] == [f"candidate_{i:02d}" for i in range(1, 11)]
    assert set(one) == {
        "id",
        "name",
        "n_samples",
        "n_features",
        "n_classes",
        "label_encoding",
        "feature_bound",
        "feature_encoding",
    }
    with np.load(digits_split.candidates[2]) as f:
        assert one["n_samples"] == len(f["y"]) and one["n_features"] == f["X"].shape[1] == 64
        assert one["feature_bound"] >= np.abs(f["X"]).max()
    assert_error(missing, 404, "NotFound", "candidate_99", "candidate_01")


def npz_bytes(X: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, X=X, y=y)
    return buffer.getvalue()


def forged_npz() -> bytes:
    """An archive whose X header declares 10¹² float64 values over 64 bytes of data: numpy would
    try to allocate 8 TB before noticing."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    labels = io.BytesIO()
    np.save(labels, np.zeros(3, dtype=np.int64))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("X.npy", header.getvalue() + bytes(64))
        z.writestr("y.npy", labels.getvalue())
    return archive.getvalue()


def test_a_poisoned_data_directory_does_not_stop_the_data_owner(
    tmp_path: Path, digits_split: ExampleSplit, caplog: pytest.LogCaptureFixture
) -> None:
    """Every file that cannot be read is skipped with a warning naming it; the rest are served."""
    apps = make_apps(tmp_path, digits_split)
    good = set(apps.do.state.service.registry.meta)
    poison = {
        "forged.npz": forged_npz(),
        "huge.npz": npz_bytes(np.full((2, 64), 1e308), np.zeros(2, dtype=int)),
        "junk.npz": b"PK\x03\x04junk",
        "nan.csv": b"a,b,label\n1,nan,0\n",
        "binary.csv": bytes(range(256)),
        "empty.npz": b"",
    }
    for name, data in poison.items():
        (apps.data_dir / name).write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="data_appraisal.data_owner"):
        again = make_apps(tmp_path, digits_split)
    assert set(again.do.state.service.registry.meta) == good
    for name in poison:
        assert any(name in r.getMessage() for r in caplog.records), name


@pytest.mark.anyio
async def test_upload_validates_limits_and_keeps_nothing_bad(
    tmp_path: Path, digits_split: ExampleSplit
) -> None:
    apps = make_apps(tmp_path, digits_split, do={"max_upload_bytes": 50_000})
    rng = np.random.default_rng(0)
    good = npz_bytes(rng.random((20, 64)), rng.integers(0, 10, 20))
    before = sorted(p.name for p in apps.data_dir.iterdir())
    async with apps.client(DO, TOKENS["do"]) as do:
        response = await do.post("/v1/datasets?id=fresh", content=good)
        assert response.status_code == 201, response.text
        assert response.json()["n_samples"] == 20
        assert_error(await do.post("/v1/datasets?id=fresh", content=good), 409, "Conflict")
        assert_error(await do.post("/v1/datasets?id=empty", content=b""), 422, "DataError", "empty")
        bad = npz_bytes(rng.random((20, 64)), np.full(20, np.nan))
        assert_error(await do.post("/v1/datasets?id=bad", content=bad), 422, "DataError")
        assert_error(
            await do.post("/v1/datasets?id=junk", content=b"PK\x03\x04junk"), 422, "DataError"
        )
        huge_value = npz_bytes(np.full((20, 64), 1e308), rng.integers(0, 10, 20))
        assert_error(
            await do.post("/v1/datasets?id=huge", content=huge_value), 422, "DataError", "too large"
        )
        assert_error(
            await do.post("/v1/datasets?id=forged", content=forged_npz()),
            422,
            "DataError",
            "forged",
        )
        big = npz_bytes(rng.random((200, 64)), rng.integers(0, 10, 200))
        assert_error(await do.post("/v1/datasets?id=big", content=big), 413, "PayloadTooLarge")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b"x" * 10_000

        assert_error(
            await do.post("/v1/datasets?id=streamed", content=chunks()), 413, "PayloadTooLarge"
        )
        assert_error(await do.post("/v1/datasets?id=../up", content=good), 422, "ValidationError")
        listed = [d["id"] for d in (await do.get("/v1/datasets")).json()]
    async with apps.client(DO, TOKENS["mo@do"]) as do:
        assert_error(await do.post("/v1/datasets?id=theirs", content=good), 403, "Forbidden")
    after = sorted(p.name for p in apps.data_dir.iterdir())
    assert after == sorted([*before, "fresh.npz"])  # no temp file or rejected upload left
    assert "fresh" in listed and "bad" not in listed
    # a restarted data owner registers the uploaded file again
    await apps.do.state.service.sessions.shutdown()
    again = make_apps(tmp_path, digits_split)
    assert "fresh" in again.do.state.service.registry.meta


@pytest.mark.anyio
async def test_two_concurrent_uploads_under_one_id_cannot_both_succeed(
    tmp_path: Path, digits_split: ExampleSplit
) -> None:
    """The first upload holds its id from its first byte: a second one under the same id, sent
    while the first is still streaming, is refused at once, and the first one's data is kept."""
    apps = make_apps(tmp_path, digits_split)
    rng = np.random.default_rng(2)
    first = npz_bytes(rng.random((20, 64)), rng.integers(0, 10, 20))
    second = npz_bytes(rng.random((30, 64)), rng.integers(0, 10, 30))
    midway = asyncio.Event()

    async def slow(data: bytes) -> AsyncIterator[bytes]:
        yield data[:100]
        midway.set()
        await asyncio.sleep(0.3)  # the other upload arrives meanwhile
        yield data[100:]

    async def upload(body: Any) -> httpx.Response:
        async with apps.client(DO, TOKENS["do"]) as do:
            return await do.post("/v1/datasets?id=same", content=body)

    async def after_midway() -> httpx.Response:
        await midway.wait()
        return await upload(second)

    a, b = await asyncio.gather(upload(slow(first)), after_midway())
    assert a.status_code == 201, a.text
    assert_error(b, 409, "Conflict", "'same' already exists")
    assert apps.do.state.service.registry.meta["same"].n_samples == 20
    assert (apps.data_dir / "same.npz").read_bytes() == first
    assert not [p for p in apps.data_dir.iterdir() if p.name.startswith(".upload-")]
    await apps.do.state.service.sessions.shutdown()


@pytest.mark.anyio
async def test_a_dealer_at_capacity_answers_503(tmp_path: Path, digits_split: ExampleSplit) -> None:
    """Unavailable (retry later), not Forbidden: nothing is wrong with the caller."""
    apps = make_apps(tmp_path, digits_split)
    apps.dealer.state.service.settings.max_concurrent_sessions = 0
    body = {
        "session_id": "d" * 32,
        "job": {"n_features": 64, "n_classes": 10, "candidates": [{"name": "c", "n_samples": 1}]},
        "rendezvous": "tcp://127.0.0.1:1",
        "keys": {"mo_dealer": "a" * 64},
        "deadlines": {"rendezvous_seconds": 5, "compute_seconds": 5},
    }
    async with apps.client(DEALER, TOKENS["mo@dealer"]) as dealer:
        response = await dealer.post("/v1/sessions", json=body)
    assert_error(response, 503, "Unavailable", "retry later")
    for app in (apps.mo, apps.do, apps.dealer):
        await app.state.service.sessions.shutdown()


# --------------------------------------------------------------------------------------------
# Negotiation: both sides record a rejection with an actionable reason
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_mismatched_features_are_rejected_on_both_sides(apps: Apps) -> None:
    rng = np.random.default_rng(1)
    async with apps.client(DO, TOKENS["do"]) as do:
        response = await do.post(
            "/v1/datasets?id=wide", content=npz_bytes(rng.random((30, 65)), rng.integers(0, 10, 30))
        )
        assert response.status_code == 201
    view = await open_session(apps, datasets=["wide"])
    assert view["state"] == "rejected"
    assert "65 features" in view["reason"] and "64" in view["reason"]
    theirs = await session_at(apps, DO, TOKENS["do"], view["id"])
    assert theirs["state"] == "rejected" and "65 features" in theirs["reason"]


@pytest.mark.anyio
async def test_labels_beyond_the_model_are_rejected(apps: Apps) -> None:
    rng = np.random.default_rng(2)
    async with apps.client(DO, TOKENS["do"]) as do:
        await do.post(
            "/v1/datasets?id=many_labels",
            content=npz_bytes(rng.random((30, 64)), np.arange(30) % 12),
        )
    view = await open_session(apps, datasets=["many_labels"])
    assert view["state"] == "rejected" and "labels up to 11" in view["reason"]
    assert (await session_at(apps, DO, TOKENS["do"], view["id"]))["state"] == "rejected"


@pytest.mark.anyio
async def test_policy_refusals_are_recorded_with_reasons(
    tmp_path: Path, digits_split: ExampleSplit
) -> None:
    apps = make_apps(
        tmp_path,
        digits_split,
        do={"allowed_methods": ["influence"], "max_sessions_per_day": 0},
        mo={"label_encoding": "one-hot"},
    )
    view = await open_session(apps, method="finetune")
    assert view["state"] == "rejected"
    assert "label encoding" in view["reason"]
    theirs = await session_at(apps, DO, TOKENS["do"], view["id"])
    assert "policy does not allow the method 'finetune'" in theirs["reason"]
    view = await open_session(apps, method="influence")
    theirs = await session_at(apps, DO, TOKENS["do"], view["id"])
    assert "used its 0 sessions" in theirs["reason"]
    # the data owner's operator sees both; the model owner's token sees its own too
    async with apps.client(DO, TOKENS["mo@do"]) as do:
        assert len((await do.get("/v1/sessions")).json()) == 2


@pytest.mark.anyio
async def test_unknown_dataset_wrong_peer_token_and_unreachable_peer(
    tmp_path: Path, digits_split: ExampleSplit
) -> None:
    apps = make_apps(tmp_path, digits_split)
    view = await open_session(apps, datasets=["candidate_42"])
    assert view["state"] == "rejected" and "candidate_42" in view["reason"]
    async with apps.client(MO, TOKENS["mo"]) as mo:  # a data owner this model owner does not know
        body = {"data_owner_url": "http://nowhere.test", "datasets": ["candidate_01"]}
        response = await mo.post("/v1/sessions", json=body)
    assert_error(response, 422, "ConfigError", "no data owner is configured at http://nowhere")
    gone = {"data_owners": {"data-owner": {"url": "http://gone.test", "token": TOKENS["mo@do"]}}}
    unreachable = make_apps(tmp_path / "u", digits_split, mo=gone)
    view = await open_session(unreachable, data_owner_url="http://gone.test")
    assert view["state"] == "expired" and "did not answer" in view["reason"]
    await apps.mo.state.service.sessions.shutdown()
    wrong_token = "not-the-data-owners-token-0123456789"
    wrong = make_apps(
        tmp_path / "w",
        digits_split,
        mo={"data_owners": {"data-owner": {"url": DO, "token": wrong_token}}},
    )
    view = await open_session(wrong, datasets=["candidate_01"])
    assert view["state"] == "rejected" and "Unauthorized" in view["reason"]


@pytest.mark.anyio
async def test_invitation_names_must_match_the_token(apps: Apps) -> None:
    """A model owner cannot claim another's name: the data owner refuses and records why."""
    job = {
        "n_features": 64,
        "n_classes": 10,
        "candidates": [{"name": "candidate_01", "n_samples": 1}],
    }
    invitation = {
        "session_id": "a" * 32,
        "model_owner": "someone-else",
        "label_encoding": "integer",
        "job": job,
        "rendezvous": "tcp://127.0.0.1:29999",
        "dealer_url": DEALER,
        "deadlines": {"rendezvous_seconds": 5, "compute_seconds": 5},
    }
    async with apps.client(DO, TOKENS["mo@do"]) as do:
        reply = (await do.post("/v1/invitations", json=invitation)).json()
        assert reply == {"accepted": False, "reason": reply["reason"]}
        assert "someone-else" in reply["reason"]
        again = await do.post("/v1/invitations", json=invitation)
        assert_error(again, 409, "Conflict")
    async with apps.client(DO, TOKENS["do"]) as do:
        assert_error(await do.post("/v1/invitations", json=invitation), 403, "Forbidden")


# --------------------------------------------------------------------------------------------
# Restart: nothing is lost; live sessions fail with their cause
# --------------------------------------------------------------------------------------------


def test_store_recovery_marks_live_sessions_failed(tmp_path: Path) -> None:
    from common.web.schemas import SessionView

    store = SessionStore(tmp_path / "s.db")
    now = time.time()
    for sid, state in (("a" * 32, "running"), ("b" * 32, "completed"), ("c" * 32, "accepted")):
        store.create(
            SessionView(
                id=sid,
                role="data_owner",
                state=state,
                counterpart="mo",
                method="influence",
                datasets=["x"],
                created_at=now,
                updated_at=now,
            )
        )
    store.close()
    again = SessionStore(tmp_path / "s.db")
    assert sorted(again.recover()) == ["a" * 32, "c" * 32]
    assert again.get("a" * 32).state is SessionState.FAILED
    assert "service stopped" in (again.get("a" * 32).reason or "")
    assert again.get("b" * 32).state is SessionState.COMPLETED
    # a finished session never changes again
    assert again.advance("b" * 32, SessionState.FAILED).state is SessionState.COMPLETED
    assert again.record("b" * 32, reason="late").reason is None


# --------------------------------------------------------------------------------------------
# A real MPC session through the in-process apps
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.mpc
async def test_session_runs_real_mpc_and_both_sides_store_the_score(
    apps: Apps, digits_split: ExampleSplit
) -> None:
    view = await open_session(apps, datasets=["candidate_01", "candidate_10"])
    assert view["state"] == "accepted", view
    view = await finished(apps, MO, TOKENS["mo"], view["id"])
    assert view["state"] == "completed", view["reason"]
    assert view["progress"] == {"done": 2, "total": 2, "step": 0, "steps": 0}  # influence: no steps
    theirs = await finished(apps, DO, TOKENS["do"], view["id"])
    dealer = await finished(apps, DEALER, TOKENS["dealer"], view["id"])
    assert theirs["state"] == "completed" and dealer["state"] == "completed"
    plain = plaintext_scores(
        method="influence",
        train=digits_split.train,
        test=digits_split.test,
        candidates=[digits_split.candidates[0], digits_split.candidates[9]],
    )
    for ours, their, expected in zip(view["results"], theirs["results"], plain, strict=True):
        assert ours["score"] == their["score"]
        assert ours["score"] == pytest.approx(expected, abs=1e-3)
        assert ours["bytes_sent"] > 0 and ours["bytes_received"] > 0 and ours["rounds"] > 0
    assert set(view["results"][0]) == {
        "candidate",
        "method",
        "score",
        "accept",
        "seconds",
        "bytes_sent",
        "bytes_received",
        "rounds",
        "peak_rss_mb",
    }
    assert not (apps.tmp / "mo" / "work" / view["id"]).exists()  # worker files removed
    assert apps.mo.state.service.ports._taken == set()  # the rendezvous port went back to the pool


@pytest.mark.anyio
@pytest.mark.mpc
async def test_a_worker_error_is_reported_on_both_sessions(apps: Apps) -> None:
    """A candidate file corrupted after registration: the data owner's worker fails to load it,
    its error file names the cause, and both sides record it."""
    (apps.data_dir / "candidate_02.npz").write_bytes(b"PK\x03\x04 no longer a zip archive")
    view = await open_session(apps, datasets=["candidate_02"])
    theirs = await finished(apps, DO, TOKENS["do"], view["id"], seconds=90)
    ours = await finished(apps, MO, TOKENS["mo"], view["id"], seconds=90)
    assert theirs["state"] == "failed" and "DataError" in theirs["reason"], theirs
    assert "candidate_02.npz" in theirs["reason"]
    assert ours["state"] == "failed" and "DataError" in ours["reason"], ours
    assert "Traceback" not in ours["reason"]


# --------------------------------------------------------------------------------------------
# Fuzz: no input makes a service answer 5xx
# --------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
session_like = st.fixed_dictionaries(
    {
        "data_owner_url": st.sampled_from([DO, DO, DO, "http://nowhere.test", "ftp://x", ""]),
        "datasets": st.lists(
            st.sampled_from(["candidate_01", "candidate_02", "zz", "", "../x"]), max_size=3
        ),
    },
    optional={
        "method": st.sampled_from(["influence", "gradient-norm", "finetune", "x"]),
        "params": st.dictionaries(st.sampled_from(["steps", "lr", "batch_size"]), json_values)
        | st.just({"steps": 2, "lr": 0.5}),
        "reveal": st.sampled_from(["score", "threshold", 3]),
        "threshold": st.none() | json_values,
        "direction": st.sampled_from([None, "lower", "higher"]) | json_values,
    },
)
# JSON that Python's parser accepts but a schema must refuse (NaN, ∞, huge numbers, deep nesting)
TRICKY = [
    b'{"data_owner_url": "http://do.test", "datasets": ["candidate_01"], "reveal": "threshold",'
    b' "threshold": NaN}',
    b'{"data_owner_url": "http://do.test", "datasets": ["candidate_01"], "params": {"lr": Infinity}}',
    b'{"data_owner_url": "http://do.test", "datasets": ["candidate_01"], "params": {"steps": 1e400}}',
    b'{"data_owner_url": "http://do.test", "datasets": ["candidate_01"], "params": {"batch_size":'
    b" 99999999999999999999999999}}",
    b"[" * 5000 + b"]" * 5000,
    b'{"datasets": "candidate_01"}',
    b"\xff\xfe",
]
targets = st.sampled_from(
    [
        (MO, "/v1/sessions", "mo"),
        (DO, "/v1/invitations", "mo@do"),
        (DEALER, "/v1/sessions", "mo@dealer"),
        (MO, f"/v1/sessions/{'0' * 32}/cancel", "mo"),
        (DO, "/v1/datasets?id=fz", "do"),
    ]
)


@pytest.mark.anyio
async def test_fuzzed_requests_never_cause_a_server_error(
    tmp_path: Path, digits_split: ExampleSplit
) -> None:
    # the data owner's policy refuses every session, so that no fuzzed request starts workers
    apps = make_apps(tmp_path, digits_split, do={"max_sessions_per_day": 0})
    seen: set[int] = set()
    calls: list[int] = []

    raw_bodies = st.one_of(st.none(), st.none(), st.binary(max_size=64), st.sampled_from(TRICKY))

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(target=targets, body=st.one_of(session_like, session_like, json_values), raw=raw_bodies)
    @example(
        target=(MO, "/v1/sessions", "mo"), body={"data_owner_url": DO, "datasets": ["x"]}, raw=None
    )
    @example(target=(DO, "/v1/invitations", "mo@do"), body={"job": {}}, raw=None)
    def run(target: tuple[str, str, str], body: Any, raw: bytes | None) -> None:
        base, path, who = target

        async def call() -> httpx.Response:
            async with apps.client(base, TOKENS[who]) as c:
                if raw is not None:
                    return await c.post(path, content=raw)
                return await c.post(path, json=body)

        response = asyncio.run_coroutine_threadsafe(call(), loop).result()
        seen.add(response.status_code)
        calls.append(response.status_code)
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert set(response.json()) == {"error", "detail"}
        if response.status_code == 201 and response.json().get("state") == "accepted":
            raise AssertionError("a fuzzed request started a session")

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(run)
    assert len(calls) >= 250
    assert {201, 422} <= seen  # the explicit examples: a rejected session, a malformed body
    for app in (apps.mo, apps.do, apps.dealer):
        await app.state.service.sessions.shutdown()


@pytest.mark.anyio
@pytest.mark.mpc
async def test_a_party_missing_at_the_rendezvous_expires_both_sides(
    tmp_path: Path, digits_split: ExampleSplit
) -> None:
    """The dealer agrees but never joins: both owners' sessions expire at the rendezvous deadline."""
    from fastapi import FastAPI

    apps = make_apps(tmp_path, digits_split, mo={"rendezvous_timeout": 3})
    absent = FastAPI()

    @absent.post("/v1/sessions", status_code=201)
    async def agree() -> dict[str, str]:
        return {}

    @absent.post("/v1/sessions/{session_id}/data-owner", status_code=201)
    async def take_key(session_id: str) -> dict[str, str]:
        return {}

    apps.router.apps["dealer.test"] = httpx.ASGITransport(app=absent)
    view = await open_session(apps)
    assert view["state"] == "accepted"
    started = time.monotonic()
    ours = await finished(apps, MO, TOKENS["mo"], view["id"], seconds=60)
    theirs = await finished(apps, DO, TOKENS["do"], view["id"], seconds=30)
    assert ours["state"] == theirs["state"] == "expired", (ours, theirs)
    assert "rendezvous" in ours["reason"] and "3 s" in ours["reason"]
    assert time.monotonic() - started < 30
    for app in (apps.mo, apps.do):
        await app.state.service.sessions.shutdown()
