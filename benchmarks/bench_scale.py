"""Bounded memory, linear time: the streaming validation and plaintext twin from n = 6,000 to 10⁶.

For each n (default 6,000, 60,000, 200,000 and 1,000,000 synthetic rows of 784 pixel-like features,
k/255 with about 80 % zeros as in MNIST, and 10 classes) this writes a candidate file in each format
(``.npz`` as ``numpy.savez`` writes it, and ``.parquet`` with pyarrow's default writer settings:
one row group per 2²⁰ rows, so the 10⁶-row file is a single row group), written chunk by chunk
so that not even the writer holds all of X. Then, in a fresh subprocess per (n, format) so that
peak memory is that run's alone, it measures what the data owner's side does before and during a
plaintext appraisal:

- validate: :func:`common.ml.data.open_candidate`, the streaming validation pass the worker makes
  before any MPC (shapes, dtypes, NaN/inf, labels, the agreed feature bound);
- twin: one more streaming pass computing Σ ∇L, from which the influence and gradient-norm
  scores follow (:mod:`common.ml.twins`);
- peak RSS of that subprocess (``VmHWM`` of /proc/self/status: Python, numpy, pyarrow and the
  chunks included; not ``ru_maxrss``, which Linux carries over from the parent across exec);
- the relative error of both scores against the in-memory twin (``load_dataset`` and
  :mod:`common.ml.model`), run in another subprocess, for the n whose X fits in memory
  (``--in-memory-max``, default 200,000 rows = 1.3 GB; at 10⁶ rows the in-memory twin would
  need about 13 GB, so it is skipped and shown as "-").

θ̂ and v are fixed random (785 × 10) matrices: the twin's cost and accuracy do not depend on the
model having been trained. Times are wall-clock on a shared machine (other work runs beside it):
they are indicative, the ratios more than the absolute values.

Usage: ``.venv/bin/python benchmarks/bench_scale.py [--sizes 6000,60000] [--formats npz,parquet]
[--dir D] [--rows 4096] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

D, K = 784, 10
WRITE_CHUNK = 16_384
SEED = 13


# --------------------------------------------------------------------------------------------------
# synthetic candidates, written chunk by chunk
# --------------------------------------------------------------------------------------------------


def synthetic_chunk(n: int, start: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start .. start + rows`` of the synthetic candidate of ``n`` rows (deterministic)."""
    rng = np.random.default_rng([SEED, n, start])
    pixels = rng.integers(1, 256, size=(rows, D)) * (rng.random((rows, D)) < 0.2)
    return pixels / 255.0, rng.integers(0, K, size=rows)


def write_npz(path: Path, n: int) -> None:
    """An uncompressed ``.npz`` (what ``numpy.savez`` writes) with members X.npy and y.npy."""
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("X.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": False, "shape": (n, D)}
            )
            for start in range(0, n, WRITE_CHUNK):
                X, _ = synthetic_chunk(n, start, min(WRITE_CHUNK, n - start))
                f.write(X.tobytes())
        with archive.open("y.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<i8", "fortran_order": False, "shape": (n,)}
            )
            for start in range(0, n, WRITE_CHUNK):
                _, y = synthetic_chunk(n, start, min(WRITE_CHUNK, n - start))
                f.write(y.astype("<i8").tobytes())


