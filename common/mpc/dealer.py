"""The dealer: a third party that holds no input and serves the owners' correlated randomness.

Whoever generates the triples could unmask what the owners open, so neither owner may: the dealer
is a separate service that both trust not to collude with the other. Each owner draws its shares of
``a`` and ``b`` (and of every other correlated value) from the key stream it shares with the
dealer; the data owner also draws its share of ``c``; the dealer sends the model owner its share of
``c`` (``op(a, b) − c₁``).

The dealer serves a **plan** (:mod:`common.mpc.plan`), a pure function of the public job that it
computes itself: it pushes each planned value to the model owner in order, without being asked
(so no request costs a round trip), with the item's description, which the model owner's provider
checks against what its computation asks for. The model owner sends the dealer ``next`` after
each candidate (or once, ``retry``: the candidate's truncation checks failed and its plan is served
again, :mod:`common.mpc.truncation`) and, at the end, ``done`` with the count of items it used.
Anything else (a request, a second retry, a decision after the job's last candidate, a zero-size
or surplus item) is refused with an :class:`MPCError` naming what was asked and what was due, and
fails the session; nothing is ever computed for it. The data owner's streams are keyed by its own
link with the dealer, agreed through a handshake that the model owner relays but cannot read.

Each attempt at each candidate draws from **its own streams** (:func:`attempt_stream`): keys
derived from each link's schedule for ``(candidate, attempt)``, which no other attempt uses. Only
the model owner tells the dealer when to recompute, so it could say ``retry`` without cause (or
``next`` when the data owner recomputes); with one stream per link going on across attempts, the
dealer would then compute the model owner's corrections from the very stream values the data owner
was using for other items (its masks A of E = X − A). Now the dealer's attempt and the data
owner's draw from independent streams: the model owner's corrections are garbage to it, the
computation's checks or the dealer's refusals end the session, and its view stays independent of
the data owner's masks.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import MPCError
from common.mpc.appraisal import ATTEMPTS
from common.mpc.compat import import_crypten
from common.mpc.plan import (
    COMPARE_SHIFT,
    COMPARE_WIDTH,
    FULL,
    PRODUCT_OPS,
    RMASK_WINDOW,
    Item,
    check_item,
    cross_rows,
    product_size,
    relative_pair,
    row_bytes,
)
from common.mpc.ringmath import RingMatrix, from_low_bytes, low_bytes
from common.mpc.streams import StreamRng
from common.mpc.transport import Channel

crypten = import_crypten()
from crypten.common.util import count_wraps  # noqa: E402
from crypten.mpc.provider.provider import TupleProvider  # noqa: E402

MAX_TRIPLE_ELEMENTS = 1 << 28  # the dealer refuses larger items (2 GiB of int64 per tensor)
OPS = {"mul": torch.mul, "matmul": torch.matmul}
COMPARE_BITS = (1 << COMPARE_WIDTH) - 1  # a ``compare`` item's XOR-shared bits of a
_HEADER = struct.Struct("!I")
WINDOW = 2  # values the dealer keeps queued ahead of the model owner (bounds its memory)
# The live masks the dealer keeps in memory, newest first, in ring elements (128 MB); the older
# ones go to its spill directory. A reused mask's kept transpose (ringmath.RingMatrix) counts from
# the next draw on, so the masks in memory never take more than twice this.
MEMORY_ELEMENTS = 1 << 24

KeySchedule = Callable[[str], bytes]  # a link's derive: a label → a 32-byte key both ends know


def attempt_stream(keys: KeySchedule, index: int, attempt: int) -> StreamRng:
    """The correlated-value stream of attempt ``attempt`` at candidate ``index`` on one link.

    The only place its key is derived: both owners' providers and the dealer call it, so that the
    two ends of a link agree and no two attempts (of one candidate or of two) share a stream.
    """
    if index < 0 or not 0 <= attempt < ATTEMPTS:
        raise MPCError(
            f"no stream for attempt {attempt} at candidate {index}: a candidate has attempts "
            f"0 to {ATTEMPTS - 1}"
        )
    return StreamRng(keys(f"triples/{index}/{attempt}"))


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, int) and v > 0 for v in value):
        raise MPCError(f"the dealer got a malformed or zero-size {what} {value!r}")
    if len(value) > 8 or int(np.prod(value, dtype=np.float64)) > MAX_TRIPLE_ELEMENTS:
        raise MPCError(f"the dealer refuses a {what} of {list(value)} (too large)")
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


def _message(index: int, item: Item, value: torch.Tensor) -> bytearray:
    """The header, then the values (each row in its low bytes only, plan.row_bytes), written
    once into the message's own buffer, the values at an 8-aligned offset (the header is padded
    with spaces, which JSON ignores)."""
    header = json.dumps({"index": index, "item": item.describe()}).encode()
    header += b" " * (-(_HEADER.size + len(header)) % 8)
    start = _HEADER.size + len(header)
    message = bytearray(start + _value_bytes(item, tuple(value.shape)))
    _HEADER.pack_into(message, 0, len(header))
    message[_HEADER.size : start] = header
    if len(message) == start:  # no values (an empty shape)
        return message
    buffer = torch.frombuffer(message, dtype=torch.uint8)
    rows = row_bytes(item)
    if rows is None:
        buffer[start:].view(torch.int64).copy_(value.reshape(-1))
        return message
    each = value[0].numel()
    for row, count in zip(value.unbind(0), rows, strict=True):
        if count:
            low_bytes(row, count, out=buffer[start : start + count * each])
            start += count * each
    return message


def _value_bytes(item: Item, size: Sequence[int]) -> int:
    """The body's length of the dealer's message for ``item`` of (stacked) shape ``size``."""
    rows = row_bytes(item)
    if rows is None:
        return 8 * math.prod(size)
    return sum(rows) * math.prod(size[1:])


def _decode(item: Item, data: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The value of shape ``size`` from its bytes ``data`` (uint8, a view of the message), decoded
    once into its own tensor."""
    rows = row_bytes(item)
    out = torch.empty(tuple(size), dtype=torch.long)
    if rows is None:
        out.reshape(-1).view(torch.uint8).copy_(data)
        return out
    each, start = math.prod(size[1:]), 0
    for row, count in zip(out.reshape(len(rows), -1), rows, strict=True):
        if count == 0:
            row.zero_()
        else:
            from_low_bytes(data[start : start + count * each], count, (each,), out=row)
        start += count * each
    return out


