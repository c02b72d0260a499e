"""This project's comparison circuit against CrypTen's, run by two real processes over TCP.

The carry-only ``ltz`` (common/mpc/fixedpoint.py) must give exactly CrypTen's [x < 0] for every
value, including zero, the smallest fixed-point values of both signs and values near the ends of
the range; and the pairwise-tree ``row_max`` must match the plaintext maximum. Under the dealer's
correlated values (a mirror of the dealer inside the model owner's process, test harness only) the
reused openings must match plaintext too: the comparison-and-select maximum is one of the row's
entries and at most ``max_slack`` below the maximum (exact when the entries are 2⁻⁷ apart), exp,
the reciprocal, the softmax and log are within their stated accuracy.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import numpy as np
import pytest

from tests.integration.two_party import run_pair

pytestmark = pytest.mark.mpc


def _values() -> np.ndarray:
    rng = np.random.default_rng(11)
    edge = [0.0, 2**-16, -(2**-16), 1.0, -1.0, 2.0**30, -(2.0**30), 2.0**40, -(2.0**40)]
    return np.concatenate([edge, rng.normal(scale=3.0, size=500), rng.uniform(-1e6, 1e6, 200)])


def _party(rank: int, pair: Any, out: multiprocessing.Queue) -> None:
    from common.mpc.compat import import_crypten
    from common.mpc.fixedpoint import DATA_OWNER, ltz, row_max, share

    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TFP"  # the test harness only: no dealer needed
    with pair() as comm:
        values = _values()
        x = share(values if rank == DATA_OWNER else None, values.shape, src=DATA_OWNER)
        mine = ltz(x).get_plain_text()
        theirs = x._ltz().get_plain_text()
        grid = values[: 60 * 7].reshape(60, 7) / 1e3  # logits-like rows, k = 7 (odd)
        z = share(grid if rank == DATA_OWNER else None, grid.shape, src=DATA_OWNER)
        top = row_max(z).get_plain_text()
        out.put((rank, (mine.tolist(), theirs.tolist(), top.double().tolist())))
        comm.barrier()


def _mirror_provider(rank: int):  # type: ignore[no-untyped-def]
    """Our DealerProvider, with the model owner computing the dealer's values itself from copies
    of both owners' streams (the test harness only: it sees everything)."""
    import hashlib

    from common.mpc.dealer import Dealer, DealerProvider

    keys = tuple(
        (lambda label, m=master: hashlib.sha256(m + label.encode()).digest())
        for master in (b"\2" * 32, b"\3" * 32)
    )

    class Mirror(DealerProvider):
        def __init__(self) -> None:
            super().__init__(rank, keys[rank], object() if rank == 0 else None)  # type: ignore[arg-type]
            self.mirror = Dealer(keys[0], keys[1])
            self.begin(0)  # one candidate's first attempt, on both sides
            self.mirror.begin(0, 0)

        def _correction(self, item, size):  # type: ignore[no-untyped-def]
            if self._rank == 1:
                return super()._correction(item, size)
            self._mark(item)
            return self.mirror.value(item)

        def _mark(self, item) -> None:  # type: ignore[no-untyped-def]
            super()._mark(item)
            if self._rank == 0 and (item.fn == "mask" or item.widths == (64,)):
                self.mirror.value(item)

    return Mirror()


def _dealer_party(rank: int, pair: Any, out: multiprocessing.Queue) -> None:
    from common.mpc.fixedpoint import (
        DATA_OWNER,
        exp_nonpositive,
        log_in_range,
        reciprocal_in_range,
        row_max,
        share,
        softmax,
    )

    with pair(_mirror_provider(rank)) as comm:
        mine = rank == DATA_OWNER
        z_plain, x_plain, s_plain = _dealer_inputs()
        z = share(z_plain if mine else None, z_plain.shape, src=DATA_OWNER)
        x = share(x_plain if mine else None, x_plain.shape, src=DATA_OWNER)
        s = share(s_plain if mine else None, s_plain.shape, src=DATA_OWNER)
        figures = {
            "max": row_max(z).get_plain_text().double().tolist(),
            "exp": exp_nonpositive(x, halvings=6, order=4).get_plain_text().double().tolist(),
            "exp6": exp_nonpositive(x / 16, halvings=3, order=6).get_plain_text().double().tolist(),
            "inv": reciprocal_in_range(s, upper=10.0).get_plain_text().double().tolist(),
            "log": log_in_range(s, upper=10.0).get_plain_text().double().tolist(),
            "softmax": softmax(z).get_plain_text().double().tolist(),
        }
        out.put((rank, figures))
        comm.barrier()


