"""Bounded memory, linear time under MPC: the streamed candidate from n = 6,000 to 10⁶.

For each n (default 6,000, 60,000, 200,000 and 1,000,000) this writes a synthetic candidate of
784 pixel-like features and 10 classes as an uncompressed ``.npz``, chunk by chunk
(:func:`bench_scale.write_npz`: the same rows as the plaintext scale benchmark), beside a model
owner with |D_tr| = 600 and |D_te| = 1,000 rows of the same kind, and runs each method under
two-party MPC with real workers (model owner, data owner and dealer over loopback TCP,
:func:`common.runtime.local.run_local`). The data owner's worker validates the candidate in one
streaming pass and the MPC reads it again in chunks of the job's public ``chunk_rows``
(``--chunk-rows``, default the job's 8,192), one masked copy per chunk. It prints, per (method, n):

- chunks: ⌈n / chunk_rows⌉, and g, the job's ``softmax_chunks`` (``--softmax-chunks``, a comma
  list runs each): rounds grow with ⌈chunks / g⌉, the softmaxes run (each chunk's own products
  add two rounds);
- MPC s (the model owner's compute time for the candidate, after the rendezvous) and wall s
  (the whole run: process start, validation, θ̂ and v, rendezvous); plaintext s, the streamed
  validation pass and plaintext twin (:func:`common.ml.data.open_candidate`, then
  :func:`common.ml.twins.streamed_score`: one chunked pass, fine-tuning one per step) given θ̂
  and v, and MPC/plain;
- bytes between the owners (what the data owner's worker sent and received) and their ratio to
  the floor n·(d+1)·8 (the candidate masked once, sent once, one way);
- peak RSS of each party's process (ru_maxrss of the model owner's, the data owner's and the
  dealer's workers; a forked worker's figure includes what it shares with its fork server);
- the relative error of the MPC score against the streamed plaintext twin.

θ̂ and v are the model owner's, trained on its synthetic D_tr (labels are random: the cost and
the accuracy do not depend on the model being good). Times are wall-clock on a shared machine;
the load average is printed at the start and the end.

Usage: ``.venv/bin/python benchmarks/bench_mpc_scale.py [--sizes 6000,60000]
[--methods influence,gradient-norm] [--chunk-rows 8192] [--softmax-chunks 1,8] [--dir D]
[--json F]``
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wan
from bench_scale import D, synthetic_chunk, write_npz

from common.ml.data import load_dataset, open_candidate, save_npz
from common.ml.model import prepare_model_owner
from common.ml.twins import streamed_score
from common.protocol import DEFAULT_CHUNK_ROWS
from common.runtime.local import build_job, load_inputs, run_local
from common.runtime.worker import STREAMED_MAX_BYTES

N_TRAIN, N_TEST = 600, 1000


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def model_owner_files(directory: Path) -> tuple[Path, Path]:
    """D_tr and D_te of the model owner (the same synthetic pixels as the candidates)."""
    paths = []
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        X, y = synthetic_chunk(n, 0, n)
        paths.append(save_npz(directory / f"{name}.npz", (X, y)))
    return paths[0], paths[1]


def _over_loopback(method: str, cand: Path, train: Path, test: Path, **job: Any) -> dict[str, Any]:
    """One MPC run with real workers on loopback (run_local)."""
    run = run_local(
        method=method,
        train=train,
        test=test,
        candidates=[cand],
        timeout=600.0,
        deadline=4 * 3600.0,
        **job,
    )
    mo, do = run.results[0], run.data_owner[0]
    return {
        "score": mo.score,
        "mpc_s": mo.seconds,
        "bytes": do.bytes_sent + do.bytes_received,
        "rounds": mo.rounds,
        "rss_mo_mb": mo.peak_rss_mb,
        "rss_do_mb": do.peak_rss_mb,
        "rss_dealer_mb": run.dealer_peak_rss_mb,
    }


def _over_wan(
    net: Any, rtt_ms: float, method: str, cand: Path, train: Path, test: Path, **job: Any
) -> dict[str, Any]:
    """One MPC run with real workers in the WAN's namespaces (benchmarks/wan.py)."""
    r = wan.run_over_wan(
        net,
        rtt_ms=rtt_ms,
        method=method,
        train=train,
        test=test,
        candidate=cand,
        timeout=600.0,
        deadline=4 * 3600.0,
        **job,
    )
    return {
        "score": r["score"],
        "mpc_s": r["mpc_seconds"],
        "bytes": r["bytes_between_owners"],
        "rounds": r["rounds"],
        "rss_mo_mb": r["rss_mo_mb"],
        "rss_do_mb": r["rss_do_mb"],
        "rss_dealer_mb": None,
    }