class DealerProvider(TupleProvider):
    """CrypTen's tuple-provider interface, served by our dealer over a secure channel.

    Both owners draw their shares of ``a``, ``b`` (and every other random value) from the stream
    they share with the dealer for the current attempt at the current candidate
    (:func:`attempt_stream` of ``keys``, switched by :meth:`begin` and :meth:`retry`); the data
    owner also draws its share of ``c``; the model owner receives its share of ``c``, pushed by the
    dealer in the plan's order. With ``plan`` given, every draw is checked against it first (the
    data owner does so: nothing it masks with a value the dealer would not mirror ever leaves its
    process).
    """

    NAME = "TTP"

    def __init__(
        self,
        rank: int,
        keys: KeySchedule,
        dealer: Channel | None,
        plan: Callable[[int], list[Item]] | None = None,
    ):
        super().__init__()
        if (rank == 0) != (dealer is not None):
            raise MPCError("only the model owner's worker talks to the dealer")
        self._rank = rank
        self._keys = keys
        self._stream: StreamRng | None = None  # the current attempt's (none outside a candidate)
        self._index = -1  # the current candidate
        self.dealer = dealer
        self._plan_of = plan
        self._plan: list[Item] | None = None
        self._next = 0  # the index of the next item (of the whole session)
        self._in_plan = 0  # the index of the next item within the current candidate's plan
        self._masks: list[tuple[tuple[int, ...], int]] = []  # per candidate: shape, holder
        # per candidate: the rmasks' shapes and widths
        self._rmasks: list[tuple[tuple[int, ...], int]] = []
        self._retried = False  # whether the current candidate was recomputed

    @property
    def stream(self) -> StreamRng:
        """The current attempt's stream; a draw outside any candidate is refused."""
        if self._stream is None:
            raise MPCError("a correlated value was asked for outside any candidate's computation")
        return self._stream

    def begin(self, index: int) -> None:
        """A new candidate: its plan (when checking), its first attempt's stream and fresh mask
        numbering."""
        self._plan = None if self._plan_of is None else self._plan_of(index)
        self._stream = attempt_stream(self._keys, index, 0)
        self._index = index
        self._in_plan = 0
        self._masks = []
        self._rmasks = []
        self._retried = False

    def _used_whole_plan(self) -> None:
        if self._plan is not None and self._in_plan != len(self._plan):
            raise MPCError(
                f"this computation used {self._in_plan} correlated values, its plan has "
                f"{len(self._plan)}: the computation diverged from the job's plan"
            )

    def _decide(self, fn: str) -> None:
        if self.dealer is not None:
            self.dealer.wait(self.dealer.send(json.dumps({"fn": fn}).encode()))

    def retry(self) -> None:
        """The attempt's truncation checks failed: the candidate's plan once more (at most once),
        with fresh values from the second attempt's own stream; the model owner tells the dealer."""
        self._used_whole_plan()
        if self._retried:
            raise MPCError("a candidate is recomputed at most once")
        self._retried = True
        self._decide("retry")
        self._stream = attempt_stream(self._keys, self._index, 1)
        self._in_plan = 0
        self._masks = []
        self._rmasks = []

    def end(self) -> None:
        """The candidate is over: it must have used its whole plan; the dealer may go on."""
        self._used_whole_plan()
        self._decide("next")
        self._stream = None

    def _check(self, item: Item) -> None:
        check_item(item)
        if self._plan is None:
            return
        if self._in_plan >= len(self._plan):
            raise MPCError(
                f"this computation asks for {item} beyond its plan's {len(self._plan)} items"
            )
        planned = self._plan[self._in_plan]
        if planned != item:
            raise MPCError(
                f"this computation asks for {item} where the plan's item {self._in_plan} is "
                f"{planned}: the parties' code or job differ"
            )

    def _correction(self, item: Item, size: Any) -> torch.Tensor:
        """The last share of a value: the dealer pushes the model owner's, the data owner draws."""
        self._check(item)
        index = self._next
        self._next += 1
        self._in_plan += 1
        if self._rank == 1:
            return self.stream.int64(size)
        assert self.dealer is not None
        message = self.dealer.recv()
        if len(message) < _HEADER.size:
            raise MPCError("the dealer sent a malformed value")
        (length,) = _HEADER.unpack(message[: _HEADER.size])
        header = json.loads(bytes(message[_HEADER.size : _HEADER.size + length]))
        if header.get("index") != index or header.get("item") != item.describe():
            raise MPCError(
                f"the dealer served {header} where this computation asks for item {index} "
                f"{item}: the parties' plans diverged"
            )
        start = _HEADER.size + length
        if len(message) - start != _value_bytes(item, tuple(size)):
            raise MPCError(f"the dealer's value for {item} has {len(message) - start} bytes")
        # the message holds at least its header (checked above): never an empty buffer
        return _decode(item, torch.frombuffer(message, dtype=torch.uint8)[start:], tuple(size))

    def _mark(self, item: Item) -> None:
        """An item that carries no value for the model owner (a mask): checked and counted."""
        self._check(item)
        self._next += 1
        self._in_plan += 1

    @staticmethod
    def _arithmetic(*tensors: torch.Tensor) -> tuple[Any, ...]:
        from crypten.mpc.primitives import ArithmeticSharedTensor

        return tuple(ArithmeticSharedTensor.from_shares(t, precision=0) for t in tensors)

    def generate_additive_triple(
        self, size0: Any, size1: Any, op: str, device: Any = None, *args: Any, **kwargs: Any
    ) -> tuple[Any, ...]:
        if op not in OPS or args or kwargs:
            raise MPCError(f"the dealer serves triples for {sorted(OPS)} only, not {op!r}")
        item = Item("additive", (tuple(size0), tuple(size1)), op=op)
        self._check(item)
        a, b = self.stream.int64(size0), self.stream.int64(size1)
        c = self._correction(item, result_size(op, size0, size1))
        return self._arithmetic(a, b, c)

    def square(self, size: Any, device: Any = None) -> tuple[Any, ...]:
        item = Item("square", (tuple(size),))
        self._check(item)
        r = self.stream.int64(size)
        return self._arithmetic(r, self._correction(item, size))

    def wrap_rng(self, size: Any, device: Any = None) -> tuple[Any, ...]:
        item = Item("wraps", (tuple(size),))
        self._check(item)
        r = self.stream.int64(size)
        return self._arithmetic(r, self._correction(item, size))

    def binary_triple(self, size0: Any, size1: Any) -> tuple[torch.Tensor, ...]:
        """This party's XOR shares of a, b and c = a ∧ b (the tensors themselves)."""
        item = Item("binary", (tuple(size0), tuple(size1)))
        self._check(item)
        a, b = self.stream.int64(size0), self.stream.int64(size1)
        c = self._correction(item, torch.broadcast_shapes(tuple(size0), tuple(size1)))
        return a, b, c

    def generate_binary_triple(self, size0: Any, size1: Any, device: Any = None) -> tuple[Any, ...]:
        from crypten.mpc.primitives import BinarySharedTensor

        return tuple(BinarySharedTensor.from_shares(t) for t in self.binary_triple(size0, size1))

    def B2A_rng(self, size: Any, device: Any = None) -> tuple[Any, ...]:
        from crypten.mpc.primitives import BinarySharedTensor

        item = Item("B2A", (tuple(size),))
        self._check(item)
        r_bit = self.stream.kbit(size, 1)
        (r_arith,) = self._arithmetic(self._correction(item, size))
        return r_arith, BinarySharedTensor.from_shares(r_bit)

    # -- this project's correlated values (common.mpc.products) ---------------------------------
    def mask(self, size: Any, holder: int) -> tuple[int, torch.Tensor | None]:
        """A uniform mask A for a matrix ``holder`` holds in the clear; only the holder gets A."""
        item = Item("mask", (tuple(size),), holder=holder)
        self._mark(item)
        self._masks.append((tuple(size), holder))
        return len(self._masks) - 1, self.stream.int64(size) if self._rank == holder else None

    def product(
        self, mask: int, op: str, size_b: Any, rows: Sequence[int] | None, holder: int
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """For mask ``mask`` (held by ``holder``): the other party's uniform B, and this party's
        share of ``A[rows] @ B`` (``op`` matmul) or ``A[rows]ᵀ @ B`` (tmatmul)."""
        shape, mask_holder = self._masks[mask]
        if mask_holder != holder:
            raise MPCError(f"mask {mask} is held by party {mask_holder}, not {holder}")
        item = Item(
            "product",
            (tuple(size_b),),
            op=op,
            mask=mask,
            rows=None if rows is None else tuple(int(r) for r in rows),
        )
        self._check(item)
        B = self.stream.int64(size_b) if self._rank != holder else None
        return B, self._correction(item, product_size(item, shape))

    # -- reused openings (common.mpc.fixedpoint, docs/protocol.md "Reused openings") ----------
    def rmask(self, size: Any, width: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        """A fresh uniform mask a of one shared value, opened on its low ``width`` bits: this
        party's shares of a (drawn from its stream, as the other owner draws its own), of
        ā = the signed value of a's low ``width`` bits and of m = their top bit
        (docs/protocol.md, "Narrow openings")."""
        item = Item("rmask", (tuple(size),), widths=(width,))
        self._rmasks.append((tuple(size), width))
        a = self.stream.int64(size)
        if width == FULL:  # a full opening: a itself, no carry; the dealer sends nothing
            self._mark(item)
            return len(self._rmasks) - 1, a, torch.zeros_like(a)
        self._check(item)
        h, m = self._correction(item, (2, *tuple(size))).unbind(0)
        return len(self._rmasks) - 1, a - (h << width), m

    def cross(self, i: int, j: int) -> torch.Tensor:
        """This party's shares of ā_i·ā_j, ā_i·m_j, m_i·ā_j and m_i·m_j (elementwise, stacked)
        for the candidate's rmasks i and j; of ā_i² and ā_i·m_i only for a square (i = j)."""
        (size_i, width_i), (size_j, width_j) = self._rmasks[i], self._rmasks[j]
        sizes = (size_i, size_j)
        pair = relative_pair(len(self._rmasks), i, j)
        item = Item("cross", sizes, pair=pair, widths=(width_i, width_j))
        self._check(item)
        parts = cross_rows(width_i, width_j, i == j)
        return self._correction(item, (parts, *torch.broadcast_shapes(*sizes)))

    def compare(self, size: Any, width: int) -> tuple[torch.Tensor, ...]:
        """One comparison-and-select's values, this party's shares: a uniform a in
        [0, 2^COMPARE_OPENING) (arithmetic; its stream value less 2^COMPARE_OPENING·h), bits
        COMPARE_SHIFT … COMPARE_SHIFT + COMPARE_WIDTH − 1 of a (XOR), a random bit ρ (XOR and
        arithmetic), a·ρ, the top bit m of a and m·ρ (arithmetic)."""
        item = Item("compare", (tuple(size),), widths=(width,))
        self._check(item)
        u = self.stream.int64(size)
        rho_bin = self.stream.kbit(size, 1)
        alpha, rho, a_rho, h, m, m_rho = self._correction(item, (6, *tuple(size))).unbind(0)
        a = u if width == FULL else u - (h << width)
        return a, alpha & COMPARE_BITS, rho_bin, rho, a_rho, m, m_rho

    def lift(self, size: Any, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One lift's values (:func:`common.mpc.fixedpoint.lift`): this party's random bit r_i
        (from its stream) and its share of r₀·r₁."""
        item = Item("lift", (tuple(size),), widths=(width,))
        self._check(item)
        bit = self.stream.kbit(size, 1)
        return bit, self._correction(item, (1, *tuple(size)))[0]

    def finish(self) -> None:
        """Tell the dealer the run is over, with the count of values used (model owner only)."""
        if self.dealer is not None:
            done = json.dumps({"fn": "done", "items": self._next}).encode()
            self.dealer.wait(self.dealer.send(done))


class Dealer:
    """The dealer's state: one stream per owner, mirrored draw for draw, and the plan it serves.

    The streams are those of the current attempt at the current candidate (:func:`attempt_stream`
    of each owner's link, switched by :meth:`begin`), the ones that owner's provider draws from.
    With ``spill`` (a private directory), the live masks (fine-tuning reuses every chunk's mask
    in every step) beyond the newest ``memory_elements`` ring elements are kept there, not in
    memory, and read back for each product: a candidate of one chunk stays in memory.
    """

    def __init__(
        self,
        keys_mo: KeySchedule,
        keys_do: KeySchedule,
        spill: Path | None = None,
        *,
        memory_elements: int = MEMORY_ELEMENTS,
    ):
        self._keys = (keys_mo, keys_do)
        self.streams: tuple[StreamRng, StreamRng] | None = None  # set by begin
        self.served = 0  # items of the session's plans served so far
        self.spill = spill
        self.memory_elements = memory_elements
        self._masks: list[tuple[RingMatrix | Path | None, int]] = []  # masks A (or files)
        # the candidate's last rmasks: ā (both shares' sum), m and the width
        self._rmasks: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def begin(self, index: int, attempt: int) -> None:
        """Attempt ``attempt`` at candidate ``index``: its own streams, no masks."""
        keys_mo, keys_do = self._keys
        self.streams = (
            attempt_stream(keys_mo, index, attempt),
            attempt_stream(keys_do, index, attempt),
        )
        for i in range(len(self._masks)):
            self.release(i)
        self._masks = []
        self._rmasks = []

    def release(self, mask: int) -> None:
        """Forget mask ``mask`` after its plan's last product: a streamed candidate's chunks are
        masked one by one, and the dealer then holds one chunk's mask at a time, not n·d."""
        A, holder = self._masks[mask]
        if isinstance(A, Path):
            A.unlink(missing_ok=True)
        self._masks[mask] = (None, holder)

    def _spill_live(self, incoming: int) -> None:
        """Before a mask of ``incoming`` elements is drawn: spill the live masks beyond the
        newest ``memory_elements`` elements (the incoming one counted first)."""
        if self.spill is None:
            return
        kept = incoming
        for i in reversed(range(len(self._masks))):
            A, holder = self._masks[i]
            if not isinstance(A, RingMatrix):
                continue
            kept += A.elements
            if kept > self.memory_elements:
                file = self.spill / f"mask-{i}.npy"
                np.save(file, A.value.numpy())
                self._masks[i] = (file, holder)

    def _mask(self, mask: int) -> tuple[RingMatrix, int]:
        A, holder = self._masks[mask]
        if A is None:
            raise MPCError(f"the plan uses mask {mask} after its last product")
        return (RingMatrix(torch.from_numpy(np.load(A))) if isinstance(A, Path) else A), holder

    def value(self, item: Item) -> torch.Tensor | None:
        """Mirror both owners' draws for ``item``; the model owner's share (None for a mask)."""
        check_item(item)
        sizes = [_shape(list(s), "tensor size") for s in item.sizes]
        if self.streams is None:
            raise MPCError(f"the dealer was asked for {item} before any candidate began")
        s0, s1 = self.streams
        self.served += 1
        if item.fn == "additive":
            if item.op not in OPS or len(sizes) != 2:
                raise MPCError(f"the dealer serves triples for {sorted(OPS)} only, not {item.op!r}")
            a0, b0 = s0.int64(sizes[0]), s0.int64(sizes[1])
            a1, b1 = s1.int64(sizes[0]), s1.int64(sizes[1])
            c = OPS[item.op](a0 + a1, b0 + b1)
            return c - s1.int64(c.size())
        if item.fn == "binary" and len(sizes) == 2:
            a0, b0 = s0.int64(sizes[0]), s0.int64(sizes[1])
            a1, b1 = s1.int64(sizes[0]), s1.int64(sizes[1])
            c = (a0 ^ a1) & (b0 ^ b1)
            return c ^ s1.int64(c.size())
        if item.fn in ("square", "wraps", "B2A") and len(sizes) == 1:
            size = sizes[0]
            if item.fn == "B2A":
                bit = s0.kbit(size, 1) ^ s1.kbit(size, 1)
                return bit - s1.int64(size)
            r0, r1 = s0.int64(size), s1.int64(size)
            value = (r0 + r1) * (r0 + r1) if item.fn == "square" else count_wraps([r0, r1])
            return value - s1.int64(size)
        if item.fn == "mask" and item.holder in (0, 1) and len(sizes) == 1:
            self._spill_live(math.prod(sizes[0]))
            A = RingMatrix((s0, s1)[item.holder].int64(sizes[0]))
            self._masks.append((A, item.holder))
            return None
        if (
            item.fn == "product"
            and item.op in PRODUCT_OPS
            and item.mask is not None
            and len(sizes) == 1
        ):
            if not 0 <= item.mask < len(self._masks):
                raise MPCError(f"the product {item} names a mask that was not drawn")
            A, holder = self._mask(item.mask)
            product_size(item, A.shape)
            # B comes from the party that does not hold the mask (the holder's stream drew A)
            B = (s0, s1)[1 - holder].int64(sizes[0])
            rows = None if item.rows is None else torch.as_tensor(item.rows, dtype=torch.long)
            assert item.op is not None  # one of PRODUCT_OPS
            C = A.product(item.op, B, rows)  # as the owners' products (products.py)
            return C - s1.int64(C.size())
        if item.fn == "rmask" and len(sizes) == 1 and item.widths is not None:
            size, (width,) = sizes[0], item.widths
            a = s0.int64(size) + s1.int64(size)
            if width == FULL:  # a full opening's mask: nothing to send
                self._rmasks = [*self._rmasks[1 - RMASK_WINDOW :], (a, torch.zeros_like(a), width)]
                return None
            low = a & ((1 << width) - 1)
            m = low >> (width - 1)
            a_bar = low - (m << width)  # the signed value of a's low bits
            h = (a - a_bar) >> width  # a = ā + 2^width·h
            self._rmasks = [*self._rmasks[1 - RMASK_WINDOW :], (a_bar, m, width)]
            hm = torch.stack([h, m])
            return hm - s1.int64(hm.size())
        if item.fn == "cross" and item.pair is not None and len(sizes) == 2:
            back_i, back_j = item.pair
            if max(back_i, back_j) >= min(len(self._rmasks), RMASK_WINDOW):
                raise MPCError(f"the cross product {item} names an rmask that was not drawn")
            (a_i, m_i, w_i), (a_j, m_j, w_j) = self._rmasks[-1 - back_i], self._rmasks[-1 - back_j]
            if (tuple(a_i.shape), tuple(a_j.shape)) != tuple(sizes):
                raise MPCError(f"the cross product {item} does not fit its rmasks' shapes")
            if item.widths != (w_i, w_j):
                raise MPCError(f"the cross product {item} does not name its rmasks' widths")
            if w_i == w_j == FULL:  # two full openings: a_i·a_j
                c = (a_i * a_j).unsqueeze(0)
            elif back_i == back_j:  # a square: ā² and ā·m (m² = m, and m's shares are known)
                c = torch.stack([a_i * a_i, a_i * m_i])
            else:
                c = torch.stack(torch.broadcast_tensors(a_i * a_j, a_i * m_j, m_i * a_j, m_i * m_j))
            return c - s1.int64(c.size())
        if item.fn == "lift" and len(sizes) == 1:
            size = sizes[0]
            both = (s0.kbit(size, 1) * s1.kbit(size, 1)).unsqueeze(0)
            return both - s1.int64(both.size())
        if item.fn == "compare" and len(sizes) == 1:
            size = sizes[0]
            (width,) = item.widths or (FULL,)
            u = s0.int64(size) + s1.int64(size)
            full = width == FULL  # the whole of u is the mask: no h, no top bit
            a = u if full else u & ((1 << width) - 1)
            m = torch.zeros_like(u) if full else a >> (width - 1)
            rho = s0.kbit(size, 1) ^ s1.kbit(size, 1)
            r1 = s1.int64((6, *size))
            alpha0 = ((a >> COMPARE_SHIFT) & COMPARE_BITS) ^ (r1[0] & COMPARE_BITS)
            h = torch.zeros_like(u) if full else (u - a) >> width
            values = [rho, a * rho, h, m, m * rho]
            return torch.stack([alpha0, *(v - r for v, r in zip(values, r1[1:], strict=True))])
        raise MPCError(f"the dealer does not serve {item}")


def _request(model_owner: Channel) -> Any:
    message = bytes(model_owner.recv())
    try:
        return json.loads(message)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return message[:200]


def _refuse(request: Any, served: int, expected: str) -> MPCError:
    return MPCError(
        f"the model owner asked the dealer for {str(request)[:200]} after the plan's "
        f"{served} items were served, where {expected} was due: the dealer serves the job's plan "
        "only, in order, and nothing beyond it"
    )


class Attempts:
    """Where the dealer is in the job: attempt ``attempt`` at candidate ``index`` of ``total``.

    Only the model owner's decisions move it, and only as far as the job can contain: after each
    attempt's plan, ``next`` (the next candidate) or, once per candidate, ``retry`` (its
    recomputation); after the last candidate, ``done`` with the count of items served. Anything
    else (a second retry, a decision beyond the job's last candidate, ``done`` early, any other
    message) is refused with an :class:`MPCError` that names it and ends the session.
    """

    def __init__(self, total: int):
        if total < 1:
            raise MPCError(f"the dealer serves a job of at least one candidate, not {total}")
        self.total = total
        self.index = 0
        self.attempt = 0

    @property
    def over(self) -> bool:
        """Every candidate's plan was served: only ``done`` may come."""
        return self.index >= self.total

    def decide(self, request: Any, served: int) -> None:
        """Move on as ``request`` (the model owner's message after an attempt's plan) says."""
        if self.over:
            raise self._beyond(request, served)
        if request == {"fn": "next"}:
            self.index, self.attempt = self.index + 1, 0
            return
        if request == {"fn": "retry"} and self.attempt + 1 < ATTEMPTS:
            self.attempt += 1
            return
        if request == {"fn": "retry"}:
            raise MPCError(
                f"the model owner asked the dealer for a second recomputation of candidate "
                f"{self.index} after the plan's {served} items were served: a candidate is "
                "recomputed at most once, and the dealer serves the job's plan only"
            )
        due = "'next' or one 'retry'" if self.attempt == 0 else "'next' (after the one retry)"
        raise _refuse(request, served, f"{due} for candidate {self.index}")

    def _beyond(self, request: Any, served: int) -> MPCError:
        return _refuse(
            request,
            served,
            f"'done' (the job's {self.total} candidates were all served: there is no candidate "
            f"{self.total} to go on to or to recompute)",
        )

    def finish(self, request: Any, served: int) -> None:
        """The model owner's last message: ``done`` with the count of items served, when due."""
        if not self.over:
            raise MPCError(f"the dealer cannot finish at candidate {self.index} of {self.total}")
        if request in ({"fn": "next"}, {"fn": "retry"}):
            raise self._beyond(request, served)
        if request != {"fn": "done", "items": served}:
            raise _refuse(request, served, f"'done' with the {served} items served")


def serve_dealer(
    model_owner: Channel, dealer: Dealer, plan_of: Callable[[int], list[Item]], total: int
) -> int:
    """Push every planned value of the job's ``total`` candidates to the model owner, in order,
    then expect its ``done``.

    After each candidate's plan the model owner says ``next``, or ``retry`` when the candidate's
    truncation checks failed (:mod:`common.mpc.truncation`): the same plan is served once more,
    from the second attempt's own streams, and after it only ``next`` is accepted (a candidate is
    recomputed at most once, :class:`Attempts`). Each candidate's plan is ``plan_of(index)`` (the
    worker computes them all before the rendezvous). Returns the number of items served. Any other
    message from the model owner is refused with an :class:`MPCError` that names it: a deviating
    model owner cannot obtain anything off the plan, nor, by forging a decision, values drawn from
    the streams of another attempt than the one the dealer serves.
    """
    pending: list[Future[None]] = []
    attempts = Attempts(total)
    plan: list[Item] = []
    last_use: dict[int | None, int] = {}
    while not attempts.over:
        if attempts.attempt == 0:
            plan = plan_of(attempts.index)
            last_use = {item.mask: j for j, item in enumerate(plan) if item.fn == "product"}
        dealer.begin(attempts.index, attempts.attempt)
        for j, item in enumerate(plan):
            index = dealer.served
            value = dealer.value(item)
            if item.mask is not None and last_use.get(item.mask) == j:
                dealer.release(item.mask)  # a streamed candidate's chunk mask, done with
            if value is None:
                continue
            if len(pending) >= WINDOW:
                model_owner.wait(pending.pop(0))
            pending.append(model_owner.send(_message(index, item, value)))
        attempts.decide(_request(model_owner), dealer.served)
    for future in pending:
        model_owner.wait(future)
    attempts.finish(_request(model_owner), dealer.served)
    return dealer.served
