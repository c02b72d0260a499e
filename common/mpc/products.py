"""Products with a matrix one owner holds in the clear: masked once, opened one way, reused.

The data owner holds its candidate X in the clear (the model owner its D_tr and D_te); only the
parameters and the products are secret. A general Beaver product would open X − A *and* the other
operand's mask in both directions, once per product. Here (docs/protocol.md, "Masked products"):

* the holder h of X draws a uniform mask A from its stream with the dealer (a plan item ``mask``)
  and sends E = X − A to the other owner once (n·d ring elements, one way);
* for each product X[rows]·W (or X[rows]ᵀ·W) with W additively shared (W_h + W_o; a matrix the
  other owner holds in the clear is the sharing (0, W)), the other owner o draws a fresh uniform B
  from its stream and sends F = W_o − B to h (the size of W); the dealer, who knows A and B, sends
  the model owner its share of A[rows]·B (a plan item ``product``), the data owner draws its own;
* o's share is E[rows]·B + ⟨AB⟩_o and h's is X[rows]·(W_h + F) + ⟨AB⟩_h: they add up to
  (X − A)·B + X·(W − B) + A·B = X[rows]·W exactly in the ring. The result, at scale 2³², is
  truncated once. So h multiplies only its own X (small entries: ≤ 2¹⁶ at scale 2¹⁶, through
  float64 BLAS, :mod:`common.mpc.ringmath`) and needs A only to send E; o's product E·B does not
  depend on W at all.

Security: E is X plus a uniform mask known only to h and the dealer, sent once: it is uniform to o.
F is masked by a fresh uniform B known only to o and the dealer: uniform to h. ⟨AB⟩ shares are
masked by the data owner's fresh stream values. A is never used for anything but these products,
so reusing it with fresh B's reveals nothing more (each opened value has its own fresh mask).
Which party multiplies what is local: the messages, and the joint distribution of the two
shares (uniform, summing to X·W), are those of the textbook split o: E·W_o, h: X·W_h + A·F.

Under the insecure TFP provider (no dealer) the same interface falls back to CrypTen's Beaver
products of an ordinarily shared X.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import ConfigError
from common.mpc import ringmath
from common.mpc.compat import import_crypten
from common.mpc.fixedpoint import SCALE, lift, share
from common.mpc.plan import MASKED_WIDTHS, planning

crypten = import_crypten()
from crypten.mpc.primitives import beaver  # noqa: E402


def encode_exact(value: np.ndarray) -> torch.Tensor:
    """The fixed-point encoding as float64 integers, rounded to the nearest (half to even, as
    ``np.round``), with one temporary: exact while |value·2¹⁶| < 2⁵³, as every operand of a
    product here is (a candidate chunk's n·d encoding is on the data owner's critical path)."""
    scaled = np.multiply(np.asarray(value, dtype=np.float64), SCALE)
    np.rint(scaled, out=scaled)
    return torch.from_numpy(scaled)


def encode(value: np.ndarray) -> torch.Tensor:
    """Fixed-point encoding with rounding to the nearest (as :func:`common.mpc.fixedpoint.share`)."""
    return encode_exact(value).to(torch.int64)


def shared_from_raw(raw_share: torch.Tensor, divisor: int) -> Any:
    """A 16-bit fixed-point shared tensor from shares at scale 2¹⁶·divisor (one local truncation)."""
    result = crypten.mpc.MPCTensor.from_shares(raw_share, precision=16)
    result._tensor.div_(divisor)
    return result


def private_operand(value: np.ndarray | None, shape: tuple[int, ...], *, owner: int) -> Any:
    """A matrix ``owner`` holds in the clear as the sharing (value, 0): no traffic at all."""
    rank = crypten.communicator.get().get_rank()
    if rank == owner and planning() is None:
        if value is None:
            raise ConfigError(f"party {owner} must give its operand of shape {shape}")
        encoded = encode(value)
        if tuple(encoded.shape) != tuple(shape):
            raise ConfigError(
                f"party {owner} operand has shape {tuple(encoded.shape)}, agreed {shape}"
            )
    else:
        encoded = torch.zeros(shape, dtype=torch.long)
    return crypten.mpc.MPCTensor.from_shares(encoded, precision=16)


_SPILLED = itertools.count()  # names of spill files, unique within the process


def _within(t: torch.Tensor, bound: float) -> bool:
    """Whether every entry of the non-empty ``t`` is at most ``bound`` in absolute value (one
    pass, no temporary)."""
    lo, hi = torch.aminmax(t)
    return max(float(hi), -float(lo)) <= bound


def _select(t: torch.Tensor, rows: Sequence[int] | None) -> torch.Tensor:
    return t if rows is None else t[torch.as_tensor(rows, dtype=torch.long)]


# RANGE: a narrow masked matrix's products are logits X·θ below LOGIT_LIMIT, or X[rows]ᵀ·R with
# |x| ≤ 1 (the features divided by their agreed bound) and |R| ≤ 1 (R = softmax − Y), so below
# its row count: every product's entries, at scale 2³², are below max(rows, LOGIT_LIMIT)·2³².
LOGIT_LIMIT = 2**13


def masked_width(rows: int) -> int:
    """The bits of E = X − A an owner sends for a masked matrix of ``rows`` rows: the least width
    w with every product's entries below 2^(w−2) ring units (:func:`common.mpc.fixedpoint.lift`),
    or 64 (no lift) for a matrix too tall for 56."""
    width = ringmath.narrowest(max(rows, LOGIT_LIMIT) * 2.0**32, MASKED_WIDTHS)
    return 64 if width is None else width


class Masked:
    """A matrix held in the clear by party ``holder``, opened once as E = X − A.

    ``value``: the holder's matrix, or its encoding by :func:`encode_exact` (a float64 tensor).
    The holder keeps X only (A is needed for nothing after E is sent; the dealer keeps its own).
    With ``spill`` (a private directory) the party's tensor (E; the holder's X) is written
    there once and read back for each product, so that a matrix reused across many products
    (fine-tuning's candidate chunks) is not held in memory between them.
    """

    def __init__(
        self,
        value: np.ndarray | torch.Tensor | None,
        shape: tuple[int, int],
        *,
        holder: int,
        spill: Path | None = None,
    ):
        self.comm = crypten.communicator.get()
        self.rank = self.comm.get_rank()
        self.holder = holder
        self.shape = tuple(shape)
        self.provider = crypten.mpc.get_default_provider()
        self.fallback = not hasattr(self.provider, "mask")
        self.X: torch.Tensor | None = None  # the holder's, its encoding as float64 integers
        self._small = False  # whether X is within ringmath's bound (its products through BLAS)
        # the other owner's (the holder sends it and drops it)
        self.E: ringmath.RingMatrix | None = None
        self._ring: ringmath.RingMatrix | None = None  # the holder's int64 X, for its products
        self._spilled: dict[str, Path] = {}
        if self.fallback:  # TFP: an ordinary sharing, CrypTen's Beaver products
            if isinstance(value, torch.Tensor):  # already encoded: share() encodes it (exactly)
                value = value.numpy() / SCALE
            self.shared = share(value, self.shape, src=holder)
            return
        self.width = masked_width(self.shape[0])
        self.id, A = self.provider.mask(self.shape, holder)
        # the plan's run keeps no tensor: its products answer zeros (below)
        if planning() is not None:
            return
        if self.rank == holder:
            if value is None:
                raise ConfigError(f"party {holder} must give its matrix of shape {self.shape}")
            # kept as float64 for the BLAS products (ringmath); a tensor is already encoded
            X = value if isinstance(value, torch.Tensor) else encode_exact(value)
            if tuple(X.shape) != self.shape:
                raise ConfigError(
                    f"party {holder} input has shape {tuple(X.shape)}, agreed {shape}"
                )
            assert A is not None
            X_ring = X.to(torch.int64)
            E = A.neg_()  # E = X − A in A's own buffer (A is needed for nothing else)
            E += X_ring
            self._send_low(E, dst=1 - holder)
            del E, A
            small = X.numel() == 0 or _within(X, 2**ringmath.SMALL_BITS)
            # one thread: torch's int64 kernel in its fast layout (RingMatrix) beats three float64
            # products of limbs (8–9 ms against 19–25 at 6,000 × 785 × 10); BLAS scales with the
            # worker's threads, the int64 kernel does not
            self._small = small and torch.get_num_threads() > 1
            self.X = X if self._small else X_ring
            self._ring = None if self._small else ringmath.RingMatrix(X_ring)
            del X_ring
        else:
            E = self._recv_low(self.shape, src=holder)
            self.E = ringmath.RingMatrix(E)
        if spill is not None:
            self.spill(spill)

    def _send_low(self, t: torch.Tensor, dst: int) -> None:
        """Send ``t``, which matters modulo 2^width only, in its low width/8 bytes an element."""
        self.comm.send(ringmath.low_bytes(t, self.width // 8), dst=dst)

    def _recv_low(self, shape: tuple[int, ...] | torch.Size, src: int) -> torch.Tensor:
        """The other side of :meth:`_send_low`: values in [0, 2^width) of ``shape``."""
        count = self.width // 8
        wire = torch.empty(int(np.prod(shape)) * count, dtype=torch.uint8)
        return ringmath.from_low_bytes(self.comm.recv(wire, src=src), count, shape)

    def spill(self, directory: Path) -> None:
        """Write this party's tensors to ``directory`` and drop them from memory (under the TFP
        fallback the ordinary sharing stays in memory)."""
        if self.fallback:
            return
        names = ("X",) if self.rank == self.holder else ("E",)
        for name in names:
            held = getattr(self, name)
            tensor = held.value if isinstance(held, ringmath.RingMatrix) else held
            file = directory / f"masked-{next(_SPILLED)}-{name}.npy"
            np.save(file, tensor.numpy())
            self._spilled[name] = file
            setattr(self, name, None)
        self._ring = None

    def _held_X(self) -> torch.Tensor:
        """The holder's X (float64 for the BLAS products, else int64): in memory, or read back
        from its spill file."""
        file = self._spilled.get("X")
        if file is not None:
            return torch.from_numpy(np.load(file))
        assert self.X is not None
        return self.X

    def _held_E(self) -> ringmath.RingMatrix:
        """The other owner's E: in memory, or read back from its spill file."""
        file = self._spilled.get("E")
        if file is not None:
            return ringmath.RingMatrix(torch.from_numpy(np.load(file)))
        assert self.E is not None
        return self.E

    def _raw(self, op: str, W: Any, rows: Sequence[int] | None) -> torch.Tensor:
        """This party's share of X[rows]·W (op matmul) or X[rows]ᵀ·W (tmatmul), at scale 2³²."""
        if self.fallback:
            X = self.shared if rows is None else self.shared[torch.as_tensor(rows)]
            left = X._tensor if op == "matmul" else X.t()._tensor
            return beaver.matmul(left, W._tensor).share
        mine = W._tensor.share
        B, correction = self.provider.product(self.id, op, tuple(mine.shape), rows, self.holder)
        if planning() is not None:  # shapes only: the planning provider's zeros
            out = correction
        elif self.rank != self.holder:  # F = W_o − B matters modulo 2^width only too
            assert B is not None
            self._send_low(mine - B, dst=self.holder)
            index = None if rows is None else torch.as_tensor(rows, dtype=torch.long)
            out = self._held_E().product(op, B, index) + correction
        else:
            F = self._recv_low(mine.shape, src=1 - self.holder)
            F += mine  # W_h + F = W − B (modulo 2^width)
            out = self._clear_product(op, rows, F) + correction
        # E is X − A modulo 2^width only, so are the shares: lifted to the ring (exact)
        return out if self.width == 64 else lift(out, self.width)

    def _clear_product(
        self, op: str, rows: Sequence[int] | None, mine: torch.Tensor
    ) -> torch.Tensor:
        """The holder's X[rows]·(W − B) (or its transpose's), exactly in the ring: through float64
        BLAS when X is within :mod:`common.mpc.ringmath`'s bound and the worker has threads for
        it, else torch's int64 kernel (:class:`~common.mpc.ringmath.RingMatrix`: from the second
        product on, in its fast layout, unless X was spilled)."""
        if self._small:
            X = _select(self._held_X(), rows)
            return (
                ringmath.small_matmul(X, mine)
                if op == "matmul"
                else ringmath.small_tmatmul(X, mine)
            )
        ring = self._ring if "X" not in self._spilled else None
        if ring is None:
            ring = ringmath.RingMatrix(self._held_X())
        index = None if rows is None else torch.as_tensor(rows, dtype=torch.long)
        return ring.product(op, mine, index)

    def discard(self) -> None:
        """Forget this matrix after its last product: its spill files deleted, its tensors
        dropped (a streamed candidate's disk then holds only the chunks still in use)."""
        for file in self._spilled.values():
            file.unlink(missing_ok=True)
        self._spilled.clear()
        self.X = self.E = self._ring = None

    def matmul(self, W: Any, rows: Sequence[int] | None = None, *, divisor: int = SCALE) -> Any:
        """X[rows] @ W, truncated once by ``divisor`` (2¹⁶: an ordinary fixed-point product)."""
        return shared_from_raw(self._raw("matmul", W, rows), divisor)

    def tmatmul(self, R: Any, rows: Sequence[int] | None = None, *, divisor: int = SCALE) -> Any:
        """X[rows]ᵀ @ R, truncated once by ``divisor``."""
        return shared_from_raw(self._raw("tmatmul", R, rows), divisor)

    def raw_tmatmul(self, R: Any) -> torch.Tensor:
        """This party's share of Xᵀ @ R at scale 2³², not yet truncated: the chunks of a streamed
        candidate add theirs in the ring and truncate the sum once (:func:`shared_from_raw`)."""
        return self._raw("tmatmul", R, None)


