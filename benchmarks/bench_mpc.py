"""Time each appraisal method under two-party MPC against its plaintext twin, in one run.

Case (b) of the engine issue by default: an MNIST-sized candidate (6,000 × 784, 10 classes,
|D_tr| = 600, |D_te| = 1,000, features in [0, 1]) built offline from scikit-learn's digits
(``common.ml.examples.mnist_like``). For each method it prints

- plaintext seconds: the plaintext twin of the score, given θ̂ and v (what MPC replaces);
- MPC seconds: the parties' compute time for the candidate (after the rendezvous), and the
  wall time of the whole run (process start-up, loading, training θ̂, rendezvous included);
- bytes between the owners (what the data owner's worker sent and received on its one link, the
  model owner), the dealer's bytes, rounds as counted by CrypTen's communicator, and the model
  owner's peak memory;
- the ratio MPC / plaintext, the relative error of the MPC score, and P(trunc): the expected
  number of CrypTen local-truncation failures in one run (Σ|v|/2³² over the dominant products);
- the plaintext twin's peak memory (run in a forked child, so that it is measured alone), both
  owners' peak memory under MPC, and the byte floor of the dealer model: each owner's data masked
  once, sent once, one way (n·(d+1) int64 for the candidate; fine-tuning adds D_tr and D_te), with
  the ratio of the measured bytes to it.

Every method runs on the secure transport (authenticated, encrypted channels, AES-CTR generators,
our dealer); the channels count what they send, records included. (The hardening's cost against
CrypTen's unprotected gloo transport was measured once and is recorded in docs/protocol.md.)

Usage: ``.venv/bin/python benchmarks/bench_mpc.py [--small] [--methods influence,...] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from common.ml import model
from common.ml.data import load_dataset, save_npz
from common.ml.examples import mnist_like, write_example_data
from common.runtime.local import run_local

METHODS = ["influence", "gradient-norm", "finetune"]


def plaintext_seconds(
    method: str, state, train, test, cand, *, repeats: int = 3
) -> tuple[float, float]:
    best = float("inf")
    score = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        if method == "influence":
            score = model.influence_score(state, cand.X, cand.y)
        elif method == "gradient-norm":
            score = model.gradient_norm_score(state.theta, cand.X, cand.y)
        else:
            score = model.finetune_score(
                state, train.X, train.y, cand.X, cand.y, test.X, test.y, steps=16, lr=0.1
            )
        best = min(best, time.perf_counter() - start)
    return best, score


def _plaintext_child(conn, method, state, train, test, cand) -> None:  # type: ignore[no-untyped-def]
    seconds, score = plaintext_seconds(method, state, train, test, cand)
    conn.send((seconds, score, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    conn.close()


def plaintext_measured(method: str, state, train, test, cand) -> tuple[float, float, float]:
    """Seconds, score and peak RSS (MB) of the plaintext twin, in a forked child of its own."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_plaintext_child, args=(child, method, state, train, test, cand))
    process.start()
    seconds, score, peak = parent.recv()
    process.join()
    return seconds, score, peak


def byte_floor(method: str, n: int, d: int, n_train: int, n_test: int) -> int:
    """Bytes of the dealer model's floor: each owner's rows (with bias) masked once, one way."""
    rows = n + (n_train + n_test if method == "finetune" else 0)
    return rows * (d + 1) * 8


def truncation_risk(method: str, state, train, cand, *, steps: int = 16, lr: float = 0.1) -> float:
    """Expected number of local-truncation failures in one run: Σ|v|/2³² over the dominant
    truncated products (the logits X θ and the gradient sums Xᵀ R), computed in plaintext."""
    if method == "finetune":
        Xb = np.vstack([model.add_bias(train.X), model.add_bias(cand.X)])
        y = np.concatenate([train.y, cand.y])
    else:
        Xb, y = model.add_bias(cand.X), cand.y
    theta = state.theta.copy()
    total = 0.0
    for _ in range(steps if method == "finetune" else 1):
        G = model.sum_grad(theta, Xb, y)
        total += float(np.abs(Xb @ theta).sum() + np.abs(G).sum())
        theta -= lr * (G / len(Xb) + 2.0 * state.l2 / len(Xb) * theta)
    return total / 2.0**32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="digits case (a) instead of (b)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.small:
            split = write_example_data(root / "digits")
            paths = (split.train, split.test, split.candidates[0])
            case = "digits (a)"
        else:
            train, test, cand = mnist_like()
            paths = (root / "train.npz", root / "test.npz", root / "cand.npz")
            for p, ds in zip(paths, (train, test, cand), strict=True):
                save_npz(p, ds)
            case = "MNIST-sized (b), offline stand-in built from digits"
        train, test, cand = (load_dataset(p) for p in paths)
        case += (
            f": {cand.n_features} features, |D_tr|={train.n_samples}, |D_te|={test.n_samples}, "
            f"candidate {cand.n_samples}"
        )
        state = model.prepare_model_owner(train.X, train.y, test.X, test.y, n_classes=10)
        print(f"case: {case}")
        header = (
            f"{'method':<14}{'plain s':>9}{'MPC s':>8}{'wall s':>8}{'ratio':>7}"
            f"{'MB':>8}{'floor MB':>9}{'×floor':>7}{'dealer MB':>10}{'rounds':>7}"
            f"{'plain MB':>9}{'MO MB':>7}{'DO MB':>7}{'rel err':>9}{'P(trunc)':>9}"
        )
        print(header)
        rows = []
        for method in args.methods.split(","):
            plain_s, plain_score, plain_peak = plaintext_measured(method, state, train, test, cand)
            start = time.perf_counter()
            run = run_local(method=method, train=paths[0], test=paths[1], candidates=[paths[2]])
            wall = time.perf_counter() - start
            (result,), (theirs,) = run.results, run.data_owner
            assert result.score is not None
            rel = abs(result.score - plain_score) / abs(plain_score)
            between_owners = theirs.bytes_sent + theirs.bytes_received
            floor = byte_floor(
                method, cand.n_samples, cand.n_features, train.n_samples, test.n_samples
            )
            row = {
                "method": method,
                "plaintext_seconds": plain_s,
                "plaintext_peak_rss_mb": plain_peak,
                "mpc_seconds": result.seconds,
                "wall_seconds": wall,
                "ratio": result.seconds / plain_s,
                "bytes_between_owners": between_owners,
                "byte_floor": floor,
                "ratio_to_floor": between_owners / floor,
                "dealer_bytes": run.dealer_bytes,
                "rounds": result.rounds,
                "peak_rss_mb": result.peak_rss_mb,
                "data_owner_peak_rss_mb": theirs.peak_rss_mb,
                "relative_error": rel,
                "expected_truncation_failures": truncation_risk(method, state, train, cand),
            }
            rows.append(row)
            print(
                f"{method:<14}{plain_s:>9.4f}{result.seconds:>8.2f}{wall:>8.2f}"
                f"{row['ratio']:>7.0f}{between_owners / 1e6:>8.1f}{floor / 1e6:>9.1f}"
                f"{row['ratio_to_floor']:>7.2f}{run.dealer_bytes / 1e6:>10.1f}{result.rounds:>7}"
                f"{plain_peak:>9.0f}{result.peak_rss_mb:>7.0f}{theirs.peak_rss_mb:>7.0f}"
                f"{rel:>9.1e}{row['expected_truncation_failures']:>9.1e}"
            )
        load = os.getloadavg()
        print(f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        if args.json:
            args.json.write_text(json.dumps({"case": case, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
