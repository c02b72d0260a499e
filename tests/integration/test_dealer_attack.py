"""Finding 3 of issue 12: a deviating model owner asks the dealer for values off the job's plan.

The data owner's and the dealer's workers are the real ones, run by the supervisor; the model
owner's is the real worker too, changed only to send the dealer, at the start or at the end of its
computation, the extra [1, 0] × [0, M] "additive matmul" request that used to return the data
owner's triple stream (``tests/integration/dealer_attacker.py``). The dealer serves the job's plan
only: the session fails, and the attacker receives nothing beyond the plan's values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.mpc.plan import compute_plan
from common.protocol import CandidateMeta, JobSpec, SessionKeys
from common.runtime.supervisor import free_port, party_config, private_workdir
from tests.conftest import supervised

pytestmark = pytest.mark.mpc
ROOT = Path(__file__).resolve().parents[2]


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
    keys = SessionKeys.new()
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    inputs = {
        "model_owner": {"train": str(digits_split.train), "test": str(digits_split.test)},
        "data_owner": {"candidates": [str(digits_split.candidates[0])]},
        "dealer": {},
    }
    with private_workdir() as work:
        configs = {
            role: party_config(
                role,
                job=job,
                rendezvous=rendezvous,
                workdir=work,
                timeout=15,
                session_id="dealer-attack",
                keys=keys.for_role(role, job.provider),
                **extra,
            )
            for role, extra in inputs.items()
        }
        mo_config = work / "attacker.json"
        fd = os.open(mo_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(configs["model_owner"].model_dump_json())
        outcome_path = work / "outcome.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(work / "attacker.log", "wb") as log:
            attacker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.dealer_attacker",
                    str(mo_config),
                    str(outcome_path),
                    when,
                ],
                env=env,
                cwd=str(ROOT),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                report = supervised([configs["data_owner"], configs["dealer"]], work)
            finally:
                attacker.wait(60)
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
