"""MPC against its plaintext twin: real CrypTen workers (model owner, data owner, dealer) over TCP.

Tolerance: 1 % relative error for every method, at both the digits case and the MNIST-sized case
(6,000 × 784 candidate, |D_tr| = 600, |D_te| = 1,000, 10 classes). Threshold bits are checked with
τ between two candidates' plaintext scores, so that one lies on each side of τ.
"""

from __future__ import annotations

import pytest

from common.methods import METHODS
from common.runtime.local import LocalRun, plaintext_scores, run_local

pytestmark = pytest.mark.mpc
METHOD_NAMES = list(METHODS)
REL_TOL = 0.01


def _assert_close(run: LocalRun) -> None:
    assert run.plaintext is not None
    for r, plain in zip(run.results, run.plaintext, strict=True):
        assert r.score is not None
        rel = abs(r.score - plain) / abs(plain)
        assert rel < REL_TOL, f"{r.candidate}: MPC {r.score} vs plaintext {plain} ({rel:.2%})"
        assert r.bytes_sent > 0 and r.bytes_received > 0 and r.rounds > 0 and r.seconds > 0


def _threshold_run(method: str, train: object, test: object, cands: list[object], **kw: object):
    """Score the candidates in plaintext, put τ between them, and run the threshold reveal."""
    scores = plaintext_scores(method=method, train=train, test=test, candidates=cands, **kw)
    assert abs(scores[0] - scores[1]) > 0.02 * max(abs(scores[0]), abs(scores[1]))
    tau = (scores[0] + scores[1]) / 2
    bits = run_local(
        method=method,
        train=train,
        test=test,
        candidates=cands,
        reveal="threshold",
        threshold=tau,
        **kw,
    )
    better_low = METHODS[method].better == "lower"
    expected = [(s < tau) if better_low else (s > tau) for s in scores]
    assert [b.accept for b in bits.results] == expected
    assert all(b.score is None for b in bits.results)
    assert sorted(expected) == [False, True]  # both sides of τ were exercised
    return scores, tau


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_digits_score_matches_plaintext(method: str, digits_split) -> None:
    results = run_local(
        method=method,
        train=digits_split.train,
        test=digits_split.test,
        candidates=[digits_split.candidates[0], digits_split.candidates[-1]],
        check=True,
    )
    assert [r.candidate for r in results.results] == ["candidate_01", "candidate_10"]
    _assert_close(results)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_digits_threshold_bits(method: str, digits_split) -> None:
    _threshold_run(
        method,
        digits_split.train,
        digits_split.test,
        [digits_split.candidates[0], digits_split.candidates[-1]],
        lr=1.0,
        steps=4,  # the comparison is under test here; 16-step accuracy is the score test's
    )


def test_threshold_direction_override_flips_the_bits(digits_split) -> None:
    cands = [digits_split.candidates[0], digits_split.candidates[-1]]
    common = dict(train=digits_split.train, test=digits_split.test, candidates=cands)
    scores = plaintext_scores(method="influence", **common)
    tau = sum(scores) / 2
    default = run_local(method="influence", reveal="threshold", threshold=tau, **common)
    flipped = run_local(
        method="influence", reveal="threshold", threshold=tau, direction="higher", **common
    )
    assert [r.accept for r in default.results] == [not r.accept for r in flipped.results]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "openings"),
    [*((m, "narrow") for m in METHOD_NAMES), ("influence", "full"), ("finetune", "full")],
)
def test_mnist_size_score_matches_plaintext(method: str, openings: str, mnist_files) -> None:
    """Each method with the default narrow openings, and with full (64-bit) openings of the
    softmax's values."""
    results = run_local(
        method=method,
        train=mnist_files.train,
        test=mnist_files.test,
        candidates=[mnist_files.clean],
        openings=openings,
        check=True,
    )
    _assert_close(results)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_mnist_size_threshold_bits(method: str, mnist_files) -> None:
    _threshold_run(
        method,
        mnist_files.train,
        mnist_files.test,
        [mnist_files.clean, mnist_files.noisy],
        steps=4,  # the comparison is under test here; 16-step accuracy is the score test's
    )


def test_unnormalised_features_stay_accurate(digits_split, tmp_path) -> None:
    """Raw 0..16 digits times 8 (|x| up to 128): the scalings follow the agreed feature bound."""
    from common.ml.data import load_dataset, save_npz

    paths = []
    for p in (digits_split.train, digits_split.test, digits_split.candidates[0]):
        ds = load_dataset(p)
        paths.append(save_npz(tmp_path / p.name, (ds.X * 128, ds.y)))
    for method in METHOD_NAMES:
        results = run_local(
            method=method,
            train=paths[0],
            test=paths[1],
            candidates=[paths[2]],
            check=True,
            lr=1e-4,  # a step that still descends for ‖x‖² ≈ 10⁵ (0.001 diverges)
            l2=100.0,
        )
        _assert_close(results)


def test_communication_figures_are_measured(digits_split) -> None:
    """Each party must at least send its share of X − A (n × 65 int64) for the Beaver product."""
    from common.ml.data import load_dataset

    n = load_dataset(digits_split.candidates[0]).n_samples
    run = run_local(
        method="influence",
        train=digits_split.train,
        test=digits_split.test,
        candidates=[digits_split.candidates[0]],
    )
    (r,), (theirs,) = run.results, run.data_owner
    # the owners' link carries at least the data owner's X − A and the model owner's own share
    assert theirs.bytes_sent >= n * 65 * 8 and theirs.bytes_received >= n * 65 * 8
    assert r.bytes_sent < 100 * n * 65 * 8  # and not wildly more: the protocol is one matmul deep
    assert run.dealer_bytes > 0 and r.rounds > 0 and r.peak_rss_mb > 50


def test_minibatch_finetune_matches_plaintext(digits_split) -> None:
    """Minibatches: a public permutation of D_tr ∪ D_a in chunks, cycled; an uneven last batch too."""
    results = run_local(
        method="finetune",
        train=digits_split.train,
        test=digits_split.test,
        candidates=[digits_split.candidates[0]],
        batch_size=64,
        steps=8,
        lr=0.5,
        check=True,
    )
    _assert_close(results)
