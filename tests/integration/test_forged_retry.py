"""A model owner forges the dealer's ``retry`` or ``next`` (issue 13): it gets nothing of the data
owner's masks.

The three workers are the real ones, each changed by ``tests/integration/retry_forger.py``. A
forged ``retry``: the model owner's tells the dealer ``retry`` after candidate 0 although its
truncation checks passed, and goes on to candidate 1; the data owner's records what it draws from
its triple stream for candidate 1 (its masks A, shares of a, b, c, …); the dealer's records what it
draws from its data-owner stream while serving the forged recomputation of candidate 0, from which
it computes every correction it then pushes to the model owner. A forged ``next``: a truncation of
the data owner's fails in candidate 0's first attempt, both owners recompute it, but the model
owner tells the dealer ``next``; the data owner records its draws for the recomputation, the
dealer its draws for candidate 1's first attempt, which it serves instead.

Before each (candidate, attempt) had its own streams, the dealer's attempt after a forged decision
drew from the very stream positions the data owner was using for its own, other attempt: the model
owner got corrections computed from the data owner's masks. Now the dealer's attempt and the data
owner's have their own streams, so the two sets of values are disjoint (two independent uniform draws of about 7·10⁴ int64 values each share one with
probability about 2⁻³²). On the code before the fix, after either forged decision, every one of
the dealer's draws (64,044) was one of the data owner's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.protocol import CandidateMeta, JobSpec
from common.runtime.supervisor import private_workdir, session_configs
from tests.conftest import stand_in_party

pytestmark = pytest.mark.mpc


def _job(split) -> JobSpec:  # type: ignore[no-untyped-def]
    from common.ml.data import load_dataset

    # two candidates of the same size: the same plan, so the forged recomputation is served whole
    cands = split.candidates[:2]
    return JobSpec(
        method="influence",
        n_features=64,
        n_classes=10,
        candidates=[CandidateMeta(name=c.name, n_samples=load_dataset(c).n_samples) for c in cands],
        n_train=100,
        n_test=400,
    )


def _run(split, mode: str):  # type: ignore[no-untyped-def]
    """The forged run; the parties' outcomes, errors and results, and the two sets of draws."""
    job = _job(split)
    inputs = {
        "model_owner": {"train": str(split.train), "test": str(split.test)},
        "data_owner": {"candidates": [str(c) for c in split.candidates[:2]]},
        "dealer": {},
    }
    with private_workdir() as work:
        configs = session_configs(job, work, inputs, timeout=30, session_id="forged-" + mode)
        draws = {role: work / f"draws-{role}.bin" for role in configs}
        parties = [
            stand_in_party(
                "tests.integration.retry_forger",
                configs[role],
                work,
                str(draws[role]),
                mode,
                name=role,
            )
            for role in ("model_owner", "data_owner", "dealer")
        ]
        with parties[0], parties[1], parties[2]:
            pass  # the three processes run; each is waited for when its block ends
        outcomes = {
            role: json.loads(path.with_suffix(".json").read_text()) for role, path in draws.items()
        }
        errors = {}
        for role, config in configs.items():
            path = Path(config.error_file)
            if path.exists():
                errors[role] = json.loads(path.read_text())
        results = {
            role: json.loads(Path(c.result_file).read_text())
            for role, c in configs.items()
            if Path(c.result_file).exists()
        }
        theirs = np.fromfile(draws["data_owner"], dtype=np.int64)
        served_from = np.fromfile(draws["dealer"], dtype=np.int64)
    assert outcomes["model_owner"].get("forged") == mode
    # the point: the dealer's attempt drew nothing the data owner drew for its own attempt
    assert theirs.size > 40_000 and served_from.size > 40_000, (theirs.size, served_from.size)
    shared = np.intersect1d(theirs, served_from)
    assert shared.size == 0, f"{shared.size} of the data owner's draws were served"
    return outcomes, errors, results


def test_a_forged_retry_serves_nothing_computed_from_the_data_owners_candidate_draws(
    digits_split,
) -> None:
    """The run fails on both owners, with an MPCError saying the shares are inconsistent: after
    the forged retry the model owner computes candidate 1 with corrections for candidate 0's
    second attempt, which match no share of the data owner's, so the count of failed truncation
    checks opened at the end of candidate 1 is garbage, not a count (a sum of 2·checks bits), and
    both owners, who both open it, stop there. The dealer's link then closes under it: no score
    for candidate 1."""
    _, errors, results = _run(digits_split, "retry")
    for role in ("model_owner", "data_owner"):
        assert errors[role]["type"] == "MPCError", errors
        assert "the parties' shares are inconsistent" in errors[role]["message"], errors[role]
        assert role not in results
    assert errors["dealer"]["type"] == "ChannelClosed", errors


def test_a_forged_next_serves_nothing_computed_from_the_data_owners_recomputation(
    digits_split,
) -> None:
    """The run fails on both owners with the same MPCError: the model owner recomputes
    candidate 0 with the corrections of candidate 1's first attempt, which match no share of the
    data owner's, so the recomputation's opened count of failed checks is garbage (see above).
    The dealer's link then closes under it. No score for candidate 0."""
    outcomes, errors, results = _run(digits_split, "next")
    assert outcomes["data_owner"]["injected"] == 1  # the first attempt did fail
    for role in ("model_owner", "data_owner"):
        assert errors[role]["type"] == "MPCError", errors
        assert "the parties' shares are inconsistent" in errors[role]["message"], errors[role]
        assert role not in results
    assert errors["dealer"]["type"] == "ChannelClosed", errors
