"""Shards: several worker pairs of one session, each on a contiguous range of a candidate's chunks.

With ``count`` shards, ``count`` complete worker triples (model owner, data owner, dealer) run side
by side. For each candidate, shard s computes its raw shares (scale 2³², before truncation) of
Σ X_cᵀ R_c over its own range of the candidate's public chunks (:meth:`Shard.chunks`) and checks
its own truncations; each party's shards s > 0 then hand their shares to that party's shard 0
(:class:`Exchange`, local to the party), which adds them in the ring and finishes as one pair
would (docs/protocol.md, "Shards"). The ranges are a function of n, ``chunk_rows`` and the count
only: public metadata, like the chunks themselves. Influence and gradient norm only: fine-tuning
needs the whole gradient at every step (:func:`shard_problem`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

SHARDED_METHODS = ("influence", "gradient-norm")


def shard_problem(method: str, shards: int) -> str | None:
    """Why ``shards`` worker pairs cannot run ``method`` (None: they can)."""
    if shards < 1:
        return f"shards must be at least 1, got {shards}"
    if shards > 1 and method not in SHARDED_METHODS:
        return (
            f"shards: {method} runs in one shard only, not {shards}: each of its gradient "
            "steps needs the gradient over the whole candidate before the next step starts, so "
            "shards could not compute their chunks independently (more than one shard is for "
            f"{' and '.join(SHARDED_METHODS)})"
        )
    return None


def chunk_count(n: int, rows: int) -> int:
    """How many public chunks of ``rows`` rows a candidate of ``n`` rows has
    (:func:`common.mpc.statistics.chunk_bounds`)."""
    return -(-n // rows)


@dataclass(frozen=True)
class Shard:
    """Worker pair ``index`` of ``count`` in one session (public: every party of it knows both)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: shards are 0 to count − 1")

    def pairs(self, n: int, rows: int) -> int:
        """How many shards work on a candidate of ``n`` rows: one per chunk at most, so that a
        candidate with fewer chunks than shards uses fewer shards (the rest skip it)."""
        return min(self.count, chunk_count(n, rows))

    def chunks(self, n: int, rows: int) -> range:
        """This shard's chunks of a candidate of ``n`` rows (indices into its chunk list): the
        chunks cut into :meth:`pairs` contiguous ranges of as equal sizes as they go, the first
        ones smaller; empty for a shard that skips the candidate."""
        total, pairs = chunk_count(n, rows), self.pairs(n, rows)
        if self.index >= pairs:
            return range(total, total)
        return range(self.index * total // pairs, (self.index + 1) * total // pairs)

    def digest(self, job_digest: bytes) -> bytes:
        """What this shard's handshakes and truncation checks bind instead of the job's digest:
        the job's own for a single pair (unchanged), else one per shard, so that no two shards'
        links derive the same keys or streams even from the same key exchange."""
        if self.count == 1:
            return job_digest
        tag = self.index.to_bytes(4, "big") + self.count.to_bytes(4, "big")
        return hashlib.sha256(b"data-appraisal shard" + job_digest + tag).digest()

    @property
    def label(self) -> str:
        """How messages name this shard (nothing for a single pair)."""
        return "" if self.count == 1 else f" (shard {self.index})"


WHOLE = Shard()


class Exchange(Protocol):
    """How one party's shard workers pass raw shares to its shard 0, inside that party."""

    def hand_off(self, index: int, shard: int, raw: torch.Tensor) -> None:
        """Shard ``shard`` > 0: its checked raw shares of candidate ``index``."""

    def gather(self, index: int, pairs: int, like: torch.Tensor) -> list[torch.Tensor]:
        """Shard 0: the raw shares of shards 1 … ``pairs`` − 1 for candidate ``index``, each of
        ``like``'s shape and dtype, waiting for each as long as the worker's network timeout."""
        ...
