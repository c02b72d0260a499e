"""Load, validate, save and generate the data sets that data-appraisal works on.

A data set is a feature matrix ``X`` (float64, ``n x d``, *without* a bias column) and a label
vector ``y`` (int64, ``n``, class indices ``0..K-1``), wrapped in a :class:`Dataset` that also
remembers where the data came from. Files on disk are either

* ``.npz`` archives holding arrays ``X`` and ``y`` (as written by :func:`save_npz`), or
* ``.csv`` files with a header row, numeric feature columns and one integer label column (by default
  the last one).

Every problem with the data raises :class:`~common.errors.DataError` with a message that starts with
the file (or in-memory description) and says what is wrong and what was expected. Row and column
numbers in these messages are 0-based indices into ``X`` and ``y`` (row 0 is the first sample; a CSV
header is not a row); messages about a CSV cell also give its 1-based line number in the file.

Besides loading, this module builds the bundled example split (:func:`write_example_data`), an
offline MNIST-shaped stand-in (:func:`mnist_like`), and loads the real MNIST / CIFAR-10 through the
optional torchvision dependency (:func:`load_torchvision`).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DIGITS_FEATURE_ENCODING",
    "Dataset",
    "ExampleSplit",
    "load_dataset",
    "load_torchvision",
    "mnist_like",
    "save_npz",
    "validate_dataset",
    "write_example_data",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
PathLike = str | os.PathLike[str]

DEFAULT_MAX_BYTES = 2 * 1024**3
"""Default ``max_bytes`` of :func:`load_dataset` (2 GiB): larger files are refused."""

DIGITS_FEATURE_ENCODING = "digits 8x8 pixel intensities divided by 16, in [0, 1]"
"""How the features of the example data (:func:`write_example_data`) are encoded."""

_SUFFIXES = (".npz", ".csv")
_FLOAT_EXACT_INT = 2**53  # beyond this, float64 labels can no longer be told apart from neighbours
_LABEL_FLIP_PAIR = (1, 7)
_N_EXAMPLE_CANDIDATES = 10
_DIGITS_CLASSES = 10
_DIGITS_FEATURES = 64


# --------------------------------------------------------------------------------------------------
# The data set container
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dataset:
    """A feature matrix and its labels.

    Attributes:
        X: ``(n_samples, n_features)`` float64 features, without a bias column.
        y: ``(n_samples,)`` int64 class labels.
        source: The file the data was read from, or a short description of in-memory data; error
            messages start with it.

    Construction checks the structure (``X`` is 2-D and numeric, ``y`` is 1-D with one integer label
    per row) and converts ``X`` to float64 and ``y`` to int64; float labels are accepted only if
    they are whole numbers. Arrays that already have the right dtype are not copied, so treat them
    as read-only. Use :func:`validate_dataset` for the checks against agreed metadata (feature
    count, label range, finiteness, non-emptiness).

    Two data sets compare equal only if they are the same object (arrays have no truth value).
    """

    X: np.ndarray
    y: np.ndarray
    source: str = "in-memory data"

    def __post_init__(self) -> None:
        src = self.source
        try:
            X = np.asarray(self.X)
            y = np.asarray(self.y)
        except ValueError as exc:  # ragged nested lists
            raise DataError(f"{src}: X and y must be rectangular arrays ({exc})") from exc
        if X.dtype.kind not in "biuf":
            raise DataError(f"{src}: X must hold real numbers, found dtype {X.dtype}")
        if X.ndim != 2:
            raise DataError(
                f"{src}: X must be a 2-D array (samples x features), found shape {X.shape}"
            )
        if y.ndim != 1:
            raise DataError(f"{src}: y must be a 1-D array of labels, found shape {y.shape}")
        if len(X) != len(y):
            raise DataError(
                f"{src}: X has {len(X)} rows but y has {len(y)} labels (expected one label per row)"
            )
        object.__setattr__(self, "X", X.astype(np.float64, copy=False))
        object.__setattr__(self, "y", _as_int_labels(y, src))

    @property
    def n_samples(self) -> int:
        """Number of rows of ``X`` (and labels in ``y``)."""
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        """Number of columns of ``X`` (the bias column is not included)."""
        return int(self.X.shape[1])


def _as_int_labels(y: np.ndarray, source: str) -> IntArray:
    """Return ``y`` as int64, refusing labels that are not whole numbers."""
    if y.dtype.kind == "u":
        if y.size and int(y.max()) > np.iinfo(np.int64).max:
            row = int(np.argmax(y))
            raise DataError(
                f"{source}: labels must be integers in the int64 range, found {y[row]} (row {row})"
            )
        return y.astype(np.int64)
    if y.dtype.kind == "i":
        return y.astype(np.int64, copy=False)
    if y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(y) & (y == np.round(y)) & (np.abs(y) <= _FLOAT_EXACT_INT)
        if not whole.all():
            row = int(np.argmin(whole))
            raise DataError(
                f"{source}: labels must be integers, found {float(y[row])!r} (row {row})"
            )
        return y.astype(np.int64)
    raise DataError(f"{source}: labels must be integers, found dtype {y.dtype}")


# --------------------------------------------------------------------------------------------------
# Validation against agreed metadata
# --------------------------------------------------------------------------------------------------


def validate_dataset(
    ds: Dataset, *, n_features: int | None = None, n_classes: int | None = None
) -> None:
    """Check a data set against the metadata the parties agreed on.

    Checks, in this order: the data set has at least one sample and one feature; it has exactly
    ``n_features`` features (if given); every feature is finite; every label is in
    ``0..n_classes-1`` (if ``n_classes`` is given, else every label is non-negative).

    Raises:
        DataError: naming ``ds.source``, the problem and the expected value.
        ConfigError: if ``n_features`` or ``n_classes`` is not a positive integer.
    """
    _require_positive("n_features", n_features)
    _require_positive("n_classes", n_classes)
    src = ds.source
    if ds.n_samples == 0:
        raise DataError(f"{src}: the data set is empty (expected at least one sample)")
    if ds.n_features == 0:
        raise DataError(f"{src}: the data set has no features (expected at least one column in X)")
    if n_features is not None and ds.n_features != n_features:
        raise DataError(f"{src}: expected {n_features} features, found {ds.n_features}")
    finite = np.isfinite(ds.X)
    if not finite.all():
        row, column = (int(i) for i in np.argwhere(~finite)[0])
        value = float(ds.X[row, column])
        raise DataError(
            f"{src}: X contains NaN or inf (row {row}, column {column}: {value!r}); "
            "expected finite numbers"
        )
    if n_classes is not None:
        bad = (ds.y < 0) | (ds.y >= n_classes)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(
                f"{src}: labels must be integers in 0..{n_classes - 1}, "
                f"found {ds.y[row]} (row {row})"
            )
    elif (ds.y < 0).any():
        row = int(np.argmax(ds.y < 0))
        raise DataError(
            f"{src}: labels must be non-negative integers, found {ds.y[row]} (row {row})"
        )


def _require_positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int | np.integer) or value < 1):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_dataset(
    path: PathLike,
    *,
    label_column: str | None = None,
    n_features: int | None = None,
    n_classes: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Dataset:
    """Read a ``.npz`` or ``.csv`` data set and validate it (see :func:`validate_dataset`).

    Args:
        path: A ``.npz`` archive with arrays ``X`` (``n x d`` numbers) and ``y`` (``n`` integer
            labels), or a ``.csv`` file with a header row, numeric feature columns and a label
            column.
        label_column: CSV only: the header name of the label column (default: the last column).
            Every other column is a feature, in file order.
        n_features: The number of features the data must have (``None``: any).
        n_classes: Labels must be in ``0..n_classes-1`` (``None``: any non-negative integer).
        max_bytes: Files larger than this are refused before reading; for ``.npz`` archives the
            uncompressed size of ``X`` and ``y`` is limited too.

    Returns:
        The data set, with ``source`` set to ``str(path)``.

    Raises:
        DataError: the file is missing, too large, of an unknown type, malformed, or does not
            match the metadata; the message names the file.
    """
    _require_positive("max_bytes", max_bytes)
    file = Path(path)
    source = os.fspath(path)
    suffix = file.suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(
            f"{source}: unknown file type {file.suffix or '(no extension)'!r} "
            "(expected .npz or .csv)"
        )
    if file.is_dir():
        raise DataError(f"{source}: is a directory (expected a {suffix} file)")
    if not file.exists():
        raise DataError(f"{source}: file not found")
    size = file.stat().st_size
    if size > max_bytes:
        raise DataError(
            f"{source}: the file is {_format_bytes(size)}, larger than the limit of "
            f"{_format_bytes(max_bytes)} (raise max_bytes to read it)"
        )
    if suffix == ".npz":
        if label_column is not None:
            raise DataError(
                f"{source}: label_column applies only to .csv files (a .npz file holds arrays "
                "'X' and 'y')"
            )
        ds = _read_npz(file, source, max_bytes)
    else:
        ds = _read_csv(file, source, label_column)
    validate_dataset(ds, n_features=n_features, n_classes=n_classes)
    return ds


def _format_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB (1536 bytes)'``; small sizes are given in bytes only."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit} ({n} bytes)"


def _read_npz(file: Path, source: str, max_bytes: int) -> Dataset:
    # Open the file ourselves: np.load leaks its own handle when the archive is corrupt.
    with file.open("rb") as handle:
        try:
            loaded = np.load(handle, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(
                f"{source}: not a valid .npz archive (expected a zip of arrays 'X' and 'y' as "
                f"written by numpy.savez; {type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(
                f"{source}: holds a single array, not a .npz archive (expected arrays 'X' and 'y' "
                "as written by numpy.savez)"
            )
        with loaded:
            _check_npz_members(loaded, source, max_bytes)
            X, y = (_read_npz_array(loaded, key, source) for key in ("X", "y"))
    return Dataset(X=X, y=y, source=source)


def _check_npz_members(archive: np.lib.npyio.NpzFile, source: str, max_bytes: int) -> None:
    """Check that arrays ``X`` and ``y`` exist and do not expand beyond ``max_bytes``."""
    missing = [name for name in ("X", "y") if name not in archive.files]
    if missing:
        found = ", ".join(repr(name) for name in archive.files) or "no arrays"
        raise DataError(
            f"{source}: missing array {' and '.join(repr(name) for name in missing)} "
            f"(found: {found}; expected arrays 'X' and 'y')"
        )
    expanded = sum(_npz_member_size(archive, name) for name in ("X", "y"))
    if expanded > max_bytes:
        raise DataError(
            f"{source}: arrays 'X' and 'y' expand to {_format_bytes(expanded)}, larger than "
            f"the limit of {_format_bytes(max_bytes)} (raise max_bytes to read them)"
        )


def _read_npz_array(archive: np.lib.npyio.NpzFile, key: str, source: str) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{source}: array {key!r} could not be read ({type(exc).__name__}: {exc}); "
            "expected a numeric array stored without pickle (object arrays are refused)"
        ) from exc


def _npz_member_size(archive: np.lib.npyio.NpzFile, key: str) -> int:
    """Uncompressed size of one array of an archive (guards against zip bombs)."""
    members = archive.zip
    if members is None:  # only after the archive was closed
        raise ValueError("the .npz archive is closed")
    names = members.namelist()
    member = f"{key}.npy" if f"{key}.npy" in names else key
    return members.getinfo(member).file_size


def _read_csv(file: Path, source: str, label_column: str | None) -> Dataset:
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{source}: the file is empty (expected a header row)")
            names = [name.strip() for name in header]
            label_index = _label_index(names, label_column, source)
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != len(names):
                    raise DataError(
                        f"{source}: line {reader.line_num} has {len(row)} field(s), expected "
                        f"{len(names)} (as many as the header)"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not a UTF-8 text file ({exc})") from exc
    except csv.Error as exc:
        raise DataError(f"{source}: malformed CSV ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{source}: could not be read ({exc})") from exc

    table = _parse_numbers(rows, lines, names, source)
    finite = np.isfinite(table)
    if not finite.all():
        row_index, column = (int(i) for i in np.argwhere(~finite)[0])
        raise DataError(
            f"{source}: column {names[column]!r} is not a finite number (row {row_index}, "
            f"line {lines[row_index]}: {rows[row_index][column]!r})"
        )
    X = np.delete(table, label_index, axis=1)
    return Dataset(X=X, y=table[:, label_index], source=source)


def _label_index(names: list[str], label_column: str | None, source: str) -> int:
    if len(names) < 2:
        raise DataError(
            f"{source}: the header has {len(names)} column(s) (expected feature columns and a "
            "label column)"
        )
    if label_column is None:
        return len(names) - 1
    wanted = label_column.strip()
    matches = [i for i, name in enumerate(names) if name == wanted]
    if not matches:
        raise DataError(
            f"{source}: label column {wanted!r} not found in the header (available columns: "
            f"{_list_names(names)})"
        )
    if len(matches) > 1:
        raise DataError(
            f"{source}: label column {wanted!r} appears {len(matches)} times in the header "
            "(expected exactly once)"
        )
    return matches[0]


def _list_names(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names)} columns in all)"
    return shown


def _parse_numbers(
    rows: list[list[str]], lines: list[int], names: list[str], source: str
) -> FloatArray:
    """Convert the CSV cells to a float table, naming the first cell that is not a number."""
    if not rows:
        return np.empty((0, len(names)), dtype=np.float64)
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        pass  # find the offending cell below, with Python's float() as the reference parser
    table = np.empty((len(rows), len(names)), dtype=np.float64)
    for row_index, row in enumerate(rows):
        for column, cell in enumerate(row):
            try:
                table[row_index, column] = float(cell)
            except ValueError:
                raise DataError(
                    f"{source}: column {names[column]!r} is not numeric (row {row_index}, "
                    f"line {lines[row_index]}: {cell!r})"
                ) from None
    return table


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def save_npz(path: PathLike, data: Dataset | tuple[npt.ArrayLike, npt.ArrayLike]) -> Path:
    """Write a data set as an uncompressed ``.npz`` with arrays ``X`` (float64) and ``y`` (int64).

    ``data`` is a :class:`Dataset` or an ``(X, y)`` pair (checked and converted as by
    :class:`Dataset`). Parent directories are created; the file is written to a temporary name
    first and then renamed, so readers never see a partial archive. Returns the path written.

    Raises:
        DataError: ``path`` does not end in ``.npz``, or ``(X, y)`` is not a valid data set.
    """
    target = Path(path)
    if target.suffix.lower() != ".npz":
        raise DataError(f"{os.fspath(path)}: expected a path ending in .npz")
    if not isinstance(data, Dataset):
        X, y = data
        data = Dataset(X=np.asarray(X), y=np.asarray(y), source=os.fspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, X=data.X, y=data.y)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


# --------------------------------------------------------------------------------------------------
# Example data from scikit-learn's bundled digits
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleSplit:
    """Where :func:`write_example_data` put the files.

    Attributes:
        directory: The output directory.
        train: The model owner's training set (``model_owner/train.npz``).
        test: The model owner's test set (``model_owner/test.npz``).
        candidates: The data owner's candidates ``data_owner/candidate_01.npz`` .. ``_10.npz``.
        flip_probabilities: For each candidate, the probability that a label 1 or 7 was swapped.
        n_flipped: For each candidate, how many labels were actually swapped.
        metadata: ``metadata.json``.
        readme: ``README.txt``.
    """

    directory: Path
    train: Path
    test: Path
    candidates: tuple[Path, ...]
    flip_probabilities: tuple[float, ...]
    n_flipped: tuple[int, ...]
    metadata: Path
    readme: Path


def _digits() -> tuple[FloatArray, IntArray]:
    """scikit-learn's bundled 8x8 digits (1797 images, offline) as ``(X / 16, y)``."""
    from sklearn.datasets import load_digits

    bunch: Any = load_digits()
    X = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    return X, y


