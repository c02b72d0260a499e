"""One party's shard workers meet in a private directory of that party (docs/protocol.md, "Shards").

Each shard s > 0 of a party writes its raw shares of one candidate's Σ X_cᵀ R_c (a d×k int64
tensor, checked by its own truncation checks) to a file in the party's hand-off directory, written
atomically (a 0600 temporary file renamed into place); the same party's shard 0 waits for each
file, reads it, deletes it and adds the shares to its own. The model owner's shard 0 also hands
its θ̂ and v to its other shards this way (it trains once; they appraise with the same model).
Every file holds one party's own values, read only by that party's own processes: nothing
crosses to another party.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from common.errors import MPCError, PeerTimeout
from common.ml.model import ModelOwnerState

POLL_SECONDS = 0.01


class ShareDrop:
    """The :class:`common.mpc.shards.Exchange` of one party's shard workers: files in
    ``directory`` (the party's own, mode 0700), each awaited at most ``timeout`` seconds."""

    def __init__(self, directory: str | Path, timeout: float):
        self.directory = Path(directory)
        self.timeout = timeout

    def _path(self, index: int, shard: int) -> Path:
        return self.directory / f"candidate-{index}.shard-{shard}.npz"

    @staticmethod
    def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
        """``arrays`` as an npz file at ``path``, whole or absent (renamed into place)."""
        partial = path.with_name(f".{path.name}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
        os.replace(partial, path)  # the reader never sees a partial file

    @staticmethod
    def _await(path: Path, timeout: float | None, what: str) -> dict[str, np.ndarray]:
        """The arrays of ``path`` once it is there (deleted once read)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not path.exists():
            if deadline is not None and time.monotonic() > deadline:
                raise PeerTimeout(f"{what} did not arrive within {timeout:g} s")
            time.sleep(POLL_SECONDS)
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        path.unlink()
        return arrays

    def hand_off(self, index: int, shard: int, raw: torch.Tensor) -> None:
        self._write(self._path(index, shard), {"raw": raw.numpy()})

    def gather(self, index: int, pairs: int, like: torch.Tensor) -> list[torch.Tensor]:
        shares = []
        for shard in range(1, pairs):
            what = f"shard {shard}'s shares of candidate {index}"
            value = self._await(self._path(index, shard), self.timeout, what)["raw"]
            if value.shape != tuple(like.shape) or value.dtype != np.int64:
                raise MPCError(
                    f"shard {shard} handed over shares of candidate {index} of shape "
                    f"{list(value.shape)} ({value.dtype}), not {list(like.shape)} (int64)"
                )
            shares.append(torch.from_numpy(value))
        return shares

    def hand_over_model(self, state: ModelOwnerState, shards: int) -> None:
        """The model owner's shard 0: θ̂, v and the test loss it computed, for each other shard."""
        arrays = {"theta": state.theta, "v": state.v, "test_loss": np.array(state.test_loss)}
        for shard in range(1, shards):
            self._write(self.directory / f"model.shard-{shard}.npz", arrays)

    def model(self, shard: int, l2: float) -> ModelOwnerState:
        """The model owner's shard ``shard`` > 0: what its shard 0 computed. No deadline of its
        own: training takes what it takes, within the supervisor's deadline for loading."""
        path = self.directory / f"model.shard-{shard}.npz"
        f = self._await(path, None, "the model of shard 0")
        return ModelOwnerState(theta=f["theta"], v=f["v"], test_loss=float(f["test_loss"]), l2=l2)