class Stacked:
    """The rows of several masked matrices stacked (D_tr of the model owner over D_a of the data
    owner), with products over a public selection of the stacked rows."""

    def __init__(self, parts: Sequence[Masked]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [p.shape[0] for p in self.parts])
        self.n = int(self.offsets[-1])

    def _split(self, rows: np.ndarray | None) -> list[tuple[Masked, np.ndarray | None, np.ndarray]]:
        """For each part: its rows (None: all) and their positions in the selection."""
        out: list[tuple[Masked, np.ndarray | None, np.ndarray]] = []
        for p, lo, hi in zip(self.parts, self.offsets[:-1], self.offsets[1:], strict=True):
            if rows is None:
                out.append((p, None, np.arange(lo, hi)))
                continue
            positions = np.nonzero((rows >= lo) & (rows < hi))[0]
            if len(positions):
                part_rows = rows[positions] - lo
                whole = len(part_rows) == hi - lo and bool((np.diff(part_rows) == 1).all())
                out.append((p, None if whole and part_rows[0] == 0 else part_rows, positions))
        return out

    def matmul(self, W: Any, rows: np.ndarray | None = None) -> Any:
        """X[rows] @ W for the stacked X, the rows in the selection's order."""
        size = self.n if rows is None else len(rows)
        out: torch.Tensor | None = None
        for part, part_rows, positions in self._split(rows):
            raw = part._raw("matmul", W, None if part_rows is None else part_rows.tolist())
            if out is None:
                out = torch.zeros((size, raw.shape[1]), dtype=torch.long)
            out[torch.as_tensor(positions)] = raw
        assert out is not None
        return shared_from_raw(out, SCALE)

    def tmatmul(self, R: Any, rows: np.ndarray | None = None, *, divisor: int = SCALE) -> Any:
        """X[rows]ᵀ @ R (R's rows in the selection's order), one truncation for the sum."""
        return shared_from_raw(self.raw_tmatmul(R, rows), divisor)

    def raw_tmatmul(self, R: Any, rows: np.ndarray | None = None) -> torch.Tensor:
        """This party's share of X[rows]ᵀ @ R at scale 2³², not yet truncated."""
        total: torch.Tensor | None = None
        for part, part_rows, positions in self._split(rows):
            R_part = (
                R[torch.as_tensor(positions)]
                if rows is not None
                else R[int(positions[0]) : int(positions[-1]) + 1]
            )
            raw = part._raw("tmatmul", R_part, None if part_rows is None else part_rows.tolist())
            total = raw if total is None else total + raw
        assert total is not None
        return total
