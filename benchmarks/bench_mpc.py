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

Beside this project it runs the user's alternative, a plain CrypTen script of the same statistics
(``benchmarks/naive_crypten.py``: its own launcher, CrypTen's gloo communicator and TTP server), and
prints a second table: plaintext, naive CrypTen and this project side by side, with the ratios
(``--no-naive`` skips it). ``--wan 0,20,50`` then runs this project's workers again in network
namespaces joined by rate-limited veth pairs, with a relay that adds each round-trip time
(``benchmarks/wan.py``), and prints MPC time per method at each RTT against rounds × RTT;
``--plot F.svg`` draws that table.

Usage: ``.venv/bin/python benchmarks/bench_mpc.py [--small] [--methods influence,...] [--json F]
[--no-naive] [--wan 0,20,50 [--wan-rate 1gbit] [--plot F.svg]]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import signal
import tempfile
import time
from pathlib import Path

import naive_crypten
import numpy as np
import wan

from common.errors import MPCRunError
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


def naive_row(method: str, paths, floor: int, plain_s: float, plain_score: float) -> dict:
    """The naive CrypTen script on the same files, with the same derived columns."""
    r = naive_crypten.run_naive(method, train=paths[0], test=paths[1], candidate=paths[2])
    r["relative_error"] = abs(r["score"] - plain_score) / abs(plain_score)
    r["ratio"] = r["mpc_seconds"] / plain_s
    r["byte_floor"] = floor
    r["ratio_to_floor"] = r["bytes_between_owners"] / floor
    return r


SIDE_HEADER = (
    f"{'method':<14}{'system':<15}{'MPC s':>8}{'wall s':>8}{'×plain':>8}{'MB':>8}{'×floor':>7}"
    f"{'dealer MB':>10}{'rounds':>7}{'MO MB':>7}{'DO MB':>7}{'rel err':>9}"
)


def side_by_side(method: str, plain: dict, naive: dict, ours: dict) -> list[str]:
    """Four lines: plaintext, naive CrypTen, this project, and this project over naive."""

    def fmt(system: str, r: dict) -> str:
        return (
            f"{method:<14}{system:<15}{r['mpc_seconds']:>8.3g}{r['wall_seconds']:>8.2f}"
            f"{r['ratio']:>8.0f}{r['bytes_between_owners'] / 1e6:>8.1f}{r['ratio_to_floor']:>7.2f}"
            f"{r['dealer_bytes'] / 1e6:>10.1f}{r['rounds']:>7}{r['peak_rss_mb']:>7.0f}"
            f"{r['data_owner_peak_rss_mb']:>7.0f}{r['relative_error']:>9.1e}"
        )

    def over(key: str) -> float:
        return float(ours[key]) / float(naive[key])

    return [
        f"{method:<14}{'plaintext':<15}{plain['seconds']:>8.3g}{'-':>8}{1:>8}{'-':>8}{'-':>7}"
        f"{'-':>10}{'-':>7}{plain['peak_rss_mb']:>7.0f}{'-':>7}{0:>9.1e}",
        fmt("naive CrypTen", naive),
        fmt("this project", ours),
        f"{method:<14}{'project/naive':<15}{over('mpc_seconds'):>8.2f}{over('wall_seconds'):>8.2f}"
        f"{over('ratio'):>8.2f}{over('bytes_between_owners'):>8.2f}{over('ratio_to_floor'):>7.2f}"
        f"{over('dealer_bytes'):>10.2f}{over('rounds'):>7.2f}{over('peak_rss_mb'):>7.2f}"
        f"{over('data_owner_peak_rss_mb'):>7.2f}{'':>9}",
    ]


def wan_rows(
    rtts: list[float | None],
    methods: list[str],
    paths,
    rate: str,
    plain: dict,
    naive: dict,
    openings: str = "narrow",
) -> list[dict]:
    """Each method at each RTT, this project's real workers in the WAN's namespaces. With the
    naive script's loopback row of a method, also its lower bound at that RTT: its loopback time
    plus its rounds × RTT (gloo connects its ranks on ports of its own choosing, so the relay
    cannot carry it; its TTP requests add round trips that CrypTen does not count)."""
    rows = []
    with wan.wan_network(rate) as net:
        for method in methods:
            for rtt in rtts:
                try:
                    r = wan.run_over_wan(
                        net,
                        rtt_ms=rtt,
                        method=method,
                        train=Path(paths[0]),
                        test=Path(paths[1]),
                        candidate=Path(paths[2]),
                        openings=openings,
                    )
                except (MPCRunError, RuntimeError) as exc:  # one failed run: say so, go on
                    print(f"{method:<14}{rtt!s:>7}  failed: {str(exc).splitlines()[0]}", flush=True)
                    continue
                r["relative_error"] = abs(r["score"] - plain[method]) / abs(plain[method])
                if method in naive and rtt is not None:
                    peer = naive[method]
                    r["naive_bound_seconds"] = peer["mpc_seconds"] + peer["rounds"] * rtt / 1000
                rows.append(r)
                print_wan_row(r, rows)
    return rows


WAN_HEADER = (
    f"{'method':<14}{'RTT ms':>7}{'MPC s':>8}{'wall s':>8}{'rounds':>7}{'rounds×RTT s':>13}"
    f"{'t−t(0) s':>9}{'RTTs paid':>10}{'MB':>8}{'relay MB':>9}{'rel err':>9}{'naive ≥ s':>10}"
)


def print_wan_row(r: dict, rows: list[dict]) -> None:
    """One WAN line; "RTTs paid" is the extra time over the same method at RTT 0, in RTTs. RTT
    "direct": the same namespaces and links without the relay (the hub's kernel forwards)."""
    base = next(
        (b["mpc_seconds"] for b in rows if b["method"] == r["method"] and b["rtt_ms"] == 0), None
    )
    rtt = r["rtt_ms"]
    if rtt is None:
        label, floor, extra, paid, relayed = "direct", "-", "-", "-", "-"
    else:
        label, floor = f"{rtt:.0f}", f"{r['rounds'] * rtt / 1000:.2f}"
        extra = "-" if base is None or rtt == 0 else f"{r['mpc_seconds'] - base:.2f}"
        paid = (
            "-" if base is None or rtt == 0 else f"{(r['mpc_seconds'] - base) / (rtt / 1000):.0f}"
        )
        relayed = f"{r['relay_bytes'] / 1e6:.1f}"
    print(
        f"{r['method']:<14}{label:>7}{r['mpc_seconds']:>8.2f}{r['wall_seconds']:>8.2f}"
        f"{r['rounds']:>7}{floor:>13}{extra:>9}{paid:>10}"
        f"{r['bytes_between_owners'] / 1e6:>8.1f}{relayed:>9}"
        f"{r['relative_error']:>9.1e}"
        + (f"{r['naive_bound_seconds']:>10.2f}" if "naive_bound_seconds" in r else f"{'-':>10}"),
        flush=True,
    )


def plot_wan(rows: list[dict], path: Path, title: str) -> None:
    """MPC seconds against RTT per method (solid), and t(0) + rounds × RTT (dashed), as SVG."""
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.6, 4.4))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        mine = sorted(
            (r for r in rows if r["method"] == method and r["rtt_ms"] is not None),
            key=lambda r: r["rtt_ms"],
        )
        x = [r["rtt_ms"] for r in mine]
        color = f"C{i}"
        ax.plot(x, [r["mpc_seconds"] for r in mine], "o-", color=color, label=f"{method}: measured")
        t0 = mine[0]["mpc_seconds"] if mine[0]["rtt_ms"] == 0 else 0.0
        ax.plot(
            x,
            [t0 + r["rounds"] * r["rtt_ms"] / 1000 for r in mine],
            "--",
            color=color,
            label=f"{method}: t(0) + rounds × RTT",
        )
        if all("naive_bound_seconds" in r for r in mine):
            ax.plot(
                x,
                [r["naive_bound_seconds"] for r in mine],
                ":",
                color=color,
                label=f"{method}: naive CrypTen ≥ (predicted)",
            )
    ax.set_xlabel("round-trip time (ms)")
    ax.set_ylabel("MPC seconds (model owner)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)


def load_line() -> str:
    load = os.getloadavg()
    return f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    # SIGTERM unwinds like Ctrl-C: the naive script's processes (sessions of their own) are killed
    # and the WAN's namespaces deleted by the finally blocks that started them
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="digits case (a) instead of (b)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the naive CrypTen script beside this project"
    )
    parser.add_argument(
        "--wan",
        help="also run over the emulated WAN at these RTTs (ms), e.g. direct,0,20,50 (direct: "
        "the namespaces without the relay)",
    )
    parser.add_argument("--wan-rate", default="1gbit", help="tc tbf rate of every WAN link")
    parser.add_argument("--plot", type=Path, help="with --wan: draw MPC s against RTT here (SVG)")
    parser.add_argument(
        "--only-wan", action="store_true", help="with --wan: skip the loopback tables"
    )
    parser.add_argument("--plot-from", type=Path, help="redraw --plot from a --json file, no run")
    parser.add_argument(
        "--openings",
        choices=("narrow", "full"),
        default="narrow",
        help="the job's openings: narrow (the default) or full (docs/protocol.md)",
    )
    args = parser.parse_args()
    if args.plot_from:
        if not args.plot:
            parser.error("--plot-from needs --plot")
        saved = json.loads(args.plot_from.read_text())
        plot_wan(saved["wan"], args.plot, saved["title"])
        return
    methods = args.methods.split(",")

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
        print(load_line())
        header = (
            f"{'method':<14}{'plain s':>9}{'MPC s':>8}{'wall s':>8}{'ratio':>7}"
            f"{'MB':>8}{'floor MB':>9}{'×floor':>7}{'dealer MB':>10}{'rounds':>7}"
            f"{'plain MB':>9}{'MO MB':>7}{'DO MB':>7}{'rel err':>9}{'P(trunc)':>9}"
        )
        rows = []
        side: list[str] = []
        plain_scores: dict[str, float] = {}
        naive_rows: dict[str, dict] = {}
        if not args.only_wan:
            print(header)
        for method in [] if args.only_wan else methods:
            plain_s, plain_score, plain_peak = plaintext_measured(method, state, train, test, cand)
            plain_scores[method] = plain_score
            start = time.perf_counter()
            run = run_local(
                method=method,
                train=paths[0],
                test=paths[1],
                candidates=[paths[2]],
                openings=args.openings,
            )
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
                f"{rel:>9.1e}{row['expected_truncation_failures']:>9.1e}",
                flush=True,
            )
            if not args.no_naive:
                naive = naive_row(method, paths, floor, plain_s, plain_score)
                row["naive"] = naive_rows[method] = naive
                plain = {"seconds": plain_s, "peak_rss_mb": plain_peak}
                side += side_by_side(method, plain, naive, row)
        if rows:
            print(load_line())
        if side:
            print()
            print("plaintext, naive CrypTen and this project, side by side (same data, same run):")
            print(SIDE_HEADER)
            print("\n".join(side))
            print(load_line())
        wan_table: list[dict] = []
        if args.wan:
            rtts = [None if x == "direct" else float(x) for x in args.wan.split(",")]
            for method in methods:
                if method not in plain_scores:
                    plain_scores[method] = plaintext_seconds(
                        method, state, train, test, cand, repeats=1
                    )[1]
            print()
            print(
                f"across a WAN: this project's workers in network namespaces, links limited to "
                f"{args.wan_rate} (tc tbf), RTT added by a user-space relay (RTT/2 each way)"
            )
            print(WAN_HEADER)
            wan_table = wan_rows(
                rtts, methods, paths, args.wan_rate, plain_scores, naive_rows, args.openings
            )
            print(load_line())
        title = f"{case.split(',')[0]}; links {args.wan_rate}"
        if args.plot and wan_table:
            plot_wan(wan_table, args.plot, title)
            print(f"plot: {args.plot}")
        if args.json:
            saved = {"case": case, "title": title, "rows": rows, "wan": wan_table}
            args.json.write_text(json.dumps(saved, indent=2))


if __name__ == "__main__":
    main()
