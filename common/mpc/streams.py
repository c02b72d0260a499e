"""Cryptographic generators for CrypTen: AES-256-CTR key streams instead of its mt19937.

Every mask, zero-sharing and triple share is drawn from a :class:`StreamRng`. The owners' zero
sharing and global keys are derived from their link's handshake (:func:`owner_generators`); the
local generator's key never leaves its process; nothing seed-like is ever sent (CrypTen's own
generators are mt19937, and it sends their seeds in the clear).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from common.errors import MPCError
from common.mpc.compat import import_crypten
from common.mpc.transport import Channel

crypten = import_crypten()


class StreamRng:
    """A deterministic cryptographic generator: the AES-256-CTR key stream of a 32-byte key."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("StreamRng needs a 32-byte key")
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self.device = torch.device("cpu")

    def int64(self, size: Sequence[int] | torch.Size | int) -> torch.Tensor:
        """Uniform int64 (every value of the ring Z/2^64, as CrypTen's signed representation)."""
        shape = (size,) if isinstance(size, int) else tuple(size)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        stream = self._encryptor.update(bytes(8 * n))
        return torch.from_numpy(np.frombuffer(stream, dtype=np.int64).copy()).reshape(shape)

    def kbit(self, size: Sequence[int] | torch.Size | int, bits: int) -> torch.Tensor:
        values = self.int64(size)
        return values if bits >= 64 else values & ((1 << bits) - 1)


def _size_of(args: tuple[Any, ...]) -> Any:
    return args[0] if len(args) == 1 else args


def install_stream_rng() -> None:
    """Make CrypTen's two random-tensor helpers draw from :class:`StreamRng` generators.

    The helpers are imported by name into several CrypTen modules; each reference is replaced by a
    wrapper that handles a :class:`StreamRng` (or, when none is given, the ``local`` generator, if
    it is one) and otherwise calls CrypTen's original. Idempotent.
    """
    rng = sys.modules["crypten.common.rng"]
    if getattr(rng.generate_random_ring_element, "_data_appraisal", False):
        return
    ring_original = rng.generate_random_ring_element
    kbit_original = rng.generate_kbit_random_tensor

    def pick(generator: Any) -> Any:
        if generator is None:
            return crypten.generators["local"].get(torch.device("cpu"))
        return generator

    def ring(*size: Any, ring_size: int = 2**64, generator: Any = None, **kwargs: Any) -> Any:
        gen = pick(generator)
        if isinstance(gen, StreamRng):
            if ring_size != 2**64:
                raise MPCError(f"only the 2^64 ring is supported, not {ring_size}")
            return gen.int64(_size_of(size))
        return ring_original(*size, ring_size=ring_size, generator=generator, **kwargs)

    def kbit(*size: Any, bitlength: int | None = None, generator: Any = None, **kwargs: Any) -> Any:
        gen = pick(generator)
        if isinstance(gen, StreamRng):
            return gen.kbit(_size_of(size), 64 if bitlength is None else bitlength)
        return kbit_original(*size, bitlength=bitlength, generator=generator, **kwargs)

    ring._data_appraisal = True  # type: ignore[attr-defined]
    kbit._data_appraisal = True  # type: ignore[attr-defined]
    for name, module in list(sys.modules.items()):
        if not name.startswith("crypten") or module is None:
            continue
        if getattr(module, "generate_random_ring_element", None) is ring_original:
            module.generate_random_ring_element = ring  # type: ignore[attr-defined]
        if getattr(module, "generate_kbit_random_tensor", None) is kbit_original:
            module.generate_kbit_random_tensor = kbit  # type: ignore[attr-defined]


def owner_generators(rank: int, peer: Channel) -> dict[str, StreamRng]:
    """Zero-sharing (prev/next), global and local generators of one owner.

    ``next`` of rank r is keyed ``przs/r`` and ``prev`` is the other rank's ``next``: the two owners'
    zero shares cancel. The local generator's key never leaves this process.
    """
    return {
        "prev": StreamRng(peer.derive(f"przs/{1 - rank}")),
        "next": StreamRng(peer.derive(f"przs/{rank}")),
        "global": StreamRng(peer.derive("global")),
        "local": StreamRng(os.urandom(32)),
    }
