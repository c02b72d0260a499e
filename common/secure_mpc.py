"""Run CrypTen's two-party protocols over :mod:`common.transport`, with cryptographic generators.

Three pieces replace the parts of CrypTen 0.4.1 that leak:

* :class:`SecureCommunicator` implements CrypTen's communicator interface (the collectives its
  two-party protocols use) over one encrypted, authenticated channel between the owners' workers;
  CrypTen's own byte and round counting (``_logging``) is kept, so statistics stay comparable.
* :class:`StreamRng` is an AES-256-CTR key stream that stands in for CrypTen's mt19937 generators:
  every mask, zero-sharing and triple share is drawn from it. The owners' zero-sharing and global
  keys are derived from their link's handshake; nothing seed-like is ever sent.
* :class:`DealerProvider` and :func:`serve_dealer` replace CrypTen's trusted-third-party provider.
  Each owner's triple shares come from a stream keyed by its own link with the dealer (the data
  owner's through a handshake relayed by the model owner, which cannot read it); the model owner
  asks for the correction shares of ``c`` in JSON requests (no pickle), the dealer checks them.

:func:`installed` swaps these into CrypTen for the duration of a run and restores CrypTen after.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from common.compat import import_crypten
from common.errors import MPCError
from common.transport import Channel, ChannelClosed

crypten = import_crypten()
from crypten.common.util import count_wraps  # noqa: E402
from crypten.communicator.communicator import Communicator, _logging  # noqa: E402
from crypten.mpc.provider.provider import TupleProvider  # noqa: E402
from torch.distributed import ReduceOp  # noqa: E402

log = logging.getLogger("data_appraisal.secure_mpc")

MAX_TRIPLE_ELEMENTS = 1 << 28  # the dealer refuses larger requests (2 GiB of int64 per tensor)
OPS = {"mul": torch.mul, "matmul": torch.matmul}


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
    import sys

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


# -- wire format of tensors ---------------------------------------------------------------------


def _pack(tensors: Sequence[torch.Tensor]) -> memoryview | bytes:
    """The tensors' bytes; one tensor is sent from its own memory (it must not change until sent)."""
    if len(tensors) == 1:
        array: Any = tensors[0].detach().contiguous().numpy()
        return memoryview(array).cast("B")
    return b"".join(t.detach().contiguous().numpy().tobytes() for t in tensors)


