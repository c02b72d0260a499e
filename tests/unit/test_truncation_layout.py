"""The layout of the truncation checks (common/mpc/truncation.py) keeps its two promises.

For every divisor and declared bound: honest check values stay within E/4 (so a run without a
failure never trips) while one failure moves a check by at least E (so it always trips), and the
probability that failures go undetected is at most BUDGET per truncated element.
"""

from __future__ import annotations

import pytest

from common.mpc.truncation import BUDGET, RING, layout

DIVISORS = [4, 6, 8, 64, 1000, 2**16, 2**16 * 78, 4096 * 6600, 2**21, 2**30]
BOUNDS = [2**10, 2**17, 2**19 + 2, 2**24 + 2, 2**36, 2**46]


@pytest.mark.parametrize("divisor", DIVISORS)
@pytest.mark.parametrize("bound", BOUNDS)
def test_honest_checks_stay_in_range_and_failures_are_bounded(divisor: int, bound: int) -> None:
    lay = layout(divisor, bound)
    E = RING / divisor
    if bound * divisor >= RING / 2:  # not even representable: no promise
        return
    assert lay.bound <= BUDGET
    if lay.group == 1:
        assert lay.checks == 1 and bound < E / 2  # c = y, certain
        return
    assert lay.group * (lay.rho_max - 1) * bound <= E / 4  # honest |c| ≤ E/4
    pow2 = divisor & (divisor - 1) == 0
    if not pow2:  # three failures' Σρ·E must not wrap to about 0
        assert divisor >= 5 and (lay.rho_max <= max(2, divisor / 8))
        assert 3 * (lay.rho_max - 1) * E < RING / 2 or lay.rho_max == 2
    else:
        assert lay.rho_max <= divisor


def test_the_small_results_of_the_softmax_are_checked_in_large_groups() -> None:
    softmax_site = layout(2**16, 8 * 2**16 + 2)  # results ≤ 8: the declared RANGE of softmax
    assert softmax_site.group >= 2**14 and softmax_site.cost < 1e-3
    assert layout(2**16, 2**46).group == 1  # a wide declared range: one check per element


@pytest.mark.parametrize(
    ("method", "n"), [("influence", 60_000), ("gradient-norm", 60_000), ("finetune", 6_000)]
)
def test_a_streamed_candidate_s_undetected_failure_bound_is_below_2_to_the_minus_40(
    method: str, n: int
) -> None:
    """The guarantee of docs/protocol.md ("Truncation failures"), from the plan's inputless run at
    MNIST-sized shapes: at 60,000 rows (8 chunks) every site, the sum G of the chunks' XᵀR
    included, is checked finely enough. (With G under the next product's declared range its 7,850
    elements went unchecked and the bound was 6.9e3.)"""
    from common.mpc.truncation import planned_checks
    from common.protocol import CandidateMeta, JobSpec

    job = JobSpec(
        method=method,
        n_features=784,
        n_classes=10,
        candidates=[CandidateMeta(name="c", n_samples=n)],
        n_train=600,
        n_test=1000,
    )
    ledger = planned_checks(job, 0)
    assert ledger.n_checks > 0
    assert ledger.bound < 2.0**-40 / 100, ledger.bound
