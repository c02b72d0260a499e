"""Example data: the bundled digits split, an offline MNIST-shaped stand-in, MNIST and CIFAR-10.

* :func:`write_example_data`: a ready-to-appraise model-owner / data-owner split of scikit-learn's
  bundled digits (offline, deterministic), with label noise that grows from candidate to candidate.
* :func:`mnist_like`: an offline stand-in with MNIST's shape and value range (not MNIST).
* :func:`load_torchvision`: the real MNIST / CIFAR-10 through the optional torchvision dependency
  (it downloads them: needs network access).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError, DataError
from common.ml.data import (
    Dataset,
    FloatArray,
    IntArray,
    PathLike,
    require_positive,
    save_npz,
    validate_dataset,
)

DIGITS_FEATURE_ENCODING = "digits 8x8 pixel intensities divided by 16, in [0, 1]"
"""How the features of the example data (:func:`write_example_data`) are encoded."""

LABEL_FLIP_PAIR = (1, 7)
_N_EXAMPLE_CANDIDATES = 10
_DIGITS_CLASSES = 10
_DIGITS_FEATURES = 64

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


def digits() -> tuple[FloatArray, IntArray]:
    """scikit-learn's bundled 8x8 digits (1797 images, offline) as ``(X / 16, y)``."""
    from sklearn.datasets import load_digits

    bunch: Any = load_digits()
    X = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    return X, y


def swap_labels(y: IntArray, probability: float, rng: np.random.Generator) -> tuple[IntArray, int]:
    """Swap labels 1 <-> 7, each independently with ``probability``; return new labels and count."""
    a, b = LABEL_FLIP_PAIR
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
    require_positive("n_train", n_train)
    require_positive("n_test", n_test)
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise DataError(f"{os.fspath(directory)}: exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise DataError(
            f"{os.fspath(directory)}: directory is not empty (pass overwrite=True to write over "
            "it, or choose an empty or new directory)"
        )

    X, y = digits()
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
        labels, n_flipped = swap_labels(y[idx], probability, rng)
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
        require_positive(name, value)
    side, max_shift, noise = 28, 2, 0.05
    digits_X, digits_y = digits()
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
