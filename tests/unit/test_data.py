"""Tests of common.ml.data and common.ml.examples: loading, validation, saving and the generated data sets."""

from __future__ import annotations

import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.datasets import load_digits

from common.errors import AppraisalError, ConfigError, DataError
from common.ml.data import (
    DEFAULT_MAX_BYTES,
    MAX_FEATURE_MAGNITUDE,
    Dataset,
    load_dataset,
    save_npz,
    scan_dataset,
    validate_dataset,
)
from common.ml.examples import (
    DIGITS_FEATURE_ENCODING,
    ExampleSplit,
    load_torchvision,
    mnist_like,
    write_example_data,
)

# --------------------------------------------------------------------------------------------------
# helpers and fixtures
# --------------------------------------------------------------------------------------------------


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _small(n: int = 6, d: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, 4, size=n)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> ExampleSplit:
    return write_example_data(tmp_path_factory.mktemp("example"), seed=3)


@pytest.fixture(scope="module")
def mnist_sets() -> tuple[Dataset, Dataset, Dataset]:
    return mnist_like(n_candidate=300, n_train=50, n_test=80, seed=1)


@pytest.fixture(scope="module")
def digits_label_of() -> dict[bytes, set[int]]:
    """Map each scaled digits image (as bytes) to the set of its true labels."""
    bunch = load_digits()
    labels: dict[bytes, set[int]] = {}
    for row, label in zip(
        np.asarray(bunch.data, dtype=np.float64) / 16.0, bunch.target, strict=True
    ):
        labels.setdefault(row.tobytes(), set()).add(int(label))
    return labels


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


def test_dataset_converts_dtypes_and_reports_shape() -> None:
    ds = Dataset(X=np.arange(6, dtype=np.int32).reshape(3, 2), y=np.array([0.0, 2.0, 1.0]))
    assert ds.X.dtype == np.float64 and ds.y.dtype == np.int64
    assert (ds.n_samples, ds.n_features) == (3, 2)
    assert ds.y.tolist() == [0, 2, 1]
    assert ds.source == "in-memory data"


def test_dataset_does_not_copy_arrays_of_the_right_dtype() -> None:
    X, y = np.zeros((2, 2)), np.array([0, 1], dtype=np.int64)
    ds = Dataset(X=X, y=y, source="s")
    assert ds.X is X and ds.y is y


