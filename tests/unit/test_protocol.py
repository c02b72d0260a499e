"""The contract: the job, the worker's configuration and the session state machine refuse every
inconsistent or out-of-range combination, naming the field."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from common.protocol import (
    MAX_NOISE,
    MAX_STATISTIC,
    NOISE_CLAMP,
    RING_LIMIT,
    CandidateMeta,
    CandidateResult,
    JobSpec,
    SessionKeys,
    influence_sensitivity,
    model_owner_problem,
    noise_delta,
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
    assert problem is not None and "τ = 1e+308 is outside the range" in problem
    assert "±2⁴⁰, so τ must be at most 2.19902e+11" in problem  # 2⁴⁰/5, n = 5
    edge = MAX_STATISTIC / 5  # n = 5
    assert threshold_problem(threshold, edge * 0.99) is None
    assert threshold_problem(threshold, edge * 1.01) is not None
    assert "τ must be at least -2.19902e+11" in str(threshold_problem(threshold, -1e308))


@pytest.mark.parametrize("method", ["influence", "gradient-norm", "finetune"])
@pytest.mark.parametrize("tau", [1e308, -1e308, 1.7976931348623157e308])
def test_an_extreme_threshold_is_an_error_for_every_method(method: str, tau: float) -> None:
    """Finding 6: τ = 1e308 gave a wrong bit; gradient norm's (τ/s)² even raised OverflowError."""
    job = JobSpec(**{**BASE, "method": method}, reveal="threshold")
    problem = threshold_problem(job, tau)
    if method == "gradient-norm" and tau < 0:  # every norm is above a negative τ: statistic 0
        assert problem is None
        return
    assert problem is not None and "outside the range the fixed-point comparison represents" in (
        problem
    )


def _noisy(**changes: Any) -> JobSpec:
    return JobSpec(**{**BASE, "noise_epsilon": 1.0, "v_bound": 2.0, **changes})


def test_a_tiny_epsilon_is_refused_naming_epsilon_and_the_minimum() -> None:
    """Finding 2: ε = 1e-15 made the noise overflow int64 (the noise became a constant)."""
    job = _noisy()
    sensitivity = influence_sensitivity(4, 1.0, 2.0)
    assert sensitivity == pytest.approx(4 * math.sqrt(5) * 2)
    minimum = job.min_noise_epsilon()
    assert minimum == pytest.approx(NOISE_CLAMP * sensitivity / MAX_NOISE)
    with pytest.raises(ValidationError) as info:
        _noisy(noise_epsilon=1e-15)
    message = str(info.value)
    assert "noise_epsilon: ε = 1e-15 is below the smallest ε this job can add noise for" in message
    assert f"{minimum:.3g}" in message and "below 2⁴⁰" in message
    # the edge: the clamp NOISE_CLAMP·Δ/ε just fits, or just does not
    assert minimum is not None
    _noisy(noise_epsilon=minimum * 1.0001)
    with pytest.raises(ValidationError, match="below the smallest ε"):
        _noisy(noise_epsilon=minimum * 0.9999)
    # the noise's bound in the ring: clamp ≤ 2⁴⁰, statistic ≤ 2⁴⁰, τ ≤ 2⁴⁰: far inside 2⁴⁷
    edge = _noisy(noise_epsilon=minimum * 1.0001)
    scale = edge.noise_scale()
    assert scale is not None and NOISE_CLAMP * scale <= MAX_NOISE
    assert MAX_NOISE + 2 * MAX_STATISTIC < RING_LIMIT / 32
    # δ of one release: the clamp's mass e⁻³², doubled by the e^ε factor at most
    assert noise_delta(1.0) == pytest.approx((1 + math.e) * math.exp(-32))
    assert noise_delta(1e-9) < 3e-14