def _unpack(data: bytearray, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Tensors shaped like ``like`` over ``data`` (a fresh buffer from the channel: no copy)."""
    out, offset = [], 0
    for t in like:
        n = t.numel() * t.element_size()
        if n == 0:
            out.append(torch.empty_like(t))
            continue
        view = torch.frombuffer(data, dtype=t.dtype, count=t.numel(), offset=offset)
        out.append(view.reshape(t.shape))
        offset += n
    return out


def _nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _combine(a: torch.Tensor, b: torch.Tensor, op: Any) -> torch.Tensor:
    if op == ReduceOp.SUM:
        return a + b
    if op == ReduceOp.BXOR:
        return a ^ b
    raise MPCError(f"the secure communicator does not implement the reduction {op}")


def _encode_obj(obj: Any) -> bytes:
    if isinstance(obj, torch.Size):
        return json.dumps({"size": list(obj)}).encode()
    return json.dumps({"value": obj}).encode()


def _decode_obj(data: bytes | bytearray) -> Any:
    decoded = json.loads(data)
    return torch.Size(decoded["size"]) if "size" in decoded else decoded["value"]


class _Pending:
    def __init__(self, action: Callable[[], object]):
        self._action: Callable[[], object] | None = action

    def wait(self) -> None:
        if self._action is not None:
            action, self._action = self._action, None
            action()


class SecureCommunicator(Communicator):
    """CrypTen's communicator for two parties (ranks 0 and 1) over one secure :class:`Channel`."""

    BYTES_PER_ELEMENT = 8

    def __init__(self, rank: int, peer: Channel, dealer: Channel | None = None):
        self.rank = rank
        self.world_size = 2
        self.peer = peer
        # every channel this party sends on, for counting its bytes
        self.channels: list[Channel] = [peer] if dealer is None else [peer, dealer]
        self._name = f"rank{rank}"
        self.reset_communication_stats()

    # CrypTen's class-level API (the module-level functions are patched by :func:`installed`)
    @classmethod
    def is_initialized(cls) -> bool:
        return True

    def get_world_size(self) -> int:
        return self.world_size

    def get_rank(self) -> int:
        return self.rank

    def get_ttp_rank(self) -> int:
        return self.world_size

    def set_name(self, name: str) -> None:
        self._name = name

    def get_name(self) -> str:
        return self._name

    def get_distributed_backend(self) -> str:
        return "data-appraisal-secure"

    # -- point to point --------------------------------------------------------------------------
    def _send(self, tensors: Sequence[torch.Tensor]) -> None:
        self.peer.wait(self.peer.send(_pack(tensors)))

    def _recv(self, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return _unpack(self.peer.recv(expected=_nbytes(like)), like)

    def _exchange(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        pending = self.peer.send(_pack(tensors))
        theirs = self._recv(tensors)
        self.peer.wait(pending)
        return theirs

    def _check_peer(self, other: int) -> None:
        if other != 1 - self.rank:
            raise MPCError(f"rank {self.rank} has no secure channel to rank {other}")

    @_logging
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self._check_peer(dst)
        self._send([tensor])

    @_logging
    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        self._check_peer(1 - self.rank if src is None else src)
        return self._recv([tensor])[0]

    @_logging
    def isend(self, tensor: torch.Tensor, dst: int) -> Any:
        self._check_peer(dst)
        future = self.peer.send(_pack([tensor]))
        return _Pending(lambda: self.peer.wait(future))

    @_logging
    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> Any:
        self._check_peer(1 - self.rank if src is None else src)
        return _Pending(lambda: tensor.copy_(self._recv([tensor])[0]))

    # -- collectives -----------------------------------------------------------------------------
    @_logging
    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        mine = list(input) if batched else [input]
        theirs = self._exchange(mine)
        out = [_combine(a, b, op) for a, b in zip(mine, theirs, strict=True)]
        return out if batched else out[0]

    @_logging
    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        mine = list(input) if batched else [input]
        if dst != self.rank:
            self._send(mine)
            return None
        out = [_combine(a, b, op) for a, b in zip(mine, self._recv(mine), strict=True)]
        return out if batched else out[0]

    @_logging
    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        if src == self.rank:
            self._send(tensors)
        else:
            for t, received in zip(tensors, self._recv(tensors), strict=True):
                t.copy_(received)
        return input

    @_logging
    def gather(self, tensor: torch.Tensor, dst: int) -> list[Any]:
        if dst != self.rank:
            self._send([tensor])
            return [None]
        theirs = self._recv([tensor])[0]
        return [tensor, theirs] if self.rank == 0 else [theirs, tensor]

    @_logging
    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        theirs = self._exchange([tensor])[0]
        return [tensor, theirs] if self.rank == 0 else [theirs, tensor]

    @_logging
    def scatter(
        self, scatter_list: Any, src: int, size: Any = None, device: Any = None
    ) -> torch.Tensor:
        if src == self.rank:
            self._send([scatter_list[1 - self.rank]])
            return scatter_list[self.rank]
        if size is None:
            size = scatter_list[self.rank].size()
        return self._recv([torch.empty(size, dtype=torch.long)])[0]

    @_logging
    def barrier(self) -> None:
        self._exchange([torch.zeros(1, dtype=torch.long)])

    @_logging
    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        self._check_peer(dst)
        self.peer.wait(self.peer.send(_encode_obj(obj)))

    @_logging
    def recv_obj(self, src: int, group: Any = None) -> Any:
        self._check_peer(src)
        return _decode_obj(self.peer.recv())

    @_logging
    def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
        if src == self.rank:
            self.peer.wait(self.peer.send(_encode_obj(obj)))
            return obj
        return _decode_obj(self.peer.recv())


# -- the dealer -------------------------------------------------------------------------------------


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise MPCError(f"the dealer got a malformed {what} {value!r}")
    if len(value) > 8 or int(np.prod(value, dtype=np.float64)) > MAX_TRIPLE_ELEMENTS:
        raise MPCError(f"the dealer refuses a {what} of {value} (too large)")
    return tuple(value)


def _result_size(op: str, size0: Sequence[int], size1: Sequence[int]) -> torch.Size:
    """The shape of ``op(a, b)`` from the operands' shapes (torch's broadcasting rules)."""
    if op == "mul":
        return torch.broadcast_shapes(tuple(size0), tuple(size1))
    a, b = list(size0), list(size1)
    if not a or not b:
        raise MPCError("matmul needs operands of at least one dimension")
    squeeze = []
    if len(a) == 1:
        a, squeeze = [1, *a], [-2]
    if len(b) == 1:
        b, squeeze = [*b, 1], [*squeeze, -1]
    if a[-1] != b[-2]:
        raise MPCError(f"matmul shapes {list(size0)} and {list(size1)} do not match")
    out = [*torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])), a[-2], b[-1]]
    for dim in sorted(squeeze):
        del out[dim]
    return torch.Size(out)


