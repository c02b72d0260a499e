"""Exact products in the ring Z/2^64 through float64 BLAS, where one operand is small.

torch's int64 matmul is a plain loop on one thread (about 40 ms for 6,000 × 785 × 10, whatever
the thread count); float64 BLAS is blocked, vectorised and uses the worker's threads. A party's
own fixed-point matrix in the clear (the data owner's candidate chunk X, the model owner's D_tr
and D_te, at scale 2¹⁶ with entries in [−1, 1]) has entries of at most 2¹⁶ in absolute value, so
its product with a full-range ring matrix R is computed exactly as float64 products of that
matrix, held as float64 (:func:`exact_float`), with the LIMB_BITS-bit limbs of R, recombined in
int64 with the ring's wrap-around. Both parties' shares stay exactly what the int64 kernel gives:
the bytes sent, and every value, are unchanged.
"""

from __future__ import annotations

import torch

SMALL_BITS = 16  # |L| ≤ 2^16: a fixed-point matrix at scale 2^16 with entries in [−1, 1]
LIMB_BITS = 22
LIMBS = 3  # 3 · 22 ≥ 64: R ≡ Σ_i limb_i · 2^(22 i) (mod 2^64)
_LIMB_MASK = (1 << LIMB_BITS) - 1
# RANGE: |L_ij| ≤ 2^16 and 0 ≤ limb < 2^22, so each term of a float64 dot product is below 2^38
# in magnitude and a sum over an inner dimension of at most MAX_INNER = 2^15 terms below 2^53:
# every partial sum is an integer float64 represents exactly. A longer inner dimension is cut
# into blocks of MAX_INNER whose int64 results are added in the ring.
MAX_INNER = 1 << (53 - SMALL_BITS - LIMB_BITS)


