"""The paper's experiments (``data-appraisal experiment ...``) at a small size.

The MPC tests run the real three-process MPC once per method and run (a few seconds of start-up
each), on a handful of candidates; the full-size runs are documented in docs/results.md.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from common.cli import app
from common.errors import ConfigError, MPCError
from common.experiments import (
    core,
    finetune_sweep,
    label_noise,
    runtime,
)
from common.ml.data import load_dataset
from common.ml.examples import write_example_data
from common.protocol import CandidateMeta, CandidateResult, JobSpec
from common.runtime.local import LocalRun

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL: dict[str, Any] = dict(n_test=100, candidate_size=40)  # MPC cost is mostly rounds anyway
HEAD_KEYS = {"experiment", "dataset", "environment", "command", "elapsed_seconds"}


def load_outputs(out: Path, *pngs: str) -> dict[str, Any]:
    """Check results.json / results.md / the plots exist and say what ran; return the JSON."""
    payload = json.loads((out / "results.json").read_text())
    assert payload.keys() >= HEAD_KEYS
    assert payload["dataset"]["name"] == "digits"
    assert "scikit-learn digits" in payload["dataset"]["description"]
    assert payload["dataset"]["split"]["sampling"]
    machine = payload["environment"]["machine"]
    assert machine["cpu_count"] >= 1 and machine["platform"]
    assert "git_commit" in payload["environment"]
    md = (out / "results.md").read_text()
    assert "scikit-learn digits" in md and "CPUs" in md and "git commit" in md
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
        assert f"({name})" in md
    return payload


def finite(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x)


# --------------------------------------------------------------------------------------------------
# Without MPC: splits, statistics, the fine-tuning budgets
# --------------------------------------------------------------------------------------------------


def test_digits_label_noise_split_is_the_example_split(tmp_path: Path) -> None:
    pool = core.load_pool("digits", tmp_path)
    split = core.label_noise_split(pool, tmp_path / "ours", seed=0, n_train=100, n_test=400)
    example = write_example_data(tmp_path / "example", seed=0)
    pairs = [(split.train, example.train), (split.test, example.test)]
    pairs += list(zip(split.candidates, example.candidates, strict=True))
    for ours, theirs in pairs:
        a, b = load_dataset(ours), load_dataset(theirs)
        assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
    assert split.levels == pytest.approx([p / 10 for p in range(1, 11)])
    assert split.info["n_flipped"] == list(example.n_flipped)


def test_class_ratio_split(tmp_path: Path) -> None:
    pool = core.load_pool("digits", tmp_path)
    kw: dict[str, Any] = dict(classes=(3, 8), seed=[0, 1], n_first=50, n_second=5, n_test=100)
    split = core.class_ratio_split(pool, tmp_path, candidate_size=60, **kw)
    assert np.bincount(split.train_ds.y).tolist() == [50, 5]
    assert np.bincount(split.test_ds.y).tolist() == [50, 50]
    fractions = [float(np.mean(c.y == 0)) for c in split.candidate_ds]
    assert fractions == pytest.approx([p / 20 for p in range(1, 21)], abs=1 / 60)
    assert split.levels == pytest.approx(fractions)
    # D_tr, D_te and the candidates never share a sample (rows of digits are distinct images)

    def rows(ds: Any) -> set[bytes]:
        return {r.tobytes() for r in ds.X}

    assert not rows(split.train_ds) & rows(split.test_ds)
    for c in split.candidate_ds:
        assert not rows(c) & (rows(split.train_ds) | rows(split.test_ds))
    with pytest.raises(ConfigError, match="class 8 in candidate 1: need 380 samples"):
        core.class_ratio_split(pool, tmp_path / "big", candidate_size=400, **kw)


def test_spearman_helpers() -> None:
    assert core.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert core.spearman([1, 2, 3], [5, 5, 5]) is None  # undefined, not NaN (and no warning)
    assert core.oriented("gradient-norm", 0.5) == -0.5
    assert core.oriented("influence", 0.5) == 0.5
    ranks = core.normalised_ranks([3.0, 1.0, 2.0, 2.0])
    assert ranks.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.5])


def result(name: str, method: str, score: float, seconds: float) -> CandidateResult:
    return CandidateResult(
        candidate=name,
        method=method,
        score=score,
        seconds=seconds,
        bytes_sent=1,
        bytes_received=1,
        rounds=1,
        peak_rss_mb=1.0,
    )


def local_run(results: list[CandidateResult], plaintext: list[float] | None = None) -> LocalRun:
    job = JobSpec(
        method=results[0].method,
        n_features=1,
        n_classes=2,
        n_train=1,
        n_test=1,
        candidates=[CandidateMeta(name=f"c{i}", n_samples=1) for i in range(len(results))],
    )
    return LocalRun(job, results, results, dealer_bytes=1, plaintext=plaintext)


def fake_run(method: str, seconds: list[float], steps: int = 16) -> core.Run:
    results = [result(f"c{i}", method, float(i), s) for i, s in enumerate(seconds)]
    return core.Run(method, local_run(results), 1.0, steps=steps, lr=0.1)


def test_step_cost() -> None:
    cost = core.StepCost.fit(fake_run("finetune", [1.1, 1.2, 1.3], 1), fake_run("finetune", [4], 8))
    assert cost.per_step_seconds == pytest.approx(0.4)
    assert cost.fixed_seconds == pytest.approx(0.8)
    assert [cost.steps_for(t) for t in (0.1, 1.2, 2.0, 7.2)] == [1, 1, 3, 16]
    noisy = core.StepCost.fit(fake_run("finetune", [2.0], 1), fake_run("finetune", [1.9], 8))
    with pytest.raises(MPCError, match="too noisy"):
        noisy.steps_for(5.0)


@pytest.fixture
def fake_mpc(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for the MPC whose cost is known: influence and the gradient norm 0.5 s per
    candidate, fine-tuning 1 s + 0.5 s per step; candidate i scores i (its plaintext twin too)."""

    def fake_appraise(*, method: str, candidates: list[Path], steps: int, **_: Any) -> Any:
        cost = 1.0 + 0.5 * steps if method == "finetune" else 0.5
        results = [result(Path(c).stem, method, float(i), cost) for i, c in enumerate(candidates)]
        return local_run(results, plaintext=[float(i) for i in range(len(candidates))])

    monkeypatch.setattr(core, "run_local", fake_appraise)


