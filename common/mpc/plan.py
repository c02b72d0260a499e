"""The dealer's plan: every correlated value one candidate's computation draws, in order.

The protocols' shapes never depend on the data, so the sequence of correlated values (Beaver
triples, square pairs, wrap counts, B2A bits, masks of a private matrix and their products) is a
pure function of the public :class:`~common.protocol.JobSpec` and the candidate's index. Each party
computes it the same way, by running the candidate's appraisal once *without inputs*
(:func:`compute_plan`): a communicator that sends nothing and answers zeros, a provider that records
each request and answers zeros. The dealer serves exactly this plan, in order, and nothing else
(:mod:`common.mpc.dealer`); the data owner checks each of its own draws against it before anything
masked by that draw leaves its process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from common.errors import MPCError
from common.mpc.compat import import_crypten
from common.mpc.shards import WHOLE, Shard

crypten = import_crypten()
from crypten.mpc.provider.provider import TupleProvider  # noqa: E402

FNS = (
    "additive",
    "binary",
    "square",
    "wraps",
    "B2A",
    "mask",
    "product",
    "rmask",
    "cross",
    "compare",
    "lift",
)
PRODUCT_OPS = ("matmul", "tmatmul")  # A[rows] @ B, or A[rows]ᵀ @ B


def _dims(size: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in size)


@dataclass(frozen=True)
class Item:
    """One correlated value of the plan.

    ``fn`` is CrypTen's tuple kind (``additive`` with ``op`` mul or matmul, ``binary``, ``square``,
    ``wraps``, ``B2A``) or one of this project's two: ``mask`` (a uniform mask A of a matrix held
    in the clear by party ``holder``, drawn from that party's stream and kept by the dealer) and
    ``product`` (a uniform B drawn by the other party and shares of ``A[rows] @ B`` or
    ``A[rows]ᵀ @ B`` for the ``mask``-th mask of the candidate); and the reused openings of
    :mod:`common.mpc.fixedpoint` (docs/protocol.md, "Narrow openings"): ``rmask`` (a uniform
    additive mask a of one shared value, drawn by both owners from their streams, opened on its
    low ``width`` bits: the dealer sends shares of h and m, with ā = a − 2^width·h the signed
    value of those bits and m their top bit), ``cross`` (shares of ā_iā_j, ā_i·m_j, m_i·ā_j and
    m_i·m_j for the ``pair`` of the candidate's rmasks; ā_i² and ā_i·m_i for a square) and
    ``compare`` (a uniform a in [0, 2^COMPARE_OPENING), an XOR sharing of its bits COMPARE_SHIFT …
    COMPARE_SHIFT + COMPARE_WIDTH − 1, a random bit ρ in both sharings, its top bit m and shares
    of a·ρ and m·ρ: one comparison-and-select of :func:`common.mpc.fixedpoint.row_max`);
    and ``lift`` (a random bit r_i from each owner's stream and shares of r₀·r₁: one
    :func:`common.mpc.fixedpoint.lift` of a narrow masked product to the full ring).
    """

    fn: str
    sizes: tuple[tuple[int, ...], ...]
    op: str | None = None
    holder: int | None = None
    mask: int | None = None
    rows: tuple[int, ...] | None = None
    pair: tuple[int, int] | None = None
    widths: tuple[int, ...] | None = None

    def describe(self) -> dict[str, Any]:
        """The item as JSON (the rows as a digest): what the dealer sends with each value."""
        out: dict[str, Any] = {"fn": self.fn, "sizes": [list(s) for s in self.sizes]}
        if self.op is not None:
            out["op"] = self.op
        if self.holder is not None:
            out["holder"] = self.holder
        if self.mask is not None:
            out["mask"] = self.mask
        if self.pair is not None:
            out["pair"] = list(self.pair)
        if self.widths is not None:
            out["widths"] = list(self.widths)
        if self.rows is not None:
            rows = np.asarray(self.rows, dtype=np.int64).tobytes()
            out["rows"] = hashlib.sha256(rows).hexdigest()[:16]
        return out

    def __str__(self) -> str:
        return json.dumps(self.describe())

    def elements(self) -> int:
        each = sum(int(np.prod(s, dtype=np.int64)) for s in self.sizes)
        if self.fn == "rmask":  # a, then h and m
            return 3 * each
        if self.fn == "cross":  # up to four products of the broadcast shape
            rows = row_bytes(self)
            return len(rows or (0,)) * int(
                np.prod(torch.broadcast_shapes(*self.sizes), dtype=np.int64)
            )
        return each


COMPARE_SHIFT, COMPARE_WIDTH = 9, 16  # the bits of a ``compare`` item's a that are XOR-shared
# A comparison's difference is opened on its low COMPARE_OPENING bits (docs/protocol.md, "Narrow
# openings"): the XOR-shared bits lie below them, and the offset 2^(COMPARE_OPENING − 2) added
# before the opening lies above them (it does not change the compared bits).
COMPARE_OPENING = 32
assert COMPARE_OPENING - 2 - COMPARE_SHIFT >= COMPARE_WIDTH
RMASK_WINDOW = 16  # a ``cross`` item names one of the candidate's last 16 rmasks
OPENING_WIDTHS = (16, 24, 32, 40, 48, 56)  # the bits a narrow ``rmask``'s opening may carry
FULL = 64  # a full opening: the job's ``openings`` = "full" (no carry, nothing but ā_iā_j shared)
MASKED_WIDTHS = (48, 56)  # the bits of a narrow masked matrix (a ``lift`` item's width)


def relative_pair(count: int, i: int, j: int) -> tuple[int, int]:
    """The ``pair`` of a ``cross`` item for rmasks i and j of ``count``: how far back each is
    (0: the latest). Relative, so that a function planned once per shape (:func:`shape_memo`)
    names the same masks wherever its items are replayed."""
    pair = (count - 1 - i, count - 1 - j)
    if not all(0 <= back < RMASK_WINDOW for back in pair):
        raise MPCError(f"a cross product names rmasks {i}, {j} of {count}: outside the window")
    return pair


def check_item(item: Item) -> None:
    """Refuse an item no honest computation makes (zero-size or malformed dimensions)."""
    if item.fn not in FNS:
        raise MPCError(f"the plan names an unknown correlated value {item.fn!r}")
    for size in item.sizes:
        if any(s <= 0 for s in size):
            raise MPCError(f"the dealer refuses a zero-size or negative dimension in {item}")
    if item.fn == "cross" and (
        item.pair is None
        or len(item.sizes) != 2
        or not all(0 <= back < RMASK_WINDOW for back in item.pair)
    ):
        raise MPCError(f"the cross product {item} does not name two of the last rmasks")
    if item.fn in ("rmask", "cross", "lift", "compare"):
        count = {"rmask": 1, "cross": 2, "lift": 1, "compare": 1}[item.fn]
        allowed = {
            "lift": MASKED_WIDTHS,
            "compare": (COMPARE_OPENING, FULL),
        }.get(item.fn, (*OPENING_WIDTHS, FULL))
        if item.widths is None or len(item.widths) != count or not set(item.widths) <= set(allowed):
            raise MPCError(f"the item {item} does not name {count} width(s) among {list(allowed)}")


def row_bytes(item: Item) -> tuple[int, ...] | None:
    """The bytes of each row of a stacked value the dealer sends (``rmask``, ``cross``, ``lift``,
    ``compare``), or None for whole int64 values. A row that the computation only ever multiplies
    by 2^k matters modulo 2^(64 − k) only: its higher bytes are not sent (docs/protocol.md,
    "Narrow openings")."""
    if item.fn == "rmask":  # h and m, both multiplied by 2^w (a full opening: none, no message)
        (w,) = item.widths or (FULL,)
        return (8 - w // 8, 8 - w // 8)
    if item.fn == "cross":  # ā_iā_j; ā_i·m_j times 2^w_j; m_i·ā_j times 2^w_i; m_i·m_j times both
        wi, wj = item.widths or (FULL, FULL)
        if wi == wj == FULL:
            return (8,)  # a_i·a_j only
        if item.pair is not None and item.pair[0] == item.pair[1]:
            return (8, 8 - wi // 8)  # ā², and ā·m times 2^(w+1)
        return (8, 8 - wj // 8, 8 - wi // 8, max(0, 8 - (wi + wj) // 8))
    if item.fn == "lift":  # r₀·r₁, whose carry term is multiplied by 2^width
        (w,) = item.widths or (64,)
        return (8 - w // 8,)
    if item.fn == "compare":  # α (16 XOR bits), ρ, a·ρ, then h, m and m·ρ times 2^w
        (w,) = item.widths or (FULL,)
        high = 8 - w // 8
        return (2, 8, 8, high, high, high)
    return None


def cross_rows(width_i: int, width_j: int, square: bool) -> int:
    """The rows of a ``cross`` value: a_i·a_j alone for two full openings, ā² and ā·m for a
    square, else the four products."""
    if width_i == width_j == FULL:
        return 1
    return 2 if square else 4


def product_size(item: Item, mask_size: Sequence[int]) -> tuple[int, ...]:
    """The shape of a ``product`` item's result from its mask's shape."""
    n = len(item.rows) if item.rows is not None else int(mask_size[0])
    (b,) = item.sizes
    if item.op == "matmul":
        if b[0] != mask_size[1]:
            raise MPCError(f"the product {item} does not fit its mask of shape {list(mask_size)}")
        return (n, b[1])
    if b[0] != n:
        raise MPCError(f"the product {item} does not fit its mask of shape {list(mask_size)}")
    return (int(mask_size[1]), b[1])


class PlanningProvider(TupleProvider):
    """Records every request and answers zeros (no randomness, no traffic)."""

    NAME = "plan"

    def __init__(self) -> None:
        super().__init__()
        self.items: list[Item] = []
        self.masks: list[tuple[int, ...]] = []
        self.rmasks: list[tuple[tuple[int, ...], int]] = []  # shapes and widths
        self.memo: dict[Any, tuple[list[Item], tuple[int, ...], int, list[Any]]] = {}

    @staticmethod
    def _arith(*sizes: Any) -> tuple[Any, ...]:
        from crypten.mpc.primitives import ArithmeticSharedTensor

        return tuple(
            ArithmeticSharedTensor.from_shares(torch.zeros(_dims(s), dtype=torch.long), precision=0)
            for s in sizes
        )

    def generate_additive_triple(
        self, size0: Any, size1: Any, op: str, device: Any = None, *args: Any, **kwargs: Any
    ) -> tuple[Any, ...]:
        from common.mpc.dealer import result_size

        self.items.append(Item("additive", (_dims(size0), _dims(size1)), op=op))
        return self._arith(size0, size1, result_size(op, size0, size1))

    def square(self, size: Any, device: Any = None) -> tuple[Any, ...]:
        self.items.append(Item("square", (_dims(size),)))
        return self._arith(size, size)

    def wrap_rng(self, size: Any, device: Any = None) -> tuple[Any, ...]:
        self.items.append(Item("wraps", (_dims(size),)))
        return self._arith(size, size)

    def binary_triple(self, size0: Any, size1: Any) -> tuple[torch.Tensor, ...]:
        self.items.append(Item("binary", (_dims(size0), _dims(size1))))
        size2 = torch.broadcast_shapes(_dims(size0), _dims(size1))
        return tuple(torch.zeros(_dims(s), dtype=torch.long) for s in (size0, size1, size2))

    def generate_binary_triple(self, size0: Any, size1: Any, device: Any = None) -> tuple[Any, ...]:
        from crypten.mpc.primitives import BinarySharedTensor

        return tuple(BinarySharedTensor.from_shares(t) for t in self.binary_triple(size0, size1))

    def B2A_rng(self, size: Any, device: Any = None) -> tuple[Any, ...]:
        from crypten.mpc.primitives import BinarySharedTensor

        self.items.append(Item("B2A", (_dims(size),)))
        (r,) = self._arith(size)
        return r, BinarySharedTensor.from_shares(torch.zeros(_dims(size), dtype=torch.long))

    # -- this project's correlated values (common.mpc.products) ---------------------------------
    def mask(self, size: Any, holder: int) -> tuple[int, torch.Tensor | None]:
        """The mask's number and no tensor: the plan's run keeps no masked matrix
        (:class:`common.mpc.products.Masked` stops here), and n·d zeros would cost it 40 MB."""
        self.items.append(Item("mask", (_dims(size),), holder=holder))
        self.masks.append(_dims(size))
        return len(self.masks) - 1, None

    def product(
        self, mask: int, op: str, size_b: Any, rows: Sequence[int] | None, holder: int
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        item = Item(
            "product",
            (_dims(size_b),),
            op=op,
            mask=mask,
            rows=None if rows is None else tuple(int(r) for r in rows),
        )
        self.items.append(item)
        out = product_size(item, self.masks[mask])
        return torch.zeros(_dims(size_b), dtype=torch.long), torch.zeros(out, dtype=torch.long)

    # -- reused openings (common.mpc.fixedpoint) ------------------------------------------------
    def rmask(self, size: Any, width: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        self.items.append(Item("rmask", (_dims(size),), widths=(width,)))
        self.rmasks.append((_dims(size), width))
        zeros = torch.zeros(_dims(size), dtype=torch.long)
        return len(self.rmasks) - 1, zeros, zeros

    def cross(self, i: int, j: int) -> torch.Tensor:
        (size_i, width_i), (size_j, width_j) = self.rmasks[i], self.rmasks[j]
        sizes = (size_i, size_j)
        pair = relative_pair(len(self.rmasks), i, j)
        self.items.append(Item("cross", sizes, pair=pair, widths=(width_i, width_j)))
        return torch.zeros(
            (cross_rows(width_i, width_j, i == j), *torch.broadcast_shapes(*sizes)),
            dtype=torch.long,
        )

    def lift(self, size: Any, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.items.append(Item("lift", (_dims(size),), widths=(width,)))
        zeros = torch.zeros(_dims(size), dtype=torch.long)
        return zeros, zeros

    def compare(self, size: Any, width: int) -> tuple[torch.Tensor, ...]:
        self.items.append(Item("compare", (_dims(size),), widths=(width,)))
        zeros = torch.zeros(_dims(size), dtype=torch.long)
        return (zeros,) * 7


def _planning_communicator(rank: int) -> Any:
    from common.mpc.communicator import SecureCommunicator

    class PlanningCommunicator(SecureCommunicator):
        """Sends nothing; every received tensor is zeros of the agreed shape."""

        def __init__(self) -> None:
            self.rank = rank
            self.world_size = 2
            self.channels = []
            self._name = f"plan{rank}"
            self.reset_communication_stats()

        def _send(self, tensors: Sequence[torch.Tensor]) -> None:
            return None

        def _recv(self, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            return [torch.zeros_like(t) for t in like]

        def _exchange(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            return [torch.zeros_like(t) for t in tensors]

        def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
            return None

        def recv_obj(self, src: int, group: Any = None) -> Any:
            raise MPCError("the plan cannot depend on an object received from the other party")

        def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
            if src == self.rank:
                return obj
            raise MPCError("the plan cannot depend on an object received from the other party")

    return PlanningCommunicator()


def planning() -> PlanningProvider | None:
    """The planning provider when this is the inputless run that computes a plan, else None."""
    provider = crypten.mpc.get_default_provider()
    return provider if isinstance(provider, PlanningProvider) else None


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def shape_memo(fn: _Fn) -> _Fn:
    """Plan a function of shared tensors once per input shape.

    Its correlated values depend on its inputs' shapes only, so during the planning run a second
    call with the same shapes appends the items recorded the first time (and replays the
    truncations it made into the active :class:`common.mpc.truncation.Ledger`) and returns zeros
    of the recorded output shape, without computing (fine-tuning repeats the same softmax every
    step).
    Outside planning the function runs unchanged.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        provider = planning()
        if provider is None:
            return fn(*args, **kwargs)
        from common.mpc import truncation

        ledger = truncation.current()
        key = (
            fn.__qualname__,
            tuple(tuple(a.size()) if hasattr(a, "size") else repr(a) for a in args),
            tuple(sorted(kwargs.items())),
            truncation.declared(),
        )
        cached = provider.memo.get(key)
        if cached is not None:
            items, shape, bits, sites = cached
            provider.items.extend(items)
            provider.rmasks.extend(
                (it.sizes[0], (it.widths or (64,))[0]) for it in items if it.fn == "rmask"
            )
            if ledger is not None:  # the truncations it would have checked
                ledger.replay(sites)
            return crypten.mpc.MPCTensor.from_shares(
                torch.zeros(shape, dtype=torch.long), precision=bits
            )
        start = len(provider.items)
        start_sites = 0 if ledger is None else len(ledger.sites)
        out = fn(*args, **kwargs)
        bits = round(math.log2(out.encoder.scale))
        sites = [] if ledger is None else ledger.sites[start_sites:]
        provider.memo[key] = (provider.items[start:], tuple(out.size()), bits, sites)
        return out

    return wrapper  # type: ignore[return-value]


def compute_plan(job: Any, index: int, rank: int = 1, shard: Shard = WHOLE) -> list[Item]:
    """The correlated values candidate ``index`` of ``job`` needs, in order (no inputs needed);
    with ``shard`` (a :class:`common.mpc.shards.Shard`), what that shard's pair computes of it.

    Every party gets the same list: the computation's shapes and order depend on public metadata
    only. The run computes on zeros with no randomness and no traffic; repeated nonlinear
    functions are planned once per shape (:func:`shape_memo`); the final openings answer zeros.
    The items are checked (:func:`check_item`); a zero-size item refuses the whole plan.
    """
    from common.mpc.appraisal import secure_appraisal
    from common.mpc.communicator import installed
    from common.mpc.streams import StreamRng

    provider = PlanningProvider()
    zero = bytes(32)
    generators = {name: StreamRng(zero) for name in ("prev", "next", "global", "local")}
    with installed(_planning_communicator(rank), generators, provider):
        secure_appraisal(job, index, None, None, shard=shard)
    for item in provider.items:
        check_item(item)
    return provider.items


def plan_elements(items: Sequence[Item]) -> int:
    """The plan's total size in ring elements (what the dealer draws per stream, at most)."""
    return sum(item.elements() for item in items)
