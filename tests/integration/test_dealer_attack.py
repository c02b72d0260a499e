"""Finding 3 of issue 12: a deviating model owner asks the dealer for values off the job's plan.

The data owner's and the dealer's workers are the real ones, run by the supervisor; the model
owner's is the real worker too, changed only to send the dealer, at the start or at the end of its
computation, the extra [1, 0] × [0, M] "additive matmul" request that used to return the data
owner's triple stream (``tests/integration/dealer_attacker.py``). The dealer serves the job's plan
only: the session fails, and the attacker receives nothing beyond the plan's values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.mpc.plan import compute_plan
from common.protocol import CandidateMeta, JobSpec
from common.runtime.supervisor import private_workdir, session_configs
from tests.conftest import stand_in_party, supervised

pytestmark = pytest.mark.mpc


def _job(split) -> JobSpec:
    from common.ml.data import load_dataset

    cand = split.candidates[0]
    return JobSpec(
        method="influence",
        n_features=64,
        n_classes=10,
        candidates=[CandidateMeta(name=cand.name, n_samples=load_dataset(cand).n_samples)],
        n_train=100,
        n_test=400,
    )


@pytest.mark.parametrize("when", ["start", "end"])
def test_the_dealer_serves_nothing_off_the_plan(digits_split, when: str) -> None:
    job = _job(digits_split)
    inputs = {
        "model_owner": {"train": str(digits_split.train), "test": str(digits_split.test)},
        "data_owner": {"candidates": [str(digits_split.candidates[0])]},
        "dealer": {},
    }
    with private_workdir() as work:
        configs = session_configs(job, work, inputs, timeout=15, session_id="dealer-attack")
        outcome_path = work / "outcome.json"
        attacker = ("tests.integration.dealer_attacker", configs["model_owner"], work)
        with stand_in_party(*attacker, str(outcome_path), when):
            report = supervised([configs["data_owner"], configs["dealer"]], work)
        outcome = json.loads(outcome_path.read_text())
        dealer_error = json.loads(Path(configs["dealer"].error_file).read_text())
    assert outcome["asked"] is True
    # the session fails, on the dealer, naming the request it refused
    assert report.outcome == "failed"
    assert dealer_error["type"] == "MPCError"
    assert "'sizes': [[1, 0], [0, 4096]]" in dealer_error["message"]
    assert "the dealer serves the job's plan only" in dealer_error["message"]
    if when == "end":
        # the attacker got exactly the plan's values (what an honest model owner gets), nothing
        # more: no answer to its request, not one byte after it
        assert outcome["values_used"] == len(compute_plan(job, 0))
        assert "answer_bytes" not in outcome and outcome["bytes_after_request"] == 0
        assert "closed" in outcome["refused"]