@pytest.mark.usefixtures("fake_mpc")
def test_label_noise_budgets_choose_steps(tmp_path: Path) -> None:
    """Budgets 1×, 4×, 16× of 0.5 s at 1 s + 0.5 s a step → 1 (the least), 2 and 14 steps."""
    setup = core.Setup(out=tmp_path, candidates=4, candidate_size=30)
    payload = label_noise.run(setup, lrs=[0.1], budgets=[1, 4, 16])
    finetune = {k: v for k, v in payload["methods"].items() if k.startswith("finetune")}
    assert {k: v["budgets"] for k, v in finetune.items()} == {
        "finetune lr=0.1 T=1": [1],
        "finetune lr=0.1 T=2": [4],
        "finetune lr=0.1 T=14": [16],
    }
    assert finetune["finetune lr=0.1 T=14"]["ratio_to_influence"] == pytest.approx(16.0)
    assert payload["finetune_calibration"]["per_step_seconds"] == pytest.approx(0.5)


@pytest.mark.usefixtures("fake_mpc")
def test_finetune_sweep_grid(tmp_path: Path) -> None:
    setup = core.Setup(out=tmp_path, candidates=3, candidate_size=30)
    payload = finetune_sweep.run(setup, lrs=[0.1, 1.0], steps=[1, 2, 4])
    seconds = finetune_sweep.grid(payload, "median_mpc_seconds")
    assert seconds.tolist() == [[1.5, 2.0, 3.0], [1.5, 2.0, 3.0]]  # rows: η, columns: T
    assert [(c["lr"], c["steps"]) for c in payload["cells"]][:4] == [
        (0.1, 1),
        (0.1, 2),
        (0.1, 4),
        (1.0, 1),
    ]
    load_outputs(tmp_path, "heatmaps.png")


