"""Fixed-point arithmetic under MPC: sharing, truncation-aware products and the nonlinear functions.

CrypTen encodes reals as int64 with 16 fractional bits (resolution 2⁻¹⁶ ≈ 1.5e-5) and, with two
parties, truncates a product share by share ("local truncation"). That truncation is wrong by about
2⁴⁸ (so 2³² in value) with probability |v|·2³²/2⁶⁴ = |v|/2³² for a product of value v before its
truncation, and a plain product overflows when |v| ≥ 2³¹. Every function here keeps each truncated
value small, each revealed quantity well above the resolution, and each input of a nonlinear
approximation inside the range where it is accurate; each scaling names the range it protects
(``RANGE:`` comments).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from common.errors import ConfigError
from common.mpc import ringmath
from common.mpc.compat import exact_decode, import_crypten
from common.mpc.plan import (
    COMPARE_OPENING,
    COMPARE_SHIFT,
    COMPARE_WIDTH,
    FULL,
    OPENING_WIDTHS,
    shape_memo,
)
from common.mpc.truncation import bounded

crypten = import_crypten()
from crypten.mpc.primitives import beaver  # noqa: E402

MODEL_OWNER = 0  # CrypTen ranks (common.protocol.RANKS)
DATA_OWNER = 1
PRECISION_BITS = 16
SCALE = 2**PRECISION_BITS


def share(value: np.ndarray | torch.Tensor | None, shape: tuple[int, ...], *, src: int) -> Any:
    """Secret-share ``value`` held by party ``src``; the other party passes None (only the shape)."""
    if value is None:
        tensor = torch.zeros(shape, dtype=torch.float64)
    else:
        # Round to the nearest fixed-point value here: CrypTen's encoder truncates toward zero,
        # which shrinks every entry by half a unit on average, a bias that sums up in X·v.
        grid = np.round(np.asarray(value, dtype=np.float64) * SCALE) / SCALE
        tensor = torch.as_tensor(grid)
        if tuple(tensor.shape) != tuple(shape):
            raise ConfigError(f"party {src} input has shape {tuple(tensor.shape)}, agreed {shape}")
    return crypten.cryptensor(tensor, src=src)


def mul_public(x: Any, c: float, *, bits: int = 14) -> Any:
    """x · c for a public real c, with c carried to ``bits`` significant bits.

    CrypTen would encode c with 16 fractional bits, so a small c (e.g. η/|D| ≈ 1e-5) would keep
    no significant bit. Instead we multiply by the integer m = round(c·2^e) with 2^bits ≤ m < 2^(bits+1)
    and truncate once by 2^e. RANGE: the product before truncation is x·2¹⁶·m ≤ |x|·2^(17+bits), so
    for |x| ≤ 2⁴ and bits = 14 the truncation fails with probability ≤ 2⁻²⁹ per element.
    """
    if c == 0:
        return x * 0
    e = bits - math.floor(math.log2(abs(c)))
    m = round(c * 2.0**e)
    if e >= 0:
        return x.mul(int(m)).div(2**e)
    return x.mul(int(m) * 2 ** (-e))


def matmul_truncated(x: Any, y: Any, divisor: int) -> Any:
    """x @ y truncated once by ``divisor`` instead of by the scale: x @ y · 2¹⁶ / divisor.

    A Beaver product of two fixed-point values carries 32 fractional bits; CrypTen truncates it by
    2¹⁶. Folding a public division into that single truncation keeps the bits that a second
    division (of the already-truncated result) would throw away.
    """
    raw = beaver.matmul(x._tensor, y._tensor)  # scale 2³², no truncation yet
    raw.div_(divisor)
    raw.encoder = x._tensor.encoder  # the result is an ordinary 16-bit fixed-point tensor
    result = x.shallow_copy()
    result._tensor = raw
    return result


# -- Reused, narrow openings (docs/protocol.md, "Reused openings", "Narrow openings") ---------
# A Beaver product opens both operands, masked, in both directions. A value that enters several
# products (y in y·y and y·y², s in every Newton step) need be opened only once: x is opened as
# δ = x − a for a fresh uniform mask a (an ``rmask``, drawn by both owners from their streams),
# and the product of two opened values x = δ + a, y = ε + b is δε + δ[b] + ε[a] + [ab], with
# shares of ab from the dealer (a ``cross`` item). Each opened value has its own fresh mask.
#
# A value of known small range needs only its low w bits opened. With |x| < 2^(w−2) ring units,
# x̃ = x + 2^(w−2) lies in [0, 2^(w−1)); the owners open ε = x̃ − a mod 2^w (w/8 bytes an element
# each way, for a uniform a in [0, 2^w)). Over the integers x̃ = ε + a − 2^w·c with the carry
# c ∈ {0, 1}, and because x̃ < 2^(w−1), c = 1 exactly when the top bit of ε or of a is set: so
# c = m_ε + m − m_ε·m with m_ε the public top bit of ε and m the top bit of a. Writing
# ā = a − 2^w·m (the signed value of a, shared by the dealer with m), x̃ = ε − 2^w·m_ε + ā +
# 2^w·m_ε·m: a public part plus a sharing that is linear in [ā] and [m], with no error and no
# failure probability. A product of two such values needs [ā_iā_j], [ā_i·m_j], [m_i·ā_j] and
# [m_i·m_j] from the dealer instead of [a_i·a_j].

# RANGE: the openings' bounds, with room above their RANGE comments' values (24-bit openings
# hold |x| < 64): the Taylor input y = x/2^h ∈ [−2.5, 0.1] and its powers, values in (0, 2].
TAYLOR_BOUND = 4.0
UNIT_BOUND = 4.0


_FULL_OPENINGS = False  # the job's ``openings`` = "full": every reused opening 64 bits wide


@contextlib.contextmanager
def openings(kind: str) -> Iterator[None]:
    """Within this block the reused openings and the comparisons are ``kind``: "narrow" (each on
    the low bits its range needs) or "full" (64 bits, the dealer sending far less)."""
    global _FULL_OPENINGS
    if kind not in ("narrow", "full"):
        raise ConfigError(f"openings must be 'narrow' or 'full', not {kind!r}")
    before, _FULL_OPENINGS = _FULL_OPENINGS, kind == "full"
    try:
        yield
    finally:
        _FULL_OPENINGS = before


def compare_width() -> int:
    """The bits a comparison's difference is opened on."""
    return FULL if _FULL_OPENINGS else COMPARE_OPENING


