"""The data owner's candidate data sets: every .npz/.parquet/.csv file in its data directory.

Only their public metadata (:class:`DatasetMeta`) is served; the rows are read by this side's
worker only. A file is validated and described in one streaming pass over its rows
(:func:`common.ml.data.scan_dataset`), so a candidate of any size is never held in memory here. An
upload streams to a temporary file, is validated completely, and only then takes its id: two
uploads under one id cannot both succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from common.errors import Conflict, DataError, NotFound
from common.ml.data import scan_dataset
from common.web.schemas import DatasetMeta
from data_owner.settings import DataOwnerSettings

log = logging.getLogger("data_appraisal.data_owner")
SUFFIXES = (".npz", ".parquet", ".csv")


class Registry:
    """The candidate data sets and their metadata."""

    def __init__(self, settings: DataOwnerSettings) -> None:
        self.settings = settings
        self.dir = settings.data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta: dict[str, DatasetMeta] = {}
        self.paths: dict[str, Path] = {}
        self._reserved: set[str] = set()  # ids of uploads under way
        for path in sorted(self.dir.iterdir()):
            if path.suffix in SUFFIXES and path.is_file() and not path.name.startswith("."):
                try:
                    self._register(self._describe(path.stem, path, path.name), path)
                except (
                    Exception
                ) as exc:  # one bad file, whatever its fault, must not stop the service
                    log.warning("skipping %s: %s: %s", path, type(exc).__name__, exc)

    def _describe(self, dataset_id: str, path: Path, name: str) -> DatasetMeta:
        """Read and validate the file at ``path`` in one streaming pass; its public metadata.

        Raises DataError if the file is invalid (the messages of :func:`load_dataset`).
        """
        info = scan_dataset(path)
        bound = info.feature_bound
        return DatasetMeta(
            id=dataset_id,
            name=name,
            n_samples=info.n_samples,
            n_features=info.n_features,
            n_classes=info.n_classes,
            label_encoding=self.settings.label_encoding,
            feature_bound=bound,
            feature_encoding=f"float features, |x| <= {bound:g}; in MPC divided by the session's "
            "agreed bound and fixed-point encoded with 16 fractional bits",
        )

    def _register(self, meta: DatasetMeta, path: Path) -> DatasetMeta:
        self.meta[meta.id], self.paths[meta.id] = meta, path
        return meta

    def get(self, dataset_id: str) -> DatasetMeta:
        if dataset_id not in self.meta:
            known = ", ".join(sorted(self.meta)[:20]) or "none"
            raise NotFound(f"no dataset {dataset_id!r} (this data owner has: {known})")
        return self.meta[dataset_id]

    def _taken(self, dataset_id: str) -> bool:
        files = (self.dir / f"{dataset_id}{s}" for s in SUFFIXES)
        return (
            dataset_id in self.meta
            or dataset_id in self._reserved
            or any(f.exists() for f in files)
        )

    async def add(self, dataset_id: str, suffix: str, body: AsyncIterator[bytes]) -> DatasetMeta:
        """Stream an upload to a temporary file, validate it, then move it into ``data_dir``.

        Nothing is registered or left behind unless the whole file arrived and is valid. (The size
        limit is the app's: its BodyLimit middleware stops an oversized body mid-stream.)
        """
        if self._taken(dataset_id):  # checked and reserved with no await in between: atomic
            raise Conflict(f"a dataset {dataset_id!r} already exists; choose another id")
        self._reserved.add(dataset_id)
        fd, tmp = tempfile.mkstemp(suffix=suffix, dir=self.dir, prefix=".upload-")
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in body:
                    size += len(chunk)
                    f.write(chunk)
            if size == 0:
                raise DataError(
                    "the upload is empty: send the .npz, .parquet or .csv file as the request body"
                )
            final = self.dir / f"{dataset_id}{suffix}"
            # Everything that can fail happens before the file takes its name.
            meta = await asyncio.to_thread(self._describe, dataset_id, Path(tmp), final.name)
            try:
                os.link(tmp, final)  # fails if the name exists: never replaces a data set
            except FileExistsError:
                raise Conflict(
                    f"a dataset {dataset_id!r} already exists; choose another id"
                ) from None
            return self._register(meta, final)
        finally:
            self._reserved.discard(dataset_id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
