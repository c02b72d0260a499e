"""Shards: two worker triples of one local run share each candidate's chunks (real workers).

With ``shards`` = 2 each shard's pair computes its raw shares of Σ X_cᵀ R_c over its own range of
the candidate's public chunks, each owner's shard 1 hands its shares to the same owner's shard 0,
which adds them and finishes (common.mpc.shards, docs/protocol.md "Shards"). Checked here: the
score is the one-pair run's and the plaintext twin's (both within the MPC's 1 %), shard 1 did
compute (its traffic), a candidate with fewer chunks than shards is appraised by shard 0 alone;
a failed truncation is recomputed in its own shard only; fine-tuning is refused up front; and a
shard's worker killed mid-run fails the whole run with an error naming the shard, leaving no
worker behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError, MPCError
from common.ml.data import load_dataset, save_npz
from common.mpc.plan import compute_plan
from common.mpc.shards import Shard
from common.runtime.local import (
    build_job,
    candidate_names,
    load_inputs,
    plaintext_scores,
    run_local,
    session_shards,
)
from common.runtime.supervisor import private_workdir, start_party, supervise
from tests.conftest import stand_in_party, worker_pids
from tests.integration.test_cli import assert_one_line_error, invoke, local_args

pytestmark = pytest.mark.mpc
REL_TOL = 0.01
ROWS = 130  # rows per chunk: the 384-row candidate has 3 chunks, a digits candidate (130) one


@pytest.fixture(scope="module")
def candidates(digits_split, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A candidate of 3 chunks (three digits candidates' first 384 rows), and one of 1 chunk."""
    parts = [load_dataset(c) for c in digits_split.candidates[:3]]
    X = np.concatenate([p.X for p in parts])[:384]
    y = np.concatenate([p.y for p in parts])[:384]
    big = save_npz(tmp_path_factory.mktemp("shards") / "cand_384.npz", (X, y))
    return [big, Path(digits_split.candidates[3])]


@pytest.mark.parametrize("method", ["influence", "gradient-norm"])
def test_two_shards_give_the_one_pair_score(method: str, digits_split, candidates) -> None:
    runs = {
        shards: run_local(
            method=method,
            train=digits_split.train,
            test=digits_split.test,
            candidates=candidates,
            chunk_rows=ROWS,
            shards=shards,
            check=True,
        )
        for shards in (1, 2)
    }
    one, two = runs[1], runs[2]
    assert two.plaintext is not None
    for i, plain in enumerate(two.plaintext):
        score, reference = two.results[i].score, one.results[i].score
        assert score is not None and reference is not None
        assert abs(score - plain) <= REL_TOL * abs(plain), (i, score, plain)
        assert abs(score - reference) <= REL_TOL * abs(plain), (i, score, reference)
        assert two.data_owner[i].score == score  # both owners of shard 0 opened it
    # shard 1 computed chunks 1 and 2 of the first candidate (its data owner sent their E) and
    # skipped the second, which has one chunk: shard 0 appraised it alone, as one pair does
    shard_1 = two.shard_results["data_owner@1"]
    d = load_dataset(candidates[0]).n_features + 1
    assert shard_1[0].bytes_sent >= (384 - ROWS) * d * 8
    assert shard_1[1].bytes_sent == 0 and shard_1[1].score is None
    assert two.data_owner[1].bytes_sent == one.data_owner[1].bytes_sent
    assert two.results[0].rounds < one.results[0].rounds  # the chunks' rounds ran side by side


def test_two_shards_in_threshold_mode(digits_split, candidates) -> None:
    (score,) = plaintext_scores(
        train=digits_split.train, test=digits_split.test, candidates=candidates[:1]
    )
    for tau, accept in ((score + 0.05 * abs(score), True), (score - 0.05 * abs(score), False)):
        run = run_local(
            train=digits_split.train,
            test=digits_split.test,
            candidates=candidates[:1],
            chunk_rows=ROWS,
            shards=2,
            reveal="threshold",
            threshold=tau,
        )
        assert run.results[0].accept is accept and run.results[0].score is None