def test_the_noise_draw_is_clamped_finite_and_refuses_an_overflowing_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from common.errors import ConfigError
    from common.mpc import noise

    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="positive finite"):
            noise.laplace(bad)
    with pytest.raises(ConfigError, match="beyond 2⁴⁰"):
        noise.laplace(MAX_NOISE / NOISE_CLAMP * 1.01)  # a job that bypassed the contract
    # the most extreme uniforms the sampler can draw: the draw is clamped at ±32 scales
    for u in ((0.5 / 2**53, 1 - 0.5 / 2**53), (1 - 0.5 / 2**53, 0.5 / 2**53)):
        draws = iter(u)
        monkeypatch.setattr(noise, "_uniform", draws.__next__)
        value = noise.laplace(3.0)
        assert abs(value) == 3.0 * NOISE_CLAMP
    # so that encoding it (×2¹⁶, as int64) cannot saturate
    assert MAX_NOISE * 2**16 < 2**63


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        # influence: |S| ≤ n·2·√(d·B²+1)·V must stay below 2⁴⁰
        (
            {"candidates": [CandidateMeta(name="big", n_samples=2**38)]},
            "influence statistic S = Σ ∇Lᵀv of candidate 'big' (n = 274877906944",
        ),
        ({"feature_bound": 2.0**36, "noise_epsilon": None}, "can reach n·2·√(d·B²+1)·max‖v_j‖"),
        # gradient norm: products up to n, q ≤ 2n(d·B²+1)
        (
            {
                "method": "gradient-norm",
                "noise_epsilon": None,
                "v_bound": None,
                "candidates": [CandidateMeta(name="big", n_samples=2**28)],
            },
            "gradient-norm statistic of candidate 'big'",
        ),
        (
            {
                "method": "gradient-norm",
                "noise_epsilon": None,
                "v_bound": None,
                "n_features": 10**6,
                "feature_bound": 2.0**10,
            },
            "can reach 2n·(d·B²+1)",
        ),
        # fine-tuning: batch rows, decay stability, logit drift
        (
            {"method": "finetune", "noise_epsilon": None, "v_bound": None, "n_train": 2**27},
            "sums 134217733 rows of a batch",
        ),
        (
            {"method": "finetune", "noise_epsilon": None, "v_bound": None, "lr": 100.0},
            "lr: the weight decay multiplies θ by 1 − 2·lr·l2/|batch|",
        ),
        (
            {
                "method": "finetune",
                "noise_epsilon": None,
                "v_bound": None,
                "feature_bound": 2.0**30,
                "lr": 1.0,
            },
            "steps: 16 fine-tuning steps with lr = 1 can move a logit",
        ),
        ({"feature_bound": 2.0**65}, "power of two between 2⁻⁶⁴ and 2⁶⁴"),
        ({"v_bound": 2.0**-70}, "v_bound must be a power of two between"),
    ],
)
def test_a_statistic_that_could_leave_the_fixed_point_range_is_refused(
    changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(words)):
        _noisy(**changes)


def test_the_range_checks_accept_realistic_sizes() -> None:
    """MNIST-sized jobs (60,000 candidate samples, 784 features in [0, 1]) pass every check."""
    mnist = {
        "n_features": 784,
        "n_classes": 10,
        "n_train": 60_000,
        "n_test": 10_000,
        "candidates": [CandidateMeta(name="mnist", n_samples=60_000)],
    }
    JobSpec(**mnist, noise_epsilon=0.01, v_bound=8.0)
    JobSpec(**mnist, method="gradient-norm")
    JobSpec(**mnist, method="finetune", lr=10.0, steps=64, batch_size=256)
    # the model owner's own check, with its private max‖v_j‖ when no bound was published
    job = JobSpec(**mnist)
    assert model_owner_problem(job, 8.0) is None
    assert model_owner_problem(job, 2.0**10) is None  # |S| ≤ 7.4e10: inside 2⁴⁰
    problem = model_owner_problem(job, 2.0**24)
    assert problem is not None and "max‖v_j‖ ≤ 1.67772e+07" in problem and "above 2⁴⁰" in problem
    noisy = JobSpec(**mnist, noise_epsilon=0.01, v_bound=8.0)
    assert "above the agreed bound v_bound 8" in str(model_owner_problem(noisy, 9.0))


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
