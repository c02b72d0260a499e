"""Candidates read in row chunks (common.ml.data's streaming readers) and the streamed twins.

The streaming pass must refuse exactly what :func:`load_dataset` refuses, with the same message,
yield exactly the rows it reads, hold a few chunks rather than the whole of X, and the streamed
plaintext twins must give the in-memory twins' values.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import tracemalloc
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.errors import ConfigError, DataError
from common.ml import model
from common.ml.data import (
    DEFAULT_MAX_BYTES,
    Dataset,
    iter_chunks,
    load_dataset,
    open_candidate,
    open_reader,
    save_npz,
    scan_dataset,
)
from common.ml.examples import mnist_like
from common.ml.model import ModelOwnerState
from common.ml.twins import (
    STREAMED_TWINS,
    TWINS,
    plaintext_score,
    streamed_finetune_score,
    streamed_gradient_norm_score,
    streamed_influence_score,
    streamed_score,
)
from common.protocol import JobSpec
from data_owner.registry import Registry
from data_owner.settings import DataOwnerSettings

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _data(n: int = 50, d: int = 7, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, k, size=n)


def write_parquet(
    path: Path,
    X: np.ndarray,
    y: np.ndarray,
    *,
    row_group_size: int | None = None,
    label: str = "label",
) -> Path:
    columns: dict[str, Any] = {f"f{j}": X[:, j] for j in range(X.shape[1])}
    columns[label] = y
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def _error(fn: Callable[[], object]) -> str:
    with pytest.raises(DataError) as info:
        fn()
    return str(info.value)


def _scan_then_iterate(path: Path, rows: int, **kw: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(iter_chunks(path, rows, **kw))


def _forged_npz(path: Path) -> Path:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    labels = io.BytesIO()
    np.save(labels, np.zeros(3, dtype=np.int64))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("X.npy", header.getvalue() + bytes(64))
        z.writestr("y.npy", labels.getvalue())
    return path


# --------------------------------------------------------------------------------------------------
# the same refusals, with the same messages, as load_dataset
# --------------------------------------------------------------------------------------------------

BAD_NPZ: dict[str, Callable[[Path], Path]] = {
    "missing y": lambda p: _savez(p, X=np.zeros((2, 2))),
    "missing both": lambda p: _savez(p, a=np.zeros(1)),
    "1-D X": lambda p: _savez(p, X=np.zeros(4), y=np.zeros(4, dtype=int)),
    "2-D y": lambda p: _savez(p, X=np.zeros((4, 2)), y=np.zeros((4, 1), dtype=int)),
    "rows differ": lambda p: _savez(p, X=np.zeros((4, 2)), y=np.zeros(3, dtype=int)),
    "string X": lambda p: _savez(p, X=np.array([["a"]]), y=np.zeros(1, dtype=int)),
    "string y": lambda p: _savez(p, X=np.zeros((1, 1)), y=np.array(["a"])),
    "fractional label": lambda p: _savez(p, X=np.zeros((2, 2)), y=np.array([1.0, 1.5])),
    "empty": lambda p: _savez(p, X=np.zeros((0, 2)), y=np.zeros(0, dtype=int)),
    "no features": lambda p: _savez(p, X=np.zeros((3, 0)), y=np.zeros(3, dtype=int)),
    "negative label": lambda p: _savez(p, X=np.zeros((3, 2)), y=np.array([0, -1, 0])),
    "NaN late": lambda p: _savez(p, X=_with(np.zeros((9000, 3)), (8999, 2), np.nan), y=_y(9000)),
    "inf": lambda p: _savez(p, X=_with(np.zeros((5, 11)), (3, 10), -np.inf), y=_y(5)),
    "too large": lambda p: _savez(p, X=_with(np.zeros((5, 3)), (4, 1), 1e300), y=_y(5)),
    "object X": lambda p: _savez(p, X=np.array([[1, "a"]], dtype=object), y=_y(1)),
    "not an archive": lambda p: _write(p, b"hello, I am text\n"),
    "a single array": lambda p: _npy(p),
    "empty file": lambda p: _write(p, b""),
    "junk zip": lambda p: _write(p, b"PK\x03\x04junk"),
    "truncated": lambda p: _truncated(p),
    "forged header": _forged_npz,
    "compressed expands": lambda p: _savez(
        p, compressed=True, X=np.zeros((20_000, 50)), y=np.zeros(20_000, dtype=int)
    ),
}


def _savez(path: Path, compressed: bool = False, **arrays: Any) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _with(X: np.ndarray, where: tuple[int, int], value: float) -> np.ndarray:
    X[where] = value
    return X


def _y(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.int64)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npy(path: Path) -> Path:
    with path.open("wb") as handle:
        np.save(handle, np.zeros((2, 2)))
    return path


def _truncated(path: Path) -> Path:
    save_npz(path, _data())
    data = path.read_bytes()
    return _write(path, data[: len(data) // 2])


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_streaming_refuses_what_load_dataset_refuses_with_its_message(
    tmp_path: Path, case: str
) -> None:
    path = BAD_NPZ[case](tmp_path / "x.npz")
    kw = {"max_bytes": 1_000_000}
    expected = _error(lambda: load_dataset(path, **kw))
    assert _error(lambda: scan_dataset(path, rows=1000, **kw)) == expected
    assert _error(lambda: _scan_then_iterate(path, 1000, **kw)) == expected


def test_streaming_checks_metadata_with_load_datasets_messages(tmp_path: Path) -> None:
    X, y = np.zeros((7, 63)), np.array([0, 1, 2, 3, 4, 12, 0])
    path = save_npz(tmp_path / "train.npz", (X, y))
    for kw in ({"n_features": 64}, {"n_classes": 10}):
        expected = _error(lambda kw=kw: load_dataset(path, **kw))
        assert _error(lambda kw=kw: scan_dataset(path, rows=2, **kw)) == expected
    with pytest.raises(ConfigError, match="n_classes must be a positive integer"):
        scan_dataset(path, n_classes=0)
    with pytest.raises(ConfigError, match="rows must be a positive integer"):
        list(iter_chunks(path, 0))


def test_a_bad_row_in_a_later_chunk_is_named_by_its_row_in_the_file(tmp_path: Path) -> None:
    X, y = _data(n=10_000)
    y[9_500] = 7
    path = save_npz(tmp_path / "x.npz", (X, y))
    seen = []
    with pytest.raises(
        DataError, match=r"x\.npz: labels must be integers in 0\.\.3, found 7 \(row 9500\)"
    ):
        for X_chunk, _ in iter_chunks(path, 1000, n_classes=4):
            seen.append(len(X_chunk))
    assert seen == [1000] * 9  # the chunk holding the bad row is never handed out


# --------------------------------------------------------------------------------------------------
# the chunks are the file's rows
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout", ["npz", "npz-compressed", "npz-fortran", "npz-big-endian", "parquet", "csv"]
)
@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
def test_chunks_concatenate_to_the_data_set(tmp_path: Path, layout: str, rows: int) -> None:
    X, y = _data(n=333, d=5)
    if layout == "npz":
        path = save_npz(tmp_path / "x.npz", (X, y))
    elif layout == "npz-compressed":
        path = _savez(tmp_path / "x.npz", compressed=True, X=X, y=y.astype(np.uint8))
    elif layout == "npz-fortran":
        path = _savez(tmp_path / "x.npz", X=np.asfortranarray(X), y=y.astype(float))
    elif layout == "npz-big-endian":
        path = _savez(tmp_path / "x.npz", X=X.astype(">f4"), y=y.astype(">i2"))
        X = X.astype(np.float32).astype(np.float64)
    elif layout == "parquet":
        path = write_parquet(tmp_path / "x.parquet", X, y, row_group_size=50)
    else:
        path = tmp_path / "x.csv"
        np.savetxt(
            path,
            np.column_stack([X, y]),
            delimiter=",",
            header="a,b,c,d,e,label",
            comments="",
            fmt="%.17g",
        )
    chunks = list(iter_chunks(path, rows))
    sizes = [len(c[1]) for c in chunks]
    assert sizes == [rows] * (333 // rows) + ([333 % rows] if 333 % rows else [])
    for X_chunk, y_chunk in chunks:
        assert X_chunk.dtype == np.float64 and y_chunk.dtype == np.int64
        assert X_chunk.shape[1] == 5
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), X)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), y)
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.X, X)
    info = scan_dataset(path, rows=rows)
    assert (info.n_samples, info.n_features, info.n_classes) == (333, 5, int(y.max()) + 1)
    assert info.max_abs == float(np.abs(X).max())
    assert info.feature_bound == model.feature_bound(X)


def test_open_reader_knows_the_shape_before_reading_rows(tmp_path: Path) -> None:
    X, y = _data(n=40, d=3)
    for path in (save_npz(tmp_path / "a.npz", (X, y)), write_parquet(tmp_path / "a.parquet", X, y)):
        with open_reader(path) as reader:
            assert (reader.n_samples, reader.n_features) == (40, 3)


# --------------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------------


def test_parquet_named_label_column_anywhere(tmp_path: Path) -> None:
    X, y = _data(n=20, d=3)
    table = pa.table({"target": y, "a": X[:, 0], "b": X[:, 1], "c": X[:, 2]})
    pq.write_table(table, tmp_path / "x.parquet")
    ds = load_dataset(tmp_path / "x.parquet", label_column="target")
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)
    with pytest.raises(DataError, match=r"label column 'label' not found in the header"):
        scan_dataset(tmp_path / "x.parquet", label_column="label")


def test_parquet_accepts_integer_boolean_and_float32_features(tmp_path: Path) -> None:
    table = pa.table(
        {
            "i": pa.array([1, -2, 3], pa.int16()),
            "b": pa.array([True, False, True]),
            "f": pa.array([0.5, 1.5, -2.0], pa.float32()),
            "label": pa.array([0.0, 2.0, 1.0]),
        }
    )
    pq.write_table(table, tmp_path / "x.parquet")
    ds = load_dataset(tmp_path / "x.parquet")
    np.testing.assert_array_equal(ds.X, [[1, 1, 0.5], [-2, 0, 1.5], [3, 1, -2.0]])
    np.testing.assert_array_equal(ds.y, [0, 2, 1])


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            pa.table({"a": ["x", "y"], "label": [0, 1]}),
            r"x\.parquet: column 'a' has type string \(expected numeric feature columns\)",
        ),
        (
            pa.table({"a": [1.0, 2.0], "label": ["0", "1"]}),
            r"x\.parquet: column 'label' has type string \(expected an integer",
        ),
        (
            pa.table({"a": [1.0, None, 3.0], "label": [0, 1, 2]}),
            r"x\.parquet: column 'a' has a missing value \(row 1\)",
        ),
        (
            pa.table({"a": [1.0, 2.0, 3.0], "label": [0, None, 2]}),
            r"x\.parquet: column 'label' has a missing value \(row 1\)",
        ),
        (
            pa.table({"a": [1.0, 2.0], "label": [0.0, 0.5]}),
            r"x\.parquet: labels must be integers, found 0\.5 \(row 1\)",
        ),
        (
            pa.table({"a": [1.0, float("nan")], "label": [0, 1]}),
            r"x\.parquet: X contains NaN or inf \(row 1, column 0: nan\)",
        ),
        (pa.table({"label": [0, 1]}), r"x\.parquet: the header has 1 column\(s\)"),
        (
            pa.table({"a": pa.array([], pa.float64()), "label": pa.array([], pa.int64())}),
            r"x\.parquet: the data set is empty",
        ),
    ],
)
def test_parquet_errors(tmp_path: Path, table: pa.Table, message: str) -> None:
    pq.write_table(table, tmp_path / "x.parquet")
    for read in (load_dataset, scan_dataset, lambda p: list(iter_chunks(p))):
        with pytest.raises(DataError, match=message):
            read(tmp_path / "x.parquet")


def test_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError, match=r"x\.parquet: not a valid Parquet file"):
        scan_dataset(tmp_path / "x.parquet")


def test_parquet_limited_by_its_expanded_size(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "x.parquet", np.zeros((20_000, 4)), np.zeros(20_000, int))
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match=r"x\.parquet: columns expand to .*limit of 97\.7 KiB"):
        scan_dataset(path, max_bytes=100_000)


# --------------------------------------------------------------------------------------------------
# bounded memory
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout", ["npz", "npz-compressed", "parquet", "parquet-one-row-group", "csv"]
)
def test_a_streaming_pass_holds_a_few_chunks_not_the_data_set(tmp_path: Path, layout: str) -> None:
    """X is 24 MB (CSV 3.2 MB); the pass (chunks of 0.4 MB, CSV 8 kB) holds an eighth of it.

    The features are pixel-like (k/255), as image and most tabular columns are: Parquet's
    dictionary pages then stay small. Arrow holds the current page of every column (pyarrow writes
    pages of at most 1 MB, and a column of distinct floats keeps a dictionary page of up to 1 MB):
    memory per column, bounded whatever n and the row-group size are.
    """
    # CSV is slow to write and parse, and a chunk is held as Python strings first: fewer columns
    n, d, rows = (40_000, 10, 100) if layout == "csv" else (60_000, 50, 1000)
    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 256, size=(n, d)) / 255.0, rng.integers(0, 10, size=n)
    if layout.startswith("parquet"):
        groups = None if layout == "parquet-one-row-group" else 10_000
        path = write_parquet(tmp_path / "x.parquet", X, y, row_group_size=groups)
        if groups is None:
            assert pq.ParquetFile(path).metadata.num_row_groups == 1
    elif layout == "csv":
        path = tmp_path / "x.csv"
        header = ",".join(f"f{j}" for j in range(d)) + ",label"
        np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="")
    else:
        path = _savez(tmp_path / "x.npz", compressed=layout == "npz-compressed", X=X, y=y)
    del X, y
    arrow_peak = 0
    tracemalloc.start()
    try:
        for _ in iter_chunks(path, rows):
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data_bytes = n * d * 8
    assert peak < data_bytes / 8, f"the pass held {peak} bytes of Python/numpy memory"
    assert arrow_peak < data_bytes / 4, f"the pass held {arrow_peak} bytes of Arrow memory"


# --------------------------------------------------------------------------------------------------
# open_candidate: the MPC side's entry point
# --------------------------------------------------------------------------------------------------


def test_open_candidate_checks_the_session_and_yields_chunks_with_bias(tmp_path: Path) -> None:
    X, y = _data(n=100, d=6)
    X = np.clip(X, -1.9, 1.9)
    path = write_parquet(tmp_path / "c.parquet", X, y, row_group_size=30)
    cand = open_candidate(
        path, n_features=6, n_classes=4, n_samples=100, feature_bound=2.0, rows=32
    )
    assert (cand.info.n_samples, cand.info.n_features) == (100, 6)
    for _ in range(2):  # every call is a new pass
        chunks = list(cand.chunks(bias=True))
        assert [len(c[1]) for c in chunks] == [32, 32, 32, 4]
        Xb = np.concatenate([c[0] for c in chunks])
        np.testing.assert_array_equal(Xb, model.add_bias(X))
        np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), y)
    with pytest.raises(
        DataError, match=r"c\.parquet: a feature has \|x\| = 1\.9, above the agreed feature bound 1"
    ):
        open_candidate(path, n_features=6, n_classes=4, feature_bound=1.0)
    with pytest.raises(
        ConfigError, match=r"c\.parquet: has 100 samples, the agreed metadata says 99"
    ):
        open_candidate(path, n_features=6, n_classes=4, n_samples=99)
    with pytest.raises(DataError, match=r"c\.parquet: expected 5 features, found 6"):
        open_candidate(path, n_features=5, n_classes=4)


def test_a_candidate_that_changes_after_validation_is_refused(tmp_path: Path) -> None:
    X, y = _data(n=100, d=6)
    path = save_npz(tmp_path / "c.npz", (X, y))
    cand = open_candidate(path, n_features=6, n_classes=4)
    X[50, 3] = np.nan
    save_npz(path, (X, y))
    with pytest.raises(DataError, match=r"c\.npz: the file changed after it was validated"):
        list(cand.chunks())


# --------------------------------------------------------------------------------------------------
# streamed twins == in-memory twins, at 6,000 x 785 x 10
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    train, test, cand = mnist_like(n_candidate=6000, n_train=600, n_test=1000, seed=2)
    rng = np.random.default_rng(5)
    theta = rng.normal(scale=0.05, size=(785, 10))
    v = rng.normal(scale=0.01, size=(785, 10))
    state = ModelOwnerState(theta=theta, v=v, test_loss=0.0, l2=1.0)
    directory = tmp_path_factory.mktemp("stream")
    files = {
        "npz": save_npz(directory / "c.npz", cand),
        "parquet": write_parquet(directory / "c.parquet", cand.X, cand.y, row_group_size=1000),
    }
    return {"train": train, "test": test, "cand": cand, "state": state, "files": files}


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_streamed_gradient_twins_equal_the_in_memory_twins(
    mnist_case: dict[str, Any], fmt: str
) -> None:
    state, cand, path = mnist_case["state"], mnist_case["cand"], mnist_case["files"][fmt]
    assert cand.X.shape == (6000, 784)
    plain_inf = model.influence_score(state, cand.X, cand.y)
    plain_norm = model.gradient_norm_score(state.theta, cand.X, cand.y)
    for rows in (513, 4096):
        inf = streamed_influence_score(state, iter_chunks(path, rows, n_features=784, n_classes=10))
        norm = streamed_gradient_norm_score(state.theta, iter_chunks(path, rows))
        assert _relative(inf, plain_inf) < 1e-9, (inf, plain_inf)
        assert _relative(norm, plain_norm) < 1e-9, (norm, plain_norm)


@pytest.mark.parametrize("batch_size", [None, 1700])
def test_streamed_finetune_equals_the_in_memory_twin(
    mnist_case: dict[str, Any], batch_size: int | None
) -> None:
    """Full batch (from the file) and public minibatches that mix D_tr and the candidate (from
    uneven in-memory chunks, so that batches cut across chunk borders); 16 steps."""
    train, test, state = mnist_case["train"], mnist_case["test"], mnist_case["state"]
    cand, path = mnist_case["cand"], mnist_case["files"]["npz"]
    kw: dict[str, Any] = {"steps": 16, "lr": 0.1, "batch_size": batch_size}
    plain = model.finetune_score(state, train.X, train.y, cand.X, cand.y, test.X, test.y, **kw)

    def chunks() -> Any:
        if batch_size is None:
            return iter_chunks(path, 2000)
        cuts = [0, 1, 1500, 1501, 4444, 6000]
        return ((cand.X[a:b], cand.y[a:b]) for a, b in itertools.pairwise(cuts))

    streamed = streamed_finetune_score(state, train, test, chunks, n_candidate=6000, **kw)
    assert _relative(streamed, plain) < 1e-9, (streamed, plain)


@pytest.mark.parametrize("method", sorted(TWINS))
def test_streamed_score_agrees_with_plaintext_score_for_every_method(
    mnist_case: dict[str, Any], method: str
) -> None:
    assert set(STREAMED_TWINS) == set(TWINS)
    train, test, state, cand = (mnist_case[k] for k in ("train", "test", "state", "cand"))
    small = Dataset(X=cand.X[:1500], y=cand.y[:1500], source="first 1500 rows")
    job = JobSpec.model_construct(method=method, steps=4, lr=0.1, batch_size=None)
    expected = plaintext_score(job, state, train, test, small)

    def chunks() -> Any:
        return ((small.X[i : i + 400], small.y[i : i + 400]) for i in range(0, 1500, 400))

    assert _relative(streamed_score(job, state, train, test, chunks), expected) < 1e-9


# --------------------------------------------------------------------------------------------------
# the data owner's registry
# --------------------------------------------------------------------------------------------------


def _registry(data_dir: Path) -> Registry:
    settings = SimpleNamespace(data_dir=data_dir, label_encoding="integer")
    return Registry(cast(DataOwnerSettings, settings))


def test_registry_serves_parquet_and_npz_files_described_by_the_streaming_pass(
    tmp_path: Path,
) -> None:
    X, y = _data(n=300, d=5)
    X[7, 2] = 3.5  # the feature bound is 4
    write_parquet(tmp_path / "p.parquet", X, y, row_group_size=64)
    save_npz(tmp_path / "n.npz", (X, y))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    registry = _registry(tmp_path)
    assert sorted(registry.meta) == ["n", "p"]
    for name in ("n", "p"):
        meta = registry.get(name)
        assert (meta.n_samples, meta.n_features, meta.n_classes) == (300, 5, int(y.max()) + 1)
        assert meta.feature_bound == 4.0 == model.feature_bound(X)


def test_registry_accepts_a_parquet_upload_and_refuses_a_bad_one(tmp_path: Path) -> None:
    X, y = _data(n=200, d=4)
    good = io.BytesIO()
    pq.write_table(
        pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "d": X[:, 3], "label": y}), good
    )
    bad = io.BytesIO()
    pq.write_table(pa.table({"a": [1.0, None], "label": [0, 1]}), bad)
    registry = _registry(tmp_path)

    async def body(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    meta = asyncio.run(registry.add("up", ".parquet", body(good.getvalue())))
    assert (meta.n_samples, meta.n_features, meta.name) == (200, 4, "up.parquet")
    assert (tmp_path / "up.parquet").is_file()
    with pytest.raises(DataError, match=r"column 'a' has a missing value \(row 1\)"):
        asyncio.run(registry.add("bad", ".parquet", body(bad.getvalue())))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up.parquet"]
    assert DEFAULT_MAX_BYTES == 2 * 1024**3
