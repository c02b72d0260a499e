"""The plaintext twin of every appraisal method: the same score, computed in the clear.

What ``--check``, the tests and the benchmarks compare each MPC result with. Each twin takes the
model owner's prepared state (θ̂ and v), its training and test sets, one candidate and the job (for
the fine-tuning parameters), in float64.
"""

from __future__ import annotations

from collections.abc import Callable

from common.ml import model
from common.ml.data import Dataset
from common.ml.model import ModelOwnerState
from common.protocol import JobSpec

Twin = Callable[[ModelOwnerState, Dataset, Dataset, Dataset, JobSpec], float]


def _influence(
    state: ModelOwnerState, train: Dataset, test: Dataset, c: Dataset, job: JobSpec
) -> float:
    return model.influence_score(state, c.X, c.y)


def _gradient_norm(
    state: ModelOwnerState, train: Dataset, test: Dataset, c: Dataset, job: JobSpec
) -> float:
    return model.gradient_norm_score(state.theta, c.X, c.y)


def _finetune(
    state: ModelOwnerState, train: Dataset, test: Dataset, c: Dataset, job: JobSpec
) -> float:
    return model.finetune_score(
        state,
        train.X,
        train.y,
        c.X,
        c.y,
        test.X,
        test.y,
        steps=job.steps,
        lr=job.lr,
        batch_size=job.batch_size,
    )


TWINS: dict[str, Twin] = {
    "influence": _influence,
    "gradient-norm": _gradient_norm,
    "finetune": _finetune,
}


def plaintext_score(
    job: JobSpec, state: ModelOwnerState, train: Dataset, test: Dataset, candidate: Dataset
) -> float:
    """The score the MPC appraisal of ``candidate`` approximates, computed in the clear."""
    return TWINS[job.method](state, train, test, candidate, job)