def write_parquet(path: Path, n: int) -> None:
    """784 float64 feature columns p0..p783 and an int64 ``label`` column, default settings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"p{j}" for j in range(D)] + ["label"]
    schema = pa.schema([(name, pa.float64()) for name in names[:-1]] + [("label", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, WRITE_CHUNK):
            X, y = synthetic_chunk(n, start, min(WRITE_CHUNK, n - start))
            columns = [pa.array(X[:, j]) for j in range(D)] + [pa.array(y)]
            writer.write_batch(pa.record_batch(columns, schema=schema))


# --------------------------------------------------------------------------------------------------
# the measured runs (each in its own subprocess)
# --------------------------------------------------------------------------------------------------


def measure_streaming(path: Path, state_path: Path, rows: int) -> dict[str, Any]:
    from common.ml.data import open_candidate
    from common.ml.model import ModelOwnerState
    from common.ml.twins import streamed_sum_grad

    with np.load(state_path) as f:
        state = ModelOwnerState(theta=f["theta"], v=f["v"], test_loss=0.0, l2=1.0)
    t0 = time.perf_counter()
    cand = open_candidate(
        path, n_features=D, n_classes=K, feature_bound=1.0, rows=rows, max_bytes=1 << 40
    )
    t1 = time.perf_counter()
    G, n = streamed_sum_grad(state.theta, cand.chunks())
    t2 = time.perf_counter()
    return {
        "n": n,
        "validate_s": t1 - t0,
        "twin_s": t2 - t1,
        "peak_rss_mb": peak_rss_mb(),
        "influence": -float((G * state.v).sum()) / n,
        "gradient_norm": float(np.linalg.norm(G)),
        "feature_bound": cand.info.feature_bound,
    }


def measure_in_memory(path: Path, state_path: Path) -> dict[str, Any]:
    from common.ml import model
    from common.ml.data import load_dataset
    from common.ml.model import ModelOwnerState

    with np.load(state_path) as f:
        state = ModelOwnerState(theta=f["theta"], v=f["v"], test_loss=0.0, l2=1.0)
    t0 = time.perf_counter()
    ds = load_dataset(path, n_features=D, n_classes=K, max_bytes=1 << 40)
    G = model.sum_grad(state.theta, model.add_bias(ds.X), ds.y)
    return {
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        "influence": model.influence_score(state, ds.X, ds.y),
        "gradient_norm": float(np.linalg.norm(G)),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def run_child(*args: str) -> dict[str, Any]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def print_table(results: list[dict[str, Any]]) -> None:
    base = {r["format"]: r for r in results if r["n"] == min(x["n"] for x in results)}
    head = (
        f"{'n':>9} {'format':<8} {'file MB':>8} {'validate s':>10} {'twin s':>8} {'total s':>8} "
        f"{'t/t6k':>6} {'n/n6k':>6} {'s per Mrow':>10} {'peak RSS MB':>11} {'RSS/6k':>6} "
        f"{'err influence':>13} {'err grad-norm':>13}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        b = base[r["format"]]
        total = r["validate_s"] + r["twin_s"]
        b_total = b["validate_s"] + b["twin_s"]
        mem = r.get("in_memory")
        errs = (
            (
                f"{_rel(r['influence'], mem['influence']):13.1e}"
                f" {_rel(r['gradient_norm'], mem['gradient_norm']):13.1e}"
            )
            if mem
            else f"{'-':>13} {'-':>13}"
        )
        print(
            f"{r['n']:>9,} {r['format']:<8} {r['file_mb']:>8.0f} {r['validate_s']:>10.2f} "
            f"{r['twin_s']:>8.2f} {total:>8.2f} {total / b_total:>6.1f} {r['n'] / b['n']:>6.1f} "
            f"{total / r['n'] * 1e6:>10.1f} {r['peak_rss_mb']:>11.0f} "
            f"{r['peak_rss_mb'] / b['peak_rss_mb']:>6.2f} {errs}"
        )
    worst = max(results, key=lambda r: r["peak_rss_mb"])
    print(
        f"\npeak RSS of the streaming pass: at most {worst['peak_rss_mb']:.0f} MB "
        f"(n = {worst['n']:,}, {worst['format']}); under 1 GB at every n: "
        f"{'yes' if worst['peak_rss_mb'] < 1024 else 'NO'}"
    )
    mems = [r for r in results if r.get("in_memory")]
    if mems:
        print("\nin-memory twin (load_dataset + model.sum_grad), for comparison:")
        for r in mems:
            m = r["in_memory"]
            print(
                f"{r['n']:>9,} {r['format']:<8} {m['seconds']:>8.2f} s, "
                f"peak RSS {m['peak_rss_mb']:>6.0f} MB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="6000,60000,200000,1000000")
    parser.add_argument("--formats", default="npz,parquet")
    parser.add_argument("--rows", type=int, default=4096, help="rows per chunk")
    parser.add_argument("--in-memory-max", type=int, default=200_000)
    parser.add_argument("--dir", type=Path, help="where the files go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--in-memory", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_streaming(args.measure, args.state, args.rows)))
        return
    if args.in_memory:
        print(json.dumps(measure_in_memory(args.in_memory, args.state)))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-scale-") as tmp:
        directory = Path(tmp)
        rng = np.random.default_rng(SEED)
        state_path = directory / "state.npz"
        np.savez(
            state_path,
            theta=rng.normal(scale=0.05, size=(D + 1, K)),
            v=rng.normal(scale=0.01, size=(D + 1, K)),
        )
        results = []
        for n in sizes:
            for fmt in formats:
                path = directory / f"cand_{n}.{fmt}"
                t0 = time.perf_counter()
                (write_npz if fmt == "npz" else write_parquet)(path, n)
                written = time.perf_counter() - t0
                r = run_child(
                    "--measure", str(path), "--state", str(state_path), "--rows", str(args.rows)
                )
                r.update(format=fmt, file_mb=path.stat().st_size / 1e6, write_s=written)
                if n <= args.in_memory_max:
                    r["in_memory"] = run_child("--in-memory", str(path), "--state", str(state_path))
                results.append(r)
                print(
                    f"  n={n:,} {fmt}: wrote {r['file_mb']:.0f} MB in {written:.1f} s; "
                    f"validate {r['validate_s']:.2f} s, twin {r['twin_s']:.2f} s, "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )
                path.unlink()
    print(
        f"chunk rows {args.rows}; load average at the end {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores\n"
    )
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
