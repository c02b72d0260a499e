"""The dealer: a third party that holds no input and serves the owners' Beaver triples.

Whoever generates the triples could unmask what the owners open, so neither owner may: the dealer
is a separate service that both trust not to collude with the other. Each owner draws its shares of
``a`` and ``b`` (and of every other correlated value) from the key stream it shares with the
dealer; the data owner also draws its share of ``c``; the model owner asks the dealer for its share
of ``c`` (``op(a, b) − c₁``) in JSON requests listing sizes (no pickle), which the dealer checks.
The data owner's stream is keyed by its own link with the dealer, agreed through a handshake that
the model owner relays but cannot read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from common.errors import MPCError
from common.mpc.communicator import nbytes, pack, unpack
from common.mpc.compat import import_crypten
from common.mpc.streams import StreamRng
from common.mpc.transport import Channel

crypten = import_crypten()
from crypten.common.util import count_wraps  # noqa: E402
from crypten.mpc.provider.provider import TupleProvider  # noqa: E402

MAX_TRIPLE_ELEMENTS = 1 << 28  # the dealer refuses larger requests (2 GiB of int64 per tensor)
OPS = {"mul": torch.mul, "matmul": torch.matmul}


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise MPCError(f"the dealer got a malformed {what} {value!r}")
    if len(value) > 8 or int(np.prod(value, dtype=np.float64)) > MAX_TRIPLE_ELEMENTS:
        raise MPCError(f"the dealer refuses a {what} of {value} (too large)")
    return tuple(value)


def result_size(op: str, size0: Sequence[int], size1: Sequence[int]) -> torch.Size:
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
        return unpack(self.dealer.recv(expected=nbytes([like])), [like])[0]

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
        c = self._correction(request, result_size(op, size0, size1))
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
        model_owner.wait(model_owner.send(pack([answer])))
