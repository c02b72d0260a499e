"""Finding 2 of the second security round, as an attacker would try it, on real worker processes.

The attack: a model owner asked for ``noise_epsilon = 1e-15``. The Laplace draw, of scale Δ/ε ≈
6e16, times 2¹⁶ left int64, and the float→int cast turned it into the constant −2⁶³: the released
score was the noiseless one plus a known offset. Now the contract (common/protocol.py) refuses an ε
whose clamped noise could leave the fixed-point range, in every process that reads the job, and
the data owner's worker clamps its draw; at the smallest ε allowed the noise is really there.

Every test runs the real workers (:mod:`common.runtime.worker`) over TCP on 127.0.0.1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError
from common.ml.data import load_dataset
from common.ml.examples import ExampleSplit
from common.ml.model import feature_bound, prepare_model_owner, v_bound
from common.protocol import (
    MAX_NOISE,
    MAX_STATISTIC,
    NOISE_CLAMP,
    CandidateMeta,
    JobSpec,
)
from common.runtime.config import PartyConfig
from common.runtime.local import run_local
from common.runtime.supervisor import private_workdir, session_configs
from tests.conftest import supervised

pytestmark = pytest.mark.mpc


def _fields(split: ExampleSplit) -> dict[str, object]:
    """The digits job with the public v_bound the model owner's worker computes, as its service
    would publish it for a noisy session."""
    train, test = load_dataset(split.train), load_dataset(split.test)
    cand = load_dataset(split.candidates[0])
    state = prepare_model_owner(train.X, train.y, test.X, test.y, n_classes=10, l2=1.0)
    return {
        "method": "influence",
        "n_features": 64,
        "n_classes": 10,
        "candidates": [CandidateMeta(name=split.candidates[0].stem, n_samples=cand.n_samples)],
        "n_train": train.n_samples,
        "n_test": test.n_samples,
        "feature_bound": feature_bound(train.X, test.X, cand.X),
        "v_bound": v_bound(state.v),
    }


def _configs(
    job: JobSpec, inputs: dict[str, dict[str, Any]], work: Path, session_id: str
) -> list[PartyConfig]:
    """One worker configuration per role in ``inputs`` (its extra fields), sharing a fresh
    rendezvous and session keys."""
    return list(session_configs(job, work, inputs, timeout=30, session_id=session_id).values())


def _run(split: ExampleSplit, job: JobSpec, *, written: JobSpec | None = None):  # type: ignore[no-untyped-def]
    """All three real workers on ``job``; the RunReport. With ``written``, that job is what goes
    into every worker's configuration file, unvalidated, as a deviating model owner would write
    it (the supervisor's own check of the configuration is skipped)."""
    inputs = {
        "model_owner": {"train": str(split.train), "test": str(split.test)},
        "data_owner": {"candidates": [str(split.candidates[0])]},
        "dealer": {},
    }
    with private_workdir() as work:
        configs = _configs(job, inputs, work, "noise-attack")
        if written is not None:
            for config in configs:
                config.job = written
        return supervised(configs, work)


def test_a_tiny_epsilon_is_refused_by_every_worker_naming_epsilon_and_the_minimum(
    digits_split: ExampleSplit,
) -> None:
    """The deviating model owner skips its own contract (an unvalidated job with ε = 1e-15, which a
    data owner with MAX_NOISE_EPSILON=1 would have accepted) and hands it to the workers: each
    re-validates the job it reads, and the session fails before the rendezvous, naming ε and the
    smallest ε the job allows. No score is released."""
    fields = _fields(digits_split)
    minimum = JobSpec(**{**fields, "noise_epsilon": 1.0}).min_noise_epsilon()
    assert minimum is not None and minimum > 1e-15
    tampered = JobSpec.model_construct(**{**_defaults(), **fields, "noise_epsilon": 1e-15})
    report = _run(digits_split, JobSpec(**{**fields, "noise_epsilon": 1.0}), written=tampered)
    assert report.outcome == "failed", report
    # the data owner's own worker refuses it, whatever the model owner's worker does
    _, _, data_owner = report.report.partition("--- data_owner (exit 2), log tail:")
    data_owner = data_owner.split("\n---", 1)[0]
    assert "noise_epsilon: ε = 1e-15 is below the smallest ε this job can add noise" in data_owner
    assert f"{minimum:.3g}" in data_owner and "below 2⁴⁰" in data_owner, report.report
    assert not report.results.get("data_owner", {}).get("results"), report.results


def test_a_tiny_epsilon_is_refused_by_local_before_any_worker_starts(
    digits_split: ExampleSplit,
) -> None:
    with pytest.raises(ConfigError, match=r"noise_epsilon: ε = 1e-15 is below the smallest ε"):
        run_local(
            method="influence",
            train=digits_split.train,
            test=digits_split.test,
            candidates=[digits_split.candidates[0]],
            noise_epsilon=1e-15,
        )


def test_a_tiny_epsilon_that_is_allowed_releases_fresh_noise_every_run(
    digits_split: ExampleSplit,
) -> None:
    """At twice the smallest ε the job allows (the attack's edge), two runs release different
    scores, each within the clamp: the noise is present and was not saturated into a constant
    (before, both would have been the noiseless score plus the same offset)."""
    fields = _fields(digits_split)
    minimum = JobSpec(**{**fields, "noise_epsilon": 1.0}).min_noise_epsilon()
    assert minimum is not None
    job = JobSpec(**{**fields, "noise_epsilon": 2 * minimum})
    scale = job.noise_scale()
    assert scale is not None and NOISE_CLAMP * scale <= MAX_NOISE
    n = job.candidates[0].n_samples
    scores = []
    for _ in range(2):
        report = _run(digits_split, job)
        assert report.outcome == "completed", report
        mine = report.results["model_owner"]["results"][0]["score"]
        theirs = report.results["data_owner"]["results"][0]["score"]
        assert mine == theirs  # one opened value, seen by both
        assert isinstance(mine, float) and math.isfinite(mine)
        # |S + η| ≤ |S| + clamp: S ≤ 2⁴⁰ by the contract, η clamped at NOISE_CLAMP·b ≤ 2⁴⁰
        assert abs(mine) * n <= NOISE_CLAMP * scale + MAX_STATISTIC
        scores.append(mine)
    # the draws are Laplace of scale b/n ≈ 1e8 on the score: equal with probability ≈ 0
    assert scores[0] != scores[1]
    assert abs(scores[0] - scores[1]) > 1e-3 * scale / n  # P(|η₁ − η₂| < 1e-3·b) ≈ 1e-3


def _defaults() -> dict[str, object]:
    """JobSpec's defaults, for a job built without validation (as an attacker would)."""
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in JobSpec.model_fields.items()
        if not field.is_required()
    }