def test_dataset_is_frozen() -> None:
    ds = Dataset(X=np.zeros((1, 1)), y=np.zeros(1, dtype=np.int64))
    with pytest.raises(AttributeError):
        ds.source = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.zeros(3), np.zeros(3, dtype=int), r"mem: X must be a 2-D array .*found shape \(3,\)"),
        (np.zeros((3, 2)), np.zeros((3, 1), dtype=int), r"mem: y must be a 1-D array"),
        (np.zeros((3, 2)), np.zeros(2, dtype=int), r"mem: X has 3 rows but y has 2 labels"),
        (np.array([["a", "b"]]), np.zeros(1, dtype=int), r"mem: X must hold real numbers"),
        (np.zeros((2, 2), dtype=complex), np.zeros(2, dtype=int), r"X must hold real numbers"),
        (
            np.zeros((2, 1)),
            np.array([0.0, 1.5]),
            r"mem: labels must be integers, found 1\.5 \(row 1\)",
        ),
        (
            np.zeros((2, 1)),
            np.array([np.nan, 1.0]),
            r"labels must be integers, found nan \(row 0\)",
        ),
        (np.zeros((1, 1)), np.array(["cat"]), r"mem: labels must be integers, found dtype <U3"),
        (np.zeros((1, 1)), np.array([2**64 - 1], dtype=np.uint64), r"int64 range"),
    ],
)
def test_dataset_rejects_bad_structure(X: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        Dataset(X=X, y=y, source="mem")


def test_data_error_is_an_appraisal_error() -> None:
    with pytest.raises(AppraisalError):
        Dataset(X=np.zeros(1), y=np.zeros(1, dtype=int))


# --------------------------------------------------------------------------------------------------
# validate_dataset
# --------------------------------------------------------------------------------------------------


def test_validate_accepts_matching_metadata() -> None:
    ds = Dataset(X=np.zeros((3, 4)), y=np.array([0, 9, 5]), source="ok")
    validate_dataset(ds, n_features=4, n_classes=10)
    validate_dataset(ds)


@pytest.mark.parametrize(
    ("X", "y", "kwargs", "message"),
    [
        (np.zeros((0, 4)), np.zeros(0, dtype=int), {}, r"^mem: the data set is empty"),
        (np.zeros((2, 0)), np.zeros(2, dtype=int), {}, r"^mem: the data set has no features"),
        (
            np.zeros((2, 63)),
            np.zeros(2, dtype=int),
            {"n_features": 64},
            r"^mem: expected 64 features, found 63$",
        ),
        (
            np.zeros((2, 2)),
            np.array([0, 10]),
            {"n_classes": 10},
            r"^mem: labels must be integers in 0\.\.9, found 10 \(row 1\)$",
        ),
        (
            np.zeros((2, 2)),
            np.array([-1, 0]),
            {"n_classes": 10},
            r"labels must be integers in 0\.\.9, found -1 \(row 0\)",
        ),
        (
            np.zeros((2, 2)),
            np.array([0, -3]),
            {},
            r"^mem: labels must be non-negative integers, found -3 \(row 1\)$",
        ),
    ],
)
def test_validate_rejects_metadata_mismatch(
    X: np.ndarray, y: np.ndarray, kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        validate_dataset(Dataset(X=X, y=y, source="mem"), **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_names_the_first_non_finite_cell(bad: float) -> None:
    X = np.zeros((5, 12))
    X[3, 10] = bad
    X[4, 0] = bad
    with pytest.raises(
        DataError, match=r"^mem: X contains NaN or inf \(row 3, column 10: (nan|inf|-inf)\)"
    ):
        validate_dataset(Dataset(X=X, y=np.zeros(5, dtype=int), source="mem"))


@pytest.mark.parametrize("kwargs", [{"n_features": 0}, {"n_classes": -1}, {"n_classes": 2.5}])
def test_validate_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    ds = Dataset(X=np.zeros((1, 1)), y=np.zeros(1, dtype=int))
    with pytest.raises(ConfigError, match="must be a positive integer"):
        validate_dataset(ds, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# npz round trip and errors
# --------------------------------------------------------------------------------------------------


def test_npz_round_trip_from_pair(tmp_path: Path) -> None:
    X, y = _small()
    written = save_npz(tmp_path / "sub" / "d.npz", (X.astype(np.float32), y.astype(np.int32)))
    assert written == tmp_path / "sub" / "d.npz"
    ds = load_dataset(written, n_features=3, n_classes=4)
    assert ds.X.dtype == np.float64 and ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.X, X.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(ds.y, y)
    assert ds.source == str(written)
    with np.load(written) as raw:
        assert sorted(raw.files) == ["X", "y"]
        assert raw["X"].dtype == np.float64 and raw["y"].dtype == np.int64


def test_npz_round_trip_from_dataset_and_str_path(tmp_path: Path) -> None:
    X, y = _small(seed=1)
    save_npz(str(tmp_path / "d.npz"), Dataset(X=X, y=y, source="mem"))
    ds = load_dataset(str(tmp_path / "d.npz"))
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_npz_accepts_integer_valued_float_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "f.npz", X=np.zeros((3, 2)), y=np.array([0.0, 1.0, 2.0]))
    assert load_dataset(tmp_path / "f.npz").y.tolist() == [0, 1, 2]


def test_save_npz_refuses_other_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"out\.csv: expected a path ending in \.npz"):
        save_npz(tmp_path / "out.csv", _small())


def test_save_npz_refuses_invalid_pair(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"bad\.npz: X has 2 rows but y has 3 labels"):
        save_npz(tmp_path / "bad.npz", (np.zeros((2, 2)), np.zeros(3, dtype=int)))
    assert not (tmp_path / "bad.npz").exists()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"X": np.zeros((2, 2))},
            r"x\.npz: missing array 'y' \(found: 'X'; expected arrays 'X' and 'y'\)",
        ),
        ({"a": np.zeros(1)}, r"x\.npz: missing array 'X' and 'y' \(found: 'a'"),
        (
            {"X": np.zeros(4), "y": np.zeros(4, dtype=int)},
            r"x\.npz: X must be a 2-D array .*found shape \(4,\)",
        ),
        (
            {"X": np.zeros((4, 2)), "y": np.zeros(3, dtype=int)},
            r"x\.npz: X has 4 rows but y has 3 labels",
        ),
        (
            {"X": np.zeros((2, 2)), "y": np.array([1.0, 1.5])},
            r"x\.npz: labels must be integers, found 1\.5 \(row 1\)",
        ),
        ({"X": np.zeros((0, 2)), "y": np.zeros(0, dtype=int)}, r"x\.npz: the data set is empty"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "x.npz", **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=message) as info:
        load_dataset(tmp_path / "x.npz")
    with pytest.raises(DataError) as streamed:  # the streaming pass: the same message
        scan_dataset(tmp_path / "x.npz", rows=1)
    assert str(streamed.value) == str(info.value)


