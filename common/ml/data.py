"""Load, validate, save and generate the data sets that data-appraisal works on.

A data set is a feature matrix ``X`` (float64, ``n x d``, *without* a bias column) and a label
vector ``y`` (int64, ``n``, class indices ``0..K-1``), wrapped in a :class:`Dataset` that also
remembers where the data came from. Files on disk are either

* ``.npz`` archives holding arrays ``X`` and ``y`` (as written by :func:`save_npz`), or
* ``.parquet`` files with numeric feature columns and one label column (by default the last one),
  the format large tabular data comes in, or
* ``.csv`` files with a header row, numeric feature columns and one integer label column (by default
  the last one).

Large candidates need never be in memory whole: :func:`iter_chunks` reads and validates a ``.npz``
or ``.parquet`` file in row chunks, :func:`scan_dataset` describes one in a single streaming pass,
and :func:`open_candidate` is the data owner's worker's entry point (validate before any MPC, then
read the rows chunk by chunk). :func:`load_dataset` reads a file whole.

Every problem with the data raises :class:`~common.errors.DataError` with a message that starts with
the file (or in-memory description) and says what is wrong and what was expected. Row and column
numbers in these messages are 0-based indices into ``X`` and ``y`` (row 0 is the first sample; a CSV
header is not a row); messages about a CSV cell also give its 1-based line number in the file.

The example data (the bundled digits split, an offline MNIST-shaped stand-in, real MNIST / CIFAR-10
through torchvision) is in :mod:`common.ml.examples`.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "DEFAULT_MAX_BYTES",
    "Candidate",
    "ChunkReader",
    "Dataset",
    "DatasetInfo",
    "iter_chunks",
    "load_dataset",
    "open_candidate",
    "open_reader",
    "require_positive",
    "save_npz",
    "scan_dataset",
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

_SUFFIXES = (".npz", ".parquet", ".csv")
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


def _as_int_labels(y: np.ndarray, source: str, offset: int = 0) -> IntArray:
    """Return ``y`` as int64, refusing labels that are not whole numbers.

    ``offset`` is the row number of ``y[0]`` (for messages about a chunk of a file)."""
    if y.dtype.kind == "u":
        if y.size and int(y.max()) > np.iinfo(np.int64).max:
            row = int(np.argmax(y))
            raise DataError(
                f"{source}: labels must be integers in the int64 range, found {y[row]} "
                f"(row {offset + row})"
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
                f"{source}: labels must be integers, found {float(y[row])!r} (row {offset + row})"
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
    _check_header(ds, n_features)
    _check_chunk(ds.X, ds.y, 0, ds.source, n_classes)


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
    """Read a ``.npz``, ``.parquet`` or ``.csv`` data set whole and validate it.

    (See :func:`validate_dataset`; :func:`iter_chunks` reads the same files in row chunks.)

    Args:
        path: A ``.npz`` archive with arrays ``X`` (``n x d`` numbers) and ``y`` (``n`` integer
            labels), a ``.parquet`` file with numeric feature columns and a label column, or a
            ``.csv`` file with a header row, numeric feature columns and a label column.
        label_column: CSV and Parquet only: the name of the label column (default: the last
            column). Every other column is a feature, in file order.
        n_features: The number of features the data must have (``None``: any).
        n_classes: Labels must be in ``0..n_classes-1`` (``None``: any non-negative integer).
        max_bytes: Files larger than this are refused before reading; for ``.npz`` archives the
            uncompressed size of ``X`` and ``y`` is limited too, for ``.parquet`` files their
            size as float64.

    Returns:
        The data set, with ``source`` set to ``str(path)``.

    Raises:
        DataError: the file is missing, too large, of an unknown type, malformed, or does not
            match the metadata; the message names the file.
    """
    file, source, suffix = _check_file(path, label_column, max_bytes)
    if suffix == ".npz":
        ds = _read_npz(file, source, max_bytes)
    elif suffix == ".parquet":
        with _ParquetReader(file, source, label_column, max_bytes) as reader:
            blocks = list(reader.chunks(max(1, reader.n_samples)))
        X, y = blocks[0] if blocks else (np.empty((0, reader.n_features)), np.empty(0, np.int64))
        ds = Dataset(X=X, y=y, source=source)
    else:
        ds = _read_csv(file, source, label_column)
    validate_dataset(ds, n_features=n_features, n_classes=n_classes)
    return ds


def _check_file(path: PathLike, label_column: str | None, max_bytes: int) -> tuple[Path, str, str]:
    """The checks before any byte is read: type, existence, size. (file, source, suffix)."""
    require_positive("max_bytes", max_bytes)
    file = Path(path)
    source = os.fspath(path)
    suffix = file.suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(
            f"{source}: unknown file type {file.suffix or '(no extension)'!r} "
            "(expected .npz, .parquet or .csv)"
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
    if suffix == ".npz" and label_column is not None:
        raise DataError(
            f"{source}: label_column applies only to .csv and .parquet files (a .npz file holds "
            "arrays 'X' and 'y')"
        )
    return file, source, suffix


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
            shape, _, dtype = _read_npy_header(f)
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
    with _CsvReader(file, source, label_column) as reader:
        blocks = list(reader.chunks(max(1, reader.n_samples)))
    if not blocks:
        return Dataset(X=np.empty((0, reader.n_features)), y=np.empty(0, np.int64), source=source)
    return Dataset(X=blocks[0][0], y=blocks[0][1], source=source)


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
    rows: list[list[str]], lines: list[int], names: list[str], source: str, start: int = 0
) -> FloatArray:
    """Convert the CSV cells to a float table, naming the first cell that is not a number.

    ``start`` is the row number of ``rows[0]`` (for messages)."""
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
                    f"{source}: column {names[column]!r} is not numeric "
                    f"(row {start + row_index}, line {lines[row_index]}: {cell!r})"
                ) from None
    return table


# --------------------------------------------------------------------------------------------------
# Streaming: read a data set in row chunks, validate it in the same pass
# --------------------------------------------------------------------------------------------------

DEFAULT_CHUNK_ROWS = 4096
"""Default rows per chunk of :func:`iter_chunks` and :func:`open_candidate`: 4,096 rows of 785
float64 features are 25 MB."""

FORTRAN_IN_MEMORY_BYTES = 256 * 1024**2
"""A ``.npz`` member stored column-major (Fortran order) cannot be read row by row from the zip
stream; up to this size it is read whole, beyond it is refused with a message saying how to
re-save it."""

_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class DatasetInfo:
    """What one streaming pass over a data set learns: its public shape and ranges.

    Attributes:
        source: The file (or description) the data came from.
        n_samples: Rows of ``X``.
        n_features: Columns of ``X`` (no bias column).
        max_label: The largest label (the data set has ``max_label + 1`` classes).
        max_abs: The largest |x| of any feature (0.0 if every feature is 0).
    """

    source: str
    n_samples: int
    n_features: int
    max_label: int
    max_abs: float

    @property
    def n_classes(self) -> int:
        """``max_label + 1``: the number of classes the labels say there are."""
        return self.max_label + 1

    @property
    def feature_bound(self) -> float:
        """The public feature bound (:func:`common.ml.model.feature_bound` of ``X``)."""
        from common.ml.model import feature_bound

        return feature_bound(np.array([self.max_abs]))


class ChunkReader:
    """An open data set file whose rows are read in chunks; the shape is known before any row.

    Open one with :func:`open_reader` (and close it, or use it as a context manager). ``chunks``
    yields the structure-checked ``(X, y)`` chunks (float64 and int64, as :class:`Dataset` would
    convert them) without the checks against metadata; :func:`iter_chunks` adds those.
    """

    source: str
    n_samples: int
    n_features: int

    def _blocks(self, rows: int) -> Iterator[tuple[FloatArray, IntArray]]:
        """Blocks of about ``rows`` rows, in file order (any sizes: :meth:`chunks` re-cuts them)."""
        raise NotImplementedError

    def chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[FloatArray, IntArray]]:
        """``(X, y)`` chunks of exactly ``rows`` rows, in file order (the last may be shorter)."""
        require_positive("rows", rows)
        return _rechunk(self._blocks(rows), rows)

    def close(self) -> None:
        """Release the file (idempotent)."""

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rechunk(
    blocks: Iterator[tuple[FloatArray, IntArray]], rows: int
) -> Iterator[tuple[FloatArray, IntArray]]:
    """Cut or join blocks of any sizes into chunks of exactly ``rows`` rows (the last: the rest)."""
    xs: list[FloatArray] = []
    ys: list[IntArray] = []
    held = 0
    for X, y in blocks:
        while len(y):
            if not held and len(y) >= rows:  # a whole chunk inside this block: no copy
                yield X[:rows], y[:rows]
                X, y = X[rows:], y[rows:]
                continue
            take = min(rows - held, len(y))
            xs.append(X[:take])
            ys.append(y[:take])
            held += take
            X, y = X[take:], y[take:]
            if held == rows:
                yield np.concatenate(xs), np.concatenate(ys)
                xs, ys, held = [], [], 0
    if held:
        yield np.concatenate(xs), np.concatenate(ys)


class _NpzReader(ChunkReader):
    """A ``.npz`` archive read member by member from the zip stream (stored or deflated).

    The ``.npy`` headers of ``X`` and ``y`` are read and checked when the reader opens; the data
    is then read ``rows`` rows at a time, decompressed on the fly for ``savez_compressed`` files.
    """

    def __init__(self, file: Path, source: str, max_bytes: int) -> None:
        self.source = source
        with file.open("rb") as probe:
            magic = probe.read(len(_NPY_MAGIC))
        if magic == _NPY_MAGIC:
            raise DataError(
                f"{source}: holds a single array, not a .npz archive (expected arrays 'X' and 'y' "
                "as written by numpy.savez)"
            )
        # np.load's own checks first, so that a file that is no archive gets load_dataset's message
        self._handle = file.open("rb")
        try:
            try:
                loaded = np.load(self._handle, allow_pickle=False)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(
                    f"{source}: not a valid .npz archive (expected a zip of arrays 'X' and 'y' as "
                    f"written by numpy.savez; {type(exc).__name__}: {exc})"
                ) from exc
            if not isinstance(loaded, np.lib.npyio.NpzFile) or loaded.zip is None:
                raise DataError(
                    f"{source}: holds a single array, not a .npz archive (expected arrays 'X' "
                    "and 'y' as written by numpy.savez)"
                )
            self.npz = loaded
            self.zip: zipfile.ZipFile = loaded.zip
            try:
                self._open_members(max_bytes)
            except BaseException:
                loaded.close()
                raise
        except BaseException:
            self._handle.close()
            raise

    def _open_members(self, max_bytes: int) -> None:
        source = self.source
        names = self.zip.namelist()
        files = [n[: -len(".npy")] if n.endswith(".npy") else n for n in names]
        missing = [name for name in ("X", "y") if name not in files]
        if missing:
            found = ", ".join(repr(name) for name in files) or "no arrays"
            raise DataError(
                f"{source}: missing array {' and '.join(repr(name) for name in missing)} "
                f"(found: {found}; expected arrays 'X' and 'y')"
            )
        self.members = {k: (f"{k}.npy" if f"{k}.npy" in names else k) for k in ("X", "y")}
        headers = {k: self._header(k) for k in ("X", "y")}
        expanded = sum(self.zip.getinfo(m).file_size for m in self.members.values())
        if expanded > max_bytes:
            raise DataError(
                f"{source}: arrays 'X' and 'y' expand to {_format_bytes(expanded)}, larger than "
                f"the limit of {_format_bytes(max_bytes)} (raise max_bytes to read them)"
            )
        (x_shape, x_fortran, x_dtype, _), (y_shape, _, y_dtype, _) = headers["X"], headers["y"]
        for key, (_, _, dtype, _) in headers.items():
            if dtype.hasobject:
                raise DataError(
                    f"{source}: array {key!r} could not be read (ValueError: Object arrays cannot "
                    "be loaded when allow_pickle=False); expected a numeric array stored without "
                    "pickle (object arrays are refused)"
                )
        _check_structure(x_dtype, x_shape, y_dtype, y_shape, source)
        self.n_samples, self.n_features = int(x_shape[0]), int(x_shape[1])
        self.x_dtype, self.y_dtype = x_dtype, y_dtype
        self.x_fortran = bool(x_fortran) and self.n_samples > 1 and self.n_features > 1
        if self.x_fortran and math.prod(x_shape) * x_dtype.itemsize > FORTRAN_IN_MEMORY_BYTES:
            raise DataError(
                f"{source}: array 'X' is stored column-major (Fortran order), which cannot be "
                f"read in row chunks, and it is larger than {_format_bytes(FORTRAN_IN_MEMORY_BYTES)}"
                "; save it row-major: numpy.savez(path, X=numpy.ascontiguousarray(X), y=y)"
            )

    def _header(self, key: str) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
        """Shape, Fortran order, dtype and data offset of a member (forged sizes are refused)."""
        member = self.members[key]
        stored = self.zip.getinfo(member).file_size
        try:
            with self.zip.open(member) as f:
                shape, fortran, dtype = _read_npy_header(f)
                header_end = f.tell()
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(
                f"{self.source}: array {key!r} has no valid .npy header "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        declared = math.prod(shape) * dtype.itemsize
        if declared > stored - header_end:
            raise DataError(
                f"{self.source}: array {key!r} declares shape {shape} of {dtype} "
                f"({_format_bytes(declared)}) but holds only "
                f"{_format_bytes(stored - header_end)} of data (a truncated or forged archive)"
            )
        return shape, fortran, dtype, header_end

    def _blocks(self, rows: int) -> Iterator[tuple[FloatArray, IntArray]]:
        n, d = self.n_samples, self.n_features
        x_row = d * self.x_dtype.itemsize
        try:
            with (
                self.zip.open(self.members["X"]) as fx,
                self.zip.open(self.members["y"]) as fy,
            ):
                _read_npy_header(fx)
                _read_npy_header(fy)
                whole: np.ndarray | None = None
                if self.x_fortran:  # small enough (checked at open): read it whole
                    data = _read_exact(fx, n * x_row, "X")
                    whole = np.frombuffer(data, self.x_dtype).reshape((n, d), order="F")
                for start in range(0, n, rows):
                    m = min(rows, n - start)
                    if whole is not None:
                        x_raw: np.ndarray = np.ascontiguousarray(whole[start : start + m])
                    else:
                        data = _read_exact(fx, m * x_row, "X")
                        x_raw = np.frombuffer(data, self.x_dtype).reshape(m, d)
                    y_raw = np.frombuffer(
                        _read_exact(fy, m * self.y_dtype.itemsize, "y"), self.y_dtype
                    )
                    X = x_raw.astype(np.float64, copy=False)
                    yield X, _as_int_labels(y_raw, self.source, offset=start)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(
                f"{self.source}: the archive could not be read ({type(exc).__name__}: {exc}); "
                "expected arrays 'X' and 'y' as written by numpy.savez"
            ) from exc

    def close(self) -> None:
        self.npz.close()
        self._handle.close()


def _read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(f)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, fortran, dtype = read_header(f)
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _read_exact(f: Any, size: int, key: str) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise EOFError(f"array {key!r} ends after {len(data)} of {size} bytes")
    return bytes(data) if not isinstance(data, bytes) else data


def _check_structure(
    x_dtype: np.dtype[Any],
    x_shape: tuple[int, ...],
    y_dtype: np.dtype[Any],
    y_shape: tuple[int, ...],
    src: str,
) -> None:
    """The checks of :class:`Dataset` construction, from the dtypes and shapes alone."""
    if x_dtype.kind not in "biuf":
        raise DataError(f"{src}: X must hold real numbers, found dtype {x_dtype}")
    if len(x_shape) != 2:
        raise DataError(f"{src}: X must be a 2-D array (samples x features), found shape {x_shape}")
    if len(y_shape) != 1:
        raise DataError(f"{src}: y must be a 1-D array of labels, found shape {y_shape}")
    if x_shape[0] != y_shape[0]:
        raise DataError(
            f"{src}: X has {x_shape[0]} rows but y has {y_shape[0]} labels "
            "(expected one label per row)"
        )
    if y_dtype.kind not in "iuf":
        raise DataError(f"{src}: labels must be integers, found dtype {y_dtype}")


class _CsvReader(ChunkReader):
    """A CSV file read in row chunks: a first pass counts the rows and checks every line's field
    count, the second parses ``rows`` lines at a time."""

    def __init__(self, file: Path, source: str, label_column: str | None) -> None:
        self.file, self.source = file, source
        count = 0
        with self._lines() as (names, lines):
            self.names = names
            self.label = _label_index(names, label_column, source)
            for _ in lines:
                count += 1
        self.n_samples, self.n_features = count, len(self.names) - 1

    @contextlib.contextmanager
    def _lines(self) -> Iterator[tuple[list[str], Iterator[tuple[int, list[str]]]]]:
        """The header's names, and (line number, fields) of every non-blank line after it."""
        source = self.source
        try:
            with self.file.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.reader(handle)
                header = next(reader, None)
                if header is None:
                    raise DataError(f"{source}: the file is empty (expected a header row)")
                names = [name.strip() for name in header]

                def rows() -> Iterator[tuple[int, list[str]]]:
                    for row in reader:
                        if not row or (len(row) == 1 and not row[0].strip()):
                            continue  # blank line
                        if len(row) != len(names):
                            raise DataError(
                                f"{source}: line {reader.line_num} has {len(row)} field(s), "
                                f"expected {len(names)} (as many as the header)"
                            )
                        yield reader.line_num, row

                yield names, rows()
        except UnicodeDecodeError as exc:
            raise DataError(f"{source}: not a UTF-8 text file ({exc})") from exc
        except csv.Error as exc:
            raise DataError(f"{source}: malformed CSV ({exc})") from exc
        except OSError as exc:
            raise DataError(f"{source}: could not be read ({exc})") from exc

    def _blocks(self, rows: int) -> Iterator[tuple[FloatArray, IntArray]]:
        start = 0
        with self._lines() as (_, lines):
            batch: list[list[str]] = []
            numbers: list[int] = []
            for line, row in lines:
                batch.append(row)
                numbers.append(line)
                if len(batch) == rows:
                    yield self._parse(batch, numbers, start)
                    start += len(batch)
                    batch, numbers = [], []
            if batch:
                yield self._parse(batch, numbers, start)

    def _parse(
        self, rows: list[list[str]], lines: list[int], start: int
    ) -> tuple[FloatArray, IntArray]:
        source, names = self.source, self.names
        table = _parse_numbers(rows, lines, names, source, start)
        finite = np.isfinite(table)
        if not finite.all():
            row_index, column = (int(i) for i in np.argwhere(~finite)[0])
            raise DataError(
                f"{source}: column {names[column]!r} is not a finite number "
                f"(row {start + row_index}, line {lines[row_index]}: {rows[row_index][column]!r})"
            )
        X = np.delete(table, self.label, axis=1)
        return X, _as_int_labels(table[:, self.label], source, start)