def _swap_labels(y: IntArray, probability: float, rng: np.random.Generator) -> tuple[IntArray, int]:
    """Swap labels 1 <-> 7, each independently with ``probability``; return new labels and count."""
    a, b = _LABEL_FLIP_PAIR
    draws = rng.random(len(y))
    flip = ((y == a) | (y == b)) & (draws < probability)
    swapped = y.copy()
    swapped[flip & (y == a)] = b
    swapped[flip & (y == b)] = a
    return swapped, int(flip.sum())


def write_example_data(
    directory: PathLike,
    *,
    seed: int = 0,
    n_train: int = 100,
    n_test: int = 400,
    overwrite: bool = False,
) -> ExampleSplit:
    """Write a ready-to-appraise example split of scikit-learn's digits (offline, deterministic).

    The 1797 digits (64 features: 8x8 pixel intensities divided by 16, in [0, 1]; 10 classes) are
    shuffled with ``seed``. The model owner gets ``model_owner/train.npz`` (the first ``n_train``
    samples) and ``model_owner/test.npz`` (the next ``n_test``). The rest is split into ten
    candidates of near-equal size, ``data_owner/candidate_01.npz`` .. ``candidate_10.npz``; in
    candidate ``p`` every label 1 becomes 7 and every 7 becomes 1, independently with probability
    ``p / 10`` (so candidate 10 has all of them swapped). ``README.txt`` describes the split and
    ``metadata.json`` lists every file with its size, feature and class counts and flip probability.

    Args:
        directory: Output directory; created if missing.
        seed: Seed of the shuffle and of the label swaps; the same seed gives identical files.
        n_train: Size of the model owner's training set.
        n_test: Size of the model owner's test set.
        overwrite: Allow writing into a non-empty directory (files of the same names are
            replaced, other files are left alone).

    Raises:
        DataError: ``directory`` is a file, or is not empty and ``overwrite`` is false.
        ConfigError: the sizes leave fewer than one sample per candidate.
    """
    _require_positive("n_train", n_train)
    _require_positive("n_test", n_test)
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise DataError(f"{os.fspath(directory)}: exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise DataError(
            f"{os.fspath(directory)}: directory is not empty (pass overwrite=True to write over "
            "it, or choose an empty or new directory)"
        )

    X, y = _digits()
    n_rest = len(y) - n_train - n_test
    if n_rest < _N_EXAMPLE_CANDIDATES:
        raise ConfigError(
            f"n_train + n_test = {n_train + n_test} leaves {n_rest} of the {len(y)} digits for "
            f"the candidates (expected at least {_N_EXAMPLE_CANDIDATES})"
        )

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    train_idx = order[:n_train]
    test_idx = order[n_train : n_train + n_test]
    candidate_idx = np.array_split(order[n_train + n_test :], _N_EXAMPLE_CANDIDATES)

    owner_dir, data_dir = root / "model_owner", root / "data_owner"
    train_path = save_npz(owner_dir / "train.npz", (X[train_idx], y[train_idx]))
    test_path = save_npz(owner_dir / "test.npz", (X[test_idx], y[test_idx]))
    files: list[dict[str, Any]] = [
        _file_entry(root, train_path, "model owner: training set", len(train_idx)),
        _file_entry(root, test_path, "model owner: test set", len(test_idx)),
    ]

    candidates: list[Path] = []
    probabilities: list[float] = []
    flipped: list[int] = []
    for p, idx in enumerate(candidate_idx, start=1):
        probability = p / _N_EXAMPLE_CANDIDATES
        labels, n_flipped = _swap_labels(y[idx], probability, rng)
        path = save_npz(data_dir / f"candidate_{p:02d}.npz", (X[idx], labels))
        entry = _file_entry(root, path, f"data owner: candidate {p}", len(idx))
        entry.update(flip_probability=probability, n_flipped=n_flipped)
        files.append(entry)
        candidates.append(path)
        probabilities.append(probability)
        flipped.append(n_flipped)

    metadata = {
        "source": "scikit-learn digits (sklearn.datasets.load_digits), 1797 samples",
        "seed": seed,
        "n_features": _DIGITS_FEATURES,
        "n_classes": _DIGITS_CLASSES,
        "feature_encoding": DIGITS_FEATURE_ENCODING,
        "label_noise": "in candidate p, each label 1 is swapped with 7 and each 7 with 1, "
        "independently with probability p/10",
        "files": files,
    }
    metadata_path = root / "metadata.json"
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    readme_path = root / "README.txt"
    readme_path.write_text(
        _example_readme(seed, len(train_idx), len(test_idx), [len(i) for i in candidate_idx]),
        encoding="utf-8",
    )
    return ExampleSplit(
        directory=root,
        train=train_path,
        test=test_path,
        candidates=tuple(candidates),
        flip_probabilities=tuple(probabilities),
        n_flipped=tuple(flipped),
        metadata=metadata_path,
        readme=readme_path,
    )