def ring_product(op: str, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ right`` (op matmul) or ``leftᵀ @ right`` (tmatmul) of full-range int64
    matrices, torch's int64 kernel (the owners' masked products and the dealer's mirror of them)."""
    if op not in ("matmul", "tmatmul"):
        raise ValueError(f"a ring product is matmul or tmatmul, not {op!r}")
    # Xᵀ·R as (Rᵀ·X)ᵀ: torch's int64 kernel runs it about 6× faster (rows of X contiguous)
    return left @ right if op == "matmul" else (right.t() @ left).t()


class RingMatrix:
    """A full-range int64 matrix that is the left operand of many ring products (the model
    owner's E = X − A of a reused candidate, the dealer's mask A): :func:`ring_product` of it.

    torch's int64 kernel is fast (about 12 ms at 6,600 × 785 × 10, against 37 ms) when the large
    operand is the right one and contiguous: ``Rᵀ @ M`` for Mᵀ·R, ``Bᵀ @ Mᵀ`` for M·B. So from the
    second ``matmul`` on (fine-tuning's steps; one product, as influence's, keeps the plain
    layout) Mᵀ is kept contiguous beside M; transposing costs about what one slow product does.
    The values are exactly :func:`ring_product`'s: the order of a sum does not matter in the ring.
    """

    __slots__ = ("_matmuls", "_transposed", "value")

    def __init__(self, value: torch.Tensor):
        self.value = value
        self._transposed: torch.Tensor | None = None
        self._matmuls = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def elements(self) -> int:
        """The ring elements held: the matrix, and its transpose once kept."""
        kept = 0 if self._transposed is None else self._transposed.numel()
        return self.value.numel() + kept

    def product(
        self, op: str, right: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``ring_product(op, M[rows], right)``; ``rows`` an int64 index tensor, None: all."""
        if op == "matmul":
            self._matmuls += 1
            if self._transposed is None and self._matmuls > 1:
                self._transposed = self.value.t().contiguous()
            if self._transposed is not None:
                left_t = self._transposed if rows is None else self._transposed[:, rows]
                return (right.t() @ left_t).t()
        return ring_product(op, self.value if rows is None else self.value[rows], right)


def exact_float(small: torch.Tensor) -> torch.Tensor:
    """``small`` (int64 entries of at most 2^SMALL_BITS in absolute value) as float64, exactly."""
    return small.to(torch.float64)


def _limbs(ring: torch.Tensor) -> torch.Tensor:
    """The LIMBS unsigned LIMB_BITS-bit limbs of ``ring`` (K × k), side by side: K × (LIMBS·k).

    The top limb holds bits 44–63 and copies of the sign bit above them: only its value mod
    2^22 counts, and 2^44 · 2^22 ≡ 0 (mod 2^64)."""
    return torch.cat(
        [((ring >> (LIMB_BITS * i)) & _LIMB_MASK).to(torch.float64) for i in range(LIMBS)], dim=1
    )


def _recombine(products: torch.Tensor, k: int) -> torch.Tensor:
    """Σ_i products[:, i·k:(i+1)·k] · 2^(22 i) in int64 (the multiplications wrap mod 2^64)."""
    exact = products.to(torch.int64)  # RANGE: every entry below 2^53 in magnitude (MAX_INNER)
    out = exact[:, :k].clone()
    for i in range(1, LIMBS):
        out += exact[:, i * k : (i + 1) * k] * (1 << (LIMB_BITS * i))
    return out


def _check(small: torch.Tensor, ring: torch.Tensor, inner: int) -> None:
    if small.dtype != torch.float64 or ring.dtype != torch.int64:
        raise TypeError("small_matmul multiplies a float64 small matrix by an int64 ring matrix")
    if ring.dim() != 2 or small.dim() != 2 or ring.shape[0] != inner:
        raise ValueError(f"shapes {tuple(small.shape)} and {tuple(ring.shape)} do not fit")


def small_matmul(small: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """``small @ ring`` mod 2^64: ``small`` m × K float64 (from :func:`exact_float`), ``ring``
    K × k int64 of any value. Equal to torch's int64 ``small.long() @ ring``."""
    inner, k = small.shape[1], ring.shape[1]
    _check(small, ring, inner)
    limbs = _limbs(ring)
    out = torch.zeros((small.shape[0], k), dtype=torch.int64)
    for lo in range(0, inner, MAX_INNER):
        out += _recombine(small[:, lo : lo + MAX_INNER] @ limbs[lo : lo + MAX_INNER], k)
    return out


def small_tmatmul(small: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """``smallᵀ @ ring`` mod 2^64: ``small`` n × d float64 (from :func:`exact_float`), ``ring``
    n × k int64 of any value. Equal to torch's int64 ``small.long().t() @ ring``."""
    inner, k = small.shape[0], ring.shape[1]
    _check(small, ring, inner)
    limbs = _limbs(ring)
    out = torch.zeros((small.shape[1], k), dtype=torch.int64)
    for lo in range(0, inner, MAX_INNER):
        # Xᵀ·L as (Lᵀ·X)ᵀ: MKL runs it about twice as fast at 6,000 × 785 × 30
        out += _recombine((limbs[lo : lo + MAX_INNER].t() @ small[lo : lo + MAX_INNER]).t(), k)
    return out


def narrowest(magnitude: float, widths: tuple[int, ...]) -> int | None:
    """The least of ``widths`` (ascending) whose ring holds values below ``magnitude`` ring units
    with the two bits of headroom a narrow recovery needs (magnitude < 2^(w−2)), or None."""
    return next((w for w in widths if magnitude < 2.0 ** (w - 2)), None)


# The planes :func:`low_bytes` cuts an int64 into: its low bytes as the narrowest integer types
# (type conversions keep the low bits, and run far faster than a strided byte copy).
# Unsigned, so that widening a plane back to int64 needs no mask.
_PLANES = {
    1: (torch.uint8,),
    2: (torch.uint16,),
    3: (torch.uint16, torch.uint8),
    4: (torch.uint32,),
    5: (torch.uint32, torch.uint8),
    6: (torch.uint32, torch.uint16),
    7: (torch.uint32, torch.uint16, torch.uint8),
}
_PLANE_BYTES = {torch.uint8: 1, torch.uint16: 2, torch.uint32: 4}


_BLOCK = 1 << 15  # elements converted at a time: each block's passes stay in the cache


def _plane_views(buffer: torch.Tensor, n: int, count: int) -> list[tuple[torch.Tensor, int]]:
    """The planes of ``count`` bytes an element over ``buffer`` (uint8): (view, bytes) each."""
    views, start = [], 0
    for dtype in _PLANES[count]:
        size = _PLANE_BYTES[dtype]
        views.append((buffer[start : start + n * size].view(dtype), size))
        start += n * size
    return views


def low_bytes(t: torch.Tensor, count: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The low ``count`` bytes (1 to 8) of each int64 of ``t``, as one flat uint8 tensor (written
    into ``out``, n·count bytes at an 8-aligned offset, when given): the wire form of values that
    matter only modulo 2^(8·count). Planar: every element's lowest plane (its low 4, 2 or 1 bytes)
    first, then the next. Converted a block at a time (a masked candidate chunk is millions of
    elements: whole-tensor passes would each go to memory)."""
    flat = t.reshape(-1)
    n = flat.numel()
    if out is not None and out.storage_offset() % 8:  # the planes' views need alignment
        out.copy_(low_bytes(t, count))
        return out
    if out is None:
        out = torch.empty(n * count, dtype=torch.uint8)
    if count == 8:  # the whole value
        out.view(torch.int64).copy_(flat)
        return out
    views = _plane_views(out, n, count)
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK)
        block, shift = flat[lo:hi], 0
        for view, size in views:  # copy_ converts to the narrower type: it keeps the low bits
            view[lo:hi].copy_(block >> shift if shift else block)
            shift += 8 * size
    return out


def from_low_bytes(
    b: torch.Tensor,
    count: int,
    shape: tuple[int, ...] | torch.Size,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Inverse of :func:`low_bytes`: int64 values in [0, 2^(8·count)) of ``shape`` (written into
    ``out``, a contiguous int64 tensor of as many elements, when given)."""
    n = b.numel() // count
    if b.storage_offset() % 8:  # a slice of a received buffer: the planes' views need alignment
        b = b.clone()
    if count == 8:
        if out is None:
            return b.view(torch.int64).reshape(shape)
        out.reshape(-1).copy_(b.view(torch.int64))
        return out.reshape(shape)
    views = _plane_views(b, n, count)
    out = torch.empty(n, dtype=torch.int64) if out is None else out.reshape(-1)
    spare = torch.empty(min(n, _BLOCK), dtype=torch.int64)
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK)
        block, shift = out[lo:hi], 0
        for i, (view, size) in enumerate(views):
            target = block if i == 0 else spare[: hi - lo]
            target.copy_(view[lo:hi])  # unsigned: zero-extended
            if i:
                target <<= shift
                block |= target
            shift += 8 * size
    return out.reshape(shape)
