"""One candidate's appraisal under MPC: its statistic, the data owner's noise, and the one reveal.

Both owners call :func:`secure_appraisal` with the agreed job and their own inputs. Nothing is
opened but the statistic (as the method's public, invertible transform of the score,
:mod:`common.methods`) or, in threshold mode, the single comparison bit; with ``reveal_to`` =
``model_owner`` the data owner's share goes one way and it learns nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from common.errors import ConfigError
from common.methods import METHODS
from common.mpc.fixedpoint import DATA_OWNER, MODEL_OWNER, reveal_float, share
from common.mpc.noise import influence_sensitivity, laplace
from common.mpc.statistics import (
    STATISTICS,
    DataOwnerInputs,
    ModelOwnerInputs,
    Shapes,
    StepCallback,
)
from common.protocol import JobSpec


class Revealed(NamedTuple):
    """What this party learned: the score (score mode) or the bit (threshold mode), or neither."""

    score: float | None
    accept: bool | None


def secure_appraisal(
    job: JobSpec,
    index: int,
    mo: ModelOwnerInputs | None,
    do: DataOwnerInputs | None,
    on_step: StepCallback | None = None,
) -> Revealed:
    """Appraise candidate ``index`` of ``job`` under MPC; both owners call this.

    ``on_step(done, total)`` is called after each step of the computation (fine-tuning's gradient
    steps; once for a one-shot method)."""
    method = METHODS[job.method]
    shapes = Shapes.of(job, index)
    sizes = job.sizes(index)
    dst = None if job.reveal_to == "both" else MODEL_OWNER
    stat = STATISTICS[job.method](job, shapes, mo, do, on_step)
    if job.noise_epsilon is not None:
        # The data owner's noise, unknown to the model owner, is added before anything is opened.
        assert job.v_bound is not None  # JobSpec refuses noise without it
        scale = influence_sensitivity(shapes, job.v_bound) / job.noise_epsilon
        eta = None if do is None else np.array(laplace(scale))
        stat = stat + share(eta, (), src=DATA_OWNER)

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
