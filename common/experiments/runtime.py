"""Runtime breakdown (the paper's Figure 3): each method in plaintext and under the real MPC.

On the label-noise split: the plaintext twin of each method's score, timed in this process (best
of ``plaintext_repeats`` runs per candidate, given θ̂ and v), against the MPC compute seconds of
the same candidates (after the parties' rendezvous), the bytes the model owner's worker sent
(through it passes all of the session's traffic), the communication rounds and the dealer's bytes. Fine-tuning also runs at 1 step, which
gives its fixed and per-step MPC cost.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.experiments import core, label_noise
from common.methods import METHOD_NAMES
from common.ml import model
from common.ml.data import Dataset

METHODS: tuple[str, ...] = METHOD_NAMES


def _twin(
    method: str,
    state: model.ModelOwnerState,
    split: core.Split,
    cand: Dataset,
    steps: int,
    lr: float,
) -> Callable[[], float]:
    """The plaintext twin of one candidate's score, as a call to time."""
    tr, te = split.train_ds, split.test_ds
    if method == "influence":
        return lambda: model.influence_score(state, cand.X, cand.y)
    if method == "gradient-norm":
        return lambda: model.gradient_norm_score(state.theta, cand.X, cand.y)
    return lambda: model.finetune_score(
        state, tr.X, tr.y, cand.X, cand.y, te.X, te.y, steps=steps, lr=lr
    )


def best_of(call: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def run(
    setup: core.Setup, *, steps: int = 16, lr: float = 0.1, plaintext_repeats: int = 5
) -> dict[str, Any]:
    started = time.perf_counter()
    pool = setup.pool()
    runner = setup.runner()
    payload = core.begin(setup, "runtime", pool)
    with tempfile.TemporaryDirectory(prefix="runtime-") as tmp:
        split = label_noise.make_split(setup, pool, Path(tmp))
        payload["dataset"]["split"] = split.info
        t0 = time.perf_counter()
        state = split.model_owner(setup.l2)
        prepare = time.perf_counter() - t0
        runs: dict[str, tuple[core.Run, list[float]]] = {}
        for method in METHODS:
            plain = [
                best_of(_twin(method, state, split, c, steps, lr), plaintext_repeats)
                for c in runner.track(split.candidate_ds, f"plaintext {method}")
            ]
            runs[method] = (runner.appraise(method, split, steps=steps, lr=lr, check=False), plain)
        one_step = runner.appraise(
            "finetune", split, steps=1, lr=lr, check=False, label="finetune T=1"
        )
    payload.update(
        methods={m: row(mpc, plain) for m, (mpc, plain) in runs.items()},
        finetune_step_cost=core.StepCost.fit(one_step, runs["finetune"][0]).to_json(),
        finetune_parameters={"steps": steps, "lr": lr},
        model_owner_prepare_seconds=round(prepare, 4),
        notes="plaintext_seconds: median over candidates of the best of "
        f"{plaintext_repeats} runs of the plaintext twin given θ̂ and v (the model owner's "
        "preparation, training θ̂ and solving H v = ḡ_test, is model_owner_prepare_seconds); "
        "mpc_seconds: the parties' compute per candidate after the rendezvous; "
        "wall_seconds_per_candidate: the whole MPC run (process start-up, loading, θ̂, "
        "rendezvous, scoring) divided by the number of candidates.",
    )
    plot(setup.out, payload)
    return core.finish(setup, payload, started, render)


def row(mpc: core.Run, plain: list[float]) -> dict[str, Any]:
    """One method's timings and communication, as medians over the candidates."""
    plain_s, mpc_s = float(np.median(plain)), mpc.median_seconds
    return {
        "plaintext_seconds": plain_s,
        "mpc_seconds": mpc_s,
        "mpc_seconds_min_max": [min(mpc.seconds), max(mpc.seconds)],
        "mpc_over_plaintext": mpc_s / plain_s,
        "bytes_sent": int(np.median([r.bytes_sent for r in mpc.results])),
        "bytes_received": int(np.median([r.bytes_received for r in mpc.results])),
        "rounds": int(np.median([r.rounds for r in mpc.results])),
        "dealer_bytes_per_candidate": mpc.local.dealer_bytes // len(mpc.results),
        "peak_rss_mb": max(r.peak_rss_mb for r in mpc.results),
        "wall_seconds_per_candidate": mpc.wall_seconds / len(mpc.results),
        "n_candidates": len(mpc.results),
    }


def plot(out: Path, payload: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    methods = payload["methods"]
    names = list(methods)
    x = np.arange(len(names))
    fig, axes = core.new_figure(1, 3, size=(12, 3.8))
    ax = axes[0, 0]
    for offset, key, label in (
        (-0.2, "plaintext_seconds", "plaintext"),
        (0.2, "mpc_seconds", "MPC (2 parties + dealer)"),
    ):
        bars = ax.bar(x + offset, [methods[n][key] for n in names], width=0.38, label=label)
        ax.bar_label(bars, fmt="%.2g", fontsize=6)
    ax.set_ylabel("seconds per candidate (median)")
    ax.legend(fontsize=7)
    for ax, key, label in (
        (axes[0, 1], "bytes_sent", "bytes the model owner sent"),
        (axes[0, 2], "rounds", "communication rounds"),
    ):
        bars = ax.bar(x, [methods[n][key] for n in names], width=0.5, color="tab:orange")
        ax.bar_label(bars, fmt="%.3g", fontsize=6)
        ax.set_ylabel(f"{label} per candidate")
    for ax in axes[0]:
        ax.set_yscale("log")
        ax.set_xticks(x, names, fontsize=8)
    fs = payload["finetune_parameters"]
    fig.suptitle(f"Runtime breakdown (finetune: T = {fs['steps']}, η = {fs['lr']:g}), log scale")
    core.save_figure(fig, out / "runtime.png", core.caption(payload))


def render(payload: dict[str, Any]) -> str:
    rows = [
        [
            name,
            f"{m['plaintext_seconds']:.2e}",
            f"{m['mpc_seconds']:.3f}",
            f"{m['mpc_seconds_min_max'][0]:.3f}–{m['mpc_seconds_min_max'][1]:.3f}",
            f"{m['mpc_over_plaintext']:,.0f}",
            f"{m['wall_seconds_per_candidate']:.2f}",
            f"{m['bytes_sent'] / 1e6:.2f}",
            str(m["rounds"]),
            f"{m['dealer_bytes_per_candidate'] / 1e6:.2f}",
            f"{m['peak_rss_mb']:.0f}",
        ]
        for name, m in payload["methods"].items()
    ]
    cost = payload["finetune_step_cost"]
    return (
        core.markdown_header("Runtime breakdown (Figure 3)", payload)
        + "\nMedians over the candidates. "
        + payload["notes"]
        + "\n\n"
        + core.table(
            [
                "method",
                "plaintext s",
                "MPC s",
                "MPC s min–max",
                "MPC / plaintext",
                "wall s / candidate",
                "MB sent (model owner)",
                "rounds",
                "dealer MB / candidate",
                "peak RSS MB",
            ],
            rows,
        )
        + f"\nModel owner's plaintext preparation (θ̂ and v, once): "
        f"{payload['model_owner_prepare_seconds']:.3f} s. Fine-tuning MPC cost per candidate: "
        f"{cost['fixed_seconds']:.3f} s fixed + {cost['per_step_seconds']:.3f} s per step "
        f"(medians measured at T = {', '.join(cost['measured_median_seconds_by_steps'])}).\n"
        + "\n![runtime](runtime.png)\n"
    )