@pytest.mark.parametrize("faulty", [1, 0])
def test_a_failed_truncation_is_recomputed_in_its_own_shard(faulty, digits_split, candidates):
    """One truncation of shard ``faulty``'s data owner fails (its worker is
    ``tests.integration.truncation_fault``): that shard alone recomputes its part (its dealer
    serves its plan twice, the other's once; shard 0 reuses shard 1's checked shares), and the
    score is still the plaintext's."""
    cand = candidates[:1]
    job = build_job(
        load_inputs(digits_split.train, digits_split.test, cand),
        candidate_names(cand),
        chunk_rows=ROWS,
    )
    role_inputs = {
        "model_owner": {"train": str(digits_split.train), "test": str(digits_split.test)},
        "data_owner": {"candidates": [str(cand[0])]},
        "dealer": {},
    }
    with private_workdir() as work:
        configs = session_shards(job, work, role_inputs, shards=2, timeout=30)
        stand_in = next(c for c in configs if c.role == "data_owner" and c.shard == faulty)
        outcome = work / "outcome.json"
        module = "tests.integration.truncation_fault"
        with stand_in_party(module, stand_in, Path(stand_in.result_file).parent, str(outcome), "1"):

            async def run():  # type: ignore[no-untyped-def]
                parties = [
                    start_party(c, Path(c.result_file).parent) for c in configs if c is not stand_in
                ]
                return await supervise(parties, rendezvous_seconds=60, compute_seconds=120)

            report = asyncio.run(run())
        assert report.outcome == "completed", report.reason
        assert json.loads(outcome.read_text()) == {"attempts": 2, "injected": 1}
        served = {name: report.results[name]["requests"] for name in ("dealer", "dealer@1")}
        plans = [len(compute_plan(job, 0, shard=Shard(s, 2))) for s in (0, 1)]
        assert served == {
            "dealer": plans[0] * (2 if faulty == 0 else 1),
            "dealer@1": plans[1] * (2 if faulty == 1 else 1),
        }
        theirs = json.loads(
            Path(next(c for c in configs if c.role == "data_owner").result_file).read_text()
        )
    (plain,) = plaintext_scores(train=digits_split.train, test=digits_split.test, candidates=cand)
    (mine,) = report.results["model_owner"]["results"]
    assert theirs["results"][0]["score"] == mine["score"]
    assert abs(mine["score"] - plain) <= REL_TOL * abs(plain), (mine["score"], plain)


def test_finetune_in_shards_is_refused_up_front(digits_split) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError, match="whole candidate") as caught:
        run_local(
            method="finetune",
            train=digits_split.train,
            test=digits_split.test,
            candidates=digits_split.candidates[:1],
            shards=2,
        )
    assert caught.value.field == "shards" and "finetune" in str(caught.value)
    assert time.monotonic() - start < 5  # before any worker starts
    proc = invoke(*local_args(digits_split), "--method", "finetune", "--shards", "2")
    assert_one_line_error(proc, "--shards: finetune runs in one shard only, not 2")


def _joined_worker(role: str, shard: int) -> int | None:
    """The live worker of ``role`` in shard ``shard`` > 0 (its working directory is its shard's),
    once it has joined its rendezvous."""
    for pid in worker_pids(role=role):
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            joined = '"event": "joined"' in (cwd / f"{role}.progress.jsonl").read_text()
        except OSError:  # gone, or no progress file yet
            continue
        if cwd.name == f"shard-{shard}" and joined:
            return pid
    return None


def test_a_killed_shard_worker_fails_the_run(digits_split, candidates, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run's workdir goes here
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_local(
                train=digits_split.train,
                test=digits_split.test,
                candidates=[candidates[0]] * 4,
                chunk_rows=ROWS,
                shards=2,
                timeout=20,
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while (victim := _joined_worker("data_owner", 1)) is None:
        assert time.monotonic() < deadline and thread.is_alive(), "shard 1 never joined"
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    thread.join(60)
    assert not thread.is_alive()
    assert time.monotonic() - killed_at < 30
    assert len(errors) == 1 and isinstance(errors[0], MPCError), errors
    assert "(shard 1) worker failed" in str(errors[0]), errors[0]
    assert worker_pids() == []  # every shard's workers were stopped and reaped
    assert list(tmp_path.glob("data-appraisal-*")) == []  # the workdir with its shares is gone