def measure(
    method: str,
    n: int,
    cand: Path,
    train: Path,
    test: Path,
    chunk_rows: int,
    net: Any = None,
    rtt_ms: float = 0.0,
    **kw: Any,
) -> dict[str, Any]:
    """One (method, n) under MPC, on loopback or (``net``) across the WAN at ``rtt_ms``, and its
    streamed plaintext twin."""
    t0 = time.perf_counter()
    job = {"chunk_rows": chunk_rows, **kw}
    if net is None:
        r = _over_loopback(method, cand, train, test, **job)
    else:
        r = _over_wan(net, rtt_ms, method, cand, train, test, **job)
    wall = time.perf_counter() - t0
    # the plaintext twin, streamed, with the model owner's θ̂ and v as its worker computed them
    tr, te = load_dataset(train), load_dataset(test)
    spec = build_job(load_inputs(train, test, [cand]), [cand.stem], method=method, **job)
    state = prepare_model_owner(tr.X, tr.y, te.X, te.y, n_classes=spec.n_classes, l2=spec.l2)
    t1 = time.perf_counter()
    c = open_candidate(cand, n_features=D, n_classes=spec.n_classes, max_bytes=STREAMED_MAX_BYTES)
    plain = streamed_score(spec, state, tr, te, c.chunks)
    plain_s = time.perf_counter() - t1
    assert r["score"] is not None
    return {
        **r,
        "method": method,
        "n": n,
        "rtt_ms": None if net is None else rtt_ms,
        "chunk_rows": chunk_rows,
        "chunks": math.ceil(n / chunk_rows),
        "softmax_chunks": spec.softmax_chunks,
        "wall_s": wall,
        "plain_s": plain_s,
        "floor": n * (D + 1) * 8,
        "plaintext": plain,
        "rel_err": abs(r["score"] - plain) / abs(plain),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'method':<13} {'n':>9} {'chunks':>6} {'g':>3} {'MPC s':>8} {'wall s':>8} {'plain s':>8} "
        f"{'MPC/plain':>9} {'s/Mrow':>7} {'bytes MB':>9} {'/floor':>6} {'rounds':>7} "
        f"{'RSS MO':>7} {'RSS DO':>7} {'RSS dealer':>10} {'rel err':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        dealer = r["rss_dealer_mb"]
        print(
            f"{r['method']:<13} {r['n']:>9,} {r['chunks']:>6} {r['softmax_chunks']:>3} "
            f"{r['mpc_s']:>8.2f} "
            f"{r['wall_s']:>8.1f} {r['plain_s']:>8.2f} {r['mpc_s'] / r['plain_s']:>9.1f} "
            f"{r['mpc_s'] / r['n'] * 1e6:>7.1f} {r['bytes'] / 1e6:>9.1f} "
            f"{r['bytes'] / r['floor']:>6.2f} {r['rounds']:>7} {r['rss_mo_mb']:>7.0f} "
            f"{r['rss_do_mb']:>7.0f} {'-' if dealer is None else f'{dealer:.0f}':>10} "
            f"{r['rel_err']:>8.1e}"
        )
    worst = max(max(r["rss_mo_mb"], r["rss_do_mb"], r["rss_dealer_mb"] or 0.0) for r in rows)
    print(
        f"\npeak RSS of any party: {worst:.0f} MB; under 1 GB at every n: "
        f"{'yes' if worst < 1024 else 'NO'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="6000,60000,200000,1000000")
    parser.add_argument("--methods", default="influence,gradient-norm")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument(
        "--softmax-chunks",
        default="1",
        help="chunks per softmax (the job's softmax_chunks); a comma list runs each in turn",
    )
    parser.add_argument(
        "--rtt",
        type=float,
        help="run the parties in network namespaces with this round-trip time in ms "
        "(benchmarks/wan.py; needs root) instead of on loopback",
    )
    parser.add_argument("--steps", type=int, default=16, help="fine-tuning steps")
    parser.add_argument("--dir", type=Path, help="where the files go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    groups = [int(g) for g in args.softmax_chunks.split(",")]
    print(f"load average at the start: {_load()}", flush=True)
    rows = []
    with contextlib.ExitStack() as stack:
        net = None
        if args.rtt is not None:
            problem = wan.wan_problem()
            if problem is not None:
                sys.exit(f"--rtt: {problem}")
            net = stack.enter_context(wan.wan_network())
        tmp = stack.enter_context(
            tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-mpc-scale-")
        )
        directory = Path(tmp)
        train, test = model_owner_files(directory)
        for n in sizes:
            cand = directory / f"cand_{n}.npz"
            write_npz(cand, n)
            for method, g in itertools.product(methods, groups):
                r = measure(
                    method,
                    n,
                    cand,
                    train,
                    test,
                    args.chunk_rows,
                    net=net,
                    rtt_ms=args.rtt or 0.0,
                    steps=args.steps,
                    softmax_chunks=g,
                )
                rows.append(r)
                print(
                    f"  {method} n={n:,} g={g}: MPC {r['mpc_s']:.1f} s, {r['bytes'] / 1e6:.0f} MB, "
                    f"RSS {r['rss_mo_mb']:.0f}/{r['rss_do_mb']:.0f}/{r['rss_dealer_mb'] or 0:.0f} "
                    f"MB, error {r['rel_err']:.1e} (load {_load()})",
                    file=sys.stderr,
                    flush=True,
                )
            cand.unlink()
    where = "loopback" if args.rtt is None else f"network namespaces, RTT {args.rtt:g} ms"
    print(f"chunk rows {args.chunk_rows}; {where}; load average at the end: {_load()}\n")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