def opening_width(bound: float) -> int:
    """The narrowest opening of a value |x| ≤ ``bound``: the least w with |x|·2¹⁶ < 2^(w−2)
    (64, a full opening, under ``openings("full")``)."""
    if _FULL_OPENINGS:
        return FULL
    width = ringmath.narrowest(float(bound) * SCALE, OPENING_WIDTHS)
    if width is None:
        raise ConfigError(f"no opening is wide enough for values up to {bound}")
    return width


def _open_sum(parts: list[torch.Tensor], width: int, shape: torch.Size) -> torch.Tensor:
    """The opened value from both parties' low width/8 bytes: their sum modulo 2^width (a full
    opening wraps in the ring itself)."""
    count = width // 8
    total = ringmath.from_low_bytes(parts[0], count, shape)
    total += ringmath.from_low_bytes(parts[1], count, shape)
    if width != FULL:
        total &= (1 << width) - 1
    return total


def _reusing() -> bool:
    """Whether the provider serves reused openings (our dealer or the planning run; not TFP)."""
    return hasattr(crypten.mpc.get_default_provider(), "rmask")


def _rank() -> int:
    return int(crypten.communicator.get().get_rank())


class _Opened:
    """A shared fixed-point value |x| ≤ ``bound`` opened once on its low w bits
    (:func:`opening_width`): x = δ + α with δ public and α = ā + c·m shared, c = 2^w·m_ε public."""

    def __init__(self, x: Any, *, bound: float):
        self._begin(x, bound)
        self._finish(crypten.communicator.get().all_gather(self._mine))

    @staticmethod
    def together(*pairs: tuple[Any, float]) -> list[_Opened]:
        """Several values (each with its bound) opened in one exchange."""
        opened = [_Opened.__new__(_Opened) for _ in pairs]
        for o, (x, bound) in zip(opened, pairs, strict=True):
            o._begin(x, bound)
        mine = torch.cat([o._mine for o in opened])
        parts = crypten.communicator.get().all_gather(mine)
        start = 0
        for o in opened:
            stop = start + o._mine.numel()
            o._finish([part[start:stop] for part in parts])
            start = stop
        return opened

    def _begin(self, x: Any, bound: float) -> None:
        provider = crypten.mpc.get_default_provider()
        self.width = opening_width(bound)
        self.id, self._a, self.m = provider.rmask(tuple(x.size()), self.width)
        self._offset = 1 << (self.width - 2)
        share = x._tensor.share - self._a
        self._shape = share.shape
        if _rank() == 0:
            share += self._offset
        self._mine = ringmath.low_bytes(share, self.width // 8)

    def _finish(self, parts: list[torch.Tensor]) -> None:
        width = self.width
        eps = _open_sum(parts, width, self._shape)
        if width == FULL:  # the ring's own wrap: no carry to recover
            self.c = torch.zeros_like(eps)
        else:
            self.c = (eps >> (width - 1)) << width  # 2^w·m_ε
        eps -= self.c
        eps -= self._offset
        self.delta = eps
        self.a = torch.addcmul(self._a, self.c, self.m)  # α = ā + c·m: x = δ + α
        del self._mine, self._shape, self._a

    # The products below are computed in place where a fresh tensor allows it (the dealer's
    # cross values are this call's own), in as few passes as the algebra allows.
    def _public_part(self, out: torch.Tensor, other: _Opened) -> torch.Tensor:
        """out + δ_s·α_o + δ_o·α_s, and + δ_s·δ_o by rank 0 (as δ_s·(α_o + δ_o))."""
        if _rank() == 0:
            out += self.delta * (other.a + other.delta)
        else:
            out += self.delta * other.a
        out += other.delta * self.a
        return out

    def times(self, other: _Opened) -> torch.Tensor:
        """This party's share of self·other at the product of their scales (no truncation)."""
        cross = crypten.mpc.get_default_provider().cross(self.id, other.id)
        if self.width == other.width == FULL:  # a_i·a_j alone
            return self._public_part(cross[0], other)
        if other is self:  # α² = ā² + 2c·ā·m + c²·m (m² = m): the dealer shares ā² and ā·m
            out = cross[1] * (2 * self.c)
            out += cross[0]
            out += (self.c * self.c) * self.m
            return self._public_part(out, self)
        # ā_sā_o + c_o·ā_s·m_o + c_s·m_s·ā_o + c_s·c_o·m_s·m_o, as c_o(ā_s m_o + c_s m_s m_o) + …
        out = cross[3] * self.c
        out += cross[1]
        out *= other.c
        out += cross[0]
        out += self.c * cross[2]
        return self._public_part(out, other)


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Bits (0/1 int64) eight to a byte."""
    return torch.from_numpy(np.packbits(bits.reshape(-1).numpy().astype(np.uint8)))


def _unpack_bits(packed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_pack_bits`, as int64 shaped like ``like``."""
    bits = np.unpackbits(packed.numpy(), count=like.numel())
    return torch.from_numpy(bits.astype(np.int64)).reshape(like.shape)


def lift(share: torch.Tensor, width: int) -> torch.Tensor:
    """This party's share in the ring 2⁶⁴ of a value v with |v| < 2^(width−2) ring units, from
    shares that are correct modulo 2^width only (docs/protocol.md, "Narrow masked products").

    With ṽ = v + 2^(width−2) and each party's share z_i of ṽ reduced to [0, 2^width),
    ṽ = z₀ + z₁ − 2^width·c where the carry c is t₀ ∨ t₁, the OR of the shares' top bits (as for
    :class:`_Opened`, because ṽ < 2^(width−1)). t₀·t₁ is a product of two private bits: each party
    opens its bit masked by a random bit of its own (r₀, r₁: one bit each way per element, one
    round) and the dealer shares r₀·r₁ (a ``lift`` item). Exact: no error, no failure.
    """
    rank = _rank()
    r, rr = crypten.mpc.get_default_provider().lift(tuple(share.shape), width)
    offset = 1 << (width - 2)
    z = (share + offset if rank == 0 else share) & ((1 << width) - 1)
    t = z >> (width - 1)
    parts = crypten.communicator.get().all_gather(_pack_bits((t ^ r) & 1))
    e0, e1 = (_unpack_bits(part, t) for part in parts)
    if rank == 0:  # t₀·t₁ = t₀·e₁ + (1 − 2e₁)·t₀·r₁ and t₀·r₁ = e₀·r₁ + (1 − 2e₀)·r₀·r₁
        both = t * e1 + (1 - 2 * e1) * (1 - 2 * e0) * rr
    else:
        both = (1 - 2 * e1) * (e0 * r + (1 - 2 * e0) * rr)
    out = z - ((t - both) << width)
    return out - offset if rank == 0 else out


def _from_raw(raw: torch.Tensor, divisor: int) -> Any:
    """A 16-bit fixed-point shared tensor from shares at scale 2¹⁶·divisor (one truncation)."""
    result = crypten.mpc.MPCTensor.from_shares(raw, precision=PRECISION_BITS)
    result._tensor.div_(divisor)
    return result


def _taylor_reused(y: Any, order: int) -> Any:
    """1 + y + y²/2! + … + y^order/order! from the openings of y, y², …, y^⌈order/2⌉.

    Every power up to ``order`` is a product of two opened ones (y^j = y^⌈j/2⌉·y^⌊j/2⌋), so
    the polynomial costs ⌈order/2⌉ openings (2 for order 4) where Horner's rule pays ``order`` − 1
    Beaver products (each opening two values). Each term is truncated on its own (by j!·2¹⁶):
    RANGE: a local truncation fails with probability |y^j|/2³², and |y| ≤ 2.2 keeps |y^j| ≤ 2⁷
    for j ≤ 6 (the sum of the terms' magnitudes, not order!·p(y), decides the failures).
    """
    half = (order + 1) // 2
    opened = [_Opened(y, bound=TAYLOR_BOUND)]
    for j in range(2, half + 1):  # y^j = y^⌈j/2⌉ · y^⌊j/2⌋, truncated, then opened itself
        power = _from_raw(opened[(j + 1) // 2 - 1].times(opened[j // 2 - 1]), SCALE)
        opened.append(_Opened(power, bound=TAYLOR_BOUND**j))
    acc = y.add(1.0)
    for j in range(2, order + 1):
        raw = opened[(j + 1) // 2 - 1].times(opened[j // 2 - 1])
        acc = acc + _from_raw(raw, math.factorial(j) * SCALE)
    return acc


@shape_memo
def exp_nonpositive(x: Any, *, halvings: int, order: int) -> Any:
    """exp(x) for x ≤ 0: Taylor polynomial of degree ``order`` at x/2^h, squared h times.

    CrypTen's exp, (1 + x/2⁸)^(2⁸), loses 2⁸·2⁻¹⁶ ≈ 0.4 % to quantisation and x²/2⁹ to the limit
    (0.8 % at x = −2). Here the quantisation costs 2^h·2⁻¹⁶ and the Taylor remainder
    2^h·|x/2^h|^(order+1)/(order+1)!. RANGE: the even-degree Taylor polynomial stays in (0, 1) for
    x/2^h ≥ −2.2, so the result is accurate for x ∈ [−2.2·2^h, 0] (and slightly above 0, where
    the softmax's approximate maximum may put it) and tends to 0 (as it should) slightly beyond;
    it explodes only for x < −2.5·2^h. With our dealer the polynomial's powers come from
    ⌈order/2⌉ reused openings (:func:`_taylor_reused`); under TFP, Horner's rule.
    """
    y = x.div(2**halvings)
    reusing = _reusing()
    if reusing:  # the powers from ⌈order/2⌉ reused openings
        acc = _taylor_reused(y, order)
    else:  # Horner: 1 + y(1 + y/2(1 + y/3(...)))
        acc = y.div(order).add(1.0)
        for i in range(order - 1, 0, -1):
            acc = mul_public(acc * y, 1.0 / i, bits=16).add(1.0)
    for _ in range(halvings):
        if reusing:  # RANGE: each square's input is in (0, e^max_slack]
            opened = _Opened(acc, bound=UNIT_BOUND)
            acc = _from_raw(opened.times(opened), SCALE)
        else:
            acc = acc.square()
    return acc


# Softmax: logits minus their row maximum lie in [−gap, max_slack]; exp_nonpositive with h = 6 is accurate
# for gaps up to 2.2·2⁶ ≈ 140 (quantisation 2⁶·2⁻¹⁶ ≈ 0.1 %, relative). RANGE: logit gap ≤ 140.
SOFTMAX_HALVINGS = 6
SOFTMAX_ORDER = 4
MAX_LOGIT_GAP = 2.2 * 2**SOFTMAX_HALVINGS


def _int64(value: int) -> int:
    """An unsigned 64-bit pattern as the signed int64 that torch stores."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _lanes(stride: int) -> int:
    """The bit pattern with a one at every multiple of ``stride`` (as a signed int64)."""
    return _int64(sum(1 << i for i in range(0, 64, stride)))


def _and(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """This party's XOR share of x ∧ y (x, y: this party's XOR shares): one binary Beaver AND,
    as CrypTen's (the same triple, the same one exchange of x ⊕ a and y ⊕ b) on the shares
    themselves: x ∧ y = c ⊕ (ε ∧ b) ⊕ (a ∧ δ) ⊕ (ε ∧ δ), the public ε ∧ δ XORed in by rank 0."""
    provider = crypten.mpc.get_default_provider()
    if not hasattr(provider, "binary_triple"):  # CrypTen's own provider (TFP)
        from crypten.mpc.primitives import BinarySharedTensor

        return (BinarySharedTensor.from_shares(x) & BinarySharedTensor.from_shares(y)).share
    a, b, c = provider.binary_triple(x.size(), y.size())
    eps, delta = crypten.communicator.get().all_reduce(
        [x ^ a, y ^ b], op=torch.distributed.ReduceOp.BXOR, batched=True
    )
    z = c ^ (b & eps) ^ (a & delta)
    return z ^ (eps & delta) if _rank() == 0 else z


def _pack(t: torch.Tensor, r: int) -> torch.Tensor:
    """r elements per word: element group j shifted by j bits (their lanes are multiples of r)."""
    n = t.numel()
    padded = torch.zeros(-(-n // r) * r, dtype=torch.long)
    padded[:n] = t.reshape(-1)
    groups = padded.reshape(r, -1)
    out = groups[0].clone()
    for j in range(1, r):
        out ^= groups[j] << j
    return out


def _unpack(w: torch.Tensor, r: int, lanes: int, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_pack`, keeping only the lanes ``lanes``."""
    groups = torch.stack([(w >> j) & lanes for j in range(r)])
    return groups.reshape(-1)[: like.numel()].reshape(like.shape)


def _packed_and(x: torch.Tensor, y: torch.Tensor, stride: int) -> torch.Tensor:
    """x ∧ y where only the bits at multiples of ``stride`` matter: ``stride`` elements share a
    word, so the AND opens 1/stride words per element."""
    if stride == 1:
        return _and(x, y)
    z = _and(_pack(x, stride), _pack(y, stride))
    return _unpack(z, stride, _lanes(stride), x)


def _carry_tree(g: torch.Tensor, p: torch.Tensor, width: int) -> torch.Tensor:
    """XOR shares of the carry out of each ``width``-bit lane, from its (generate, propagate) bits.

    Each level combines the lanes 2i+1 (high) and 2i (low) with one AND: the high propagate bit is
    copied beside itself and ANDed with the low generate and propagate bits packed side by side.
    At stride s only the bits at multiples of s matter, so s elements share one word. The carry of
    each lane ends at its lowest bit."""
    stride = 1
    while stride < width:
        m = _lanes(2 * stride)
        p_hi = (p >> stride) & m
        g_hi = (g >> stride) & m
        z = _packed_and(p_hi ^ (p_hi << stride), (g & m) ^ ((p & m) << stride), stride)
        g = g_hi ^ (z & m)
        p = (z >> stride) & m
        stride *= 2
    return g


def _b2a_bit(bit: torch.Tensor) -> torch.Tensor:
    """This party's arithmetic share of a bit held as XOR shares (bit 0 of ``bit``): open
    c = bit ⊕ r for the dealer's random bit r (64 elements' c per opened word), then
    [bit] = c + [r] − 2c[r]."""
    from crypten.mpc.primitives import BinarySharedTensor

    provider = crypten.mpc.get_default_provider()
    r_arith, r_bin = provider.B2A_rng(bit.size())
    masked = (bit & 1) ^ (r_bin.share & 1)
    opened = BinarySharedTensor.from_shares(_pack(masked, 64)).reveal()
    c = _unpack(opened, 64, 1, bit)
    rank = crypten.communicator.get().get_rank()
    share = r_arith.share - 2 * c * r_arith.share
    return share + c if rank == 0 else share


@shape_memo
def ltz(x: Any) -> Any:
    """[x < 0] for a shared fixed-point tensor: the top bit of x₀ + x₁, from its carry alone.

    CrypTen converts x to a binary sharing with a full 64-bit adder (six levels of two AND gates
    each, on whole words) to read one bit of the sum. Here the two arithmetic shares are the two
    operands, a = x₀ (held by the model owner) and b = x₁: g = a ∧ b costs one AND, p = a ⊕ b is
    local, and the carry into bit 63 is a tree of (generate, propagate) pairs over bits 0..62
    (bit 63's lane is set to "propagate" so that the tree's root is that carry). Each of the six
    levels combines the lanes 2i+1 (high) and 2i (low) with one AND: the high propagate bit is
    copied beside itself and ANDed with the low generate and propagate bits packed side by side.
    At stride s only the bits at multiples of s matter, so s elements share one word: the levels
    open 1, 1/2, …, 1/32 words per element (about 3 words with g, against CrypTen's 12). The top
    bit a₆₃ ⊕ b₆₃ ⊕ carry becomes an arithmetic bit by one opening of 64 bits per word. The result
    equals CrypTen's ``_ltz`` (tests/integration/test_fixedpoint_mpc.py).
    """
    share = x._tensor.share
    rank = crypten.communicator.get().get_rank()
    a = share if rank == 0 else torch.zeros_like(share)  # XOR shares of x₀: (x₀, 0)
    b = share if rank == 1 else torch.zeros_like(share)  # and of x₁: (0, x₁)
    p_full = a ^ b
    low63, top = _int64((1 << 63) - 1), _int64(1 << 63)
    g = _and(a, b) & low63
    p = p_full & low63
    if rank == 0:
        p = p ^ top  # lane 63: propagate, no generate (a public constant, XORed by one party)
    g = _carry_tree(g, p, 64)
    msb = ((p_full >> 63) & 1) ^ g
    return crypten.mpc.MPCTensor.from_shares(_b2a_bit(msb), precision=0)


# The comparison of :func:`_select_max` looks at bits SHIFT … SHIFT + WIDTH − 1 of the difference
# only: WIDTH-bit lanes, 64/WIDTH elements to a word. RANGE: exact in sign for |d| < 2^(WIDTH − 1 +
# SHIFT) raw (255 for 16 and 9, above MAX_LOGIT_GAP), and it may keep the smaller of two values
# less than 2^SHIFT raw (2⁻⁷) apart, so a row maximum of ⌈log₂ k⌉ levels is within
# MAX_SLACK(k) below the true one.
COMPARE_BITS = (1 << COMPARE_WIDTH) - 1
COMPARE_BOUND = 2.0 ** (COMPARE_WIDTH - 1 + COMPARE_SHIFT - PRECISION_BITS)


def max_slack(k: int) -> float:
    """How far below the true maximum :func:`row_max` of k columns may be (0 under TFP)."""
    return math.ceil(math.log2(max(k, 1))) * 2.0 ** (COMPARE_SHIFT - PRECISION_BITS)


def _pack_lanes(t: torch.Tensor, width: int) -> torch.Tensor:
    """64/width elements of ``width`` bits per word: group j of the elements at bit j·width."""
    r = 64 // width
    flat = t.reshape(-1)
    n = -(-flat.numel() // r)
    padded = torch.zeros(r * n, dtype=torch.long)
    padded[: flat.numel()] = flat
    groups = padded.reshape(r, n)
    out = groups[0].clone()
    for j in range(1, r):
        out |= groups[j] << (j * width)
    return out


def _unpack_lanes(w: torch.Tensor, width: int, like: torch.Tensor) -> torch.Tensor:
    """Bit 0 of each lane of :func:`_pack_lanes`'s words, in the elements' order."""
    groups = torch.cat([(w >> (j * width)) & 1 for j in range(64 // width)])
    return groups[: like.numel()].reshape(like.shape)


def _select_max(x: Any, y: Any) -> Any:
    """max(x, y) elementwise (within 2^SHIFT raw), as x − d·[d < 0] with d = x − y, from one
    opening of d.

    The dealer's ``compare`` item gives a uniform a in [0, 2^COMPARE_OPENING), an XOR sharing of
    α = bits SHIFT … SHIFT + WIDTH − 1 of a, a random bit ρ in both sharings, a's top bit m and
    shares of a·ρ and m·ρ. Opening c = d̃ + a on COMPARE_OPENING bits (both directions; d̃ = d plus
    an offset above the compared bits, docs/protocol.md "Narrow openings") serves both halves:

    * the sign: with u = the same bits of c, (u − α) mod 2^WIDTH = ⌊d/2^SHIFT⌋ + κ (κ ∈ {0, 1},
      the borrow from the dropped low bits), whose top bit is [d < 0] whenever d ≥ 0 or
      d < −2^SHIFT (RANGE: |d| < COMPARE_BOUND). u − α = u + ¬α + 1, and u is public, so the
      generate and propagate bits u ∧ ¬α and u ⊕ ¬α are local; the carry into the top bit is a tree
      of log₂ WIDTH levels, 64/WIDTH elements to a word (¼, ⅛, … word per element and level).
    * the select: the bit is opened once masked by ρ (β = bit ⊕ ρ, 64 bits a word), so
      [bit] = β + ρ − 2βρ and, with d = c − offset − a + 2^w(1 − m_c)·m exactly,
      d·bit = (c − offset)·[bit] − β[a] − (1 − 2β)[aρ] + 2^w(1 − m_c)(β[m] + (1 − 2β)[mρ]): no
      product is opened.
    """
    d = x - y
    rank = _rank()
    width, top = COMPARE_WIDTH, COMPARE_WIDTH - 1
    provider = crypten.mpc.get_default_provider()
    opening = compare_width()
    a, alpha, rho_bin, rho, a_rho, m, m_rho = provider.compare(tuple(d.size()), opening)
    # c = d̃ + a mod 2^w for d̃ = d + 2^(w−2): the narrow opening (RANGE: |d| < 2^(w−2) raw)
    offset = 1 << (opening - 2)
    mine = d._tensor.share + a + (offset if rank == 0 else 0)
    parts = crypten.communicator.get().all_gather(ringmath.low_bytes(mine, opening // 8))
    c = _open_sum(parts, opening, mine.shape)
    u = (c >> COMPARE_SHIFT) & COMPARE_BITS
    w = (~alpha & COMPARE_BITS) if rank == 0 else alpha  # XOR shares of ¬α
    g = u & w  # generate: a public AND a shared value, local
    p_full = (u ^ w) if rank == 0 else w  # propagate: the public u XORed in by one party
    g = g ^ (p_full & 1)  # the carry-in 1 of "+ 1": bit 0 generates if u₀ ∨ w₀
    below = (1 << top) - 1
    g, p = _pack_lanes(g & below, width), _pack_lanes(p_full & below, width)
    if rank == 0:  # the top lane of each element: propagate, no generate (the root is its carry)
        p = p ^ _int64(sum(1 << (j * width + top) for j in range(64 // width)))
    g = _carry_tree(g, p, width)
    negative = ((p_full >> top) & 1) ^ _unpack_lanes(g, width, p_full)  # XOR shares of [d < 0]
    from crypten.mpc.primitives import BinarySharedTensor

    opened = BinarySharedTensor.from_shares(_pack((negative ^ rho_bin) & 1, 64)).reveal()
    beta = _unpack(opened, 64, 1, negative)
    bit = rho - 2 * beta * rho + (beta if rank == 0 else 0)  # arithmetic shares of [d < 0]
    # d = c − 2^(w−2) − a + 2^w·(1 − m_c)·m exactly (the wrap of d̃ + a), so d·[d < 0] is linear
    # in [bit], [a·bit] = β[a] + (1 − 2β)[aρ] and [m·bit] = β[m] + (1 − 2β)[mρ]
    d_bit = (c - offset) * bit - beta * a - (1 - 2 * beta) * a_rho  # shares of d·[d < 0], 2¹⁶
    if opening != FULL:  # (a full opening wraps in the ring itself)
        wrap = (1 - (c >> (opening - 1))) << opening
        d_bit = d_bit + wrap * (beta * m + (1 - 2 * beta) * m_rho)
    return x - crypten.mpc.MPCTensor.from_shares(d_bit, precision=PRECISION_BITS)


@shape_memo
def row_max(z: Any) -> Any:
    """max over the columns of an n×k shared matrix, as an n×1 matrix: a pairwise tree.

    Each level compares the first half of the columns with the second (one comparison per pair)
    and keeps b + (a − b)·[a ≥ b]: ⌈log₂ k⌉ levels, k − 1 comparisons per row. With our dealer
    each comparison-and-select is :func:`_select_max` (one opening, a 16-bit carry tree, one
    opened bit; RANGE: differences below COMPARE_BOUND, result within :func:`max_slack` below
    the maximum); otherwise (TFP) :func:`ltz` and a product with
    the comparison's bit, an integer (no truncation). CrypTen's ``max(dim)`` also builds the
    one-hot argmax (which the softmax never uses), and compares a remainder pairwise.
    """
    reusing = _reusing()
    while z.size(1) > 1:
        half = z.size(1) // 2
        a, b = z[:, :half], z[:, half : 2 * half]
        if reusing:
            top = _select_max(a, b)
        else:
            d = a - b
            top = b + d * (1 - ltz(d))  # b + (a − b)·[a ≥ b]
        z = top if z.size(1) == 2 * half else crypten.cat([top, z[:, 2 * half :]], dim=1)
    return z


@functools.lru_cache(maxsize=64)
def reciprocal_start(upper: float) -> tuple[tuple[float, float, float], float]:
    """The quadratic q(s) = q₀ + q₁s + q₂s² with the least max |1 − s·q(s)| over [1, upper], and
    that error ε (Remez exchange on a fine grid; 0.27 for upper = 10, against 0.50 for the best
    line). A public function of the public range."""
    u = float(upper)
    grid = np.linspace(1.0, u, 20001)
    x = (1 + u) / 2 + (u - 1) / 2 * np.cos(np.pi * np.arange(4)[::-1] / 3)
    coeffs = np.zeros(3)
    for _ in range(40):
        system = np.array([[xi, xi**2, xi**3, (-1) ** i] for i, xi in enumerate(x)])
        coeffs = np.linalg.solve(system, np.ones(4))[:3]
        f = 1 - grid * (coeffs[0] + grid * (coeffs[1] + grid * coeffs[2]))
        turns = np.nonzero(np.diff(np.sign(np.diff(f))))[0] + 1
        points = np.concatenate([[0], turns, [len(grid) - 1]])
        if len(points) != 4:
            break
        x = grid[points]
    f = 1 - grid * (coeffs[0] + grid * (coeffs[1] + grid * coeffs[2]))
    return (float(coeffs[0]), float(coeffs[1]), float(coeffs[2])), float(np.abs(f).max())


@shape_memo
def reciprocal_in_range(s: Any, *, upper: float) -> Any:
    """1/s for s ∈ [1, upper] by Newton's method y ← y(2 − s·y) from a minimax start.

    Each iteration squares the relative error |1 − s·y|, so ⌈log₂(log 2⁻¹⁵ / log ε)⌉
    iterations from a start of error ε reach 2⁻¹⁵, the encoding's resolution for y ≥ ½ (4 for
    upper = 10). With our dealer s is opened once and reused: in the quadratic start
    (:func:`reciprocal_start`, ε = 0.27 for upper = 10, so the 4 iterations reach 2⁻³⁰; s² is
    local from s's opening) and in every iteration, and y in both of its products: two openings an
    iteration (y and 2 − s·y) instead of two Beaver products' four. Under TFP the start is the best
    line y₀ = c₁ − c₂·s, c₂ = 2/(u + (u+1)²/4), c₁ = c₂(u+1), of error 1 − c₂·u (0.50 for
    u = 10). CrypTen's reciprocal starts from an exp and runs 10 iterations. RANGE: 1 ≤ s ≤ upper.
    """
    u = float(upper)
    if not _reusing():
        c2 = 2.0 / (u + (u + 1.0) ** 2 / 4.0)
        c1 = c2 * (u + 1.0)
        eps = 1.0 - c2 * u
        iterations = max(1, math.ceil(math.log2(math.log(2.0**-15) / math.log(eps))))
        y = mul_public(s, -c2, bits=16).add(c1)
        for _ in range(iterations):
            y = y * (2.0 - s * y)
        return y
    (q0, q1, q2), eps = reciprocal_start(u)
    eps = min(eps + 0.01, 0.99)  # margin for the coefficients' 10 significant bits
    iterations = max(1, math.ceil(math.log2(math.log(2.0**-15) / math.log(eps))))
    opened_s = _Opened(s, bound=2 * u)
    square = _from_raw(opened_s.times(opened_s), SCALE)  # RANGE: s² ≤ upper²
    # RANGE: 10 bits keep x·2¹⁶·m ≤ upper²·2²⁷ (2⁻³⁰ per element for upper ≈ 10); Newton
    # corrects the start's rounding
    y = mul_public(s, q1, bits=10) + mul_public(square, q2, bits=10) + q0
    for _ in range(iterations):
        opened_y = _Opened(y, bound=UNIT_BOUND)  # RANGE: y ∈ (0, 1.3/s]
        t = 2.0 - _from_raw(opened_s.times(opened_y), SCALE)  # RANGE: s·y ∈ (0, 2)
        y = _from_raw(opened_y.times(_Opened(t, bound=UNIT_BOUND)), SCALE)
    return y


@bounded(8.0)  # RANGE: every truncated value inside is ≤ 2.2 (truncation checks, docs/protocol.md)
@shape_memo
def softmax(z: Any) -> Any:
    """Row-wise softmax of an n×k shared matrix."""
    m = row_max(z)
    e = exp_nonpositive(z - m, halvings=SOFTMAX_HALVINGS, order=SOFTMAX_ORDER)
    # RANGE: the denominator is in [1, k·e^slack]: the entry m comes from contributes exp(0) = 1,
    # and m is at most max_slack(k) below the row's maximum.
    k = z.size(1)
    inv = reciprocal_in_range(e.sum(dim=1, keepdim=True), upper=k * math.exp(max_slack(k)))
    if not _reusing():
        return e * inv
    # RANGE: e ∈ [0, e^max_slack], 1/Σe ∈ (0, 1]
    opened_e, opened_inv = _Opened.together((e, UNIT_BOUND), (inv, UNIT_BOUND))
    return _from_raw(opened_e.times(opened_inv), SCALE)


@shape_memo
def log_in_range(s: Any, *, upper: float) -> Any:
    """log(s) for s ∈ [1, upper] by Newton's method y ← y + s·exp(−y) − 1.

    Starts from the chord of log over [1, upper] (error ≤ 0.7 for upper ≤ 10) and converges
    quadratically; exp(−y) uses exp_nonpositive with h = 3 (quantisation 2³·2⁻¹⁶ ≈ 1.2e-4),
    accurate for y ≤ 2.2·2³ ≈ 17. RANGE: 1 ≤ s ≤ upper.
    """
    slope = math.log(upper) / (upper - 1.0)
    y = mul_public(s - 1.0, slope, bits=16)
    iterations = 4 + max(0, math.ceil(math.log2(max(math.log(upper), 1.0))))
    for _ in range(iterations):
        y = y + s * exp_nonpositive(-y, halvings=3, order=6) - 1.0
    return y


def reveal_float(x: Any, dst: int | None = None) -> np.ndarray | None:
    """Open a shared tensor (to both parties, or only to ``dst``) and decode it exactly in float64.

    Returns None on the party that does not receive it.
    """
    opened = x.reveal() if dst is None else x.reveal(dst=dst)
    return None if opened is None else exact_decode(opened, SCALE).numpy()


def mul_pow2(x: Any, exponent: int) -> Any:
    """x · 2^exponent exactly (an integer product, or one truncation for a negative exponent)."""
    return x.mul(2**exponent) if exponent >= 0 else x.div(2 ** (-exponent))
