"""This project's comparison circuit against CrypTen's, run by two real processes over TCP.

The carry-only ``ltz`` (common/mpc/fixedpoint.py) must give exactly CrypTen's [x < 0] for every
value, including zero, the smallest fixed-point values of both signs and values near the ends of
the range; and the pairwise-tree ``row_max`` must match the plaintext maximum.
"""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

from common.runtime.supervisor import free_port

pytestmark = pytest.mark.mpc
SESSION, DIGEST = "ltz-test", b"\1" * 32


def _values() -> np.ndarray:
    rng = np.random.default_rng(11)
    edge = [0.0, 2**-16, -(2**-16), 1.0, -1.0, 2.0**30, -(2.0**30), 2.0**40, -(2.0**40)]
    return np.concatenate([edge, rng.normal(scale=3.0, size=500), rng.uniform(-1e6, 1e6, 200)])


def _party(rank: int, port: int, psk: bytes, out: multiprocessing.Queue) -> None:
    import torch

    from common.mpc import transport
    from common.mpc.communicator import SecureCommunicator, close_channels, installed
    from common.mpc.compat import import_crypten
    from common.mpc.fixedpoint import DATA_OWNER, ltz, row_max, share
    from common.mpc.streams import owner_generators

    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TFP"  # the test harness only: no dealer needed
    if rank == 0:
        peer = transport.accept_peers(
            "127.0.0.1", port, {"data_owner": psk}, session_id=SESSION, job_digest=DIGEST, window=20
        )["data_owner"]
    else:
        peer = transport.connect(
            "data_owner", "127.0.0.1", port, psk, session_id=SESSION, job_digest=DIGEST, window=20
        )
    try:
        with installed(SecureCommunicator(rank, peer), owner_generators(rank, peer), None):
            values = _values()
            x = share(values if rank == DATA_OWNER else None, values.shape, src=DATA_OWNER)
            mine = ltz(x).get_plain_text()
            theirs = x._ltz().get_plain_text()
            grid = values[: 60 * 7].reshape(60, 7) / 1e3  # logits-like rows, k = 7 (odd)
            z = share(grid if rank == DATA_OWNER else None, grid.shape, src=DATA_OWNER)
            top = row_max(z).get_plain_text()
            out.put((rank, mine.tolist(), theirs.tolist(), top.double().tolist()))
            crypten.communicator.get().barrier()
    finally:
        close_channels(peer)
        del torch


def test_carry_only_comparison_matches_crypten_and_row_max_is_exact() -> None:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()
    port, psk = free_port(), os.urandom(32)
    parties = [ctx.Process(target=_party, args=(r, port, psk, out)) for r in (0, 1)]
    for p in parties:
        p.start()
    results = [out.get(timeout=120) for _ in parties]
    for p in parties:
        p.join(30)
        assert p.exitcode == 0
    values = _values()
    expected = (values < 0).astype(float)
    grid = values[: 60 * 7].reshape(60, 7) / 1e3
    for _, mine, theirs, top in results:
        assert np.array_equal(np.array(mine), expected)
        assert np.array_equal(np.array(theirs), expected)
        # the maximum of the fixed-point values, to within the encoder's rounding
        np.testing.assert_allclose(np.array(top)[:, 0], grid.max(axis=1), atol=2**-15)