class DealerProvider(TupleProvider):
    """CrypTen's tuple-provider interface, served by our dealer over a secure channel.

    Both owners draw their shares of ``a``, ``b`` (and every other random value) from the stream
    they share with the dealer; the data owner also draws its share of ``c``; the model owner gets
    its share of ``c`` from the dealer, who computes it as ``op(a, b) - c_1``.
    """

    NAME = "TTP"

    def __init__(self, rank: int, stream: StreamRng, dealer: Channel | None):
        super().__init__()
        if (rank == 0) != (dealer is not None):
            raise MPCError("only the model owner's worker talks to the dealer")
        self._rank = rank
        self.stream = stream
        self.dealer = dealer

    def _correction(self, request: dict[str, Any], size: Any) -> torch.Tensor:
        """The last share of a tuple: the model owner asks the dealer, the data owner draws it."""
        if self._rank == 1:
            return self.stream.int64(size)
        assert self.dealer is not None
        self.dealer.wait(self.dealer.send(json.dumps(request).encode()))
        like = torch.empty(tuple(size), dtype=torch.long)
        return _unpack(self.dealer.recv(expected=_nbytes([like])), [like])[0]

    @staticmethod
    def _arithmetic(*tensors: torch.Tensor) -> tuple[Any, ...]:
        from crypten.mpc.primitives import ArithmeticSharedTensor

        return tuple(ArithmeticSharedTensor.from_shares(t, precision=0) for t in tensors)

    def generate_additive_triple(
        self, size0: Any, size1: Any, op: str, device: Any = None, *args: Any, **kwargs: Any
    ) -> tuple[Any, ...]:
        if op not in OPS or args or kwargs:
            raise MPCError(f"the dealer serves triples for {sorted(OPS)} only, not {op!r}")
        a, b = self.stream.int64(size0), self.stream.int64(size1)
        request = {"fn": "additive", "op": op, "sizes": [list(size0), list(size1)]}
        c = self._correction(request, _result_size(op, size0, size1))
        return self._arithmetic(a, b, c)

    def square(self, size: Any, device: Any = None) -> tuple[Any, ...]:
        r = self.stream.int64(size)
        return self._arithmetic(r, self._correction({"fn": "square", "sizes": [list(size)]}, size))

    def wrap_rng(self, size: Any, device: Any = None) -> tuple[Any, ...]:
        r = self.stream.int64(size)
        return self._arithmetic(r, self._correction({"fn": "wraps", "sizes": [list(size)]}, size))

    def generate_binary_triple(self, size0: Any, size1: Any, device: Any = None) -> tuple[Any, ...]:
        from crypten.mpc.primitives import BinarySharedTensor

        a, b = self.stream.int64(size0), self.stream.int64(size1)
        request = {"fn": "binary", "sizes": [list(size0), list(size1)]}
        c = self._correction(request, torch.broadcast_shapes(tuple(size0), tuple(size1)))
        return tuple(BinarySharedTensor.from_shares(t) for t in (a, b, c))

    def B2A_rng(self, size: Any, device: Any = None) -> tuple[Any, ...]:
        from crypten.mpc.primitives import BinarySharedTensor

        r_bit = self.stream.kbit(size, 1)
        (r_arith,) = self._arithmetic(self._correction({"fn": "B2A", "sizes": [list(size)]}, size))
        return r_arith, BinarySharedTensor.from_shares(r_bit)

    def finish(self) -> None:
        """Tell the dealer the run is over (model owner only)."""
        if self.dealer is not None:
            self.dealer.wait(self.dealer.send(json.dumps({"fn": "done"}).encode()))


