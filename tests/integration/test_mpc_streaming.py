"""A candidate streamed through the MPC in chunks of the job's public ``chunk_rows`` (real workers).

Influence and gradient norm cut the candidate into ⌈n / chunk_rows⌉ chunks, each masked once and
sent one way on its own, and add the chunks' shared partial sums before the one truncation and
reveal (common.mpc.statistics). Forcing small chunks on a digits candidate checks that

- the score is the plaintext twin's within the same 1 % as in one chunk (tests/integration/
  test_mpc.py), and close to the one-chunk MPC score;
- the counts are what the chunking predicts: the data owner sends the candidate's n·(d+1) ring
  elements in all, whatever the cut, and every count grows by the same amount per extra chunk
  (each chunk repeats the same protocol on fewer rows), so f(3 chunks) − f(2) = f(2) − f(1):
  exactly for the rounds, within 15 % for the bytes (the truncation checks' groups round up).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.ml.data import load_dataset, save_npz
from common.runtime.local import LocalRun, run_local

pytestmark = pytest.mark.mpc
REL_TOL = 0.01


N = 384  # rows of the test's candidate: 1, 2 and 3 chunks of a multiple of 64 rows each


def _counts(run: LocalRun) -> tuple[int, int, int, int]:
    do = run.data_owner[0]
    return do.bytes_sent, do.bytes_received, run.results[0].rounds, run.dealer_bytes


@pytest.fixture(scope="module")
def candidate_384(digits_split, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three digits candidates' first N rows, as one candidate."""
    parts = [load_dataset(c) for c in digits_split.candidates[:3]]
    X = np.concatenate([p.X for p in parts])[:N]
    y = np.concatenate([p.y for p in parts])[:N]
    return save_npz(tmp_path_factory.mktemp("stream") / "cand_384.npz", (X, y))


def _run(method: str, split, cand: Path, rows: int, softmax_chunks: int = 1) -> LocalRun:
    return run_local(
        method=method,
        train=split.train,
        test=split.test,
        candidates=[cand],
        chunk_rows=rows,
        softmax_chunks=softmax_chunks,
        check=True,
    )


def _assert_close(run: LocalRun, reference: float | None = None) -> None:
    assert run.plaintext is not None
    plain, score = run.plaintext[0], run.results[0].score
    assert score is not None
    assert abs(score - plain) / abs(plain) < REL_TOL, (score, plain)
    if reference is not None:  # and the one-chunk MPC score
        assert abs(score - reference) / abs(plain) < REL_TOL, (score, reference)


@pytest.mark.parametrize("method", ["influence", "gradient-norm"])
def test_chunked_candidate_matches_plaintext_and_counts_grow_per_chunk(
    method: str, digits_split, candidate_384: Path
) -> None:
    runs = [_run(method, digits_split, candidate_384, rows) for rows in (N, N // 2, N // 3)]
    assert [r.job.chunk_rows for r in runs] == [N, N // 2, N // 3]
    one = runs[0].results[0].score
    for run in runs:
        _assert_close(run, one)
    # Each chunk repeats the protocol on its rows; with chunks of a multiple of 64 rows no packed
    # word is partly empty (common.mpc.fixedpoint packs up to 64 bits a word), so every count is
    # affine in the chunk count c: f(c) = f(1) + (c − 1)·(the cost of one more chunk).
    # The dealer's values carry a JSON header with the item's index in the session, whose digits
    # grow with it, so its bytes are affine only up to a few bytes per item.
    # The truncation checks (common.mpc.truncation) are the exception: each site's results are
    # checked in groups of g elements, ⌈m/g⌉ groups for a chunk of m, so their check values (and
    # the one batched comparison of them) are affine in c only up to that rounding: the bytes
    # are compared within 15 %, the rounds exactly.
    figures = np.array([_counts(r) for r in runs])
    per_chunk = figures[1] - figures[0]
    assert figures[2, 2] - figures[1, 2] == per_chunk[2], figures
    step = figures[2] - figures[1]
    assert (np.abs(step - per_chunk) < 0.15 * per_chunk).all(), figures
    assert (per_chunk > 0).all()  # every chunk costs its own messages and rounds
    # ... but the candidate crosses once in all: one more chunk costs far less than a chunk's E
    d = runs[0].job.n_features + 1
    assert per_chunk[0] < (N // 3) * d * 8
    # the rounds of one chunk's protocol: the one-chunk run's, less the final reveal's
    assert per_chunk[2] < figures[0][2]


def test_one_softmax_per_group_of_chunks_saves_its_rounds(digits_split, candidate_384) -> None:
    """3 chunks with softmax_chunks 1, 2 and 3: 3, 2 and 1 softmaxes (the groups' logits
    stacked, their masked chunks kept on disk meanwhile). The score stays the plaintext twin's;
    each softmax fewer saves the same rounds exactly, while the bytes barely move (the softmax's
    bytes are mostly per row; each softmax call adds about 9 kB of its own here, its truncation
    checks and per-call openings, a few per cent of these 384 rows' narrow openings)."""
    runs = [_run("influence", digits_split, candidate_384, N // 3, g) for g in (1, 2, 3)]
    one = runs[0].results[0].score
    for run in runs:
        _assert_close(run, one)
    rounds = [r.results[0].rounds for r in runs]
    assert rounds[0] - rounds[1] == rounds[1] - rounds[2] > 0, rounds
    sent = [r.data_owner[0].bytes_sent for r in runs]
    assert max(sent) < 1.08 * min(sent), sent


def test_a_short_last_chunk_is_appraised_like_the_others(digits_split, candidate_384) -> None:
    """4 chunks: 100, 100, 100 and 84 rows."""
    run = _run("influence", digits_split, candidate_384, 100)
    _assert_close(run)


@pytest.mark.parametrize(("batch_size", "softmax_chunks"), [(None, 1), (150, 1), (150, 2)])
def test_finetune_over_chunks_kept_on_disk_matches_plaintext(
    batch_size: int | None, softmax_chunks: int, digits_split, candidate_384
) -> None:
    """Fine-tuning with the candidate in 3 chunks (each party's tensors in its spill directory
    between steps), full batch and minibatches that span chunks (rows sorted per batch), one
    softmax per chunk or per group of 2 chunks."""
    run = run_local(
        method="finetune",
        train=digits_split.train,
        test=digits_split.test,
        candidates=[candidate_384],
        chunk_rows=N // 3,
        softmax_chunks=softmax_chunks,
        batch_size=batch_size,
        steps=8,
        check=True,
    )
    _assert_close(run)