def test_unavailable_dataset_is_a_one_line_error(tmp_path: Path) -> None:
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    result = CliRunner().invoke(
        app, ["experiment", "label-noise", "--dataset", "mnist", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "needs torchvision" in result.output and "--dataset digits" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'"):
        core.load_pool("svhn", tmp_path)


# --------------------------------------------------------------------------------------------------
# Through the real MPC, at a small size
# --------------------------------------------------------------------------------------------------


@pytest.mark.mpc
def test_label_noise(tmp_path: Path) -> None:
    label_noise.run(core.Setup(out=tmp_path, candidates=4, **SMALL), lrs=[0.1], steps=[1])
    payload = load_outputs(tmp_path, "scores_vs_utility.png", "spearman.png")
    methods = payload["methods"]
    assert list(methods) == ["influence", "gradient-norm", "finetune lr=0.1 T=1"]
    utility = payload["utilities"]
    assert len(utility) == 4 and utility[-1] > utility[0]  # all 1s/7s swapped hurts more
    for name, m in methods.items():
        assert len(m["scores"]) == len(m["plaintext_scores"]) == 4
        for key in ("spearman_vs_utility", "spearman_vs_noise", "rho_vs_utility", "rho_vs_noise"):
            assert finite(m[key]), (name, key)
        # MPC agrees with the plaintext twin to 1 %, or to a few units of CrypTen's 2⁻¹⁶
        tolerance = 1e-2 * max(map(abs, m["plaintext_scores"])) + 1e-4
        assert m["max_abs_diff_mpc_vs_plaintext"] < tolerance, name
        assert all(s > 0 for s in m["mpc_seconds"]) and all(b > 0 for b in m["bytes_sent"])
    assert methods["influence"]["rho_vs_utility"] > 0.5
    assert (
        methods["gradient-norm"]["rho_vs_utility"]
        == -methods["gradient-norm"]["spearman_vs_utility"]
    )


@pytest.mark.mpc
def test_class_ratio_command(tmp_path: Path) -> None:
    args = ["experiment", "class-ratio", "--repeats", "1", "--candidates", "10"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = load_outputs(tmp_path, "rank_scatter.png", "values.png")
    assert "--candidates 10" in payload["command"] and "--repeats 1" in payload["command"]
    assert payload["dataset"]["split"]["classes"] == [3, 8]
    assert payload["dataset"]["split"]["train_counts"] == [50, 5]
    points = payload["points"]
    assert len(points) == 10
    assert all(0.0 <= p[f"rank_{k}"] <= 1.0 for p in points for k in ("influence", "utility"))
    rho = payload["spearman"]
    assert {z for t in rho.values() for z in t} == {"full", "low", "high"}
    assert all(finite(rho[t]["full"]["spearman"]) for t in rho)
    # more of the majority class is worth less: influence and U agree, accuracy goes the other way
    assert rho["utility"]["full"]["spearman"] > 0.5
    assert rho["accuracy"]["full"]["spearman"] < 0


@pytest.mark.mpc
def test_runtime(tmp_path: Path) -> None:
    runtime.run(core.Setup(out=tmp_path, candidates=1, **SMALL), steps=3, plaintext_repeats=1)
    payload = load_outputs(tmp_path, "runtime.png")
    methods = payload["methods"]
    assert list(methods) == ["influence", "gradient-norm", "finetune"]
    for m in methods.values():
        assert 0 < m["plaintext_seconds"] < m["mpc_seconds"]
        assert m["bytes_sent"] > 0 and m["rounds"] > 0
    assert methods["finetune"]["rounds"] > methods["influence"]["rounds"]
    assert finite(payload["finetune_step_cost"]["per_step_seconds"])  # T = 3 vs 1: noisy


@pytest.mark.mpc
def test_finetune_sweep(tmp_path: Path) -> None:
    finetune_sweep.run(core.Setup(out=tmp_path, candidates=3, **SMALL), lrs=[0.1], steps=[2])
    payload = load_outputs(tmp_path, "heatmaps.png")
    (cell,) = payload["cells"]
    assert (cell["lr"], cell["steps"], len(cell["scores"])) == (0.1, 2, 3)
    assert cell["median_mpc_seconds"] > payload["influence"]["median_mpc_seconds"] > 0
    assert finite(cell["rho_vs_utility"])
    assert finite(payload["influence"]["rho_vs_utility"])
    assert payload["influence"]["rho_vs_utility"] > 0
