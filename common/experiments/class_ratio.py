"""Class-ratio mismatch (the paper's Figure 5), the influence scores through the real MPC.

A two-class problem: D_tr holds the two classes at ``ratio``:1, D_te is balanced, and candidate p
(p = 1..N, N = 20) holds a fraction p/N of the first (majority) class, so candidates rich in the
second class should be worth more. The whole problem is drawn ``repeats`` times with fresh
samples. Over all (repeat, candidate) points we rank the MPC influence score, the true utility U
and the test accuracy after retraining on D_tr ∪ D_a, and report Spearman's ρ over the whole range
of normalised influence rank and over the zoomed ranges [0, 0.45] and [0.55, 1.0].

The paper uses CIFAR-10 planes against cars with 440-sample candidates. Offline, two digit classes
(3 and 8 by default) stand in; digits has only about 180 samples a class, so the candidates are
smaller (60 by default) and drawn with overlap (see :func:`core.class_ratio_split`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError
from common.experiments import core
from common.ml import model

DEFAULTS = {
    "*": {"n_train": 1100, "n_test": 1000, "candidates": 20, "candidate_size": 440},
    "digits": {"n_train": 55, "n_test": 100, "candidate_size": 60},
}
CLASSES = {"cifar10": (0, 1)}  # airplane, automobile; every other data set: digits 3 and 8
ZOOMS = {"full": (0.0, 1.0), "low": (0.0, 0.45), "high": (0.55, 1.0)}
TARGETS = {"utility": "true utility U", "accuracy": "test accuracy after retraining"}


def _accuracy(split: core.Split, state: model.ModelOwnerState, cand: Any) -> float:
    """Test accuracy of the model retrained on D_tr ∪ D_a (warm start, as exact_utility does)."""
    tr, te = split.train_ds, split.test_ds
    fitted = model.LogisticRegression(n_classes=split.n_classes, l2=state.l2).fit(
        np.vstack([tr.X, cand.X]), np.concatenate([tr.y, cand.y]), init=state.theta
    )
    return float((fitted.predict_proba(te.X).argmax(axis=1) == te.y).mean())


def zoomed_spearman(x_rank: np.ndarray, y_rank: np.ndarray) -> dict[str, Any]:
    """ρ over the points whose normalised x rank lies in each zoom range, and how many they are."""
    out = {}
    for name, (lo, hi) in ZOOMS.items():
        inside = (x_rank >= lo) & (x_rank <= hi)
        out[name] = {
            "range": [lo, hi],
            "n_points": int(inside.sum()),
            "spearman": core.spearman(x_rank[inside], y_rank[inside]),
        }
    return out


def run(
    setup: core.Setup, *, repeats: int = 5, ratio: int = 10, classes: Sequence[int] | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    pair = tuple(classes) if classes else CLASSES.get(setup.dataset, (3, 8))
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ConfigError(f"--classes takes two different classes, got {list(pair)}")
    n_train = setup.size("n_train", DEFAULTS)
    n_first = round(n_train * ratio / (ratio + 1))
    if n_first < 1 or n_train - n_first < 1:
        raise ConfigError(f"--n-train {n_train} cannot hold both classes at {ratio}:1")
    pool = setup.pool()
    runner = setup.runner()
    payload = core.begin(setup, "class-ratio", pool)
    points: list[dict[str, Any]] = []
    per_repeat: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="class-ratio-") as tmp:
        for r in range(repeats):
            split = core.class_ratio_split(
                pool,
                Path(tmp) / f"repeat_{r + 1}",
                classes=(pair[0], pair[1]),
                seed=[setup.seed, r],
                n_first=n_first,
                n_second=n_train - n_first,
                n_test=setup.size("n_test", DEFAULTS),
                n_candidates=setup.size("candidates", DEFAULTS),
                candidate_size=setup.size("candidate_size", DEFAULTS),
            )
            state = split.model_owner(setup.l2)
            tr, te = split.train_ds, split.test_ds
            utility, accuracy = [], []
            for c in runner.track(split.candidate_ds, f"retraining, repeat {r + 1}/{repeats}"):
                utility.append(model.exact_utility(state, tr.X, tr.y, c.X, c.y, te.X, te.y))
                accuracy.append(_accuracy(split, state, c))
            mpc = runner.appraise("influence", split, label=f"influence, repeat {r + 1}/{repeats}")
            base = model.softmax(model.add_bias(te.X) @ state.theta).argmax(axis=1) == te.y
            per_repeat.append(
                {
                    "repeat": r + 1,
                    "accuracy_before": float(base.mean()),
                    "spearman_influence_vs_utility": core.spearman(mpc.scores, utility),
                    "spearman_influence_vs_accuracy": core.spearman(mpc.scores, accuracy),
                    "median_mpc_seconds": round(mpc.median_seconds, 4),
                    "max_abs_diff_mpc_vs_plaintext": mpc.to_json()["max_abs_diff_mpc_vs_plaintext"],
                }
            )
            points += [
                {
                    "repeat": r + 1,
                    "candidate": p,
                    "first_class_fraction": lvl,
                    "influence": s,
                    "influence_plaintext": plain,
                    "utility": u,
                    "accuracy": a,
                }
                for p, (lvl, s, plain, u, a) in enumerate(
                    zip(split.levels, mpc.scores, mpc.plaintext, utility, accuracy, strict=True), 1
                )
            ]
    ranks = {k: core.normalised_ranks([pt[k] for pt in points]) for k in ("influence", *TARGETS)}
    for i, pt in enumerate(points):
        pt.update({f"rank_{k}": float(v[i]) for k, v in ranks.items()})
    info = {**split.info, "repeats": repeats, "ratio": f"{ratio}:1"}
    info.pop("pool_left_per_class")
    payload["dataset"]["split"] = info
    payload.update(
        spearman={t: zoomed_spearman(ranks["influence"], ranks[t]) for t in TARGETS},
        per_repeat=per_repeat,
        points=points,
        zoom_rule="a zoomed ρ uses the points whose normalised influence rank lies in the range "
        "(ranks are over all repeats' points together)",
        sign_convention="influence and U are lower-is-better, accuracy higher-is-better: a good "
        "appraisal has ρ > 0 against U and ρ < 0 against accuracy",
    )
    plot(setup.out, payload)
    return core.finish(setup, payload, started, render)


def plot(out: Path, payload: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pts = payload["points"]
    x = np.array([p["rank_influence"] for p in pts])
    frac = np.array([p["first_class_fraction"] for p in pts])
    fig, axes = core.new_figure(2, 3, size=(11, 7))
    for row, (target, label) in enumerate(TARGETS.items()):
        y = np.array([p[f"rank_{target}"] for p in pts])
        for col, (zoom, (lo, hi)) in enumerate(ZOOMS.items()):
            ax = axes[row, col]
            inside = (x >= lo) & (x <= hi)
            sc = ax.scatter(
                x[inside], y[inside], c=frac[inside], cmap="coolwarm", vmin=0, vmax=1, s=14
            )
            rho = payload["spearman"][target][zoom]["spearman"]
            ax.set_title(f"{zoom} [{lo}, {hi}]: ρ = {core.fmt(rho)}", fontsize=9)
            ax.set_xlim(lo - 0.02, hi + 0.02)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("rank of MPC influence (normalised)", fontsize=8)
            ax.set_ylabel(f"rank of {label}", fontsize=8)
    fig.colorbar(sc, ax=axes, label="fraction of the first (majority) class in the candidate")
    fig.suptitle("Class-ratio mismatch: rank of influence against rank of U / accuracy")
    core.save_figure(fig, out / "rank_scatter.png", core.caption(payload))

    fig, axes = core.new_figure(1, 3, size=(12, 3.4))
    for ax, key, label in zip(
        axes[0],
        ("influence", "utility", "accuracy"),
        ("MPC influence score", "true utility U", "test accuracy after retraining"),
        strict=True,
    ):
        for r in sorted({p["repeat"] for p in pts}):
            mine = [p for p in pts if p["repeat"] == r]
            ax.plot(
                [p["first_class_fraction"] for p in mine],
                [p[key] for p in mine],
                ".-",
                lw=0.8,
                label=f"repeat {r}",
            )
        ax.set_xlabel("fraction of the first class in the candidate", fontsize=8)
        ax.set_title(label, fontsize=9)
    axes[0, 0].legend(fontsize=6)
    core.save_figure(fig, out / "values.png", core.caption(payload))


def render(payload: dict[str, Any]) -> str:
    rows = [
        [TARGETS[t], f"{zoom} {v['range']}", str(v["n_points"]), core.fmt(v["spearman"])]
        for t, zooms in payload["spearman"].items()
        for zoom, v in zooms.items()
    ]
    reps = [
        [
            str(r["repeat"]),
            f"{r['accuracy_before']:.3f}",
            core.fmt(r["spearman_influence_vs_utility"]),
            core.fmt(r["spearman_influence_vs_accuracy"]),
            f"{r['median_mpc_seconds']:.3f}",
            f"{r['max_abs_diff_mpc_vs_plaintext']:.1e}",
        ]
        for r in payload["per_repeat"]
    ]
    return (
        core.markdown_header("Class-ratio mismatch (Figure 5)", payload)
        + f"\n{payload['sign_convention']}; {payload['zoom_rule']}.\n\n"
        + core.table(["influence rank against", "range", "points", "Spearman ρ"], rows)
        + "\n## Per repeat\n\n"
        + core.table(
            [
                "repeat",
                "test accuracy before",
                "ρ(influence, U)",
                "ρ(influence, accuracy)",
                "MPC s / candidate",
                "max abs(MPC − plain)",
            ],
            reps,
        )
        + "\n![rank scatter](rank_scatter.png)\n\n![values](values.png)\n"
    )
