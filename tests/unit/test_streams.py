"""StreamRng's draws are the AES-256-CTR key stream, byte for byte, however they are computed:
in place, in pieces, and split across threads at block counters (common.mpc.streams)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from common.mpc import streams
from common.mpc.streams import PIECE, StreamRng

# empty, one element, odd sizes that leave each next draw mid-block, several pieces, and a size
# whose last piece is shorter than the update_into slack
SIZES = [0, 1, 3, PIECE // 8 + 3, 2, 5 * PIECE // 8 + 1, 7, 0, 2 * PIECE // 8 - 1, 1]


def _reference(key: bytes, n: int) -> np.ndarray:
    """The first n int64 of the key stream, from one sequential encryptor."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * n)), dtype=np.int64)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("parallel_bytes", [1, 24, streams.PARALLEL_BYTES])
def test_draws_are_the_sequential_key_stream(monkeypatch, threads, parallel_bytes) -> None:
    """Successive draws of every size, split across threads or not, concatenate to the stream."""
    monkeypatch.setattr(streams, "PARALLEL_BYTES", parallel_bytes)
    key = os.urandom(32)
    rng = StreamRng(key, threads=threads)
    drawn = [rng.int64(n).numpy() for n in SIZES]
    assert [len(d) for d in drawn] == SIZES
    np.testing.assert_array_equal(np.concatenate(drawn), _reference(key, sum(SIZES)))


def test_a_split_draw_starting_mid_block_matches(monkeypatch) -> None:
    """A large threaded draw after an odd one (its first range ends at a block boundary)."""
    key = os.urandom(32)
    rng = StreamRng(key, threads=2)
    shape = (600, 785)  # 3.8 MB, above PARALLEL_BYTES once lowered
    monkeypatch.setattr(streams, "PARALLEL_BYTES", 1 << 20)
    head, body, tail = rng.int64(1), rng.int64(shape), rng.int64(5)
    assert tuple(body.shape) == shape
    got = np.concatenate([head.numpy(), body.numpy().ravel(), tail.numpy()])
    np.testing.assert_array_equal(got, _reference(key, 1 + 600 * 785 + 5))


def test_the_thread_count_defaults_to_torchs(monkeypatch) -> None:
    """Without ``threads`` a generator uses the worker's torch thread count (limit_threads)."""
    import torch

    used: list[int] = []
    monkeypatch.setattr(streams, "PARALLEL_BYTES", 1)
    monkeypatch.setattr(streams, "_pool", lambda threads: used.append(threads) or _Inline())
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    key = os.urandom(32)
    np.testing.assert_array_equal(StreamRng(key).int64(1000).numpy(), _reference(key, 1000))
    assert used == [3]


class _Inline:
    """A stand-in pool that runs each job at once."""

    def submit(self, fn, *args):  # type: ignore[no-untyped-def]
        from concurrent.futures import Future

        future: Future[None] = Future()
        future.set_result(fn(*args))
        return future
