"""The data owner's calibrated noise: the sensitivity of the influence statistic and the Laplace draw.

The calibration is public and checked once, in the contract (:class:`common.protocol.JobSpec`
refuses an ε whose clamped noise could leave the fixed-point range); this module draws the noise the
contract allows. The draw is clamped explicitly at ±NOISE_CLAMP scales and checked to be finite, so
that encoding it (×2¹⁶, cast to int64) can never saturate: a saturated cast once turned every draw
into the same constant −2⁶³, which the model owner could subtract from the released score.
"""

from __future__ import annotations

import math
import secrets
from typing import Protocol

from common.errors import ConfigError
from common.protocol import MAX_NOISE, NOISE_CLAMP
from common.protocol import influence_sensitivity as _sensitivity


class FeatureSizes(Protocol):
    """What the sensitivity depends on: a :class:`common.mpc.statistics.Shapes` or a JobSpec."""

    @property
    def n_features(self) -> int: ...

    @property
    def feature_bound(self) -> float: ...


def influence_sensitivity(shapes: FeatureSizes, v_bound: float) -> float:
    """How much S = Σ_a ∇L_aᵀ v can change when one candidate sample is replaced by another.

    |∇L_aᵀ v| = |Σ_j (p_aj − y_aj)(x̃_a · v_j)| ≤ ‖p_a − y_a‖₁ · max_j |x̃_a · v_j|
    ≤ 2 · ‖x̃_a‖₂ · max_j ‖v_j‖₂, with x̃ = [x, 1] and |x_i| ≤ B, so ‖x̃‖₂ ≤ √(d B² + 1).
    Replacing one sample removes one term and adds another: twice that bound
    (:func:`common.protocol.influence_sensitivity`, the one formula).
    """
    return _sensitivity(shapes.n_features, shapes.feature_bound, v_bound)


def _uniform() -> float:
    """Uniform on (0, 1): 53 random bits from the operating system, never 0 or 1."""
    return (secrets.randbits(53) + 0.5) / 2.0**53


def laplace(scale: float) -> float:
    """One draw of Laplace(0, scale), clamped at ±NOISE_CLAMP·scale.

    The draw is the difference of two exponentials from the operating system's generator (a
    textbook floating-point sampler; caveats in docs/threat-model.md). Clamping moves probability
    e^(−NOISE_CLAMP) ≈ 1.3e-14 to the two end points: that is the δ of the (ε, δ) guarantee
    (:func:`common.protocol.noise_delta`). A scale whose clamp would exceed MAX_NOISE (the contract
    refuses such jobs) is refused here too, so no caller can make the encoding overflow.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"the noise scale must be a positive finite number, got {scale!r}")
    limit = NOISE_CLAMP * scale
    if not limit <= MAX_NOISE:
        raise ConfigError(
            f"the noise scale {scale:.3g} clamped at {NOISE_CLAMP:g} scales is {limit:.3g}, "
            "beyond 2⁴⁰: the noise could leave the fixed-point range (a smaller ε than the "
            "contract allows)"
        )
    draw = scale * (math.log(_uniform()) - math.log(_uniform()))
    if not math.isfinite(draw):  # cannot happen for these uniforms; never encode a non-number
        raise ConfigError(f"the Laplace draw is not finite ({draw!r})")
    return min(max(draw, -limit), limit)