class _ParquetReader(ChunkReader):
    """A Parquet file: numeric feature columns and one label column, read batch by batch.

    The label column is ``label_column`` (default: the last column); every other column is a
    feature, in file order. Feature columns may be integer, floating-point or boolean; the label
    column integer or floating-point (whole numbers). Missing values (nulls) are refused.
    """

    def __init__(self, file: Path, source: str, label_column: str | None, max_bytes: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.source = source
        try:
            self.file = pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DataError(
                f"{source}: not a valid Parquet file ({type(exc).__name__}: {exc}); expected "
                "numeric feature columns and a label column"
            ) from exc
        try:
            self._check_schema(label_column, max_bytes)
        except BaseException:
            self.file.close()
            raise

    def _check_schema(self, label_column: str | None, max_bytes: int) -> None:
        import pyarrow as pa

        source = self.source
        schema = self.file.schema_arrow
        names = [str(name).strip() for name in schema.names]
        label_index = _label_index(names, label_column, source)
        self.names = names
        self.label = label_index
        self.features = [i for i in range(len(names)) if i != label_index]
        for i, field in enumerate(schema):
            t = field.type
            if i == label_index:
                ok = pa.types.is_integer(t) or pa.types.is_floating(t)
                what = "an integer (or whole-number float) label column"
            else:
                ok = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                what = "numeric feature columns"
            if not ok:
                raise DataError(f"{source}: column {names[i]!r} has type {t} (expected {what})")
        self.n_samples = int(self.file.metadata.num_rows)
        self.n_features = len(self.features)
        expanded = self.n_samples * len(self.names) * 8
        if expanded > max_bytes:
            raise DataError(
                f"{source}: columns expand to {_format_bytes(expanded)} as float64, larger than "
                f"the limit of {_format_bytes(max_bytes)} (raise max_bytes to read them)"
            )

    def _blocks(self, rows: int) -> Iterator[tuple[FloatArray, IntArray]]:
        import pyarrow as pa

        start = 0
        try:
            for batch in self.file.iter_batches(batch_size=rows):
                m = batch.num_rows
                X = np.empty((m, self.n_features), dtype=np.float64)
                for j, i in enumerate(self.features):
                    X[:, j] = self._column(batch, i, start)
                y = _as_int_labels(self._column(batch, self.label, start), self.source, start)
                yield X, y
                start += m
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DataError(
                f"{self.source}: the Parquet file could not be read ({type(exc).__name__}: {exc})"
            ) from exc
        if start != self.n_samples:
            raise DataError(
                f"{self.source}: the Parquet file holds {start} rows, its metadata says "
                f"{self.n_samples} (a truncated or forged file)"
            )

    def _column(self, batch: Any, index: int, start: int) -> np.ndarray:
        column = batch.column(index)
        if column.null_count:
            row = start + int(np.argmax(np.asarray(column.is_null())))
            raise DataError(
                f"{self.source}: column {self.names[index]!r} has a missing value (row {row}); "
                "expected a number in every row"
            )
        return np.asarray(column.to_numpy(zero_copy_only=False))

    def close(self) -> None:
        self.file.close()


def open_reader(
    path: PathLike,
    *,
    label_column: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ChunkReader:
    """Open a ``.npz``, ``.parquet`` or ``.csv`` data set for reading in row chunks.

    Only the headers are read here (``n_samples`` and ``n_features`` are known at once, and the
    structural checks of :class:`Dataset` are done); rows come from ``reader.chunks(rows)``.
    No format is ever held whole in memory: ``.npz`` members are read from the zip stream
    (decompressed on the fly), ``.parquet`` files batch by batch, ``.csv`` files line by line
    (after a first pass that counts the rows and checks every line's field count). The file checks (type, existence,
    ``max_bytes``, ``label_column`` only for .csv and .parquet) are those of
    :func:`load_dataset`, with the same messages.
    """
    file, source, suffix = _check_file(path, label_column, max_bytes)
    if suffix == ".npz":
        return _NpzReader(file, source, max_bytes)
    if suffix == ".parquet":
        return _ParquetReader(file, source, label_column, max_bytes)
    return _CsvReader(file, source, label_column)


def _check_chunk(
    X: FloatArray, y: IntArray, start: int, src: str, n_classes: int | None
) -> tuple[float, int]:
    """The row checks of :func:`validate_dataset` on rows ``start..``; their max |x| and label."""
    # the extremes in two passes and no temporary (a chunk is checked on the data owner's
    # critical path); NaN propagates to both, ±inf shows in one
    lo, hi = (float(X.min()), float(X.max())) if X.size else (0.0, 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        row, column = (int(i) for i in np.argwhere(~np.isfinite(X))[0])
        raise DataError(
            f"{src}: X contains NaN or inf (row {start + row}, column {column}: "
            f"{float(X[row, column])!r}); expected finite numbers"
        )
    largest = max(hi, -lo)
    if largest > MAX_FEATURE_MAGNITUDE:
        row, column = (int(i) for i in np.argwhere(np.abs(X) > MAX_FEATURE_MAGNITUDE)[0])
        raise DataError(
            f"{src}: X has a value too large to appraise (row {start + row}, column {column}: "
            f"{float(X[row, column])!r}); expected |x| <= {MAX_FEATURE_MAGNITUDE:.3g}"
        )
    if n_classes is not None:
        bad = (y < 0) | (y >= n_classes)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(
                f"{src}: labels must be integers in 0..{n_classes - 1}, "
                f"found {y[row]} (row {start + row})"
            )
    elif (y < 0).any():
        row = int(np.argmax(y < 0))
        raise DataError(
            f"{src}: labels must be non-negative integers, found {y[row]} (row {start + row})"
        )
    return largest, int(y.max()) if y.size else -1


def _check_header(reader: ChunkReader | Dataset, n_features: int | None) -> None:
    """The size checks of :func:`validate_dataset`, on a whole data set or a reader's header."""
    src = reader.source
    if reader.n_samples == 0:
        raise DataError(f"{src}: the data set is empty (expected at least one sample)")
    if reader.n_features == 0:
        raise DataError(f"{src}: the data set has no features (expected at least one column in X)")
    if n_features is not None and reader.n_features != n_features:
        raise DataError(f"{src}: expected {n_features} features, found {reader.n_features}")


class _Scan:
    """Running validation of one pass: the chunks' checks and the pass's :class:`DatasetInfo`."""

    def __init__(self, reader: ChunkReader, n_features: int | None, n_classes: int | None):
        require_positive("n_features", n_features)
        require_positive("n_classes", n_classes)
        _check_header(reader, n_features)
        self.reader, self.n_classes = reader, n_classes
        self.rows, self.max_abs, self.max_label = 0, 0.0, -1

    def check(self, X: FloatArray, y: IntArray) -> None:
        largest, label = _check_chunk(X, y, self.rows, self.reader.source, self.n_classes)
        self.rows += len(y)
        self.max_abs, self.max_label = max(self.max_abs, largest), max(self.max_label, label)

    def info(self) -> DatasetInfo:
        r = self.reader
        return DatasetInfo(r.source, r.n_samples, r.n_features, self.max_label, self.max_abs)


def iter_chunks(
    path: PathLike,
    rows: int = DEFAULT_CHUNK_ROWS,
    *,
    label_column: str | None = None,
    n_features: int | None = None,
    n_classes: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[tuple[FloatArray, IntArray]]:
    """Read and validate a data set in chunks of ``rows`` rows: ``(X_chunk, y_chunk)`` pairs.

    Every check of :func:`load_dataset` is made, with the same messages, on each chunk before it
    is yielded (so a bad row stops the iteration with a :class:`DataError` before the chunk that
    holds it is handed out; row numbers in messages count from the file's first row). The chunks
    are float64 ``(m, d)`` and int64 ``(m,)``, ``m == rows`` except for the last one; treat them as
    read-only. Memory is a few chunks, whatever the file's size.
    """
    with open_reader(path, label_column=label_column, max_bytes=max_bytes) as reader:
        scan = _Scan(reader, n_features, n_classes)
        for X, y in reader.chunks(rows):
            scan.check(X, y)
            yield X, y


def scan_dataset(
    path: PathLike,
    *,
    label_column: str | None = None,
    n_features: int | None = None,
    n_classes: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    rows: int = DEFAULT_CHUNK_ROWS,
) -> DatasetInfo:
    """Validate a data set in one streaming pass (as :func:`iter_chunks`) and describe it.

    Returns the :class:`DatasetInfo` (samples, features, largest label, largest |x|) the data
    owner publishes; raises :class:`DataError` as :func:`load_dataset` would.
    """
    with open_reader(path, label_column=label_column, max_bytes=max_bytes) as reader:
        scan = _Scan(reader, n_features, n_classes)
        for X, y in reader.chunks(rows):
            scan.check(X, y)
        return scan.info()


@dataclass(frozen=True)
class Candidate:
    """A candidate validated on disk, re-read in chunks for the MPC (see :func:`open_candidate`).

    Attributes:
        path: The file.
        info: What the validation pass found (samples, features, largest label and |x|).
        rows: Rows per chunk.
        label_column: The label column (.csv and .parquet files).
        max_bytes: The size limit the file was validated under.
        n_classes: The agreed class count the labels were checked against.
        stamp: The file's (inode, size, mtime) when it was validated; a pass over a file whose
            stamp differs is refused.
    """

    path: Path
    info: DatasetInfo
    rows: int = DEFAULT_CHUNK_ROWS
    label_column: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    n_classes: int | None = None
    stamp: tuple[int, int, int] = (0, 0, 0)

    def chunks(
        self, *, bias: bool = False, part: range | None = None
    ) -> Iterator[tuple[FloatArray, IntArray]]:
        """Read the candidate again, ``rows`` rows at a time: ``(X_chunk, y_chunk)`` pairs.

        Each chunk is checked again as it is read (a file that changed after validation raises
        :class:`DataError` naming it, never yields bad rows). With ``bias=True`` each ``X_chunk``
        carries the bias column of ones as its last column (``(m, d + 1)``), as the MPC expects.
        With ``part`` (a range of chunk numbers: an MPC shard's) only those chunks are yielded;
        the ones before it are read and checked, not yielded, and the pass stops after its last.
        May be called any number of times (each call is a new pass over the file).
        """
        if part is not None and not part:
            return
        if _stamp(self.path) != self.stamp:
            raise DataError(f"{self.info.source}: the file changed after it was validated")
        with open_reader(self.path, label_column=self.label_column, max_bytes=self.max_bytes) as r:
            scan = _Scan(r, self.info.n_features, self.n_classes)
            if r.n_samples != self.info.n_samples:
                raise DataError(f"{self.info.source}: the file changed after it was validated")
            for i, (X, y) in enumerate(r.chunks(self.rows)):
                if part is not None and i >= part.stop:
                    return
                scan.check(X, y)
                if scan.max_abs > self.info.max_abs:
                    raise DataError(f"{self.info.source}: the file changed after it was validated")
                if part is not None and i < part.start:
                    continue
                if bias:
                    yield np.hstack([X, np.ones((len(X), 1))]), y
                else:
                    yield X, y


_T = TypeVar("_T")
_POLL_SECONDS = 0.1  # how often a waiting reader looks whether its consumer has gone


class ReadAhead(Iterator[_T]):
    """``items``, each one read in a background thread while the previous one is used.

    At most one item is ahead: the thread reads item j + 1 once item j has been taken, so a
    candidate read this way holds two chunks at most (the one in use and the next). Reading (the
    file, its checks, the copies) releases the GIL, so it overlaps the MPC's waits and, for the
    first chunk, the rendezvous (:meth:`common.mpc.statistics.DataOwnerInputs.prefetch`). An
    error while reading is raised where the item would have been taken; :meth:`close` (or
    dropping the iterator) stops the thread and closes ``items``.
    """

    def __init__(self, items: Iterator[_T]):
        self._items = items
        self._wanted = threading.Semaphore(1)  # one item may be read before it is asked for
        self._ready = threading.Semaphore(0)
        self._stopped = threading.Event()
        self._slot: tuple[bool, Any] | None = None  # (done, item or error)
        self._thread = threading.Thread(target=self._read, name="read-ahead", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._stopped.is_set():
                if not self._wanted.acquire(timeout=_POLL_SECONDS):
                    continue
                try:
                    self._slot = (False, next(self._items))
                except StopIteration:
                    self._slot = (True, None)
                except BaseException as exc:  # raised in the consumer's thread
                    self._slot = (True, exc)
                self._ready.release()
                if self._slot[0]:
                    return
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __next__(self) -> _T:
        if self._stopped.is_set():
            raise StopIteration
        self._ready.acquire()
        assert self._slot is not None
        done, value = self._slot
        self._slot = None
        if done:
            self._stopped.set()
            if value is not None:
                raise value
            raise StopIteration
        self._wanted.release()  # the next item may be read now
        return value

    def close(self) -> None:
        self._stopped.set()

    def __del__(self) -> None:
        self._stopped.set()


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def open_candidate(
    path: PathLike,
    *,
    n_features: int,
    n_classes: int,
    n_samples: int | None = None,
    feature_bound: float | None = None,
    label_column: str | None = None,
    rows: int = DEFAULT_CHUNK_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Candidate:
    """Validate a candidate against the session's agreed metadata, for the MPC to read in chunks.

    This is the data owner's worker's entry point. It makes one streaming pass over the file
    before any MPC starts, with every check of :func:`load_dataset` against ``n_features`` and
    ``n_classes``, plus the session's: ``n_samples`` rows (if given) and every |x| at most
    ``feature_bound`` (if given). It then returns a :class:`Candidate` whose ``chunks()`` reads
    the rows again, ``rows`` at a time, so that at most a few chunks are ever in memory::

        cand = open_candidate(path, n_features=784, n_classes=10, n_samples=meta.n_samples,
                              feature_bound=job.feature_bound)    # raises before any MPC
        for X_chunk, y_chunk in cand.chunks(bias=True):            # (m, 785) float64, (m,) int64
            ...

    Raises:
        DataError: the file is unreadable or invalid, or ``|x|`` exceeds ``feature_bound``.
        ConfigError: the file's sample count differs from ``n_samples``.
    """
    file = Path(path)
    stamp = _stamp(file) if file.is_file() else (0, 0, 0)
    scan = scan_dataset(
        file,
        label_column=label_column,
        n_features=n_features,
        n_classes=n_classes,
        max_bytes=max_bytes,
        rows=rows,
    )
    if feature_bound is not None and scan.max_abs > feature_bound:
        raise DataError(
            f"{scan.source}: a feature has |x| = {scan.max_abs:g}, above the agreed feature "
            f"bound {feature_bound:g}"
        )
    if n_samples is not None and scan.n_samples != n_samples:
        raise ConfigError(
            f"{os.fspath(path)}: has {scan.n_samples} samples, the agreed metadata says {n_samples}"
        )
    if _stamp(file) != stamp:
        raise DataError(f"{scan.source}: the file changed while it was being validated")
    return Candidate(
        path=file,
        info=scan,
        rows=rows,
        label_column=label_column,
        max_bytes=max_bytes,
        n_classes=n_classes,
        stamp=stamp,
    )


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
