"""The plaintext twin of every appraisal method: the same score, computed in the clear.

What ``--check``, the tests and the benchmarks compare each MPC result with. Each twin takes the
model owner's prepared state (θ̂ and v), its training and test sets, one candidate and the job (for
the fine-tuning parameters), in float64.

Every twin also streams (:data:`STREAMED_TWINS`, :func:`streamed_score`): the candidate is then a
:data:`ChunkSource`, a function that starts a new pass over it and returns an iterable of
``(X_chunk, y_chunk)`` pairs (for instance ``lambda: iter_chunks(path)`` or
``Candidate.chunks`` from :func:`common.ml.data.open_candidate`). Each method is a sum over the
candidate's rows (the gradient sum Σ ∇L, and in fine-tuning each step's batch-gradient sum), so a
streamed twin adds up per-chunk sums and holds one chunk at a time: it gives the in-memory twin's
value up to float64 summation order (about 1e-15 relative), with memory independent of n.
Influence and gradient norm make one pass; fine-tuning one pass per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from common.ml import model
from common.ml.data import Dataset
from common.ml.model import ModelOwnerState
from common.protocol import JobSpec

Twin = Callable[[ModelOwnerState, Dataset, Dataset, Dataset, JobSpec], float]
Chunks = Iterable[tuple[np.ndarray, np.ndarray]]
ChunkSource = Callable[[], Chunks]
"""Starts a new pass over a candidate: an iterable of ``(X_chunk, y_chunk)``, ``X`` without bias."""
StreamedTwin = Callable[[ModelOwnerState, Dataset, Dataset, ChunkSource, JobSpec], float]


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


# --------------------------------------------------------------------------------------------------
# Streamed twins: the candidate read chunk by chunk
# --------------------------------------------------------------------------------------------------


def streamed_sum_grad(theta: np.ndarray, chunks: Chunks) -> tuple[np.ndarray, int]:
    """Σ ∇θ L over every row of ``chunks`` (:func:`common.ml.model.sum_grad`) and the row count."""
    total = np.zeros_like(theta, dtype=np.float64)
    n = 0
    for X, y in chunks:
        if len(y):
            total += model.sum_grad(theta, model.add_bias(X), y)
            n += len(y)
    return total, n


def streamed_influence_score(state: ModelOwnerState, chunks: Chunks) -> float:
    """:func:`common.ml.model.influence_score` of a candidate given as chunks (one pass)."""
    G, n = streamed_sum_grad(state.theta, chunks)
    if n == 0:
        raise ValueError("the candidate has no rows")
    return -float((G * state.v).sum()) / n


def streamed_gradient_norm_score(theta: np.ndarray, chunks: Chunks) -> float:
    """:func:`common.ml.model.gradient_norm_score` of a candidate given as chunks (one pass)."""
    G, _ = streamed_sum_grad(theta, chunks)
    return float(np.linalg.norm(G))


def streamed_finetune_theta(
    theta: np.ndarray,
    Xb_train: np.ndarray,
    y_train: np.ndarray,
    candidate: ChunkSource,
    n_candidate: int,
    *,
    steps: int,
    lr: float,
    l2: float,
    batch_size: int | None = None,
) -> np.ndarray:
    """:func:`common.ml.model.finetune_theta` on D_tr ∪ D_a with D_a streamed: one pass a step.

    The rows are numbered as in the in-memory twin (D_tr first, then the candidate in file order),
    so the public batches (:func:`common.ml.model.minibatches`) are the same; each step's gradient
    sum is the training rows' part plus one sum per candidate chunk of the batch's rows in it.
    """
    n_train = len(Xb_train)
    batches = model.minibatches(n_train + n_candidate, batch_size)
    theta = theta.copy()
    for t in range(steps):
        b = batches[t % len(batches)]
        member = np.zeros(n_train + n_candidate, dtype=bool)
        member[b] = True
        g = model.sum_grad(theta, Xb_train[member[:n_train]], y_train[member[:n_train]])
        start = n_train
        for X, y in candidate():
            rows = member[start : start + len(y)]
            start += len(y)
            if rows.any():
                g += model.sum_grad(theta, model.add_bias(X[rows]), y[rows])
        if start != n_train + n_candidate:
            raise ValueError(
                f"the candidate gave {start - n_train} rows in step {t}, expected {n_candidate}"
            )
        m = len(b)
        theta -= lr * (g / m + (2.0 * l2 / m) * theta)
    return theta


def _count_rows(candidate: ChunkSource) -> int:
    return sum(len(y) for _, y in candidate())


def streamed_finetune_score(
    state: ModelOwnerState,
    train: Dataset,
    test: Dataset,
    candidate: ChunkSource,
    *,
    steps: int,
    lr: float,
    batch_size: int | None = None,
    n_candidate: int | None = None,
) -> float:
    """:func:`common.ml.model.finetune_score` with the candidate streamed (``steps`` passes).

    ``n_candidate`` is the candidate's row count (known from validation); if omitted, one more
    pass counts the rows.
    """
    n = _count_rows(candidate) if n_candidate is None else n_candidate
    theta = streamed_finetune_theta(
        state.theta,
        model.add_bias(train.X),
        train.y,
        candidate,
        n,
        steps=steps,
        lr=lr,
        l2=state.l2,
        batch_size=batch_size,
    )
    Xb_te = model.add_bias(test.X)
    return model.mean_loss(theta, Xb_te, test.y) - model.mean_loss(state.theta, Xb_te, test.y)


STREAMED_TWINS: dict[str, StreamedTwin] = {
    "influence": lambda state, train, test, c, job: streamed_influence_score(state, c()),
    "gradient-norm": lambda state, train, test, c, job: streamed_gradient_norm_score(
        state.theta, c()
    ),
    "finetune": lambda state, train, test, c, job: streamed_finetune_score(
        state, train, test, c, steps=job.steps, lr=job.lr, batch_size=job.batch_size
    ),
}


def streamed_score(
    job: JobSpec, state: ModelOwnerState, train: Dataset, test: Dataset, candidate: ChunkSource
) -> float:
    """:func:`plaintext_score` with the candidate read chunk by chunk (memory: one chunk)."""
    return STREAMED_TWINS[job.method](state, train, test, candidate, job)