class Dealer:
    """The dealer's state: one stream per owner, mirrored draw for draw."""

    def __init__(self, stream_mo: StreamRng, stream_do: StreamRng):
        self.s0 = stream_mo
        self.s1 = stream_do
        self.requests = 0

    def answer(self, request: Any) -> torch.Tensor | None:
        if not isinstance(request, dict):
            raise MPCError(f"the dealer got a malformed request {str(request)[:200]!r}")
        fn = request.get("fn")
        if fn == "done":
            return None
        raw_sizes = request.get("sizes")
        if not isinstance(raw_sizes, list) or not raw_sizes:
            raise MPCError(f"the dealer got a request without sizes: {str(request)[:200]!r}")
        sizes = [_shape(s, "tensor size") for s in raw_sizes]
        s0, s1 = self.s0, self.s1
        self.requests += 1
        if fn == "additive":
            op = request.get("op")
            if op not in OPS or len(sizes) != 2:
                raise MPCError(f"the dealer serves triples for {sorted(OPS)} only, not {op!r}")
            a0, b0 = s0.int64(sizes[0]), s0.int64(sizes[1])
            a1, b1 = s1.int64(sizes[0]), s1.int64(sizes[1])
            c = OPS[op](a0 + a1, b0 + b1)
            return c - s1.int64(c.size())
        if fn == "binary" and len(sizes) == 2:
            a0, b0 = s0.int64(sizes[0]), s0.int64(sizes[1])
            a1, b1 = s1.int64(sizes[0]), s1.int64(sizes[1])
            c = (a0 ^ a1) & (b0 ^ b1)
            return c ^ s1.int64(c.size())
        if fn in ("square", "wraps", "B2A") and len(sizes) == 1:
            size = sizes[0]
            if fn == "B2A":
                bit = s0.kbit(size, 1) ^ s1.kbit(size, 1)
                return bit - s1.int64(size)
            r0, r1 = s0.int64(size), s1.int64(size)
            value = (r0 + r1) * (r0 + r1) if fn == "square" else count_wraps([r0, r1])
            return value - s1.int64(size)
        raise MPCError(f"the dealer does not serve {fn!r} with {len(sizes)} sizes")


def serve_dealer(model_owner: Channel, dealer: Dealer) -> int:
    """Answer the model owner's requests until it says it is done; returns the request count."""
    while True:
        try:
            request = json.loads(model_owner.recv())
        except json.JSONDecodeError as exc:
            raise MPCError(f"the dealer got a request that is not JSON: {exc}") from exc
        answer = dealer.answer(request)
        if answer is None:
            return dealer.requests
        model_owner.wait(model_owner.send(_pack([answer])))


# -- installing into CrypTen ---------------------------------------------------------------------


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


@contextlib.contextmanager
def installed(
    communicator: SecureCommunicator,
    generators: dict[str, StreamRng],
    provider: TupleProvider | None,
) -> Iterator[None]:
    """Within this block, CrypTen runs over ``communicator`` with these generators and provider.

    ``provider`` None keeps CrypTen's configured provider (TFP, only when explicitly allowed).
    """
    import crypten.communicator as comm_module

    install_stream_rng()
    saved_comm = (comm_module.get, comm_module.is_initialized)
    saved_provider = crypten.mpc.get_default_provider
    saved_generators = {k: dict(v) for k, v in crypten.generators.items()}
    comm_module.get = lambda: communicator
    comm_module.is_initialized = lambda: True
    if provider is not None:
        crypten.mpc.get_default_provider = lambda: provider
    for key, generator in generators.items():
        crypten.generators[key] = {torch.device("cpu"): generator}
    try:
        yield
    finally:
        comm_module.get, comm_module.is_initialized = saved_comm
        crypten.mpc.get_default_provider = saved_provider
        crypten.generators.clear()
        crypten.generators.update(saved_generators)


def close_channels(*channels: Channel | None) -> None:
    for channel in channels:
        if channel is not None:
            with contextlib.suppress(ChannelClosed, OSError):
                channel.close()
