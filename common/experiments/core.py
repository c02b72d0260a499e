"""What the experiments share: data pools and splits, MPC runs with progress, statistics, outputs.

Every experiment writes into its output directory ``results.json`` (every number), ``results.md``
(tables) and PNG plots, each stating the data set, the machine and the git commit it ran on.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.progress import Progress
from scipy import stats

from common.errors import ConfigError, MPCError
from common.experiments import DATA_ROOT
from common.methods import METHODS
from common.ml import model
from common.ml.data import Dataset, save_npz
from common.ml.examples import digits, load_torchvision, mnist_like, swap_labels
from common.runtime.local import LocalRun, run_local

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
DATASETS = ("digits", "mnist", "cifar10", "mnist-like")
# Which way each method's score points: influence and finetune estimate the utility U (lower is
# better), the gradient norm is "higher is better".
SIGN = {name: 1.0 if m.better == "lower" else -1.0 for name, m in METHODS.items()}


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """Where the samples come from: ``train`` feeds D_tr and the candidates, ``test`` feeds D_te
    (``None``: D_te is drawn from ``train`` too, disjoint from D_tr and the candidates)."""

    name: str
    description: str
    train: Dataset
    test: Dataset | None


def load_pool(name: str, data_root: Path, *, seed: int = 0) -> Pool:
    """The samples of a data set: offline ``digits`` and ``mnist-like``, or ``mnist``/``cifar10``
    through torchvision (optional extra; raises ConfigError when it is missing)."""
    if name == "digits":
        X, y = digits()
        desc = (
            "scikit-learn digits (offline): 1797 8x8 images, 64 features = pixel/16 in [0, 1], "
            "10 classes"
        )
        return Pool(name, desc, Dataset(X, y, "scikit-learn digits"), None)
    if name == "mnist-like":
        train, test, cand = mnist_like(n_train=600, n_test=2000, n_candidate=11_400, seed=seed)
        desc = (
            "mnist_like (offline, NOT MNIST): scikit-learn digits upsampled to 28x28, shifted and "
            "noised (common.ml.examples.mnist_like), 784 features in [0, 1], 10 classes"
        )
        both = Dataset(np.vstack([train.X, cand.X]), np.concatenate([train.y, cand.y]), desc)
        return Pool(name, desc, both, test)
    if name in ("mnist", "cifar10"):
        if importlib.util.find_spec("torchvision") is None:
            raise ConfigError(
                f"--dataset {name} needs torchvision (the optional extra data-appraisal[vision], "
                "with a release matching the installed torch) and network access for the first "
                "download; without them use --dataset digits (offline)"
            )
        train = load_torchvision(name, data_root, train=True)
        test = load_torchvision(name, data_root, train=False)
        return Pool(name, f"{train.source} + {test.source}", train, test)
    raise ConfigError(f"unknown dataset {name!r} (expected one of: {', '.join(DATASETS)})")


@dataclass(frozen=True)
class Split:
    """The files of one appraisal problem and the experimental variable of each candidate."""

    train: Path
    test: Path
    candidates: list[Path]
    train_ds: Dataset
    test_ds: Dataset
    candidate_ds: list[Dataset]
    levels: list[float]  # flip probability (label noise) or first-class fraction (class ratio)
    info: dict[str, Any]

    @property
    def n_classes(self) -> int:
        return int(max(self.train_ds.y.max(), self.test_ds.y.max())) + 1

    def model_owner(self, l2: float) -> model.ModelOwnerState:
        tr, te = self.train_ds, self.test_ds
        return model.prepare_model_owner(tr.X, tr.y, te.X, te.y, n_classes=self.n_classes, l2=l2)


def _write_split(
    directory: Path,
    train: Dataset,
    test: Dataset,
    cands: list[Dataset],
    levels: list[float],
    info: dict[str, Any],
) -> Split:
    paths = [save_npz(directory / "train.npz", train), save_npz(directory / "test.npz", test)]
    cand_paths = [save_npz(directory / f"candidate_{p:02d}.npz", c) for p, c in enumerate(cands, 1)]
    info = {"n_train": train.n_samples, "n_test": test.n_samples, **info}
    return Split(paths[0], paths[1], cand_paths, train, test, cands, levels, info)


def _need(what: str, have: int, want: int) -> None:
    if want > have:
        raise ConfigError(
            f"{what}: need {want} samples but the data set has {have} left; choose smaller "
            "sizes (--candidate-size, --n-train, --n-test)"
        )


def label_noise_split(
    pool: Pool,
    directory: Path,
    *,
    seed: int,
    n_train: int,
    n_test: int,
    n_candidates: int = 10,
    candidate_size: int | None = None,
) -> Split:
    """D_tr, D_te and candidates 1..N; in candidate p, labels 1 and 7 swap with probability p/N.

    The pool is shuffled with ``seed``; D_tr is its first ``n_train`` samples and the rest is cut
    into N near-equal candidates (or N of ``candidate_size``). Without a separate test pool, D_te is
    the ``n_test`` samples after D_tr: for digits with the defaults (seed 0, 100, 400, 10) this is
    exactly the split of ``data-appraisal example-data``.
    """
    X, y = pool.train.X, pool.train.y
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    train_idx, rest = order[:n_train], order[n_train:]
    if pool.test is None:
        test = Dataset(X[rest[:n_test]], y[rest[:n_test]], "test")
        rest = rest[n_test:]
    else:
        pick = rng.permutation(pool.test.n_samples)[:n_test]
        test = Dataset(pool.test.X[pick], pool.test.y[pick], "test")
    if candidate_size is not None:
        _need("candidates", len(rest), n_candidates * candidate_size)
        rest = rest[: n_candidates * candidate_size]
    _need("candidates", len(rest), n_candidates)
    cands, levels, flipped = [], [], []
    for p, idx in enumerate(np.array_split(rest, n_candidates), 1):
        labels, n_flipped = swap_labels(y[idx], p / n_candidates, rng)
        cands.append(Dataset(X[idx], labels, f"candidate {p}"))
        levels.append(p / n_candidates)
        flipped.append(n_flipped)
    info = {
        "candidate_sizes": [c.n_samples for c in cands],
        "flip_probabilities": levels,
        "n_flipped": flipped,
        "sampling": "pool shuffled once; D_tr, (D_te,) candidates are disjoint slices; in "
        "candidate p each label 1 or 7 is swapped with the other with probability p/N",
    }
    return _write_split(directory, Dataset(X[train_idx], y[train_idx]), test, cands, levels, info)


def class_ratio_split(
    pool: Pool,
    directory: Path,
    *,
    classes: tuple[int, int],
    seed: int | Sequence[int],
    n_first: int,
    n_second: int,
    n_test: int,
    n_candidates: int = 20,
    candidate_size: int,
) -> Split:
    """A two-class problem: D_tr holds ``n_first`` : ``n_second`` samples of the two classes, D_te is
    balanced (``n_test``/2 each), candidate p holds round(size·p/N) of the first class.

    Labels become 0 (first class) and 1 (second). D_tr and D_te are disjoint; each candidate is an
    independent draw, without replacement inside the candidate, from the samples of each class that
    are in neither D_tr nor D_te, so different candidates may share samples when the pool is small.
    """
    rng = np.random.default_rng(seed)
    X, y = pool.train.X, pool.train.y
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    half = n_test // 2
    train_idx = [by_class[0][:n_first], by_class[1][:n_second]]
    rest = [by_class[0][n_first:], by_class[1][n_second:]]
    if pool.test is None:
        test_X, test_idx = X, [r[:half] for r in rest]
        rest = [r[half:] for r in rest]
    else:
        test_X = pool.test.X
        test_idx = [rng.permutation(np.flatnonzero(pool.test.y == c))[:half] for c in classes]
    for c, have, want in zip(classes, map(len, by_class), (n_first, n_second), strict=True):
        _need(f"class {c} in D_tr", have, want)
    for c, idx in zip(classes, test_idx, strict=True):
        _need(f"class {c} in D_te", len(idx), half)

    def two_class(X_: np.ndarray, parts: list[np.ndarray], source: str) -> Dataset:
        labels = np.concatenate([np.full(len(parts[0]), 0), np.full(len(parts[1]), 1)])
        return Dataset(X_[np.concatenate(parts)], labels, source)

    cands, levels = [], []
    for p in range(1, n_candidates + 1):
        n_a = round(candidate_size * p / n_candidates)
        sizes = (n_a, candidate_size - n_a)
        for c, r, k in zip(classes, rest, sizes, strict=True):
            _need(f"class {c} in candidate {p}", len(r), k)
        parts = [rng.choice(r, k, replace=False) for r, k in zip(rest, sizes, strict=True)]
        cands.append(two_class(X, parts, f"candidate {p}"))
        levels.append(n_a / candidate_size)
    info = {
        "classes": list(classes),
        "train_counts": [n_first, n_second],
        "test_counts": [half, half],
        "candidate_size": candidate_size,
        "first_class_fractions": levels,
        "pool_left_per_class": [len(r) for r in rest],
        "sampling": "D_tr and D_te disjoint; each candidate drawn independently, without "
        "replacement inside the candidate, from the samples of each class in neither D_tr nor "
        "D_te (candidates may share samples)",
    }
    train = two_class(X, train_idx, "train")
    return _write_split(directory, train, two_class(test_X, test_idx, "test"), cands, levels, info)


def utilities(split: Split, state: model.ModelOwnerState, runner: Runner) -> list[float]:
    """U(D_a) of every candidate: mean test loss after retraining on D_tr ∪ D_a minus before."""
    tr, te = split.train_ds, split.test_ds
    return [
        model.exact_utility(state, tr.X, tr.y, c.X, c.y, te.X, te.y)
        for c in runner.track(split.candidate_ds, "true utility U (retraining)")
    ]


# --------------------------------------------------------------------------------------------------
# MPC runs with progress bars
# --------------------------------------------------------------------------------------------------


class Runner:
    """Runs appraisals through the real MPC (:func:`common.runtime.local.run_local`), one rich
    progress bar per run; ``progress=None`` runs silently."""

    def __init__(self, progress: Progress | None = None, *, l2: float = 1.0) -> None:
        self.progress = progress
        self.l2 = l2

    def track(self, items: Sequence[T], description: str) -> Iterator[T]:
        if self.progress is None:
            yield from items
            return
        yield from self.progress.track(items, description=description)

    def appraise(
        self,
        method: str,
        split: Split,
        *,
        candidates: Sequence[Path] | None = None,
        steps: int = 16,
        lr: float = 0.1,
        check: bool = True,
        label: str | None = None,
    ) -> Run:
        """One MPC run scoring every candidate (one process start-up for all of them)."""
        cands = list(split.candidates if candidates is None else candidates)
        task = None
        if self.progress is not None:
            task = self.progress.add_task(f"MPC {label or method}", total=len(cands))

        def on_progress(done: int, total: int) -> None:
            if self.progress is not None and task is not None:
                self.progress.update(task, completed=done, total=total)

        start = time.perf_counter()
        results = run_local(
            method=method,
            train=split.train,
            test=split.test,
            candidates=cands,
            l2=self.l2,
            steps=steps,
            lr=lr,
            check=check,
            deadline=6 * 3600,
            on_progress=on_progress,
        )
        wall = time.perf_counter() - start
        return Run(method, results, wall, steps=steps, lr=lr, load_average=os.getloadavg()[0])


@dataclass(frozen=True)
class Run:
    """The results of one MPC run, with the summaries the experiments report."""

    method: str
    local: LocalRun
    wall_seconds: float  # the whole run: process start-up, loading, θ̂, rendezvous, scoring
    steps: int
    lr: float
    load_average: float | None = None  # 1-minute load average when the run ended

    @property
    def results(self) -> list[Any]:
        return self.local.results

    @property
    def scores(self) -> list[float]:
        return [float(r.score) for r in self.results if r.score is not None]

    @property
    def plaintext(self) -> list[float]:
        return list(self.local.plaintext or [])

    @property
    def seconds(self) -> list[float]:
        return [r.seconds for r in self.results]

    @property
    def median_seconds(self) -> float:
        return float(np.median(self.seconds))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "better": "lower" if SIGN[self.method] > 0 else "higher",
            "scores": self.scores,
            "plaintext_scores": self.plaintext,
            "max_abs_diff_mpc_vs_plaintext": (
                max(abs(a - b) for a, b in zip(self.scores, self.plaintext, strict=True))
                if self.plaintext
                else None
            ),
            "mpc_seconds": [round(s, 4) for s in self.seconds],
            "median_mpc_seconds": round(self.median_seconds, 4),
            "bytes_sent": [r.bytes_sent for r in self.results],
            "bytes_received": [r.bytes_received for r in self.results],
            "rounds": [r.rounds for r in self.results],
            "dealer_bytes": self.local.dealer_bytes,
            "peak_rss_mb": max(r.peak_rss_mb for r in self.results),
            "wall_seconds": round(self.wall_seconds, 3),
            "load_average_after": self.load_average,
        }
        if self.method == "finetune":
            out.update(steps=self.steps, lr=self.lr)
        return out


@dataclass(frozen=True)
class StepCost:
    """MPC seconds per candidate of fine-tuning as fixed + per_step · T, from two measured runs."""

    fixed_seconds: float
    per_step_seconds: float
    measured: dict[int, float]  # steps -> median MPC seconds per candidate

    @classmethod
    def fit(cls, low: Run, high: Run) -> StepCost:
        """The line through the two runs' medians (``per_step`` ≤ 0 when noise swamped it)."""
        per_step = (high.median_seconds - low.median_seconds) / (high.steps - low.steps)
        fixed = low.median_seconds - per_step * low.steps
        measured = {low.steps: low.median_seconds, high.steps: high.median_seconds}
        return cls(fixed, per_step, measured)

    def steps_for(self, seconds: float) -> int:
        """The number of steps whose predicted time is closest to ``seconds`` (at least 1)."""
        if self.per_step_seconds <= 0:
            raise MPCError(
                f"fine-tuning {max(self.measured)} steps took no longer than {min(self.measured)} "
                f"({self.measured}): the machine is too noisy to measure a per-step cost; try "
                "again, raise --calibration-steps, or pass explicit --steps"
            )
        return max(1, round((seconds - self.fixed_seconds) / self.per_step_seconds))

    def to_json(self) -> dict[str, Any]:
        return {
            "fixed_seconds": round(self.fixed_seconds, 4),
            "per_step_seconds": round(self.per_step_seconds, 4),
            "measured_median_seconds_by_steps": {
                str(k): round(v, 4) for k, v in self.measured.items()
            },
        }


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float | None:
    """Spearman's ρ (ties get average ranks); ``None`` where it is undefined (a constant input)."""
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a_) < 2 or np.ptp(a_) == 0 or np.ptp(b_) == 0:
        return None
    return float(stats.spearmanr(a_, b_).statistic)


