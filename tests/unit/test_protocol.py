"""The contract: the job, the worker's configuration and the session state machine refuse every
inconsistent or out-of-range combination, naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from common.protocol import (
    MAX_STATISTIC,
    CandidateMeta,
    CandidateResult,
    JobSpec,
    SessionKeys,
    threshold_problem,
)
from common.runtime.config import PartyConfig
from common.web.schemas import SessionState, SessionView
from common.web.store import TRANSITIONS, SessionStore, check_transition

BASE: dict[str, Any] = {
    "n_features": 4,
    "n_classes": 3,
    "n_train": 10,
    "n_test": 20,
    "candidates": [CandidateMeta(name="c", n_samples=5)],
}


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"method": "magic"}, "unknown method 'magic'"),
        ({"feature_bound": 3.0}, "power of two"),
        ({"direction": "lower"}, "direction: it says which scores pass a threshold"),
        (
            {"noise_epsilon": 1.0, "v_bound": 1.0, "method": "finetune"},
            "calibrated for 'influence'",
        ),
        ({"noise_epsilon": 1.0}, "v_bound: noise_epsilon needs"),
        ({"noise_epsilon": 1.0, "v_bound": 3.0}, "v_bound must be a power of two"),
        ({"method": "finetune", "n_test": 0}, "n_test: method 'finetune' needs"),
        ({"candidates": [CandidateMeta(name="c", n_samples=5)] * 2}, "listed twice"),
        ({"candidates": []}, "at least 1 item"),
        ({"steps": 10_001}, "less than or equal to 10000"),
        ({"lr": float("inf")}, "finite number"),
        ({"transport": "gloo"}, "Extra inputs are not permitted"),
    ],
)
def test_an_inconsistent_job_is_refused_naming_the_field(
    changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        JobSpec(**{**BASE, **changes})


def test_a_candidate_id_is_a_safe_name() -> None:
    for bad in ("../x", "", "a b", "-x"):
        with pytest.raises(ValidationError):
            CandidateMeta(name=bad, n_samples=1)


def test_threshold_must_fit_the_reveal_mode_and_the_fixed_point_range() -> None:
    score = JobSpec(**BASE)
    threshold = JobSpec(**BASE, reveal="threshold")
    assert threshold_problem(score, None) is None
    assert "only used with reveal 'threshold'" in str(threshold_problem(score, 0.1))
    assert "needs the model owner's secret threshold" in str(threshold_problem(threshold, None))
    assert threshold_problem(threshold, -0.3) is None
    assert "finite" in str(threshold_problem(threshold, float("nan")))
    # influence's statistic is −τ·n: 1e308 cannot be compared under MPC (it was a wrong bit)
    problem = threshold_problem(threshold, 1e308)
    assert problem is not None and "beyond what the fixed-point comparison represents" in problem
    edge = MAX_STATISTIC / 5  # n = 5
    assert threshold_problem(threshold, edge * 0.99) is None
    assert threshold_problem(threshold, edge * 1.01) is not None


def _config(tmp: Path, **changes: Any) -> dict[str, Any]:
    return {
        "role": "model_owner",
        "rendezvous": "tcp://127.0.0.1:1",
        "job": JobSpec(**BASE).model_dump(),
        "result_file": str(tmp / "r"),
        "error_file": str(tmp / "e"),
        "progress_file": str(tmp / "p"),
        "train": str(tmp / "train.npz"),
        "test": str(tmp / "test.npz"),
        **changes,
    }


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"threshhold": 0.5}, "threshhold"),  # a typo is an error, never a silent default
        ({"label_colum": "y"}, "label_colum"),
        ({"threshold": 0.5}, "only used with reveal 'threshold'"),
        ({"train": None}, "needs its train and test files"),
        ({"role": "data_owner"}, "the model owner's inputs, not the data_owner's"),
        ({"role": "dealer", "train": None, "test": None, "candidates": ["/x.npz"]}, "candidates"),
        ({"train": "train.npz"}, "must be absolute"),
        ({"rendezvous": "http://x:1"}, "rendezvous"),
    ],
)
def test_a_worker_configuration_is_strict(
    tmp_path: Path, changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        PartyConfig.model_validate(_config(tmp_path, **changes))
    PartyConfig.model_validate(_config(tmp_path))  # the unchanged one is fine


def test_session_keys_hand_each_role_its_own_links() -> None:
    keys = SessionKeys.new()
    assert keys.for_role("data_owner").model_dump() == {
        "mo_do": keys.mo_do,
        "mo_dealer": None,
        "do_dealer": keys.do_dealer,
    }
    assert keys.for_role("data_owner", "TFP").do_dealer is None  # no dealer, no dealer link
    assert SessionKeys(mo_do=keys.mo_do).missing("data_owner") == ["do-dealer"]
    assert keys.mo_do is not None and keys.mo_do not in repr(keys)


def test_results_of_version_0_1_read_as_bytes_sent() -> None:
    old = {"candidate": "c", "method": "influence", "score": 1.0, "seconds": 1.0, "bytes": 7}
    result = CandidateResult.model_validate({**old, "rounds": 1, "peak_rss_mb": 1.0})
    assert (result.bytes_sent, result.bytes_received) == (7, 0)


def test_the_state_machine_moves_forward_only(tmp_path: Path) -> None:
    S = SessionState
    check_transition(S.PROPOSED, S.ACCEPTED)
    check_transition(S.ACCEPTED, S.RUNNING)
    check_transition(S.RUNNING, S.COMPLETED)
    for current, new in (
        (S.PROPOSED, S.RUNNING),
        (S.RUNNING, S.ACCEPTED),
        (S.ACCEPTED, S.COMPLETED),
    ):
        with pytest.raises(ValueError, match="cannot become"):
            check_transition(current, new)
    assert all(not TRANSITIONS[s] for s in S if s.terminal)
    store = SessionStore(tmp_path / "s.db")
    view = SessionView(
        id="a" * 32,
        role="dealer",
        state=S.ACCEPTED,
        counterpart="mo",
        method="influence",
        datasets=["c"],
    )
    store.create(view)
    with pytest.raises(ValueError, match="an accepted session cannot become completed"):
        store.advance(view.id, S.COMPLETED)
    assert store.advance(view.id, S.RUNNING).state is S.RUNNING
    assert store.advance(view.id, S.FAILED, reason="x").reason == "x"
    assert store.advance(view.id, S.COMPLETED).state is S.FAILED  # ended: left as it is
    store.close()


def test_a_session_view_carries_the_job_it_agreed() -> None:
    job = JobSpec(**BASE)
    with pytest.raises(ValidationError, match="is not the session's"):
        SessionView(
            id="x",
            role="dealer",
            state="accepted",
            counterpart="mo",
            method="finetune",
            datasets=["c"],
            job=job,
        )