def _file_entry(root: Path, path: Path, role: str, n_samples: int) -> dict[str, Any]:
    return {
        "path": path.relative_to(root).as_posix(),
        "role": role,
        "n_samples": n_samples,
        "n_features": _DIGITS_FEATURES,
        "n_classes": _DIGITS_CLASSES,
    }


def _example_readme(seed: int, n_train: int, n_test: int, candidate_sizes: list[int]) -> str:
    sizes = ", ".join(str(size) for size in candidate_sizes)
    title = f"Example data for data-appraisal (generated with seed {seed})"
    return f"""\
{title}
{"=" * len(title)}

Source: scikit-learn's bundled digits data set (1797 images of handwritten digits 0-9).
Features: 64 = {DIGITS_FEATURE_ENCODING}. No bias column.
Labels: the digit, 0..9 (10 classes). Files are .npz archives with arrays X (float64, n x 64)
and y (int64, n).

The digits were shuffled with the seed above and split as follows.

model_owner/train.npz    {n_train} samples: the model owner's training set
model_owner/test.npz     {n_test} samples: the model owner's test set
data_owner/candidate_01.npz .. candidate_10.npz
                         the remaining samples in ten near-equal candidates ({sizes})

Label noise: in candidate p (p = 1..10) every label 1 is swapped with 7 and every 7 with 1,
independently with probability p/10; all other labels are correct. Candidate 01 is therefore
the cleanest and candidate 10 has all of its 1s and 7s swapped, so a good appraisal should rank
the candidates roughly in order. metadata.json lists every file with its number of samples,
features and classes, the flip probability and the number of labels actually swapped.
"""


