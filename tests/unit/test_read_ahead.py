"""ReadAhead (common.ml.data): the same items in order, one read ahead at most, errors where
they belong, and a stopped reader; and a data owner's prefetched candidate reads as before."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from common.errors import DataError
from common.ml.data import ReadAhead, open_candidate, save_npz
from common.mpc.statistics import DataOwnerInputs


def _counted(n: int, started: list[int], fail_at: int | None = None) -> Iterator[int]:
    for i in range(n):
        started.append(i)
        if i == fail_at:
            raise DataError(f"item {i} is bad")
        yield i


def _settle(started: list[int], count: int) -> None:
    deadline = time.monotonic() + 5
    while len(started) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # and no further


def test_items_come_in_order_with_one_read_ahead_at_most() -> None:
    started: list[int] = []
    ahead = ReadAhead(_counted(4, started))
    _settle(started, 1)
    assert started == [0]  # the first item is read before it is asked for, not the second
    assert next(ahead) == 0
    _settle(started, 2)
    assert started == [0, 1]  # item 1 is read while item 0 is in use
    assert list(ahead) == [1, 2, 3]


def test_an_error_is_raised_where_its_item_is_taken() -> None:
    ahead = ReadAhead(_counted(3, [], fail_at=1))
    assert next(ahead) == 0
    with pytest.raises(DataError, match="item 1 is bad"):
        next(ahead)
    with pytest.raises(StopIteration):
        next(ahead)


def test_close_stops_the_reader_and_closes_the_items() -> None:
    closed = threading.Event()

    def items() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.set()

    ahead = ReadAhead(items())
    assert next(ahead) == 0
    ahead.close()
    assert closed.wait(5)
    with pytest.raises(StopIteration):
        next(ahead)


def test_a_prefetched_candidate_reads_its_chunks_as_before(tmp_path) -> None:
    """Prefetched or not, the encoded chunks are the file's rows [x/B, 1] at scale 2^16."""
    rng = np.random.default_rng(0)
    X, y = rng.random((50, 4)) * 4 - 2, rng.integers(0, 3, 50)
    path = save_npz(tmp_path / "c.npz", (X, y))
    candidate = open_candidate(path, n_features=4, n_classes=3, rows=16)
    expected = np.round(np.hstack([X / 2.0, np.ones((50, 1))]) * 2**16)
    do = DataOwnerInputs(candidate=candidate)
    do.prefetch(16, 2.0)
    # prefetched; a fresh pass (a recomputation reads it again); one after a prefetch that does
    # not fit (another bound: dropped)
    for prefetch in (None, None, (16, 4.0)):
        if prefetch is not None:
            do.prefetch(*prefetch)
        chunks = list(do.encoded(16, 2.0))
        assert [len(c[1]) for c in chunks] == [16, 16, 16, 2]
        np.testing.assert_array_equal(np.vstack([c[0].numpy() for c in chunks]), expected)
        np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), y)
