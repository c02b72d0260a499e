"""CrypTen's two-party protocols over this project's authenticated, encrypted channels.

:class:`SecureCommunicator` implements CrypTen's communicator interface (the collectives its
two-party protocols use) over one secure :class:`~common.mpc.transport.Channel` between the owners'
workers; CrypTen's own byte and round counting (``_logging``) is kept, so its statistics stay
comparable. :func:`installed` swaps it, the key-stream generators (:mod:`common.mpc.streams`) and
the dealer's provider (:mod:`common.mpc.dealer`) into CrypTen for one run and restores CrypTen after.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from common.errors import ChannelClosed, MPCError
from common.mpc.compat import import_crypten
from common.mpc.streams import StreamRng, install_stream_rng
from common.mpc.transport import Channel

crypten = import_crypten()
from crypten.communicator.communicator import Communicator, _logging  # noqa: E402
from crypten.mpc.provider.provider import TupleProvider  # noqa: E402
from torch.distributed import ReduceOp  # noqa: E402

# -- wire format of tensors ---------------------------------------------------------------------


def pack(tensors: Sequence[torch.Tensor]) -> memoryview | bytes:
    """The tensors' bytes; one tensor is sent from its own memory (it must not change until sent)."""
    if len(tensors) == 1:
        array: Any = tensors[0].detach().contiguous().numpy()
        return memoryview(array).cast("B")
    return b"".join(t.detach().contiguous().numpy().tobytes() for t in tensors)


def unpack(data: bytearray, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
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


def nbytes(tensors: Sequence[torch.Tensor]) -> int:
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
        self.peer.wait(self.peer.send(pack(tensors)))

    def _recv(self, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return unpack(self.peer.recv(expected=nbytes(like)), like)

    def _exchange(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        pending = self.peer.send(pack(tensors))
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
        future = self.peer.send(pack([tensor]))
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


# -- installing into CrypTen ---------------------------------------------------------------------


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
