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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from common.errors import MPCError
from common.mpc.compat import import_crypten
from common.mpc.transport import Channel

crypten = import_crypten()


BLOCK = 16  # AES's block: the CTR counter counts these
PIECE = 1 << 20  # bytes of key stream per update_into call
_SLACK = BLOCK - 1  # cryptography's update_into wants this much room after its output
_ZEROS = bytes(PIECE + BLOCK)  # the plaintext: AES-CTR of zeros is the key stream itself
PARALLEL_BYTES = 1 << 22  # draws from 4 MiB up are split across the compute threads
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """One long-lived pool per thread count (cryptography releases the GIL in update_into)."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="stream")
    return _POOLS[threads]


def _keystream_into(encryptor: Any, out: memoryview, size: int | None = None) -> None:
    """Write ``encryptor``'s next ``size`` (default ``len(out)``) key-stream bytes into ``out``, in
    place.

    update_into wants BLOCK − 1 bytes of room after what it writes (it writes exactly as many
    bytes as it reads in CTR mode): each piece that ``out`` leaves room for (its bytes past
    ``size`` count: :meth:`StreamRng.int64` allocates them) is written in place, a last one
    without room through a small scratch buffer.
    """
    size = len(out) if size is None else size
    zeros = memoryview(_ZEROS)
    start = 0
    while start < size:
        piece = min(PIECE, size - start)
        if start + piece + _SLACK <= len(out):
            encryptor.update_into(zeros[:piece], out[start : start + piece + _SLACK])
        else:
            scratch = bytearray(piece + _SLACK)
            encryptor.update_into(zeros[:piece], scratch)
            out[start : start + piece] = memoryview(scratch)[:piece]
        start += piece


class StreamRng:
    """A deterministic cryptographic generator: the AES-256-CTR key stream of a 32-byte key.

    A large draw is cut into ``threads`` ranges of whole blocks (default: torch's thread count,
    the worker's :attr:`~common.runtime.config.PartyConfig.threads`), each encrypted by its own
    CTR cipher started at its range's block counter: the values are byte for byte those of the
    one sequential stream, whatever the thread count.
    """

    def __init__(self, key: bytes, threads: int | None = None):
        if len(key) != 32:
            raise ValueError("StreamRng needs a 32-byte key")
        self._key = key
        self._position = 0  # bytes of the key stream drawn so far
        self._encryptor = self._cipher_at(0)
        self.threads = threads
        self.device = torch.device("cpu")

    def _cipher_at(self, position: int) -> Any:
        """A CTR encryptor whose key stream starts at byte ``position`` of this generator's
        (OpenSSL's CTR counter is the whole 16-byte block, big-endian, as here)."""
        block, skip = divmod(position, BLOCK)
        counter = block.to_bytes(BLOCK, "big")
        encryptor = Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor()
        if skip:
            encryptor.update(bytes(skip))
        return encryptor

    def _fill(self, out: memoryview, size: int | None = None) -> None:
        """The next ``size`` (default ``len(out)``) bytes of the key stream, into ``out`` (whose
        bytes past ``size``, if any, are room for :func:`_keystream_into`)."""
        size = len(out) if size is None else size
        threads = self.threads or torch.get_num_threads()
        if threads == 1 or size < PARALLEL_BYTES:
            _keystream_into(self._encryptor, out, size)
            self._position += size
            return
        out = out[:size]
        # inner cuts on block boundaries of the stream, so that each range's cipher starts at
        # a counter; the first range goes on with this generator's own encryptor
        first = -self._position % BLOCK
        step = -(-(size - first) // threads // BLOCK) * BLOCK
        cuts = [0, *range(first + step, size, step), size] if step else [0, size]
        encryptors = [self._encryptor] + [self._cipher_at(self._position + c) for c in cuts[1:-1]]
        pool = _pool(threads)
        jobs = [
            pool.submit(_keystream_into, encryptor, out[lo:hi])
            for encryptor, lo, hi in zip(encryptors, cuts[:-1], cuts[1:], strict=True)
        ]
        for job in jobs:
            job.result()
        self._position += size
        self._encryptor = self._cipher_at(self._position)

    def int64(self, size: Sequence[int] | torch.Size | int) -> torch.Tensor:
        """Uniform int64 (every value of the ring Z/2^64, as CrypTen's signed representation)."""
        shape = (size,) if isinstance(size, int) else tuple(size)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        raw = torch.empty(8 * n + _SLACK, dtype=torch.uint8)  # with room: written in place
        self._fill(raw.numpy().data, 8 * n)
        return raw[: 8 * n].view(torch.int64).reshape(shape)

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
