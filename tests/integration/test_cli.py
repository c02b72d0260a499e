"""The ``data-appraisal`` command line.

A few calls run as a user would, as a real subprocess started in a directory other than the
checkout (with relative paths); the error paths and the output formats run in-process through
typer's test runner, which calls the same command functions without an interpreter start-up each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from common.cli import app
from common.ml.data import save_npz

pytestmark = pytest.mark.mpc


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> Run:
    """The real console script's module, in a fresh interpreter (in ``cwd``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "common.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def invoke(*args: str | Path) -> Run:
    """The same command in this process (typer's runner; stdout and stderr kept apart)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


def assert_one_line_error(proc: Run, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def local_args(split, *cands: Path | str) -> list[str | Path]:
    args: list[str | Path] = ["local", "--train", split.train, "--test", split.test]
    for c in cands or split.candidates[:2]:
        args += ["--candidate", c]
    return args


def test_help_lists_the_commands() -> None:
    proc = invoke("--help")
    assert proc.returncode == 0
    for command in ("local", "example-data"):
        assert command in proc.stdout


def test_example_data_writes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    proc = invoke("example-data", tmp_path / "split")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "split/model_owner/train.npz").exists()
    assert len(list((tmp_path / "split/data_owner").glob("candidate_*.npz"))) == 10
    assert_one_line_error(invoke("example-data", tmp_path / "split"), "--overwrite")


def test_local_from_another_directory_with_relative_paths(tmp_path: Path) -> None:
    """`cd /data && data-appraisal local --train train.npz ...`: the real console script, started
    in a directory other than the checkout, with paths relative to it. Its JSON is the only stdout.
    """
    here = tmp_path / "elsewhere"
    here.mkdir()
    made = run_cli("example-data", "split", cwd=here)
    assert made.returncode == 0, made.stderr
    args = [
        "local",
        "--train",
        "split/model_owner/train.npz",
        "--test",
        "split/model_owner/test.npz",
    ]
    args += ["--candidate", "split/data_owner/candidate_01.npz", "--json", "--check"]
    proc = run_cli(*args, cwd=here)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["candidate"] for r in rows] == ["candidate_01"]  # the id a data owner would give it
    for r in rows:
        assert r["method"] == "influence"
        assert {"score", "seconds", "bytes_sent", "bytes_received", "rounds", "plaintext"} <= set(r)
        assert abs(r["score"] - r["plaintext"]) <= 0.01 * abs(r["plaintext"])
    assert not Path.cwd().joinpath("split").exists()  # nothing was written in the test's own cwd


def test_local_threshold_json_has_only_the_bit(digits_split) -> None:
    proc = invoke(
        *local_args(digits_split), "--json", "--reveal", "threshold", "--threshold", "-0.3"
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert all(isinstance(r["accept"], bool) and "score" not in r for r in rows)


def test_candidates_with_the_same_file_name_get_distinct_ids(digits_split, tmp_path) -> None:
    other = tmp_path / "again" / digits_split.candidates[0].name
    other.parent.mkdir()
    other.write_bytes(digits_split.candidates[0].read_bytes())
    proc = invoke(*local_args(digits_split, digits_split.candidates[0], other), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["candidate"] for r in rows] == ["candidate_01", "candidate_01.2"]  # in given order
    assert rows[0]["score"] == pytest.approx(rows[1]["score"], rel=1e-3)  # same data, same score


def test_local_chunk_rows_cuts_the_candidate_into_more_chunks(digits_split) -> None:
    """--chunk-rows reaches the job: the same candidate in chunks of 100 rows takes more rounds
    (each chunk runs the softmax's) for the same score, within 1 % of the plaintext twin, and
    fewer again with --softmax-chunks (one softmax for several chunks)."""
    one = digits_split.candidates[0]
    chunked = ["--chunk-rows", "100", "--check"]
    runs = {
        key: json.loads(invoke(*local_args(digits_split, one), "--json", *extra).stdout)[0]
        for key, extra in (
            ("one", ["--check"]),
            ("chunks", chunked),
            ("grouped", [*chunked, "--softmax-chunks", "2"]),
        )
    }
    assert runs["chunks"]["rounds"] > runs["grouped"]["rounds"] > runs["one"]["rounds"]
    for r in runs.values():
        assert abs(r["score"] - r["plaintext"]) <= 0.01 * abs(r["plaintext"])


def test_local_table_output(digits_split) -> None:
    proc = invoke(
        *local_args(digits_split, digits_split.candidates[0]), "--method", "gradient-norm"
    )
    assert proc.returncode == 0, proc.stderr
    assert "candidate_01" in proc.stdout and "gradient-norm" in proc.stdout
    assert "MB sent" in proc.stdout and "MB received" in proc.stdout


def test_insecure_tfp_warns(digits_split) -> None:
    proc = invoke(*local_args(digits_split, digits_split.candidates[0]), "--insecure-tfp", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "INSECURE" in proc.stderr or "insecure" in proc.stderr
    assert len(json.loads(proc.stdout)) == 1


@pytest.fixture()
def bad_files(tmp_path: Path, digits_split) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    X = rng.random((20, 64))
    y = rng.integers(0, 10, 20)
    files = {}
    files["features"] = save_npz(tmp_path / "features.npz", (X[:, :63], y))
    X_nan = X.copy()
    X_nan[3, 5] = np.nan
    files["nan"] = save_npz(tmp_path / "nan.npz", (X_nan, y))
    y_bad = y.copy()
    y_bad[4] = 12
    files["labels"] = save_npz(tmp_path / "labels.npz", (X, y_bad))
    files["empty"] = save_npz(tmp_path / "empty.npz", (np.zeros((0, 64)), np.zeros(0, int)))
    csv = tmp_path / "text.csv"
    header = ",".join(f"f{i}" for i in range(64)) + ",label"
    rows = [",".join(["0.5"] * 64) + ",1", ",".join(["abc"] + ["0.5"] * 63) + ",2"]
    csv.write_text("\n".join([header, *rows]) + "\n")
    files["csv"] = csv
    return files


@pytest.mark.parametrize(
    ("kind", "needles"),
    [
        ("features", ("features.npz", "64 features", "63")),
        ("nan", ("nan.npz", "NaN")),
        ("labels", ("labels.npz", "12")),
        ("empty", ("empty.npz", "empty")),
        ("csv", ("text.csv", "not numeric")),
    ],
)
def test_bad_candidate_is_rejected_before_mpc(kind, needles, bad_files, digits_split) -> None:
    assert_one_line_error(invoke(*local_args(digits_split, bad_files[kind])), *needles)


def test_missing_file(digits_split, tmp_path: Path) -> None:
    assert_one_line_error(invoke(*local_args(digits_split, tmp_path / "nope.npz")), "nope.npz")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--reveal", "threshold"], "--threshold"),
        (["--threshold", "0.5"], "--threshold: τ is only used with reveal 'threshold'"),
        (["--lr", "0"], "--lr"),
        (["--chunk-rows", "0"], "--chunk-rows"),
        (["--softmax-chunks", "0"], "--softmax-chunks"),
    ],
)
def test_bad_options(extra, needle, digits_split) -> None:
    assert_one_line_error(invoke(*local_args(digits_split), *extra), needle)


@pytest.mark.parametrize(
    ("service", "prefix", "port"),
    [
        ("model-owner", "MODEL_OWNER_", 8000),
        ("data-owner", "DATA_OWNER_", 8001),
        ("dealer", "DEALER_", 8002),
    ],
)
def test_serve_help_shows_each_option_s_environment_variable_and_default(
    service: str, prefix: str, port: int
) -> None:
    """Rich markup once swallowed "[env …; default: …]": the help read "Port ." (issue 14)."""
    result = CliRunner().invoke(app, [service, "serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"Port (env {prefix}PORT; default {port})." in result.output
    assert f"Interface to bind (env {prefix}HOST; default 127.0.0.1)." in result.output
    assert f"(env {prefix}DEMO)" in result.output
    health = CliRunner().invoke(app, ["health", "--help"], env={"COLUMNS": "200"})
    assert "(default: its PORT setting, or PID 1's --port)" in health.output
