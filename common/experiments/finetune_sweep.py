"""Fine-tuning sweep (the paper's Figure 4): learning rate × number of steps, under the real MPC.

On the label-noise split, one MPC run a (learning rate, steps) cell scores all candidates; each cell
reports Spearman's ρ of the MPC scores against the true utility U (and of the plaintext twins, to
separate fixed-point effects from the method's own), and the median MPC seconds per candidate.
Influence runs once on the same candidates for reference.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects

from common.experiments import core, label_noise

OUTLINE = [patheffects.withStroke(linewidth=2.5, foreground="white")]
PANELS = {
    "rho_vs_utility": ("ρ vs U (MPC scores)", "RdBu"),
    "plaintext_rho_vs_utility": ("ρ vs U (plaintext twins)", "RdBu"),
    "median_mpc_seconds": ("MPC seconds per candidate", "viridis"),
}


def run(
    setup: core.Setup,
    *,
    lrs: Sequence[float] = (0.001, 0.01, 0.1, 1.0, 10.0),
    steps: Sequence[int] = (1, 4, 16),
) -> dict[str, Any]:
    started = time.perf_counter()
    pool = setup.pool()
    runner = setup.runner()
    payload = core.begin(setup, "finetune-sweep", pool)
    cells = []
    with tempfile.TemporaryDirectory(prefix="finetune-sweep-") as tmp:
        split = label_noise.make_split(setup, pool, Path(tmp))
        payload["dataset"]["split"] = split.info
        utility = core.utilities(split, split.model_owner(setup.l2), runner)
        reference = runner.appraise("influence", split)
        for lr in lrs:
            for t in steps:
                name = f"finetune lr={lr:g} T={t}"
                mpc = runner.appraise("finetune", split, steps=t, lr=lr, label=name)
                cells.append(label_noise.summarise(mpc, utility, split.levels))
    payload.update(
        lrs=list(lrs),
        steps=list(steps),
        utilities=utility,
        cells=cells,
        influence=label_noise.summarise(reference, utility, split.levels),
        sign_convention="finetune and influence scores are lower-is-better like U: ρ = +1 means "
        "the candidates are ranked exactly as U ranks them",
    )
    plot(setup.out, payload)
    return core.finish(setup, payload, started, render)


def grid(payload: dict[str, Any], key: str) -> np.ndarray:
    """The cells' ``key`` as an lr × steps array (NaN where undefined)."""
    values = [np.nan if c[key] is None else c[key] for c in payload["cells"]]
    return np.array(values, dtype=float).reshape(len(payload["lrs"]), len(payload["steps"]))


def plot(out: Path, payload: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lrs, steps = payload["lrs"], payload["steps"]
    fig, axes = core.new_figure(1, len(PANELS), size=(4.2 * len(PANELS), 0.5 * len(lrs) + 2.6))
    for ax, (key, (title, cmap)) in zip(axes[0], PANELS.items(), strict=True):
        values = grid(payload, key)
        limits = (-1.0, 1.0) if key.endswith("utility") else (None, None)
        image = ax.imshow(values, cmap=cmap, vmin=limits[0], vmax=limits[1], aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(
                j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8
            )
        ax.set_xticks(range(len(steps)), [str(t) for t in steps])
        ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set_xlabel("fine-tuning steps T")
        ax.set_ylabel("learning rate η")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    inf = payload["influence"]
    fig.suptitle(
        f"Fine-tuning sweep (influence for reference: ρ vs U = {core.fmt(inf['rho_vs_utility'], 2)}, "
        f"{inf['median_mpc_seconds']:.2f} s per candidate)",
        fontsize=10,
    )
    core.save_figure(fig, out / "heatmaps.png", core.caption(payload))


def render(payload: dict[str, Any]) -> str:
    inf = payload["influence"]
    rows = [
        [
            f"{c['lr']:g}",
            str(c["steps"]),
            core.fmt(c["rho_vs_utility"]),
            core.fmt(c["plaintext_rho_vs_utility"]),
            f"{c['median_mpc_seconds']:.3f}",
            f"{c['max_abs_diff_mpc_vs_plaintext']:.1e}",
        ]
        for c in payload["cells"]
    ]
    rows.append(
        [
            "influence",
            "–",
            core.fmt(inf["rho_vs_utility"]),
            core.fmt(inf["plaintext_rho_vs_utility"]),
            f"{inf['median_mpc_seconds']:.3f}",
            f"{inf['max_abs_diff_mpc_vs_plaintext']:.1e}",
        ]
    )
    return (
        core.markdown_header("Fine-tuning sweep (Figure 4)", payload)
        + f"\n{payload['sign_convention']}. MPC s = median MPC compute seconds per candidate.\n\n"
        + core.table(
            ["η", "T", "ρ vs U (MPC)", "ρ vs U (plaintext twin)", "MPC s", "max abs(MPC − plain)"],
            rows,
        )
        + "\n![heat maps](heatmaps.png)\n"
    )
