"""The float64 ring products (common.mpc.ringmath) equal torch's int64 products mod 2^64 exactly."""

from __future__ import annotations

import pytest
import torch

from common.mpc import ringmath
from common.mpc.ringmath import MAX_INNER, SMALL_BITS, exact_float, small_matmul, small_tmatmul

BOUND = 1 << SMALL_BITS


def _full(*shape: int, seed: int) -> torch.Tensor:
    """Uniform ring elements, every int64 value (the extremes included by hand)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.randint(-(2**63), 2**63 - 1, shape, dtype=torch.int64, generator=g)
    if out.numel() >= 2:
        out.view(-1)[:2] = torch.tensor([-(2**63), 2**63 - 1])
    return out


def _small(*shape: int, seed: int, extreme: bool = False) -> torch.Tensor:
    """Entries in [−2^16, 2^16]; ``extreme``: every entry ±2^16 (the bound's worst case)."""
    g = torch.Generator().manual_seed(seed)
    if extreme:
        signs = torch.randint(0, 2, shape, generator=g) * 2 - 1
        return signs * BOUND
    return torch.randint(-BOUND, BOUND + 1, shape, dtype=torch.int64, generator=g)


@pytest.mark.parametrize(
    ("n", "d", "k"),
    [(6000, 785, 10), (3, 5, 2), (1, 1, 1), (0, 4, 3), (4, 0, 3), (5, 4, 0)],
    ids=["mnist", "tiny", "one", "no-rows", "no-inner", "no-columns"],
)
def test_products_equal_the_int64_kernel(n: int, d: int, k: int) -> None:
    X = _small(n, d, seed=1)
    W, R = _full(d, k, seed=2), _full(n, k, seed=3)
    assert torch.equal(small_matmul(exact_float(X), W), X @ W)
    assert torch.equal(small_tmatmul(exact_float(X), R), X.t() @ R)


def test_the_bound_is_tight_at_the_longest_inner_dimension() -> None:
    """Every |x| = 2^16 against all-ones limbs (−1 has every limb at its maximum), at an inner
    dimension of MAX_INNER exactly and one more (two blocks), the partial sums at their largest."""
    for inner in (MAX_INNER, MAX_INNER + 1):
        X = _small(inner, 2, seed=4, extreme=True)
        X[:, 0] = BOUND  # one column of +2^16 only: its sums do not cancel
        R = torch.full((inner, 3), -1, dtype=torch.int64)
        R[:, 1] = _full(inner, seed=5)
        assert torch.equal(small_tmatmul(exact_float(X), R), X.t() @ R)
        assert torch.equal(small_matmul(exact_float(X.t().contiguous()), R), X.t() @ R)


def test_a_block_beyond_the_bound_would_not_be_exact(monkeypatch) -> None:
    """The RANGE bound matters: with blocks 2^4 times longer the same product goes wrong."""
    inner = MAX_INNER << 4
    X = torch.full((inner, 1), BOUND - 1, dtype=torch.int64)  # odd, all alike: the sums grow
    R = _full(inner, 1, seed=7)
    assert torch.equal(small_tmatmul(exact_float(X), R), X.t() @ R)
    monkeypatch.setattr(ringmath, "MAX_INNER", inner)
    assert not torch.equal(small_tmatmul(exact_float(X), R), X.t() @ R)


def test_wrong_operands_are_refused() -> None:
    with pytest.raises(TypeError):
        small_matmul(torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="do not fit"):
        small_matmul(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.int64))


def test_ring_product_is_the_int64_kernel_for_either_op() -> None:
    A, W, R = _full(7, 5, seed=8), _full(5, 3, seed=9), _full(7, 3, seed=10)
    assert torch.equal(ringmath.ring_product("matmul", A, W), A @ W)
    assert torch.equal(ringmath.ring_product("tmatmul", A, R), A.t() @ R)
    with pytest.raises(ValueError, match="not 'mul'"):
        ringmath.ring_product("mul", A, W)


def test_a_reused_ring_matrix_gives_the_int64_kernel_s_products_in_either_layout() -> None:
    """From its second matmul on a RingMatrix multiplies through its kept transpose: the values,
    with and without a row selection, stay exactly the int64 kernel's."""
    M, B, R = _full(40, 9, seed=11), _full(9, 3, seed=12), _full(40, 3, seed=13)
    rows = torch.tensor([3, 0, 39, 7])
    reused = ringmath.RingMatrix(M)
    assert torch.equal(reused.product("matmul", B), M @ B)
    assert reused._transposed is None  # one product keeps the plain layout only
    for _ in range(2):
        assert torch.equal(reused.product("matmul", B), M @ B)
        assert torch.equal(reused.product("matmul", B, rows), M[rows] @ B)
        assert torch.equal(reused.product("tmatmul", R), M.t() @ R)
        assert torch.equal(reused.product("tmatmul", R[:4], rows), M[rows].t() @ R[:4])
    assert reused._transposed is not None and reused._transposed.is_contiguous()


@pytest.mark.parametrize("count", range(1, 8))
def test_low_bytes_carry_each_value_modulo_its_width(count: int) -> None:
    """low_bytes sends count bytes an element and from_low_bytes gives back x mod 2^(8·count),
    for the full int64 range (both signs, the extremes)."""
    t = torch.randint(-(2**62), 2**62, (37, 5)) * 2
    t[0, :3] = torch.tensor([-(2**63), 2**63 - 1, -1])
    wire = ringmath.low_bytes(t, count)
    assert wire.dtype == torch.uint8 and wire.numel() == t.numel() * count
    assert torch.equal(ringmath.from_low_bytes(wire, count, t.shape), t & ((1 << (8 * count)) - 1))


@pytest.mark.parametrize("count", range(1, 9))
@pytest.mark.parametrize("offset", [0, 8, 3])
def test_low_bytes_write_into_a_buffer_at_any_offset(count: int, offset: int) -> None:
    """Into ``out`` (a message's buffer, at an aligned or unaligned offset) and back into a row
    of a tensor: the same bytes and values as without ``out``."""
    t = torch.randint(-(2**62), 2**62, (7, 3)) * 2
    buffer = torch.zeros(offset + t.numel() * count + 5, dtype=torch.uint8)
    window = buffer[offset : offset + t.numel() * count]
    assert ringmath.low_bytes(t, count, out=window) is window
    assert torch.equal(window, ringmath.low_bytes(t, count))
    assert not buffer[:offset].any() and not buffer[offset + window.numel() :].any()
    rows = torch.full((2, t.numel()), 7, dtype=torch.int64)
    back = ringmath.from_low_bytes(window, count, t.shape, out=rows[1])
    mask = -1 if count == 8 else (1 << (8 * count)) - 1
    assert torch.equal(back, t & mask) and torch.equal(rows[1], (t & mask).reshape(-1))
    assert (rows[0] == 7).all()
