"""Label noise (the paper's Table 1 and Figure 2), every appraisal through the real MPC.

D_tr is a small seed set and the rest of the training data is cut into N = 10 candidates; in
candidate p the labels 1 and 7 are swapped with probability p/N. For influence, the gradient norm
and fine-tuning (at several learning rates and runtime budgets) we record the MPC score of every
candidate, its plaintext twin, and Spearman's ρ against the true utility U and against p.

A budget of k× means: as many fine-tuning steps as make its MPC time per candidate ≈ k times the
influence MPC time per candidate measured in the same experiment. The per-step cost is measured
first, by fine-tuning the first ``calibration_candidates`` candidates for 1 and for
``calibration_steps`` steps under MPC and fitting time = fixed + per_step · T through the two
medians (see :class:`core.StepCost`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.experiments import core

DEFAULTS = {
    "*": {"n_train": 100, "n_test": 400, "candidates": 10},
    "mnist": {"n_train": 600, "n_test": 1000},
    "cifar10": {"n_train": 600, "n_test": 1000},
    "mnist-like": {"n_train": 600, "n_test": 1000},
}


def make_split(setup: core.Setup, pool: core.Pool, directory: Path) -> core.Split:
    """The label-noise split with the experiment's sizes (shared by runtime and the sweep)."""
    return core.label_noise_split(
        pool,
        directory,
        seed=setup.seed,
        n_train=setup.size("n_train", DEFAULTS),
        n_test=setup.size("n_test", DEFAULTS),
        n_candidates=setup.size("candidates", DEFAULTS),
        candidate_size=setup.candidate_size,
    )


def summarise(run: core.Run, utility: Sequence[float], levels: Sequence[float]) -> dict[str, Any]:
    """A run's JSON with Spearman's ρ: raw (score vs U, score vs p) and oriented so that +1 means
    "ranks the candidates as U (or as the noise level) does"."""
    out = run.to_json()
    raw_u, raw_p = core.spearman(run.scores, utility), core.spearman(run.scores, levels)
    out.update(
        spearman_vs_utility=raw_u,
        spearman_vs_noise=raw_p,
        rho_vs_utility=core.oriented(run.method, raw_u),
        rho_vs_noise=core.oriented(run.method, raw_p),
        plaintext_rho_vs_utility=core.oriented(run.method, core.spearman(run.plaintext, utility)),
    )
    return out


def run(
    setup: core.Setup,
    *,
    lrs: Sequence[float] = (0.001, 0.1, 10.0),
    budgets: Sequence[float] = (1.0, 4.0, 16.0),
    steps: Sequence[int] | None = None,
    calibration_steps: int = 8,
    calibration_candidates: int = 3,
) -> dict[str, Any]:
    """Run the experiment and write results.json, results.md and the plots into ``setup.out``.

    ``steps`` replaces the runtime budgets by fixed step counts (and skips the calibration).
    """
    started = time.perf_counter()
    pool = setup.pool()
    runner = setup.runner()
    with tempfile.TemporaryDirectory(prefix="label-noise-") as tmp:
        split = make_split(setup, pool, Path(tmp))
        payload = core.begin(setup, "label-noise", pool)
        payload["dataset"]["split"] = split.info
        utility = core.utilities(split, split.model_owner(setup.l2), runner)
        runs = {m: runner.appraise(m, split) for m in ("influence", "gradient-norm")}
        t_inf = runs["influence"].median_seconds
        plan: dict[int, list[float]] = {}
        calibration = None
        if steps:
            plan = {int(t): [] for t in steps}
        else:
            few = split.candidates[:calibration_candidates]
            low, high = (
                runner.appraise(
                    "finetune", split, candidates=few, steps=t, check=False, label=f"calib. T={t}"
                )
                for t in (1, calibration_steps)
            )
            calibration = core.StepCost.fit(low, high)
            for k in budgets:
                plan.setdefault(calibration.steps_for(k * t_inf), []).append(k)
        finetune: dict[str, list[float]] = {}
        for lr in lrs:
            for t, ks in plan.items():
                name = f"finetune lr={lr:g} T={t}"
                runs[name] = runner.appraise("finetune", split, steps=t, lr=lr, label=name)
                finetune[name] = ks

    methods = {name: summarise(r, utility, split.levels) for name, r in runs.items()}
    for name, r in runs.items():
        methods[name]["ratio_to_influence"] = round(r.median_seconds / t_inf, 3)
        if name in finetune:
            methods[name]["budgets"] = finetune[name]
    payload.update(
        candidates=[
            {"name": p.name, "flip_probability": lvl, "n_samples": c.n_samples, "n_flipped": f}
            for p, lvl, c, f in zip(
                split.candidates,
                split.levels,
                split.candidate_ds,
                split.info["n_flipped"],
                strict=True,
            )
        ],
        utilities=utility,
        methods=methods,
        finetune_calibration=None
        if calibration is None
        else {
            **calibration.to_json(),
            "candidates": len(split.candidates[:calibration_candidates]),
        },
        influence_median_mpc_seconds=round(t_inf, 4),
        sign_convention=(
            "spearman_* are raw ρ(score, ·). rho_* are oriented: +1 means the method ranks the "
            "candidates exactly as U (or the flip probability p: cleaner = better) does. Influence "
            "and finetune scores are lower-is-better (rho = raw), the gradient norm higher-is-better "
            "(rho = -raw)."
        ),
    )
    plot(setup.out, payload)
    return core.finish(setup, payload, started, render)


