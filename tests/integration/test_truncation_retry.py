"""A failed truncation on real workers: detected, recomputed once, and a second failure refused.

The model owner's and the dealer's workers are the real ones, run by the supervisor; the data
owner's is the real worker with failures injected into its truncations
(``tests/integration/truncation_fault.py``). One failure: the candidate is recomputed with fresh
randomness (the dealer serves its plan twice) and the score matches plaintext. Two: the session
fails with a TruncationFailure, and no score is given.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.mpc.plan import compute_plan
from common.protocol import CandidateMeta, JobSpec
from common.runtime.local import plaintext_scores
from common.runtime.supervisor import private_workdir, session_configs
from tests.conftest import stand_in_party, supervised

pytestmark = pytest.mark.mpc


def _run(split, failures: int, **job_fields):  # type: ignore[no-untyped-def]
    from common.ml.data import load_dataset

    cand = split.candidates[0]
    job = JobSpec(
        n_features=64,
        n_classes=10,
        candidates=[CandidateMeta(name=cand.name, n_samples=load_dataset(cand).n_samples)],
        n_train=100,
        n_test=400,
        **job_fields,
    )
    inputs = {
        "model_owner": {"train": str(split.train), "test": str(split.test)},
        "data_owner": {"candidates": [str(cand)]},
        "dealer": {},
    }
    with private_workdir() as work:
        configs = session_configs(job, work, inputs, timeout=30, session_id="truncation-retry")
        outcome_path = work / "outcome.json"
        faulty = ("tests.integration.truncation_fault", configs["data_owner"], work)
        with stand_in_party(*faulty, str(outcome_path), str(failures)):
            report = supervised([configs["model_owner"], configs["dealer"]], work)
        outcome = json.loads(outcome_path.read_text())
        errors = {}
        for role, config in configs.items():
            path = Path(config.error_file)
            if path.exists():
                errors[role] = json.loads(path.read_text())
        results = Path(configs["data_owner"].result_file)
        theirs = json.loads(results.read_text()) if results.exists() else None
    return job, report, outcome, errors, theirs


def test_one_failed_truncation_is_recomputed_and_the_score_matches_plaintext(digits_split):
    job, report, outcome, errors, theirs = _run(digits_split, failures=1, method="influence")
    assert errors == {}, errors
    assert report.outcome == "completed", report.reason
    assert outcome == {"attempts": 2, "injected": 1}  # failed once, recomputed once
    # the dealer served the candidate's plan twice: the recomputation's values are fresh
    assert report.results["dealer"]["requests"] == 2 * len(compute_plan(job, 0))
    (plain,) = plaintext_scores(
        method="influence",
        train=digits_split.train,
        test=digits_split.test,
        candidates=[digits_split.candidates[0]],
    )
    (mine,) = report.results["model_owner"]["results"]
    assert theirs is not None and theirs["results"][0]["score"] == mine["score"]
    assert abs(mine["score"] - plain) < 0.01 * abs(plain), (mine["score"], plain)


def test_a_second_failed_truncation_ends_the_candidate_with_a_clear_error(digits_split):
    _, report, outcome, errors, theirs = _run(digits_split, failures=2, method="influence")
    assert report.outcome == "failed"
    assert outcome == {"attempts": 2, "injected": 2}  # no third attempt
    assert theirs is None  # no score for anybody
    for role in ("model_owner", "data_owner"):
        assert errors[role]["type"] == "TruncationFailure", errors[role]
        assert "a two-party truncation failed" in errors[role]["message"]
        assert "again in its recomputation" in errors[role]["message"]


def test_a_recomputation_reuses_the_data_owners_noise_and_reveals_one_way(digits_split):
    """With noise and reveal_to = model_owner: one Laplace draw for both attempts, one score, to
    the model owner only."""
    from common.ml.data import load_dataset
    from common.ml.model import prepare_model_owner, v_bound

    train, test = load_dataset(digits_split.train), load_dataset(digits_split.test)
    state = prepare_model_owner(train.X, train.y, test.X, test.y, n_classes=10, l2=1.0)
    _, report, outcome, errors, theirs = _run(
        digits_split,
        failures=1,
        method="influence",
        noise_epsilon=1.0,
        v_bound=v_bound(state.v),
        reveal_to="model_owner",
    )
    assert errors == {}, errors
    assert outcome == {"attempts": 2, "injected": 1, "noise_draws": 1}
    (mine,) = report.results["model_owner"]["results"]
    assert isinstance(mine["score"], float)
    assert theirs is not None and theirs["results"][0]["score"] is None
