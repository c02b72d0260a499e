"""What operators use besides sessions: /v1/docs, /v1/metrics and the services' log lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.ml.examples import ExampleSplit
from common.protocol import CandidateResult
from common.web.logs import ChangesOnly, JsonFormatter
from common.web.schemas import SessionState, SessionView
from common.web.store import SessionStore
from tests.apps import DO, MO, TOKENS, assert_error, make_apps

pytestmark = pytest.mark.anyio


def result(name: str, seconds: float, sent: int, received: int) -> CandidateResult:
    return CandidateResult(
        candidate=name,
        method="influence",
        score=-0.1,
        seconds=seconds,
        bytes_sent=sent,
        bytes_received=received,
        rounds=3,
        peak_rss_mb=100.0,
    )


def session(session_id: str, state: SessionState, *results: CandidateResult) -> SessionView:
    return SessionView(
        id=session_id,
        role="model_owner",
        state=state,
        counterpart="data-owner",
        method="influence",
        datasets=[r.candidate for r in results] or ["c"],
        results=list(results),
        charged=len(results),
    )


async def test_docs_page_is_served_offline_and_the_schema_stays_behind_the_token(
    tmp_path: Path, digits_split: ExampleSplit
) -> None:
    apps = make_apps(tmp_path, digits_split)
    async with apps.client(MO, None) as anyone:
        page = await anyone.get("/v1/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "http" not in page.text  # every script and style from this service, no CDN
        bundle = await anyone.get("/v1/docs/static/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and len(bundle.content) > 500_000
        assert "javascript" in bundle.headers["content-type"]
        assert (await anyone.get("/v1/docs/static/swagger-ui.css")).status_code == 200
        assert "Bearer" in (await anyone.get("/v1/docs/init.js")).text
        assert_error(await anyone.get("/v1/openapi.json"), 401, "Unauthorized")
        assert_error(await anyone.get("/v1/docs/static/../../sessions"), 401, "Unauthorized")
    async with apps.client(MO, TOKENS["mo"]) as operator:
        schema = (await operator.get("/v1/openapi.json")).json()
        assert "/v1/sessions" in schema["paths"] and "/v1/docs" not in schema["paths"]
    await apps.mo.state.service.sessions.shutdown()


@pytest.mark.parametrize("mode", ["public", "off"])
async def test_docs_public_or_off(tmp_path: Path, digits_split: ExampleSplit, mode: str) -> None:
    apps = make_apps(tmp_path, digits_split, do={"docs": mode})
    async with apps.client(DO, None) as anyone:
        if mode == "public":
            assert (await anyone.get("/v1/docs")).status_code == 200
            schema = await anyone.get("/v1/openapi.json")
            assert schema.status_code == 200 and "/v1/datasets" in schema.json()["paths"]
        else:
            assert_error(await anyone.get("/v1/docs"), 401, "Unauthorized")
            assert_error(await anyone.get("/v1/openapi.json"), 401, "Unauthorized")
        assert_error(await anyone.get("/v1/datasets"), 401, "Unauthorized")  # routes never open
    async with apps.client(DO, TOKENS["do"]) as operator:
        assert (await operator.get("/v1/docs")).status_code == (200 if mode == "public" else 404)
    await apps.do.state.service.sessions.shutdown()


async def test_metrics_count_sessions_by_state_and_what_their_results_cost(
    tmp_path: Path, digits_split: ExampleSplit
) -> None:
    apps = make_apps(tmp_path, digits_split)
    store = apps.mo.state.service.sessions.store
    store.create(session("a" * 32, SessionState.COMPLETED, result("c1", 1.5, 100, 200)))
    store.create(
        session("b" * 32, SessionState.FAILED, result("c1", 2.0, 10, 20), result("c2", 0.25, 1, 2))
    )
    store.create(session("c" * 32, SessionState.CANCELLED))
    async with apps.client(MO, TOKENS["mo"]) as operator:
        response = await operator.get("/v1/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("data_appraisal_sessions", (("state", "completed"),))] == 1
    assert samples[("data_appraisal_sessions", (("state", "failed"),))] == 1
    assert samples[("data_appraisal_sessions", (("state", "running"),))] == 0
    assert samples[("data_appraisal_results_total", ())] == 3
    assert samples[("data_appraisal_mpc_seconds_total", ())] == 3.75
    assert samples[("data_appraisal_mpc_bytes_total", (("direction", "sent"),))] == 111
    assert samples[("data_appraisal_mpc_bytes_total", (("direction", "received"),))] == 222
    assert samples[("data_appraisal_running_workers", ())] == 0
    async with apps.client(MO, TOKENS["mo@dealer"]) as stranger:
        assert_error(await stranger.get("/v1/metrics"), 401, "Unauthorized")
    async with apps.client(DO, TOKENS["mo@do"]) as peer:
        assert_error(await peer.get("/v1/metrics"), 403, "Forbidden")
    await apps.mo.state.service.sessions.shutdown()


def test_every_transition_is_one_log_line_with_session_and_role(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SessionStore(tmp_path / "s.db")
    with caplog.at_level(logging.INFO, logger="data_appraisal.sessions"):
        store.create(session("d" * 32, SessionState.ACCEPTED))
        store.advance("d" * 32, SessionState.RUNNING)
        store.advance("d" * 32, SessionState.COMPLETED, results=[result("c", 1.0, 5, 5)])
        store.advance("d" * 32, SessionState.FAILED, reason="too late")  # ended: no line
    lines = [JsonFormatter("model-owner").format(r) for r in caplog.records]
    parsed = [json.loads(line) for line in lines]
    assert [(p.get("previous"), p["state"]) for p in parsed] == [
        (None, "accepted"),
        ("accepted", "running"),
        ("running", "completed"),
    ]
    for p in parsed:
        assert p["service"] == "model-owner" and p["role"] == "model_owner"
        assert p["session"] == "d" * 32 and p["level"] == "INFO"
    assert parsed[-1]["results"] == 1 and parsed[-1]["mpc_seconds"] == 1.0


@pytest.mark.parametrize(
    ("method", "status", "kept"),
    [("GET", 200, False), ("HEAD", 200, False), ("GET", 404, True), ("POST", 201, True)],
)
def test_access_lines_of_successful_reads_are_dropped(method: str, status: int, kept: bool) -> None:
    record = logging.makeLogRecord(
        {
            "name": "uvicorn.access",
            "msg": '%s - "%s %s HTTP/%s" %d',
            "args": ("127.0.0.1:5000", method, "/v1/sessions/x", "1.1", status),
        }
    )
    assert ChangesOnly().filter(record) is kept


@pytest.mark.parametrize("library", ["pandas", "polars"])
def test_results_convert_to_a_data_frame(library: str) -> None:
    from common.client import results_frame

    rows = [result("c1", 1.5, 100, 200), result("c2", 0.5, 1, 2)]
    frame = results_frame(rows, library=library)
    assert list(frame.columns) == list(CandidateResult.model_fields)
    assert list(frame["candidate"]) == ["c1", "c2"]
    assert list(frame["bytes_received"]) == [200, 2]
    accept = frame["accept"]
    assert (accept.is_null() if library == "polars" else accept.isna()).all()  # score reveal
    empty = results_frame([], library=library)
    assert len(empty) == 0 and list(empty.columns) == list(CandidateResult.model_fields)