def plot(out: Path, payload: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    methods, utility = payload["methods"], payload["utilities"]
    cap = core.caption(payload)
    ncols = 4
    nrows = -(-len(methods) // ncols)
    fig, axes = core.new_figure(nrows, ncols, size=(3.2 * ncols, 2.8 * nrows))
    for ax in axes.flat[len(methods) :]:
        ax.set_visible(False)
    for ax, (name, m) in zip(axes.flat, methods.items(), strict=False):
        ax.scatter(utility, m["scores"], c=range(len(utility)), cmap="viridis", s=18)
        for p, (u, s) in enumerate(zip(utility, m["scores"], strict=True), 1):
            ax.annotate(str(p), (u, s), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_title(f"{name}\nρ vs U = {core.fmt(m['rho_vs_utility'], 2)}", fontsize=8)
        ax.set_xlabel("true utility U (lower = better)", fontsize=7)
        ax.set_ylabel(f"MPC score ({m['better']} = better)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle("Label noise: MPC score against true utility (labels: candidate p)", fontsize=10)
    core.save_figure(fig, out / "scores_vs_utility.png", cap)

    fig, axes = core.new_figure(size=(8, 0.35 * len(methods) + 1.6))
    ax = axes[0, 0]
    names = list(methods)
    y = np.arange(len(names))
    for offset, key, label in ((-0.2, "rho_vs_utility", "vs U"), (0.2, "rho_vs_noise", "vs p")):
        values = [np.nan if methods[n][key] is None else methods[n][key] for n in names]
        ax.barh(y + offset, values, height=0.38, label=f"ρ {label}")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("Spearman ρ, oriented (+1 = ranks candidates as U / the noise level does)")
    ax.legend(fontsize=7)
    ax.set_title("Label noise: rank agreement of each appraisal (MPC scores)", fontsize=10)
    core.save_figure(fig, out / "spearman.png", cap)


def render(payload: dict[str, Any]) -> str:
    methods, cands = payload["methods"], payload["candidates"]
    rows = []
    for name, m in methods.items():
        budgets = ", ".join(f"{k:g}×" for k in m.get("budgets", [])) or "–"
        rows.append(
            [
                name,
                budgets,
                f"{m['median_mpc_seconds']:.3f}",
                f"{m['ratio_to_influence']:.2f}",
                core.fmt(m["rho_vs_utility"]),
                core.fmt(m["rho_vs_noise"]),
                core.fmt(m["plaintext_rho_vs_utility"]),
                f"{m['max_abs_diff_mpc_vs_plaintext']:.1e}",
            ]
        )
    per_cand = [
        [str(i), f"{c['flip_probability']:.1f}", str(c["n_samples"]), str(c["n_flipped"])]
        + [f"{payload['utilities'][i - 1]:.4f}"]
        + [f"{m['scores'][i - 1]:.4g}" for m in methods.values()]
        for i, c in enumerate(cands, 1)
    ]
    cal = payload["finetune_calibration"]
    calibration = (
        "Fine-tuning steps were given explicitly (no runtime budgets)."
        if cal is None
        else (
            f"Per-step cost, measured by fine-tuning the first {cal['candidates']} candidates "
            "under MPC (median seconds per candidate): "
            f"{json.dumps(cal['measured_median_seconds_by_steps'])} (steps: seconds) → fixed "
            f"{cal['fixed_seconds']:.3f} s + {cal['per_step_seconds']:.3f} s/step; influence took "
            f"{payload['influence_median_mpc_seconds']:.3f} s per candidate. A budget of k× uses "
            "the step count whose predicted time is closest to k × that (at least 1 step)."
        )
    )
    return (
        core.markdown_header("Label noise (Table 1 / Figure 2)", payload)
        + "\nρ is Spearman's rank correlation over the candidates, oriented so that +1 means the "
        "method ranks the candidates exactly as the true utility U (or the flip probability p) "
        "does. MPC s = median MPC compute seconds per candidate.\n\n"
        + core.table(
            [
                "method",
                "budget",
                "MPC s",
                "× influence",
                "ρ vs U",
                "ρ vs p",
                "ρ vs U (plaintext twin)",
                "max abs(MPC − plain)",
            ],
            rows,
        )
        + f"\n{calibration}\n\n## Per candidate\n\n"
        + core.table(["p", "flip prob.", "n", "flipped", "U", *methods], per_cand)
        + "\n![scores against utility](scores_vs_utility.png)\n\n![Spearman](spearman.png)\n"
    )
