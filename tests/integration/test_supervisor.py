"""The one supervisor of the MPC parties: failures, deadlines, a peer killed mid-run, no leftovers.

The conftest's autouse fixture asserts after every test that no worker process is left.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

import common.runtime.local
from common.errors import MPCError
from common.protocol import CandidateMeta, JobSpec
from common.runtime import supervisor
from common.runtime.local import run_local
from common.runtime.supervisor import (
    party_config,
    private_workdir,
    session_configs,
)
from tests.conftest import supervised, worker_pids

pytestmark = pytest.mark.mpc


def _configs(work: Path, split, *, roles, n_samples=None, timeout=30.0, method="influence"):
    cand = split.candidates[0]
    from common.ml.data import load_dataset

    n = load_dataset(cand).n_samples if n_samples is None else n_samples
    job = JobSpec(
        method=method,
        n_features=64,
        n_classes=10,
        candidates=[CandidateMeta(name=cand.name, n_samples=n)],
        n_train=100,
        n_test=400,
    )
    extra = {
        "model_owner": {"train": str(split.train), "test": str(split.test)},
        "data_owner": {"candidates": [str(cand)]},
        "dealer": {},
    }
    inputs = {role: extra[role] for role in roles}
    configs = session_configs(job, work, inputs, timeout=timeout, session_id="launcher-test")
    return list(configs.values())


def test_three_parties_complete(digits_split) -> None:
    with private_workdir() as work:
        report = supervised(
            _configs(work, digits_split, roles=["model_owner", "data_owner", "dealer"]), work
        )
    assert report.outcome == "completed" and report.reason == ""
    results = report.results
    assert (
        results["model_owner"]["results"][0]["score"]
        == results["data_owner"]["results"][0]["score"]
    )
    assert results["dealer"]["role"] == "dealer"
    assert results["dealer"]["bytes_sent"] > 0  # it did serve triples
    assert {p.total for p in report.progress.values()} == {1}  # every party joined


def test_failing_party_reports_its_error_and_stops_the_others(digits_split) -> None:
    with private_workdir() as work:
        configs = _configs(
            work, digits_split, roles=["model_owner", "data_owner", "dealer"], n_samples=7
        )
        start = time.monotonic()
        report = supervised(configs, work)
    assert time.monotonic() - start < 30
    assert report.outcome == "failed"
    assert "data owner worker failed" in report.reason
    assert "the agreed metadata says 7" in report.reason
    assert "Traceback" in report.report  # the party's own traceback reaches the supervisor


def test_missing_peer_expires_at_the_rendezvous_deadline(digits_split) -> None:
    with private_workdir() as work:
        configs = _configs(work, digits_split, roles=["model_owner", "dealer"], timeout=3)
        start = time.monotonic()
        report = supervised(configs, work, rendezvous=3)
    assert time.monotonic() - start < 30  # torch's default would wait 30 minutes
    assert report.outcome == "expired", report
    assert "PeerTimeout" in report.reason and "did not join" in report.reason


def test_the_supervisors_own_rendezvous_deadline_stops_everything(digits_split) -> None:
    """Workers that would wait 300 s are stopped at the supervisor's deadline (plus its slack)."""
    with private_workdir() as work:
        configs = _configs(work, digits_split, roles=["model_owner", "dealer"], timeout=300)
        start = time.monotonic()
        report = supervised(configs, work, rendezvous=1)
    assert time.monotonic() - start < 1 + supervisor.JOIN_SLACK_SECONDS + 10
    assert report.outcome == "expired"
    assert "did not meet at the rendezvous within 1 s" in report.reason
    assert "not joined: model owner, dealer" in report.reason


def test_peer_killed_mid_run_fails_the_run(digits_split, monkeypatch, tmp_path) -> None:
    """The data owner's worker killed while it fine-tunes, its chunks spilled: the run fails with
    an MPCError, and nothing is left, not even the spill the killed worker could not remove (it is
    inside the session's private workdir, which goes with it)."""
    from tests.integration.test_spill_cleanup import spilled

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run's workdir goes here
    errors: list[BaseException] = []
    progressed = threading.Event()

    def run() -> None:
        try:
            run_local(
                method="finetune",
                train=digits_split.train,
                test=digits_split.test,
                candidates=list(digits_split.candidates),
                chunk_rows=50,  # three chunks per candidate, spilled between steps
                timeout=20,
                on_progress=lambda done, total: progressed.set(),
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert progressed.wait(120), "the first candidate never finished"
    deadline = time.monotonic() + 30
    while not any(p.name.endswith("-X.npy") for p in spilled(tmp_path)):  # the data owner's
        assert time.monotonic() < deadline, "the data owner never spilled a chunk"
        time.sleep(0.02)
    victims = worker_pids(role="data_owner")
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    killed_at = time.monotonic()
    thread.join(120)
    assert not thread.is_alive()
    assert time.monotonic() - killed_at < 40  # within the 20 s peer timeout plus the grace period
    assert len(errors) == 1 and isinstance(errors[0], MPCError), errors
    # the workdir and every spill in it are gone (multiprocessing may leave its own pymp-* here)
    assert list(tmp_path.glob("data-appraisal-*")) == [] and spilled(tmp_path) == []


def test_dealer_is_used_unless_tfp_is_explicitly_allowed(monkeypatch, digits_split) -> None:
    """Unit test of the layer above the supervisor: which parties does a local run start?"""
    started: list[list[str]] = []

    def fake_run(configs, *args, **kwargs):
        started.append([c.role for c in configs])
        assert all(c.job.provider == ("TTP" if len(configs) == 3 else "TFP") for c in configs)
        raise MPCError("stop here")

    monkeypatch.setattr(common.runtime.local, "_run", fake_run)
    for insecure in (False, True):
        with pytest.raises(MPCError, match="stop here"):
            run_local(
                method="influence",
                train=digits_split.train,
                test=digits_split.test,
                candidates=[digits_split.candidates[0]],
                insecure_tfp=insecure,
            )
    assert started == [["model_owner", "data_owner", "dealer"], ["model_owner", "data_owner"]]


def test_a_worker_that_cannot_start_reports_its_real_cause(digits_split, monkeypatch) -> None:
    """A worker that dies before it can write an error report (here: its configuration file is
    unreadable) still names the cause, from its own last words, in the supervisor's error."""
    real = supervisor.PartyConfig.model_dump_json
    monkeypatch.setattr(
        supervisor.PartyConfig,
        "model_dump_json",
        lambda self, **kw: "{truncated" if self.role == "data_owner" else real(self, **kw),
    )
    with private_workdir() as work:
        configs = _configs(work, digits_split, roles=["model_owner", "data_owner", "dealer"])
        report = supervised(configs, work)
    assert report.outcome == "failed"
    assert "data owner worker failed: exited with status 2" in report.reason
    assert "cannot read the worker configuration" in report.reason
    assert "data_owner.json" in report.reason


def test_worker_paths_must_be_absolute(digits_split, tmp_path) -> None:
    """Relative paths are resolved where the user gave them, never inside a worker."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="worker paths must be absolute"):
        party_config(
            "data_owner",
            job=JobSpec(
                n_features=64, n_classes=10, candidates=[CandidateMeta(name="c", n_samples=1)]
            ),
            rendezvous="tcp://127.0.0.1:1",
            workdir=tmp_path,
            timeout=1,
            candidates=["candidate_01.npz"],
        )
