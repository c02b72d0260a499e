"""The owners' local compute at 1 and 2 threads per worker: each method's MPC seconds, repeated.

The MNIST-sized case (b) (:func:`common.ml.examples.mnist_like`: candidate 6,000 × 784, 10
classes, |D_tr| = 600, |D_te| = 1,000), run under two-party MPC with real workers over loopback
(:func:`common.runtime.local.run_local`), ``--runs`` times per method and thread count, the
thread counts interleaved so that a change of the machine's load hits both. It prints each run's
MPC seconds (the model owner's :attr:`CandidateResult.seconds`: ``provider.begin`` and the
secure appraisal, after the rendezvous) and their minimum and median, the bytes and rounds
(which threads never change) and the load average before and after. On a shared machine quote
the medians and the load.

Usage: ``.venv/bin/python benchmarks/bench_threads.py [--methods influence,finetune]
[--threads 1,2] [--runs 5]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from common.ml.data import save_npz
from common.ml.examples import mnist_like
from common.runtime.local import run_local


def _load() -> str:
    return "load average (1, 5, 15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="influence,gradient-norm,finetune")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{name}.npz" for name in ("train", "test", "cand")]
        for path, ds in zip(paths, mnist_like(), strict=True):
            save_npz(path, ds)
        print(_load(), flush=True)
        for method in args.methods.split(","):
            seconds: dict[int, list[float]] = {t: [] for t in threads}
            for _ in range(args.runs):
                for t in threads:
                    run = run_local(
                        method=method,
                        train=paths[0],
                        test=paths[1],
                        candidates=[paths[2]],
                        threads=t,
                    )
                    r = run.results[0]
                    seconds[t].append(r.seconds)
                    print(
                        f"{method} threads={t} MPC {r.seconds:.3f} s, "
                        f"{r.bytes_sent + r.bytes_received} bytes, {r.rounds} rounds",
                        flush=True,
                    )
            for t, s in seconds.items():
                print(
                    f"{method:<14} threads={t}  min {min(s):.3f} s  median "
                    f"{statistics.median(s):.3f} s  ({len(s)} runs)",
                    flush=True,
                )
        print(_load())


if __name__ == "__main__":
    main()