def test_an_influence_statistic_beyond_the_range_is_refused_by_the_model_owners_worker(
    digits_split: ExampleSplit, tmp_path
) -> None:
    """Without noise v is the model owner's secret, so the public metadata cannot bound S; its
    worker checks S ≤ n·2·√(d·B²+1)·max‖v_j‖ against 2⁴⁰ with its own v before the rendezvous.
    A model whose v is 10¹⁰ times too large fails the session there, naming the sizes."""
    import numpy as np

    fields = {**_fields(digits_split), "v_bound": None}
    train, test = load_dataset(digits_split.train), load_dataset(digits_split.test)
    state = prepare_model_owner(train.X, train.y, test.X, test.y, n_classes=10, l2=1.0)
    path = tmp_path / "state.npz"
    np.savez(path, theta=state.theta, v=state.v * 1e10, test_loss=state.test_loss)
    job = JobSpec(**fields)  # valid: nothing public bounds S
    inputs = {
        "model_owner": {
            "train": str(digits_split.train),
            "test": str(digits_split.test),
            "state": str(path),
        },
        "data_owner": {"candidates": [str(digits_split.candidates[0])]},
        "dealer": {},
    }
    with private_workdir() as work:
        configs = _configs(job, inputs, work, "range-check")
        report = supervised(configs, work)
    assert report.outcome == "failed", report
    assert "the model owner worker failed" in report.reason, report.reason
    for words in ("influence statistic S", "n = 130", "above 2⁴⁰"):
        assert words in report.reason, report.reason
    assert not report.results.get("data_owner", {}).get("results"), report.results
