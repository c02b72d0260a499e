"""Attacks on real worker processes: an impostor at the rendezvous, tampered parameters, TFP.

Every test runs the real workers (:mod:`common.runtime.worker`) over TCP on 127.0.0.1.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from common.errors import ConfigError, PeerAuthError
from common.mpc import transport
from common.protocol import CandidateMeta, JobSpec, SessionKeys
from common.runtime.config import PartyConfig
from common.runtime.supervisor import free_port, party_config, private_workdir
from common.runtime.worker import check_policy
from tests.conftest import supervised

pytestmark = pytest.mark.mpc


def _job(split, **changes) -> JobSpec:
    from common.ml.data import load_dataset

    cand = split.candidates[0]
    fields = {
        "method": "influence",
        "n_features": 64,
        "n_classes": 10,
        "candidates": [CandidateMeta(name=cand.name, n_samples=load_dataset(cand).n_samples)],
        "n_train": 100,
        "n_test": 400,
        **changes,
    }
    return JobSpec(**fields)


def _configs(work: Path, split, *, jobs: dict[str, JobSpec] | None = None, **common):
    job = _job(split, **common)
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    keys = SessionKeys.new()
    inputs = {
        "model_owner": {"train": str(split.train), "test": str(split.test)},
        "data_owner": {"candidates": [str(split.candidates[0])]},
        "dealer": {},
    }
    return [
        party_config(
            role,
            job=(jobs or {}).get(role, job),
            rendezvous=rendezvous,
            workdir=work,
            timeout=15,
            session_id="security-test",
            keys=keys.for_role(role, ((jobs or {}).get(role, job)).provider),
            **extra,
        )
        for role, extra in inputs.items()
    ]


def test_an_impostor_at_the_rendezvous_fails_the_session_cleanly(digits_split) -> None:
    """An outsider who races the data owner into the rendezvous aborts it; it never joins."""
    outcome: dict[str, BaseException] = {}

    with private_workdir() as work:
        # the genuine data owner has not arrived yet: only the model owner and the dealer run
        configs = [c for c in _configs(work, digits_split) if c.role != "data_owner"]
        host, port = transport.parse_rendezvous(configs[0].rendezvous)

        def impostor() -> None:
            try:
                transport.connect(
                    "data_owner",
                    host,
                    port,
                    os.urandom(32),  # not the session's key
                    session_id="security-test",
                    job_digest=b"\0" * 32,
                    window=10,
                )
            except BaseException as exc:
                outcome["impostor"] = exc

        thread = threading.Thread(target=impostor)
        thread.start()
        start = time.monotonic()
        report = supervised(configs, work)
        thread.join(30)
    assert time.monotonic() - start < 40
    assert isinstance(outcome.get("impostor"), PeerAuthError)
    assert "refused this party: it does not hold this session's key" in str(outcome["impostor"])
    assert report.outcome == "failed" and "PeerAuthError" in report.report
    assert "rejected a connection to the rendezvous" in report.report


def test_tampered_parameters_are_refused_before_any_secret_is_sent(digits_split) -> None:
    """The data owner's worker got other parameters than the model owner's: both refuse."""
    with private_workdir() as work:
        tampered = _job(digits_split, steps=3)  # any field of the job
        configs = _configs(work, digits_split, jobs={"data_owner": tampered})
        report = supervised(configs, work)
    assert report.outcome == "failed" and "different session parameters" in report.report


def test_a_missing_session_key_is_a_clear_error(digits_split) -> None:
    with private_workdir() as work:
        configs = _configs(work, digits_split)
        configs[1].keys = None
        report = supervised(configs, work)
    assert report.outcome == "failed" and "no pre-shared key for the mo-do link" in report.reason


def test_tfp_is_refused_unless_explicitly_allowed(tmp_path, digits_split) -> None:
    """Unit test of the worker's own policy check (it runs before any network traffic)."""

    def config(allow: bool) -> PartyConfig:
        return party_config(
            "data_owner",
            job=_job(digits_split, provider="TFP"),
            rendezvous="tcp://127.0.0.1:1",
            workdir=tmp_path,
            timeout=1,
            allow_insecure_tfp=allow,
            candidates=[str(digits_split.candidates[0])],
        )

    with pytest.raises(ConfigError, match="refused unless explicitly allowed"):
        check_policy(config(False))
    check_policy(config(True))  # allowed: only a warning


def test_reveal_to_the_model_owner_only(digits_split) -> None:
    """The data owner's worker receives no score; the model owner's is the usual one."""
    with private_workdir() as work:
        both = supervised(_configs(work, digits_split), work).results
    with private_workdir() as work:
        configs = _configs(work, digits_split, reveal_to="model_owner")
        only = supervised(configs, work).results
    expected = both["data_owner"]["results"][0]["score"]
    assert isinstance(expected, float)
    assert only["model_owner"]["results"][0]["score"] == pytest.approx(expected, abs=1e-3)
    assert only["data_owner"]["results"][0]["score"] is None
    assert only["data_owner"]["results"][0]["accept"] is None


def test_noise_is_added_under_mpc_with_the_stated_scale(digits_split) -> None:
    """The released score moves off the plaintext twin by a Laplace draw of scale Δ/(ε·n)."""
    import math

    from common.ml.data import load_dataset
    from common.ml.model import feature_bound, prepare_model_owner, v_bound
    from common.mpc.noise import influence_sensitivity
    from common.mpc.statistics import Shapes
    from common.runtime.local import run_local

    cand = digits_split.candidates[0]
    epsilon = 1.0  # a large scale (≈ 0.5 here), far above the MPC error (≈ 1e-5)
    run = run_local(
        method="influence",
        train=digits_split.train,
        test=digits_split.test,
        candidates=[cand],
        noise_epsilon=epsilon,
        check=True,
    )
    (result,), (plaintext,) = run.results, run.plaintext or [None]
    train, test, ds = (load_dataset(p) for p in (digits_split.train, digits_split.test, cand))
    state = prepare_model_owner(train.X, train.y, test.X, test.y, n_classes=10, l2=1.0)
    shapes = Shapes(
        n_features=64,
        n_classes=10,
        n_candidate=ds.n_samples,
        n_train=train.n_samples,
        n_test=test.n_samples,
        feature_bound=feature_bound(train.X, test.X, ds.X),
    )
    scale = influence_sensitivity(shapes, v_bound(state.v)) / epsilon / ds.n_samples
    assert result.score is not None and plaintext is not None
    moved = abs(result.score - plaintext)
    # P(|η| > 25·scale) = e⁻²⁵; P(|η| < 1e-4·scale) ≈ 1e-4; without noise, MPC errs by ≈ 1e-5
    assert scale > 0.1
    assert moved < 25 * scale
    assert moved > 1e-4 * scale
    assert math.isfinite(result.score)