def test_npz_metadata_errors(tmp_path: Path) -> None:
    y = np.array([0, 1, 2, 3, 4, 12, 0])
    X = np.zeros((7, 63))
    save_npz(tmp_path / "train.npz", (X, y))
    with pytest.raises(DataError, match=r"train\.npz: expected 64 features, found 63"):
        load_dataset(tmp_path / "train.npz", n_features=64)
    with pytest.raises(
        DataError, match=r"train\.npz: labels must be integers in 0\.\.9, found 12 \(row 5\)"
    ):
        load_dataset(tmp_path / "train.npz", n_classes=10)


def test_npz_non_finite(tmp_path: Path) -> None:
    X = np.zeros((5, 11))
    X[3, 10] = np.nan
    save_npz(tmp_path / "x.npz", (X, np.zeros(5, dtype=int)))
    with pytest.raises(
        DataError, match=r"x\.npz: X contains NaN or inf \(row 3, column 10: (nan|inf|-inf)\)"
    ):
        load_dataset(tmp_path / "x.npz")


def test_npz_object_array_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", X=np.array([[1, "a"]], dtype=object), y=np.zeros(1, dtype=int))
    with pytest.raises(DataError, match=r"x\.npz: array 'X' could not be read .*object arrays"):
        load_dataset(tmp_path / "x.npz")


def test_npz_that_is_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_text("hello, I am text\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.npz: not a valid \.npz archive"):
        load_dataset(tmp_path / "x.npz")


def test_npz_holding_a_single_npy_array(tmp_path: Path) -> None:
    with (tmp_path / "x.npz").open("wb") as handle:
        np.save(handle, np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"x\.npz: holds a single array, not a \.npz archive"):
        load_dataset(tmp_path / "x.npz")


def test_npz_truncated_archive(tmp_path: Path) -> None:
    save_npz(tmp_path / "full.npz", _small(n=50))
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "x.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"x\.npz: not a valid \.npz archive"):
        load_dataset(tmp_path / "x.npz")


def test_npz_label_column_is_refused(tmp_path: Path) -> None:
    save_npz(tmp_path / "x.npz", _small())
    with pytest.raises(
        DataError, match=r"x\.npz: label_column applies only to \.csv and \.parquet files"
    ):
        load_dataset(tmp_path / "x.npz", label_column="label")


def test_npz_compressed_arrays_are_limited_by_their_expanded_size(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "x.npz", X=np.zeros((2000, 50)), y=np.zeros(2000, dtype=int))
    size = (tmp_path / "x.npz").stat().st_size
    assert size < 100_000
    with pytest.raises(
        DataError, match=r"x\.npz: arrays 'X' and 'y' expand to .*limit of 97\.7 KiB"
    ):
        load_dataset(tmp_path / "x.npz", max_bytes=100_000)


# --------------------------------------------------------------------------------------------------
# file-level errors
# --------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere\.npz: file not found"):
        load_dataset(tmp_path / "nowhere.npz")