# --------------------------------------------------------------------------------------------------
# Offline MNIST-shaped stand-in
# --------------------------------------------------------------------------------------------------


def mnist_like(
    *, n_candidate: int = 6000, n_train: int = 600, n_test: int = 1000, seed: int = 0
) -> tuple[Dataset, Dataset, Dataset]:
    """A synthetic, offline stand-in for MNIST with MNIST's shape and value range.

    This is *not* MNIST: it is built from scikit-learn's bundled 8x8 digits so that MNIST-scale
    experiments run without network access. Each sample is one of the 1797 digit images, drawn
    with replacement, upsampled to 28x28 (bilinear, ``scipy.ndimage.zoom`` with order 1), shifted
    by a random whole number of pixels in ``-2..2`` along each axis (vacated pixels are 0), with
    gaussian pixel noise (sigma 0.05) added and clipped to [0, 1]. Features are the 784 pixels
    (row-major, float64, in [0, 1], ink is bright as in MNIST); labels are the digits 0..9.

    Every sample gets its own shift and noise, so the three returned sets are independent draws:
    they may share an underlying digit image, but practically never an identical sample.
    Deterministic given ``seed``.

    Returns:
        ``(train, test, candidate)`` data sets with ``n_train``, ``n_test`` and ``n_candidate``
        samples.
    """
    from scipy import ndimage

    for name, value in (("n_candidate", n_candidate), ("n_train", n_train), ("n_test", n_test)):
        _require_positive(name, value)
    side, max_shift, noise = 28, 2, 0.05
    digits_X, digits_y = _digits()
    images = digits_X.reshape(-1, 8, 8)
    # Zoom the 1797 distinct images once as a stack (3.5 * 8 = 28), then index into them.
    zoomed = ndimage.zoom(images, (1, side / 8, side / 8), order=1)
    zoomed = np.clip(zoomed, 0.0, 1.0)

    rng = np.random.default_rng(seed)
    total = n_train + n_test + n_candidate
    picks = rng.integers(0, len(digits_y), size=total)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(total, 2))
    # Shift with zero fill: pad by max_shift, then read a 28x28 window offset by -shift.
    padded = np.pad(zoomed, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    grid = np.arange(side)
    rows = grid[None, :] + max_shift - shifts[:, :1]  # (total, 28)
    cols = grid[None, :] + max_shift - shifts[:, 1:]  # (total, 28)
    shifted = padded[picks[:, None, None], rows[:, :, None], cols[:, None, :]]
    shifted += rng.normal(0.0, noise, size=shifted.shape)
    np.clip(shifted, 0.0, 1.0, out=shifted)
    X = shifted.reshape(total, side * side)
    y = digits_y[picks]

    edges = (0, n_train, n_train + n_test, total)
    train, test, candidate = (
        Dataset(X=X[lo:hi], y=y[lo:hi], source=f"mnist_like(seed={seed}) {role} set")
        for role, lo, hi in zip(("train", "test", "candidate"), edges[:-1], edges[1:], strict=True)
    )
    return train, test, candidate


# --------------------------------------------------------------------------------------------------
# Real MNIST / CIFAR-10 through the optional torchvision dependency
# --------------------------------------------------------------------------------------------------

_TORCHVISION_SETS = {"mnist": ("MNIST", 784), "cifar10": ("CIFAR10", 3072)}


def load_torchvision(name: str, root: PathLike, *, train: bool) -> Dataset:
    """Load MNIST or CIFAR-10 through torchvision, downloading it into ``root`` if needed.

    Args:
        name: ``"mnist"`` (784 features) or ``"cifar10"`` (3072 features, channel-major: all red
            pixels, then green, then blue, each row-major, as ``torchvision.transforms.ToTensor``
            lays them out).
        root: Directory where torchvision keeps (or downloads) the raw files.
        train: The official training split if true, else the test split.

    Pixel values are scaled from 0..255 to [0, 1]; labels are the 10 class indices.

    Raises:
        DataError: unknown ``name``; torchvision is not installed (it is the optional extra
            ``data-appraisal[vision]``); or the download / files failed.
    """
    key = name.strip().lower()
    if key not in _TORCHVISION_SETS:
        raise DataError(
            f"unknown torchvision data set {name!r} (expected one of: "
            f"{', '.join(repr(k) for k in _TORCHVISION_SETS)})"
        )
    class_name, n_features = _TORCHVISION_SETS[key]
    try:
        from torchvision import datasets
    except ImportError as exc:
        raise DataError(
            f"loading {class_name} needs torchvision, which is not installed: install the optional "
            "extra with `pip install 'data-appraisal[vision]'`, choosing a torchvision release "
            "that matches the installed torch (the PyPI default may not import beside it); the "
            "first load also needs network access to download the data"
        ) from exc

    split = "train" if train else "test"
    source = f"torchvision {class_name} ({split} split) in {os.fspath(root)}"
    try:
        raw = getattr(datasets, class_name)(root=os.fspath(root), train=train, download=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataError(
            f"{source}: could not download or read the data ({type(exc).__name__}: {exc}); "
            "the first load needs network access"
        ) from exc
    pixels = np.asarray(raw.data, dtype=np.uint8)  # MNIST: torch (n, 28, 28); CIFAR: (n, 32, 32, 3)
    if key == "cifar10":
        pixels = pixels.transpose(0, 3, 1, 2)  # to channel-major (n, 3, 32, 32)
    X = pixels.reshape(len(pixels), -1).astype(np.float64) / 255.0
    y = np.asarray(raw.targets, dtype=np.int64)
    ds = Dataset(X=X, y=y, source=source)
    validate_dataset(ds, n_features=n_features, n_classes=10)
    return ds
