"""Truncation checks (common/mpc/truncation.py) on two real processes over TCP: forced failures.

The shares of a few elements are crafted so that x₀ + x₁ overflows int64: the local truncation
then really fails (the element is off by 2⁶⁴/D). The ledger must count a failure whether the
failed element sits in a grouped site (many elements per check value) or an exactly checked one
(one check per element), and for two failures in one group; a run with honest shares counts 0.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import numpy as np
import pytest

from tests.integration.two_party import run_pair

pytestmark = pytest.mark.mpc
N, D = 5000, 1024
EDGE = 2**63 - 1000  # a share this close to 2⁶³ overflows when the value is negative
SCENARIOS = {  # name -> (crafted elements of the grouped site, of the exact site)
    "honest": ((), ()),
    "grouped": ((17,), ()),
    "exact": ((), (3,)),
    "two in one group": ((40, 41), ()),
}


def _values() -> np.ndarray:
    v = np.random.default_rng(5).uniform(-100, 100, N)
    v[[3, 17, 40, 41]] = [-3.0, -3.0, -7.5, -0.25]  # negative: a share at EDGE overflows
    return v


def _shares(rank: int, crafted: tuple[int, ...]):  # type: ignore[no-untyped-def]
    import torch

    ring = torch.from_numpy(np.round(_values() * 2**16).astype(np.int64))
    mask = torch.randint(-(2**62), 2**62, (N,), generator=torch.Generator().manual_seed(9)) * 2
    for i in crafted:
        mask[i] = EDGE
    return mask if rank == 0 else ring - mask


def _party(rank: int, pair: Any, out: multiprocessing.Queue) -> None:
    from common.mpc import truncation
    from common.mpc.compat import import_crypten

    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TFP"  # the test harness only: no dealer needed
    with pair() as comm:
        results = {}
        for name, (grouped, exact) in SCENARIOS.items():
            a = crypten.mpc.MPCTensor.from_shares(_shares(rank, grouped), precision=16)
            b = crypten.mpc.MPCTensor.from_shares(_shares(rank, exact), precision=16)
            with truncation.Ledger(name.encode()) as ledger:
                ya = a.div(D)  # the default site: grouped checks
                with truncation.bounded(2.0**30):  # a wide declared range: one check each
                    yb = b[:8].div(D)
            layouts = [s.layout for s in ledger.sites]
            count = ledger.failures()
            results[name] = (
                count,
                [(lay.group, lay.checks) for lay in layouts],
                ya.get_plain_text().double().tolist(),
                yb.get_plain_text().double().tolist(),
            )
        out.put((rank, results))
        comm.barrier()


def test_a_forced_truncation_failure_is_counted_and_an_honest_run_counts_none() -> None:
    results = run_pair(_party)
    assert results[0].keys() == results[1].keys() == SCENARIOS.keys()
    expected = _values() / D
    for name, (grouped, exact) in SCENARIOS.items():
        count, layouts, ya, yb = results[0][name]
        assert results[1][name][0] == count  # the count is opened to both owners
        (g_a, _), (g_b, r_b) = layouts
        assert g_a > 1 and (g_b, r_b) == (1, 1)  # both kinds of check are exercised
        wrong_a = np.flatnonzero(np.abs(np.array(ya) - expected) > 1.0)
        wrong_b = np.flatnonzero(np.abs(np.array(yb) - expected[:8]) > 1.0)
        # the crafted shares did make the truncation fail (by 2⁶⁴/D/2¹⁶ = 2³⁸ in value)
        assert wrong_a.tolist() == list(grouped) and wrong_b.tolist() == list(exact)
        errors = [ya[i] - expected[i] for i in wrong_a] + [yb[i] - expected[i] for i in wrong_b]
        assert all(abs(abs(e) - 2.0**38) < 1.0 for e in errors), errors
        if name == "honest":
            assert count == 0
        else:
            assert count > 0, f"{name}: the failure went undetected"


def test_check_values_compared_in_slices_give_the_same_counts(monkeypatch) -> None:
    """Ledger.failures compares the check values COMPARE_BATCH at a time (its temporaries stay
    bounded): with slices of 7 values, uneven, the counts are those of one comparison."""
    from common.mpc import truncation

    whole = run_pair(_party)
    monkeypatch.setattr(truncation, "COMPARE_BATCH", 7)
    sliced = run_pair(_party)
    for name in SCENARIOS:
        layouts = whole[0][name][1]
        values = 2 * sum(r * -(-n // g) for (g, r), n in zip(layouts, (N, 8), strict=True))
        assert values > 2 * 7 and values % 7, values  # several slices, the last one short
        assert sliced[0][name][0] == sliced[1][name][0] == whole[0][name][0], name
    assert whole[0]["honest"][0] == 0 and whole[0]["grouped"][0] > 0
