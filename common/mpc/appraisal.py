"""One candidate's appraisal under MPC: its statistic, the data owner's noise, and the one reveal.

Both owners call :func:`secure_appraisal` with the agreed job and their own inputs. Nothing is
opened but the statistic (as the method's public, invertible transform of the score,
:mod:`common.methods`) or, in threshold mode, the single comparison bit; with ``reveal_to`` =
``model_owner`` the data owner's share goes one way and it learns nothing.

Before that reveal, every two-party truncation of the attempt is checked
(:mod:`common.mpc.truncation`) and the count of failed checks is opened to both owners; on a
failure the candidate is computed once more with fresh randomness (the dealer serves its plan a
second time, :mod:`common.mpc.dealer`), with the *same* noise, and a second failure ends the
candidate with :class:`~common.errors.TruncationFailure`. Only one attempt's result is ever opened.

With shards (:mod:`common.mpc.shards`), a shard s > 0 computes its raw shares of Σ X_cᵀ R_c over
its chunks under its own checks (and recomputation), hands them to its party's shard 0 and opens
nothing; shard 0 adds them to its own and finishes: the one truncation of G, the noise, the reveal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch

from common.errors import ConfigError, TruncationFailure
from common.methods import METHODS
from common.mpc import truncation
from common.mpc.compat import import_crypten
from common.mpc.fixedpoint import DATA_OWNER, MODEL_OWNER, openings, reveal_float, share
from common.mpc.noise import influence_sensitivity, laplace
from common.mpc.shards import WHOLE, Exchange, Shard
from common.mpc.statistics import (
    STATISTICS,
    DataOwnerInputs,
    ModelOwnerInputs,
    Part,
    Shapes,
    StepCallback,
    residual_shares,
)
from common.protocol import JobSpec

ATTEMPTS = 2  # the first computation and at most one recomputation
_T = TypeVar("_T")


def _recompute() -> None:
    """Tell the dealer's provider that this candidate is computed once more (its plan again)."""
    retry = getattr(import_crypten().mpc.get_default_provider(), "retry", None)
    if retry is not None:
        retry()


def _others(
    exchange: Exchange | None, index: int, shard: Shard, shapes: Shapes, rows: int
) -> Callable[[torch.Tensor], Sequence[torch.Tensor]] | None:
    """Shard 0's way to the other shards' raw shares of candidate ``index`` (None for a single
    pair, and in the plan's run): gathered once, then kept for a recomputation (they were checked
    by their own shards; this one's own part is what a recomputation computes afresh)."""
    pairs = shard.pairs(shapes.n_candidate, rows)
    if exchange is None or pairs == 1:
        return None
    gathered: list[list[torch.Tensor]] = []

    def others(like: torch.Tensor) -> Sequence[torch.Tensor]:
        if not gathered:
            gathered.append(exchange.gather(index, pairs, like))
        return gathered[0]

    return others


class Revealed(NamedTuple):
    """What this party learned: the score (score mode) or the bit (threshold mode), or neither."""

    score: float | None
    accept: bool | None


def _checked(job: JobSpec, index: int, shard: Shard, compute: Callable[[], _T]) -> _T:
    """``compute()`` under the truncation checks: recomputed once with fresh randomness when a
    check failed, a :class:`TruncationFailure` when the recomputation's failed too."""
    digest = shard.digest(job.digest())
    for attempt in range(ATTEMPTS):
        with truncation.Ledger(truncation.attempt_seed(digest, index, attempt)) as ledger:
            result = compute()
        failed = ledger.failures()  # opened to both owners; 0 unless a truncation failed
        if failed == 0:
            return result
        if attempt + 1 == ATTEMPTS:
            raise TruncationFailure(
                f"candidate {index}{shard.label}: a two-party truncation failed ({failed} of "
                f"{ledger.n_checks} truncation checks out of range) in the first attempt and "
                "again in its recomputation with fresh randomness; no result is given rather "
                "than a wrong one"
            )
        _recompute()
    raise AssertionError("unreachable: the last attempt returns or raises")


def secure_appraisal(
    job: JobSpec,
    index: int,
    mo: ModelOwnerInputs | None,
    do: DataOwnerInputs | None,
    on_step: StepCallback | None = None,
    shard: Shard = WHOLE,
    exchange: Exchange | None = None,
) -> Revealed:
    """Appraise candidate ``index`` of ``job`` under MPC; both owners call this.

    ``on_step(done, total)`` is called after each step of the computation (fine-tuning's gradient
    steps; once for a one-shot method). With ``shard`` one of several, this pair computes its own
    chunks only; ``exchange`` passes this party's raw shares between its shards (none in the
    plan's inputless run, which hands nothing over). The job's ``openings`` decides the width of
    the softmax's openings (docs/protocol.md, "Narrow openings")."""
    with openings(job.openings):
        return _appraise(job, index, mo, do, on_step, shard, exchange)


def _appraise(
    job: JobSpec,
    index: int,
    mo: ModelOwnerInputs | None,
    do: DataOwnerInputs | None,
    on_step: StepCallback | None,
    shard: Shard,
    exchange: Exchange | None,
) -> Revealed:
    method = METHODS[job.method]
    shapes = Shapes.of(job, index)
    sizes = job.sizes(index)
    rows = job.chunk_rows
    chunks = shard.chunks(shapes.n_candidate, rows)
    if shard.index > 0:
        if chunks:  # else the candidate has fewer chunks than shards: this one skips it
            part = Part(chunks)
            raw = _checked(job, index, shard, lambda: residual_shares(job, shapes, mo, do, part))
            if exchange is not None:
                exchange.hand_off(index, shard.index, raw)
        return Revealed(None, None)
    part = Part(None if shard.count == 1 else chunks, _others(exchange, index, shard, shapes, rows))
    dst = None if job.reveal_to == "both" else MODEL_OWNER
    eta = None
    if job.noise_epsilon is not None and do is not None:
        # The data owner's noise, unknown to the model owner, drawn once: a recomputation reuses
        # it, so that no attempt gives a second noisy view of the statistic.
        assert job.v_bound is not None  # JobSpec refuses noise without it
        scale = influence_sensitivity(shapes, job.v_bound) / job.noise_epsilon
        eta = np.array(laplace(scale))

    def statistic() -> object:
        stat = STATISTICS[job.method](job, shapes, mo, do, on_step, part)
        if job.noise_epsilon is not None:  # added before anything is opened
            stat = stat + share(eta, (), src=DATA_OWNER)
        return stat

    stat: Any = _checked(job, index, shard, statistic)

    if job.reveal == "score":
        opened = reveal_float(stat, dst)
        if opened is None:
            return Revealed(None, None)
        return Revealed(float(method.to_score(float(opened), sizes)), None)

    # Threshold: τ stays the model owner's secret; only the comparison bit is opened.
    tau_stat = None
    if mo is not None:
        if mo.threshold is None:
            raise ConfigError("threshold reveal needs the model owner's threshold τ")
        tau_stat = np.array(method.to_statistic(mo.threshold, sizes))
    t = share(tau_stat, (), src=MODEL_OWNER)
    bit = stat.lt(t) if method.accept_below(job.direction) else stat.gt(t)
    # the comparison result carries its own encoder (scale 1 in CrypTen), so decode through it
    opened_bit = bit.get_plain_text() if dst is None else bit.get_plain_text(dst=dst)
    if opened_bit is None:
        return Revealed(None, None)
    return Revealed(None, bool(round(float(opened_bit))))
