"""The method registry, its public transforms and the threshold's direction, without MPC."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from common.methods import METHOD_NAMES, METHODS, Sizes, gradient_norm_scale, method
from common.ml.twins import TWINS
from common.mpc.statistics import STATISTICS

SIZES = Sizes(n_candidate=130, n_test=400)


def test_every_method_has_its_statistic_and_its_twin() -> None:
    """A new method is one registry entry plus its MPC statistic and plaintext twin."""
    assert set(METHODS) == set(STATISTICS) == set(TWINS)
    assert METHOD_NAMES[0] == "influence"  # the default comes first


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_the_public_transform_is_invertible_on_scores(name: str) -> None:
    m = METHODS[name]
    for score in (0.5, 2.0, 17.25) if name == "gradient-norm" else (-1.5, -0.01, 0.0, 0.3):
        statistic = m.to_statistic(score, SIZES)
        assert m.to_score(statistic, SIZES) == pytest.approx(score, rel=1e-12, abs=1e-12)
    a, b = m.to_statistic(1.0, SIZES), m.to_statistic(2.0, SIZES)
    assert (b > a) == m.increasing


def test_the_transforms_are_the_documented_ones() -> None:
    n, n_te = SIZES.n_candidate, SIZES.n_test
    assert METHODS["influence"].to_score(26.0, SIZES) == -26.0 / n  # S = Σ ∇Lᵀv, score −S/n
    assert METHODS["finetune"].to_score(8.0, SIZES) == 8.0 / n_te  # Δ = Σ_te, score Δ/n_te
    s = gradient_norm_scale(n)
    assert s == 12 and METHODS["gradient-norm"].to_score(4.0, SIZES) == s * 2.0  # s·√q
    assert METHODS["gradient-norm"].to_statistic(-3.0, SIZES) == 0.0  # any norm passes τ < 0


@pytest.mark.parametrize(
    ("name", "direction", "below"),
    [
        # influence's score falls as its statistic grows: "lower is better" is "statistic above"
        ("influence", None, False),
        ("influence", "lower", False),
        ("influence", "higher", True),
        ("finetune", None, True),
        ("finetune", "higher", False),
        ("gradient-norm", None, False),
        ("gradient-norm", "lower", True),
    ],
)
def test_the_threshold_bit_compares_the_statistic_in_the_right_direction(
    name: str, direction: str | None, below: bool
) -> None:
    """The direction flip of the threshold bit, in plaintext: the MPC comparison uses exactly this
    (tests/integration/test_mpc.py runs it once under MPC, flipped and not)."""
    m = METHODS[name]
    assert m.accept_below(direction) is below  # type: ignore[arg-type]
    # and it is right: a score better than τ passes
    tau, better, worse = 0.5, 0.25, 0.75
    if (direction or m.better) == "higher":
        better, worse = worse, better
    for score, passes in ((better, True), (worse, False)):
        stat, t = m.to_statistic(score, SIZES), m.to_statistic(tau, SIZES)
        assert ((stat < t) if below else (stat > t)) is passes


def test_an_unknown_method_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="influence, gradient-norm, finetune"):
        method("magic")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_an_extreme_threshold_maps_to_an_infinite_statistic_not_an_exception(name: str) -> None:
    """τ = 1e308: (τ/s)² overflowed with OverflowError (a 500); now it is ±inf, which
    common.protocol.threshold_problem refuses naming τ and its range."""
    import math

    statistic = METHODS[name].to_statistic(1e308, SIZES)
    assert math.isinf(statistic) or abs(statistic) > 1e300
