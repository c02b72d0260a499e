"""The appraisal methods: one registry entry each, with what both parties must agree on about it.

An entry says which scores are better, which of the model owner's data the method needs, whether
calibrated noise is available, and the *public transform*: under MPC each method opens (or
compares) a statistic from which the score follows by a public, invertible map (a sum instead of a
mean, a squared norm instead of a norm), which releases exactly the same information and avoids
dividing secrets by large public counts.

A new method is one entry here, plus its MPC statistic (``common.mpc.statistics.STATISTICS``) and
its plaintext twin (``common.ml.twins.TWINS``); ``tests/unit/test_methods.py`` checks that the
three registries agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from common.errors import ConfigError

Direction = Literal["lower", "higher"]


@dataclass(frozen=True)
class Sizes:
    """The public sizes a transform may use."""

    n_candidate: int
    n_test: int


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    better: Direction  # which scores are better when a session does not say
    to_score: Callable[[float, Sizes], float]  # the opened statistic → the score
    to_statistic: Callable[[float, Sizes], float]  # a threshold τ on the score → on the statistic
    increasing: bool  # the score grows with the statistic
    needs_test_set: bool  # the model owner's D_te enters the MPC
    needs_training_set: bool  # the model owner's D_tr enters the MPC
    noise: bool  # calibrated Laplace noise is available (a public bound on each sample's term)

    def accept_below(self, direction: Direction | None) -> bool:
        """Whether the threshold bit is "statistic < τ" (else "statistic > τ") for ``direction``.

        The bit says "the score is better than τ"; with a decreasing transform the comparison of
        the statistic flips.
        """
        return ((direction or self.better) == "lower") == self.increasing


def gradient_norm_scale(n_candidate: int) -> int:
    """s = ⌈√|D_a|⌉: the public scale of the gradient-norm statistic q = ‖Σ∇L‖² / s²."""
    return math.ceil(math.sqrt(n_candidate))


def _square(x: float) -> float:
    """x², inf beyond the floats (``x ** 2`` raises OverflowError there, e.g. for τ = 1e308)."""
    return x * x


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="influence",
            summary="−1/|D_a| Σ_a ∇L(x',y';θ̂)ᵀ H⁻¹ ḡ_test: the first-order change of the test loss",
            better="lower",
            # opened: S = Σ_a ∇L_aᵀ v
            to_score=lambda stat, sizes: -stat / sizes.n_candidate,
            to_statistic=lambda tau, sizes: -tau * sizes.n_candidate,
            increasing=False,
            needs_test_set=False,  # v = H⁻¹ ḡ_test is computed in the clear beforehand
            needs_training_set=False,
            noise=True,
        ),
        Method(
            name="gradient-norm",
            summary="‖Σ_a ∇θ L(x',y';θ̂)‖₂: how much the candidate would move the model",
            better="higher",
            # opened: q = ‖Σ∇L‖² / s², s = ⌈√|D_a|⌉
            to_score=lambda stat, sizes: (
                gradient_norm_scale(sizes.n_candidate) * math.sqrt(max(stat, 0.0))
            ),
            to_statistic=lambda tau, sizes: _square(
                max(tau, 0.0) / gradient_norm_scale(sizes.n_candidate)
            ),
            increasing=True,
            needs_test_set=False,
            needs_training_set=False,
            noise=False,
        ),
        Method(
            name="finetune",
            summary="mean test-loss change after T gradient steps on D_tr ∪ D_a from θ̂",
            better="lower",
            # opened: Δ = Σ_te L(θ_T) − Σ_te L(θ̂)
            to_score=lambda stat, sizes: stat / sizes.n_test,
            to_statistic=lambda tau, sizes: tau * sizes.n_test,
            increasing=True,
            needs_test_set=True,
            needs_training_set=True,
            noise=False,
        ),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
DEFAULT_METHOD = "influence"


def method(name: str) -> Method:
    """The registry entry of ``name``; a ConfigError names the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; choose one of: {', '.join(METHOD_NAMES)}"
        ) from None