@pytest.mark.parametrize("name", ["data.txt", "data.feather", "data"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("1,2\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=rf"{name}: unknown file type .*\(expected \.npz, \.parquet or \.csv\)"
    ):
        load_dataset(tmp_path / name)


def test_uppercase_extension_is_accepted(tmp_path: Path) -> None:
    _write_csv(tmp_path / "D.CSV", "a,label\n1,0\n")
    assert load_dataset(tmp_path / "D.CSV").n_samples == 1


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(DataError, match=r"dir\.npz: is a directory"):
        load_dataset(tmp_path / "dir.npz")


def test_file_larger_than_max_bytes_is_refused_before_reading(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "big.csv", "a,label\n" + "1,0\n" * 1000)  # 4008 bytes
    with pytest.raises(
        DataError,
        match=r"big\.csv: the file is 3\.9 KiB \(4008 bytes\), larger than the limit of 1000 bytes",
    ):
        load_dataset(path, max_bytes=1000)
    assert load_dataset(path, max_bytes=4008).n_samples == 1000
    assert DEFAULT_MAX_BYTES == 2 * 1024**3


def test_max_bytes_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_bytes must be a positive integer"):
        load_dataset(tmp_path / "x.npz", max_bytes=0)


# --------------------------------------------------------------------------------------------------
# CSV round trip and errors
# --------------------------------------------------------------------------------------------------


def test_csv_default_label_is_last_column(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", "f1,f2,label\n0.5,1e-3,2\n-1,3,0\n\n7.25, 8 ,1\n")
    ds = load_dataset(path, n_features=2, n_classes=3)
    np.testing.assert_array_equal(ds.X, [[0.5, 1e-3], [-1.0, 3.0], [7.25, 8.0]])
    assert ds.y.tolist() == [2, 0, 1]
    assert ds.y.dtype == np.int64
    assert ds.source == str(path)


def test_csv_named_label_column(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", "f1, digit ,f2\n1,3,2\n4,0.0,5\n")
    ds = load_dataset(path, label_column="digit")
    np.testing.assert_array_equal(ds.X, [[1.0, 2.0], [4.0, 5.0]])
    assert ds.y.tolist() == [3, 0]


def test_csv_with_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b,label\r\n1,2,1\r\n")
    ds = load_dataset(path, label_column="a")
    assert ds.y.tolist() == [1]
    np.testing.assert_array_equal(ds.X, [[2.0, 1.0]])


def test_csv_round_trip_matches_npz(tmp_path: Path) -> None:
    X, y = _small(n=20, d=5, seed=7)
    lines = ["p0,p1,p2,p3,p4,y"] + [
        ",".join(repr(float(v)) for v in row) + f",{label}" for row, label in zip(X, y, strict=True)
    ]
    ds = load_dataset(_write_csv(tmp_path / "d.csv", "\n".join(lines) + "\n"))
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, r"x\.csv: the file is empty \(expected a header row\)"),
        ("label\n1\n", {}, r"x\.csv: the header has 1 column\(s\)"),
        (
            "a,b,label\n1,2,0\n",
            {"label_column": "target"},
            r"x\.csv: label column 'target' not found in the header "
            r"\(available columns: 'a', 'b', 'label'\)",
        ),
        (
            "a,label,label\n1,2,0\n",
            {"label_column": "label"},
            r"x\.csv: label column 'label' appears 2 times",
        ),
        ("a,b,label\n1,2,0\n1,2\n", {}, r"x\.csv: line 3 has 2 field\(s\), expected 3"),
        ("a,b,label\n1,2,0,9\n", {}, r"x\.csv: line 2 has 4 field\(s\), expected 3"),
        (
            "a,b,pixel3,label\n" + "1,2,3,0\n" * 7 + "1,2,abc,0\n",
            {},
            r"x\.csv: column 'pixel3' is not numeric \(row 7, line 9: 'abc'\)",
        ),
        ("a,label\n1,\n", {}, r"x\.csv: column 'label' is not numeric \(row 0, line 2: ''\)"),
        ("a,label\n1,cat\n", {}, r"x\.csv: column 'label' is not numeric \(row 0, line 2: 'cat'\)"),
        (
            "a,b,label\n1,2,0\n1,nan,0\n",
            {},
            r"x\.csv: column 'b' is not a finite number \(row 1, line 3: 'nan'\)",
        ),
        ("a,label\n-inf,0\n", {}, r"x\.csv: column 'a' is not a finite number"),
        ("a,label\n1,1.5\n", {}, r"x\.csv: labels must be integers, found 1\.5 \(row 0\)"),
        (
            "a,label\n1,12\n",
            {"n_classes": 10},
            r"x\.csv: labels must be integers in 0\.\.9, found 12",
        ),
        ("a,b,label\n1,2,0\n", {"n_features": 64}, r"x\.csv: expected 64 features, found 2"),
        ("a,b,label\n\n", {}, r"x\.csv: the data set is empty"),
        ('a,label\n"1,0\n', {}, r"x\.csv: line 2 has 1 field\(s\)|x\.csv: malformed CSV"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, kwargs: dict[str, object], message: str) -> None:
    path = _write_csv(tmp_path / "x.csv", text)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(path, **kwargs)  # type: ignore[arg-type]
    # the streaming pass, in chunks of 2 rows, refuses it with the same message
    with pytest.raises(DataError) as streamed:
        scan_dataset(path, rows=2, **kwargs)  # type: ignore[arg-type]
    assert str(streamed.value) == str(info.value)


def test_csv_long_header_is_abbreviated_in_messages(tmp_path: Path) -> None:
    header = ",".join(f"p{i}" for i in range(784)) + ",label"
    path = _write_csv(tmp_path / "x.csv", header + "\n")
    with pytest.raises(DataError, match=r"'p19', \.\.\. \(785 columns in all\)\)$"):
        load_dataset(path, label_column="digit")


def test_csv_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes(b"a,label\n\xff\xfe,0\n")
    with pytest.raises(DataError, match=r"x\.csv: not a UTF-8 text file"):
        load_dataset(tmp_path / "x.csv")


# --------------------------------------------------------------------------------------------------
# property: save_npz / load_dataset round-trip exactly
# --------------------------------------------------------------------------------------------------


@st.composite
def _datasets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 8))
    X = draw(
        hnp.arrays(
            np.float64,
            (n, d),
            elements=st.floats(-MAX_FEATURE_MAGNITUDE, MAX_FEATURE_MAGNITUDE, width=64),
        )
    )
    y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2**40)))
    return X, y


