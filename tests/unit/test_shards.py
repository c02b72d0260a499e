"""The shards' public ranges of chunks (common.mpc.shards): contiguous, covering, one pair's as before."""

from __future__ import annotations

import pytest

from common.mpc.shards import WHOLE, Shard, shard_problem


@pytest.mark.parametrize(("n", "rows", "count"), [(384, 130, 2), (10, 1, 3), (7, 2, 4), (5, 8, 3)])
def test_the_shards_cut_the_chunks_into_contiguous_ranges(n: int, rows: int, count: int) -> None:
    chunks = -(-n // rows)
    ranges = [Shard(s, count).chunks(n, rows) for s in range(count)]
    working = [r for r in ranges if r]
    assert len(working) == min(count, chunks)  # fewer chunks than shards: fewer shards
    assert [c for r in ranges for c in r] == list(range(chunks))  # every chunk once, in order
    assert all(len(working[0]) <= len(r) for r in working)  # shard 0, which finishes, has fewest
    assert max(map(len, working)) - min(map(len, working)) <= 1


def test_one_pair_is_the_whole_candidate_and_keeps_the_jobs_digest() -> None:
    assert WHOLE.chunks(384, 130) == range(3)
    digest = bytes(32)
    assert WHOLE.digest(digest) == digest and WHOLE.label == ""
    digests = {Shard(s, 2).digest(digest) for s in range(2)} | {Shard(0, 3).digest(digest)}
    assert len(digests) == 3 and digest not in digests  # each shard's links its own


def test_finetune_runs_in_one_shard() -> None:
    assert shard_problem("finetune", 1) is None and shard_problem("influence", 4) is None
    problem = shard_problem("finetune", 2)
    assert problem is not None and "whole candidate" in problem
    with pytest.raises(ValueError, match="shard 2 of 2"):
        Shard(2, 2)