def _dealer_inputs():  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    z = rng.normal(scale=8.0, size=(40, 7))
    z[0] = [0.0, 2**-16, -(2**-16), 3.0, 3.0, -137.0, 3.0 - 2**-8]  # ties, steps below 2⁻⁷
    z[1] = [-127.0, 127.0, 0.0, 120.0, -120.0, 1.0, -1.0]  # differences near the bound 255
    x = -np.concatenate([[0.0, 2**-16, 1.0, 12.0, 60.0, 140.0], rng.uniform(0, 140, 100)])
    s = np.concatenate([[1.0, 10.0, 1.0 + 2**-16], rng.uniform(1, 10, 60)])
    return z, x, s


def test_reused_openings_match_plaintext() -> None:
    from common.mpc.fixedpoint import max_slack

    z, x, s = _dealer_inputs()
    grid = np.round(z * 2**16) / 2**16
    for got in run_pair(_dealer_party).values():
        top = np.array(got["max"])[:, 0]
        assert all(t in row for t, row in zip(top, grid, strict=True))  # one of the entries
        assert np.all(top <= grid.max(axis=1))
        assert np.all(top >= grid.max(axis=1) - max_slack(7))
        np.testing.assert_array_equal(top[1:], grid[1:].max(axis=1))  # exact on these rows
        np.testing.assert_allclose(got["exp"], np.exp(x), rtol=3e-3, atol=2e-4)
        np.testing.assert_allclose(got["exp6"], np.exp(x / 16), rtol=1e-3, atol=2e-4)
        np.testing.assert_allclose(got["inv"], 1 / s, rtol=3e-4, atol=2e-5)
        np.testing.assert_allclose(got["log"], np.log(s), atol=2e-3)
        rows = np.exp(grid[2:] - grid[2:].max(axis=1, keepdims=True))
        np.testing.assert_allclose(
            np.array(got["softmax"])[2:], rows / rows.sum(axis=1, keepdims=True), atol=2e-3
        )


def test_carry_only_comparison_matches_crypten_and_row_max_is_exact() -> None:
    results = run_pair(_party)
    values = _values()
    expected = (values < 0).astype(float)
    grid = values[: 60 * 7].reshape(60, 7) / 1e3
    for mine, theirs, top in results.values():
        assert np.array_equal(np.array(mine), expected)
        assert np.array_equal(np.array(theirs), expected)
        # the maximum of the fixed-point values, to within the encoder's rounding
        np.testing.assert_allclose(np.array(top)[:, 0], grid.max(axis=1), atol=2**-15)


def _narrow_values(width: int) -> np.ndarray:
    """Raw ring values an opening of ``width`` bits must carry exactly: its range's two ends, zero,
    one unit either side, and random values across the range."""
    top = 2 ** (width - 2) - 1
    rng = np.random.default_rng(width)
    edge = [top, -top, 0, 1, -1, top - 1, -(top - 1)]
    return np.concatenate([edge, rng.integers(-top, top + 1, 300)]).astype(np.int64)


def _narrow_party(rank: int, pair: Any, out: multiprocessing.Queue) -> None:
    import torch

    from common.mpc.compat import import_crypten
    from common.mpc.fixedpoint import SCALE, _Opened

    crypten = import_crypten()
    with pair(_mirror_provider(rank)) as comm:
        figures = {}
        for width in (16, 24, 32):
            raw = torch.as_tensor(_narrow_values(width))
            bound = (2 ** (width - 2) - 1) / SCALE
            x = crypten.mpc.MPCTensor.from_shares(raw if rank == 1 else raw * 0, precision=16)
            y = crypten.mpc.MPCTensor.from_shares(
                raw.flip(0) if rank == 1 else raw * 0, precision=16
            )
            ox, oy = _Opened.together((x, bound), (y, bound))
            assert ox.width == width
            x2 = crypten.mpc.MPCTensor.from_shares(ox.times(ox), precision=0)
            xy = crypten.mpc.MPCTensor.from_shares(ox.times(oy), precision=0)
            figures[width] = (
                crypten.mpc.MPCTensor.from_shares(
                    ox.a + (ox.delta if rank == 0 else 0), precision=0
                )
                .get_plain_text()
                .long()
                .tolist(),
                x2._tensor.reveal().tolist(),
                xy._tensor.reveal().tolist(),
            )
        out.put((rank, figures))
        comm.barrier()


def test_narrow_openings_are_exact_at_the_ends_of_their_range() -> None:
    """x = δ + α and the products from the narrow openings (16, 24 and 32 bits) equal the
    integers exactly, at ±(2^(w−2) − 1) ring units, at zero and across the range (mod 2⁶⁴)."""
    for got in run_pair(_narrow_party).values():
        for width, (x, x2, xy) in got.items():
            raw = _narrow_values(width)
            assert x == raw.tolist()
            square = [int(v) * int(v) for v in raw]
            product = [int(a) * int(b) for a, b in zip(raw, raw[::-1], strict=True)]
            wrap = [((v + 2**63) % 2**64) - 2**63 for v in square]
            assert x2 == wrap
            assert xy == [((v + 2**63) % 2**64) - 2**63 for v in product]