@settings(max_examples=60, deadline=None, database=None)
@given(_datasets())
def test_npz_round_trip_is_exact(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset(save_npz(Path(tmp) / "h.npz", (X, y)), n_features=X.shape[1])
    assert ds.X.tobytes() == X.tobytes()  # bit-exact, including -0.0 and subnormals
    assert ds.y.tobytes() == y.tobytes()


@pytest.mark.parametrize("value", [np.nextafter(MAX_FEATURE_MAGNITUDE, np.inf), -1e308])
def test_features_beyond_the_largest_magnitude_are_refused(tmp_path: Path, value: float) -> None:
    X = np.ones((3, 2))
    X[2, 1] = value
    with pytest.raises(DataError, match=r"row 2, column 1.*too large|too large.*row 2, column 1"):
        load_dataset(save_npz(tmp_path / "big.npz", (X, np.zeros(3, dtype=int))))


# --------------------------------------------------------------------------------------------------
# example data
# --------------------------------------------------------------------------------------------------


def test_example_layout_and_metadata(example: ExampleSplit) -> None:
    root = example.directory
    assert example.train == root / "model_owner" / "train.npz"
    assert example.test == root / "model_owner" / "test.npz"
    assert [p.name for p in example.candidates] == [f"candidate_{p:02d}.npz" for p in range(1, 11)]
    assert all(p.parent == root / "data_owner" for p in example.candidates)
    assert example.flip_probabilities == tuple(p / 10 for p in range(1, 11))
    readme = example.readme.read_text(encoding="utf-8")
    assert "every label 1 is swapped with 7" in readme and "p/10" in readme

    meta = json.loads(example.metadata.read_text(encoding="utf-8"))
    assert meta["n_features"] == 64 and meta["n_classes"] == 10
    assert meta["feature_encoding"] == DIGITS_FEATURE_ENCODING
    assert DIGITS_FEATURE_ENCODING == "digits 8x8 pixel intensities divided by 16, in [0, 1]"
    files = {entry["path"]: entry for entry in meta["files"]}
    assert len(files) == 12
    for path in [example.train, example.test, *example.candidates]:
        entry = files[path.relative_to(root).as_posix()]
        ds = load_dataset(path, n_features=64, n_classes=10)
        assert entry["n_samples"] == ds.n_samples
        assert (entry["n_features"], entry["n_classes"]) == (64, 10)
    for p, path in enumerate(example.candidates, start=1):
        entry = files[path.relative_to(root).as_posix()]
        assert entry["flip_probability"] == pytest.approx(p / 10)
        assert entry["n_flipped"] == example.n_flipped[p - 1]


def test_example_split_sizes_and_ranges(example: ExampleSplit) -> None:
    train, test = load_dataset(example.train), load_dataset(example.test)
    candidates = [load_dataset(p) for p in example.candidates]
    assert (train.n_samples, test.n_samples) == (100, 400)
    sizes = [c.n_samples for c in candidates]
    assert sum(sizes) == 1797 - 500 and max(sizes) - min(sizes) <= 1
    for ds in [train, test, *candidates]:
        assert ds.X.min() >= 0.0 and ds.X.max() <= 1.0
    # the parts are disjoint: every digits image appears once (digits has a few duplicate images)
    rows = np.concatenate([ds.X for ds in [train, test, *candidates]])
    assert len(rows) == 1797
    bunch = load_digits()
    assert len(np.unique(rows, axis=0)) == len(np.unique(bunch.data, axis=0))


def test_example_label_noise_matches_the_true_labels(
    example: ExampleSplit, digits_label_of: dict[bytes, set[int]]
) -> None:
    def true_labels(ds: Dataset) -> np.ndarray:
        truth = [digits_label_of[row.tobytes()] for row in ds.X]
        assert all(len(t) == 1 for t in truth), "ambiguous duplicate image in digits"
        return np.array([next(iter(t)) for t in truth])

    for path in (example.train, example.test):
        ds = load_dataset(path)
        np.testing.assert_array_equal(ds.y, true_labels(ds))

    rates = []
    for p, path in enumerate(example.candidates, start=1):
        ds = load_dataset(path)
        truth = true_labels(ds)
        changed = ds.y != truth
        ones_sevens = np.isin(truth, [1, 7])
        assert not (changed & ~ones_sevens).any(), "only labels 1 and 7 may change"
        assert np.all(ds.y[changed] == 8 - truth[changed]), "1 must become 7 and 7 must become 1"
        assert int(changed.sum()) == example.n_flipped[p - 1]
        rate = changed.sum() / ones_sevens.sum()
        rates.append(rate)
        assert abs(rate - p / 10) < 0.3, f"candidate {p}: flip rate {rate:.2f} far from {p / 10}"
    assert rates[-1] == 1.0  # probability 1: every 1 and 7 swapped
    assert np.corrcoef(np.arange(10), rates)[0, 1] > 0.8
    assert np.mean(rates[:5]) < np.mean(rates[5:])


def test_example_is_deterministic_given_the_seed(tmp_path: Path, example: ExampleSplit) -> None:
    again = write_example_data(tmp_path / "again", seed=3)
    other = write_example_data(tmp_path / "other", seed=4)
    for mine, theirs in zip(
        [example.train, example.test, *example.candidates],
        [again.train, again.test, *again.candidates],
        strict=True,
    ):
        assert mine.read_bytes() == theirs.read_bytes()
    assert example.metadata.read_text() == again.metadata.read_text()
    assert example.train.read_bytes() != other.train.read_bytes()


def test_example_custom_sizes(tmp_path: Path) -> None:
    split = write_example_data(tmp_path / "s", n_train=10, n_test=20, seed=1)
    assert load_dataset(split.train).n_samples == 10
    assert load_dataset(split.test).n_samples == 20
    assert sum(load_dataset(p).n_samples for p in split.candidates) == 1797 - 30


def test_example_refuses_too_large_owner_sets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="leaves 7 of the 1797 digits"):
        write_example_data(tmp_path / "s", n_train=1000, n_test=790)