def oriented(method: str, rho: float | None) -> float | None:
    """ρ turned so that +1 means "ranks the candidates as U does" (lower score = better for
    influence and finetune, higher = better for the gradient norm)."""
    return None if rho is None else SIGN[method] * rho


def normalised_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks scaled to [0, 1] (average ranks for ties)."""
    ranks = stats.rankdata(values) - 1.0
    return np.asarray(ranks / max(len(ranks) - 1, 1))


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# --------------------------------------------------------------------------------------------------
# Environment and outputs
# --------------------------------------------------------------------------------------------------


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the project (read-only); ``None`` when git is unavailable."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None


def environment() -> dict[str, Any]:
    """The machine, software versions, git commit and load when the experiment started."""

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "torch": version("torch"),
            "crypten": version("crypten"),
        },
        "git_commit": git_commit(),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure on the Agg canvas (no pyplot, no GUI backend) and its axes array."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save_figure(fig: Figure, path: Path, caption: str) -> Path:
    """Write ``fig`` as PNG with the data set / machine / commit line at the bottom."""
    bottom = 0.2 / fig.get_figheight()  # keep 0.2 inch free for the caption
    fig.set_layout_engine("constrained", rect=(0.0, bottom, 1.0, 1.0 - bottom))
    fig.text(0.005, 0.004, caption, fontsize=6, color="0.4", ha="left", va="bottom")
    fig.savefig(path, dpi=110)
    return path


def caption(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    commit = (env["git_commit"] or "unknown")[:10]
    cpus = env["machine"]["cpu_count"]
    return f"data: {payload['dataset']['name']} · {cpus} CPUs · commit {commit}"


def markdown_header(title: str, payload: dict[str, Any]) -> str:
    env, m = payload["environment"], payload["environment"]["machine"]
    return "\n".join(
        [
            f"# {title}",
            "",
            f"- data: {payload['dataset']['description']}",
            f"- sizes and sampling: `{json.dumps(payload['dataset']['split'])}`",
            f"- machine: {m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}, "
            f"torch {m['torch']}, crypten {m['crypten']}; load average at start "
            f"{env['load_average_at_start']}",
            f"- git commit: `{env['git_commit']}`; started {env['started']}; "
            f"took {payload['elapsed_seconds']:.0f} s",
            f"- command: `{payload['command']}`",
            "",
        ]
    )


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def begin(setup: Setup, experiment: str, pool: Pool) -> dict[str, Any]:
    """The head of an experiment's JSON: what ran, on which data, machine and commit (the split's
    sizes and sampling go into ``["dataset"]["split"]`` once known)."""
    return {
        "experiment": experiment,
        "dataset": {"name": pool.name, "description": pool.description, "split": None},
        "environment": environment(),
        "command": setup.command,
        "elapsed_seconds": None,
    }


def finish(
    setup: Setup, payload: dict[str, Any], started: float, render: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Record the elapsed time and write ``results.json`` and ``results.md`` (from ``render``)."""
    payload["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    setup.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2) + "\n"
    (setup.out / "results.json").write_text(text, encoding="utf-8")
    (setup.out / "results.md").write_text(render(payload), encoding="utf-8")
    return payload


@dataclass(frozen=True)
class Setup:
    """Options every experiment shares. A ``None`` size means the experiment's default for the
    data set (see :meth:`size`)."""

    dataset: str = "digits"
    out: Path = Path("experiment-results")
    seed: int = 0
    n_train: int | None = None
    n_test: int | None = None
    candidates: int | None = None
    candidate_size: int | None = None
    l2: float = 1.0
    data_root: Path = DATA_ROOT
    command: str = "data-appraisal experiment"
    progress: Progress | None = field(default=None, compare=False)

    def size(self, name: str, defaults: dict[str, dict[str, int]]) -> int:
        """Option ``name`` if given, else ``defaults[dataset][name]``, else ``defaults["*"][name]``."""
        given: int | None = getattr(self, name)
        if given is not None:
            return given
        return defaults.get(self.dataset, {}).get(name, defaults["*"][name])

    def runner(self) -> Runner:
        return Runner(self.progress, l2=self.l2)

    def pool(self) -> Pool:
        return load_pool(self.dataset, self.data_root, seed=self.seed)
