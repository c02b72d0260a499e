"""The owners' local compute at 1 and 2 threads per worker, or in 1 and 2 shards: MPC seconds.

The MNIST-sized case (b) (:func:`common.ml.examples.mnist_like`: candidate 6,000 × 784, 10
classes, |D_tr| = 600, |D_te| = 1,000), run under two-party MPC with real workers over loopback
(:func:`common.runtime.local.run_local`), ``--runs`` times per method and configuration (thread
count × shard count), the configurations interleaved so that a change of the machine's load hits
all. It prints each run's MPC seconds (the model owner's :attr:`CandidateResult.seconds`:
``provider.begin`` and the secure appraisal, after the rendezvous; with shards, shard 0's, which
includes waiting for the other shards' shares, then each other shard's on its own clock: each
triple meets on its own, so their clocks start at slightly different times), the run's wall
seconds (process start-up, training θ̂, the rendezvous included), and their minimum and
median, the bytes (all shards' model owners) and rounds (shard 0's), and the load average before
and after. Shards need at least as many chunks: ``--chunk-rows 3000`` cuts the candidate in two.
On a shared machine quote the medians and the load.

Usage: ``.venv/bin/python benchmarks/bench_threads.py [--methods influence,finetune]
[--threads 1,2] [--shards 1,2] [--chunk-rows N] [--runs 5]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common.ml.data import save_npz
from common.ml.examples import mnist_like
from common.protocol import DEFAULT_CHUNK_ROWS
from common.runtime.local import LocalRun, run_local


def _load() -> str:
    return "load average (1, 5, 15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _bytes(run: LocalRun) -> int:
    """Every shard's model owner's bytes (all of the session's traffic passes through them)."""
    parts = [run.results[0]] + [r[0] for n, r in run.shard_results.items() if "model_owner" in n]
    return sum(r.bytes_sent + r.bytes_received for r in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="influence,gradient-norm,finetune")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--shards", default="1")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    configs = [(int(t), int(s)) for t in args.threads.split(",") for s in args.shards.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{name}.npz" for name in ("train", "test", "cand")]
        for path, ds in zip(paths, mnist_like(), strict=True):
            save_npz(path, ds)
        print(_load(), flush=True)
        for method in args.methods.split(","):
            seconds: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
            walls: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
            for _ in range(args.runs):
                for t, shards in configs:
                    start = time.perf_counter()
                    run = run_local(
                        method=method,
                        train=paths[0],
                        test=paths[1],
                        candidates=[paths[2]],
                        threads=t,
                        shards=shards,
                        chunk_rows=args.chunk_rows,
                    )
                    wall = time.perf_counter() - start
                    r = run.results[0]
                    seconds[t, shards].append(r.seconds)
                    walls[t, shards].append(wall)
                    others = [v[0].seconds for n, v in run.shard_results.items() if "model" in n]
                    each = "".join(f" / {x:.3f}" for x in others)  # each shard's own clock
                    print(
                        f"{method} threads={t} shards={shards} MPC {r.seconds:.3f}{each} s, wall "
                        f"{wall:.2f} s, {_bytes(run)} bytes, {r.rounds} rounds",
                        flush=True,
                    )
            for (t, shards), s in seconds.items():
                w = walls[t, shards]
                print(
                    f"{method:<14} threads={t} shards={shards}  MPC min {min(s):.3f} s  median "
                    f"{statistics.median(s):.3f} s  wall min {min(w):.2f} s  median "
                    f"{statistics.median(w):.2f} s  ({len(s)} runs)",
                    flush=True,
                )
        print(_load())


if __name__ == "__main__":
    main()
