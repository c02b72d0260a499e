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

The example data (the bundled digits split, an offline MNIST-shaped stand-in, real MNIST / CIFAR-10
through torchvision) is in :mod:`common.ml.examples`.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Dataset",
    "load_dataset",
    "require_positive",
    "save_npz",
    "validate_dataset",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
PathLike = str | os.PathLike[str]

DEFAULT_MAX_BYTES = 2 * 1024**3
MAX_FEATURE_MAGNITUDE = 2.0**64
"""Largest |x| a feature may have (about 1.8e19). The features are scaled by the public feature
bound before encoding, so any finite magnitude would do mathematically; beyond this one the
bound itself (a power of two) stops being a number the services can exchange and store."""
"""Default ``max_bytes`` of :func:`load_dataset` (2 GiB): larger files are refused."""

_SUFFIXES = (".npz", ".csv")
_FLOAT_EXACT_INT = 2**53  # beyond this, float64 labels can no longer be told apart from neighbours


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
    ``n_features`` features (if given); every feature is finite and at most
    :data:`MAX_FEATURE_MAGNITUDE` in size; every label is in
    ``0..n_classes-1`` (if ``n_classes`` is given, else every label is non-negative).

    Raises:
        DataError: naming ``ds.source``, the problem and the expected value.
        ConfigError: if ``n_features`` or ``n_classes`` is not a positive integer.
    """
    require_positive("n_features", n_features)
    require_positive("n_classes", n_classes)
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
    too_large = np.abs(ds.X) > MAX_FEATURE_MAGNITUDE
    if too_large.any():
        row, column = (int(i) for i in np.argwhere(too_large)[0])
        raise DataError(
            f"{src}: X has a value too large to appraise (row {row}, column {column}: "
            f"{float(ds.X[row, column])!r}); expected |x| <= {MAX_FEATURE_MAGNITUDE:.3g}"
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


def require_positive(name: str, value: int | None) -> None:
    """Refuse a count that is given but not a positive integer (ConfigError naming it)."""
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
    require_positive("max_bytes", max_bytes)
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
    expanded = sum(_npz_member_size(archive, name, source) for name in ("X", "y"))
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


def _npz_member_size(archive: np.lib.npyio.NpzFile, key: str, source: str) -> int:
    """Uncompressed size of one array of an archive (guards against zip bombs).

    The array's own header is read too: a header that declares more elements than the member
    holds would otherwise make numpy allocate the declared size before it finds the data short.
    """
    members = archive.zip
    if members is None:  # only after the archive was closed
        raise ValueError("the .npz archive is closed")
    names = members.namelist()
    member = f"{key}.npy" if f"{key}.npy" in names else key
    stored = members.getinfo(member).file_size
    try:
        with members.open(member) as f:
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, dtype = read_header(f)
            header_end = f.tell()
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{source}: array {key!r} has no valid .npy header ({type(exc).__name__}: {exc})"
        ) from exc
    declared = math.prod(shape) * dtype.itemsize
    if declared > stored - header_end:
        raise DataError(
            f"{source}: array {key!r} declares shape {shape} of {dtype} "
            f"({_format_bytes(declared)}) but holds only {_format_bytes(stored - header_end)} "
            "of data (a truncated or forged archive)"
        )
    return stored


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