def test_example_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out"
    write_example_data(target)
    (target / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(DataError, match=r"out: directory is not empty \(pass overwrite=True"):
        write_example_data(target, seed=1)
    split = write_example_data(target, seed=1, overwrite=True)
    assert (target / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert load_dataset(split.train).n_samples == 100


def test_example_into_existing_empty_directory_and_onto_a_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_example_data(tmp_path / "empty")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"file: exists and is not a directory"):
        write_example_data(tmp_path / "file")


# --------------------------------------------------------------------------------------------------
# mnist_like
# --------------------------------------------------------------------------------------------------


def test_mnist_like_shapes_dtypes_and_range(mnist_sets: tuple[Dataset, Dataset, Dataset]) -> None:
    train, test, candidate = mnist_sets
    assert (train.n_samples, test.n_samples, candidate.n_samples) == (50, 80, 300)
    for ds in mnist_sets:
        assert ds.n_features == 784
        assert ds.X.dtype == np.float64 and ds.y.dtype == np.int64
        assert ds.X.min() >= 0.0 and ds.X.max() <= 1.0
        validate_dataset(ds, n_features=784, n_classes=10)
        assert "mnist_like" in ds.source
    assert set(candidate.y.tolist()) == set(range(10))


def test_mnist_like_sets_are_distinct(mnist_sets: tuple[Dataset, Dataset, Dataset]) -> None:
    train, test, candidate = mnist_sets
    all_rows = np.concatenate([train.X, test.X, candidate.X])
    assert len(np.unique(all_rows, axis=0)) == len(all_rows)
    assert not np.array_equal(train.X, candidate.X[: train.n_samples])
    assert not np.array_equal(test.X[:50], train.X)


def test_mnist_like_images_look_like_upsampled_digits(
    mnist_sets: tuple[Dataset, Dataset, Dataset],
) -> None:
    images = mnist_sets[2].X.reshape(-1, 28, 28)
    # ink (bright pixels) covers a plausible part of the image and is centred-ish
    ink = images > 0.5
    assert 0.05 < ink.mean() < 0.4
    # pixel noise: a noticeable share of pixels are strictly between 0 and 1
    assert ((images > 0) & (images < 1)).mean() > 0.3
    # class-mean images differ between classes (labels carry signal)
    means = np.stack([images[mnist_sets[2].y == k].mean(axis=0) for k in range(10)])
    assert np.abs(means[0] - means[1]).mean() > 0.05


def test_mnist_like_is_deterministic() -> None:
    a = mnist_like(n_candidate=20, n_train=5, n_test=5, seed=11)
    b = mnist_like(n_candidate=20, n_train=5, n_test=5, seed=11)
    c = mnist_like(n_candidate=20, n_train=5, n_test=5, seed=12)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left.X, right.X)
        np.testing.assert_array_equal(left.y, right.y)
    assert not np.array_equal(a[0].X, c[0].X)


def test_mnist_like_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="n_test must be a positive integer"):
        mnist_like(n_test=0)


# --------------------------------------------------------------------------------------------------
# load_torchvision (only the error paths can run offline)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "cifar10", "MNIST"])
def test_load_torchvision_without_torchvision(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(
        DataError, match=r"needs torchvision.*data-appraisal\[vision\].*network"
    ) as info:
        load_torchvision(name, str(tmp_path), train=True)
    assert "torch" in str(info.value)


def test_load_torchvision_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"unknown torchvision data set 'svhn' .*'mnist', 'cifar10'"
    ):
        load_torchvision("svhn", tmp_path, train=False)


def test_npz_archives_expose_their_zipfile() -> None:
    # guard: the expanded-size check relies on numpy's NpzFile exposing its ZipFile
    with tempfile.TemporaryFile() as handle:
        np.savez(handle, X=np.zeros((1, 1)), y=np.zeros(1, dtype=int))
        handle.seek(0)
        with np.load(handle) as loaded:
            assert isinstance(loaded.zip, zipfile.ZipFile)
