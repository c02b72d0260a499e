"""Unit tests of the CrypTen replacements: key-stream generators, shapes, and the dealer's tuples."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from common.errors import MPCError
from common.mpc.dealer import Dealer, KeySchedule, attempt_stream, result_size, serve_dealer
from common.mpc.plan import Item
from common.mpc.streams import StreamRng, install_stream_rng


def test_stream_rng_is_deterministic_per_key_and_uniform() -> None:
    key = os.urandom(32)
    a, b = StreamRng(key), StreamRng(key)
    assert torch.equal(a.int64((100, 3)), b.int64((100, 3)))
    assert not torch.equal(StreamRng(os.urandom(32)).int64(300), StreamRng(key).int64(300))
    values = StreamRng(key).int64(200_000)
    # the whole ring: both signs, and the top bits set as often as not
    assert 0.49 < float((values < 0).double().mean()) < 0.51
    bits = StreamRng(key).kbit(200_000, 1)
    assert set(bits.unique().tolist()) == {0, 1}
    assert 0.49 < float(bits.double().mean()) < 0.51


def test_crypten_draws_from_the_stream_once_installed() -> None:
    import crypten.mpc.primitives.arithmetic as arithmetic

    install_stream_rng()
    key = os.urandom(32)
    drawn = arithmetic.generate_random_ring_element(torch.Size([4, 5]), generator=StreamRng(key))
    assert torch.equal(drawn, StreamRng(key).int64((4, 5)))
    # a torch.Generator still gets CrypTen's original behaviour
    g = torch.Generator().manual_seed(1)
    assert arithmetic.generate_random_ring_element((2, 2), generator=g).shape == (2, 2)


@pytest.mark.parametrize(
    ("op", "a", "b"),
    [
        ("matmul", (3, 4), (4, 5)),
        ("matmul", (4,), (4, 5)),
        ("matmul", (3, 4), (4,)),
        ("matmul", (4,), (4,)),
        ("matmul", (7, 1, 3, 4), (2, 4, 5)),
        ("mul", (3, 1), (1, 4)),
    ],
)
def test_result_shapes_match_torch(op: str, a: tuple[int, ...], b: tuple[int, ...]) -> None:
    want = getattr(torch, op)(torch.zeros(a), torch.zeros(b)).shape
    assert result_size(op, a, b) == want


def test_mismatched_matmul_shapes_are_refused() -> None:
    with pytest.raises(MPCError, match="do not match"):
        result_size("matmul", (3, 4), (5, 6))


def _keys() -> KeySchedule:
    """A stand-in for a link's key schedule: keys by label from a random master key."""
    master = os.urandom(32)
    return lambda label: hashlib.sha256(master + label.encode()).digest()


def _parties() -> tuple[StreamRng, StreamRng, Dealer]:
    """The owners' streams of candidate 0's first attempt, and a dealer serving it."""
    k0, k1 = _keys(), _keys()
    dealer = Dealer(k0, k1)
    dealer.begin(0, 0)
    return attempt_stream(k0, 0, 0), attempt_stream(k1, 0, 0), dealer


@pytest.mark.parametrize("op", ["matmul", "mul"])
def test_dealer_triples_are_correct_shares(op: str) -> None:
    """The owners draw a, b (and the data owner c1) in the order the dealer mirrors."""
    p0, p1, dealer = _parties()
    s0, s1 = ((6, 4), (4, 3)) if op == "matmul" else ((6, 4), (6, 4))
    for _ in range(3):  # the streams stay in step over several tuples
        a0, b0 = p0.int64(s0), p0.int64(s1)
        a1, b1 = p1.int64(s0), p1.int64(s1)
        c1 = p1.int64(result_size(op, s0, s1))
        c0 = dealer.value(Item("additive", (s0, s1), op=op))
        assert c0 is not None
        expected = getattr(torch, op)(a0 + a1, b0 + b1)
        assert torch.equal(c0 + c1, expected)


def test_dealer_square_binary_and_b2a_tuples() -> None:
    p0, p1, dealer = _parties()
    r0, r1, q1 = p0.int64((5,)), p1.int64((5,)), p1.int64((5,))
    q0 = dealer.value(Item("square", ((5,),)))
    assert q0 is not None and torch.equal(q0 + q1, (r0 + r1) * (r0 + r1))
    a0, b0, a1, b1 = p0.int64((3,)), p0.int64((3,)), p1.int64((3,)), p1.int64((3,))
    c1 = p1.int64((3,))
    c0 = dealer.value(Item("binary", ((3,), (3,))))
    assert c0 is not None and torch.equal(c0 ^ c1, (a0 ^ a1) & (b0 ^ b1))
    bit0, bit1, arith1 = p0.kbit((8,), 1), p1.kbit((8,), 1), p1.int64((8,))
    arith0 = dealer.value(Item("B2A", ((8,),)))
    assert arith0 is not None and torch.equal(arith0 + arith1, bit0 ^ bit1)


@pytest.mark.parametrize("holder", [0, 1])
def test_dealer_masked_products_are_correct_shares(holder: int) -> None:
    """mask A (holder's stream), then A·B and Aᵀ·B' (B from the other's stream, S the data
    owner's): the shares of the products add up, for the whole mask and for a public row subset."""
    p0, p1, dealer = _parties()
    streams = (p0, p1)
    assert dealer.value(Item("mask", ((6, 4),), holder=holder)) is None
    A = streams[holder].int64((6, 4))
    rows = (5, 0, 2)
    for op, size_b, sel in (("matmul", (4, 3), None), ("tmatmul", (3, 2), rows)):
        B = streams[1 - holder].int64(size_b)
        item = Item("product", (size_b,), op=op, mask=0, rows=sel)
        c0 = dealer.value(item)
        A_rows = A if sel is None else A[torch.tensor(sel)]
        expected = A_rows @ B if op == "matmul" else A_rows.t() @ B
        assert c0 is not None and torch.equal(c0 + p1.int64(expected.shape), expected)


def test_dealer_reused_openings_are_correct_shares() -> None:
    """rmask (a from both streams; h and m from the dealer, a = ā + 2^w·h with ā the signed value
    of a's low w bits and m their top bit), cross (ā_iā_j, ā_i·m_j, m_i·ā_j, m_i·m_j) by relative
    position, and compare (a, its bits 9..24 XOR-shared, ρ in both sharings, a·ρ): the shares add
    up."""
    from common.mpc.plan import COMPARE_OPENING, COMPARE_SHIFT, COMPARE_WIDTH

    p0, p1, dealer = _parties()
    masks = []
    for width in (24, 16, 56):
        a = p0.int64((4, 2)) + p1.int64((4, 2))
        hm0 = dealer.value(Item("rmask", ((4, 2),), widths=(width,)))
        assert hm0 is not None
        h, m = (hm0 + p1.int64((2, 4, 2))).unbind(0)
        a_bar = a - (h << width)
        low = a & ((1 << width) - 1)
        assert torch.equal(m, low >> (width - 1))  # the top bit of a's low bits
        assert torch.equal(a_bar, low - (m << width))  # their signed value
        assert int(a_bar.abs().max()) <= 1 << (width - 1)
        masks.append((a_bar, m))
    widths = (24, 16, 56)
    for back_i, back_j in ((0, 0), (2, 1)):  # the latest squared; the first times the second
        pair_widths = (widths[2 - back_i], widths[2 - back_j])
        item = Item("cross", ((4, 2), (4, 2)), pair=(back_i, back_j), widths=pair_widths)
        c0 = dealer.value(item)
        (a_i, m_i), (a_j, m_j) = masks[-1 - back_i], masks[-1 - back_j]
        if back_i == back_j:  # a square: ā² and ā·m
            expected = torch.stack([a_i * a_i, a_i * m_i])
        else:
            expected = torch.stack([a_i * a_j, a_i * m_j, m_i * a_j, m_i * m_j])
        assert c0 is not None and torch.equal(c0 + p1.int64(expected.shape), expected)
    u = p0.int64((5,)) + p1.int64((5,))
    rho = p0.kbit((5,), 1) ^ p1.kbit((5,), 1)
    ours = p1.int64((6, 5))
    theirs = dealer.value(Item("compare", ((5,),), widths=(COMPARE_OPENING,)))
    assert theirs is not None
    bits = (1 << COMPARE_WIDTH) - 1
    a = u & ((1 << COMPARE_OPENING) - 1)  # the mask of the narrow opening
    m = a >> (COMPARE_OPENING - 1)
    assert torch.equal((theirs[0] ^ ours[0]) & bits, (a >> COMPARE_SHIFT) & bits)
    assert torch.equal(theirs[1] + ours[1], rho)
    assert torch.equal(theirs[2] + ours[2], a * rho)
    assert torch.equal(u - ((theirs[3] + ours[3]) << COMPARE_OPENING), a)  # a = u − 2^w·h
    assert torch.equal(theirs[4] + ours[4], m)
    assert torch.equal(theirs[5] + ours[5], m * rho)


def test_dealer_full_openings_send_nothing_for_the_mask_and_one_product_per_cross() -> None:
    """openings = "full": an rmask of width 64 is the two stream values' sum and the dealer sends
    nothing for it; a cross of two such masks is a_i·a_j alone, as before the narrow openings."""
    p0, p1, dealer = _parties()
    masks = []
    for _ in range(2):
        assert dealer.value(Item("rmask", ((3,),), widths=(64,))) is None
        masks.append(p0.int64((3,)) + p1.int64((3,)))
    c0 = dealer.value(Item("cross", ((3,), (3,)), pair=(1, 0), widths=(64, 64)))
    assert c0 is not None and c0.shape == (1, 3)
    assert torch.equal(c0 + p1.int64((1, 3)), (masks[0] * masks[1]).unsqueeze(0))


@pytest.mark.parametrize(
    "item",
    [
        Item("cross", ((2,), (2,)), pair=(0, 0), widths=(24, 24)),  # no rmask drawn
        Item("cross", ((2,), (2,)), pair=(0, 16), widths=(24, 24)),  # outside the window
        Item("cross", ((2,), (2,))),  # no pair
        Item("rmask", ((2,),)),  # no width
        Item("rmask", ((2,),), widths=(8,)),  # a width no opening has
        Item("compare", ((2,),), widths=(24,)),  # nor a comparison
        Item("additive", ((2,), (2,)), op="conv2d"),
        Item("additive", ((1, 0), (0, 4096)), op="matmul"),  # finding 3 of issue 12
        Item("square", ((1 << 20, 1 << 20),)),
        Item("__import__", ((1,),)),
        Item("product", ((4, 3),), op="matmul", mask=0),  # no mask drawn
    ],
)
def test_dealer_refuses_malformed_zero_size_or_huge_items(item: Item) -> None:
    _, _, dealer = _parties()
    with pytest.raises(MPCError):
        dealer.value(item)


def test_an_owner_refuses_a_draw_off_its_plan() -> None:
    """The data owner's provider checks each draw against the plan before drawing."""
    from common.mpc.dealer import DealerProvider

    plan = [Item("square", ((5,),))]
    provider = DealerProvider(1, _keys(), None, plan=lambda index: plan)
    provider.begin(0)
    with pytest.raises(MPCError, match="zero-size"):
        provider.generate_additive_triple((1, 0), (0, 4), "matmul")
    with pytest.raises(MPCError, match=r"asks for .*\[2, 3\].* where the plan's item 0 is"):
        provider.generate_additive_triple((2, 3), (3, 4), "matmul")
    with pytest.raises(MPCError, match="its plan has 1"):
        provider.end()
    provider.square((5,))
    provider.end()
    with pytest.raises(MPCError, match="beyond its plan's 1 items"):
        provider.square((5,))


def test_the_plan_is_a_function_of_the_job_alone() -> None:
    from common.mpc.plan import compute_plan
    from common.protocol import CandidateMeta, JobSpec

    job = JobSpec(
        method="influence",
        n_features=6,
        n_classes=3,
        candidates=[CandidateMeta(name="c", n_samples=20)],
        n_train=5,
        n_test=5,
    )
    assert compute_plan(job, 0, rank=0) == compute_plan(job, 0, rank=1)
    assert all(all(s > 0 for size in item.sizes for s in size) for item in compute_plan(job, 0))


def test_the_plan_masks_a_candidate_chunk_by_chunk() -> None:
    """⌈n / chunk_rows⌉ masks of the chunks' sizes (a public cut), one per chunk, each used by
    its own products; one chunk is the unchunked plan."""
    from common.mpc.plan import compute_plan
    from common.protocol import CandidateMeta, JobSpec

    def masks(method: str, rows: int) -> list[tuple[int, ...]]:
        job = JobSpec(
            method=method,
            n_features=6,
            n_classes=3,
            candidates=[CandidateMeta(name="c", n_samples=20)],
            n_train=5,
            n_test=5,
            chunk_rows=rows,
        )
        plan = compute_plan(job, 0)
        products = {item.mask for item in plan if item.fn == "product"}
        drawn = [item for item in plan if item.fn == "mask"]
        assert products == set(range(len(drawn)))  # every mask is used
        return [item.sizes[0] for item in drawn if item.holder == 1]

    for method in ("influence", "gradient-norm", "finetune"):
        assert masks(method, 8) == [(8, 7), (8, 7), (4, 7)]
        assert masks(method, 20) == masks(method, 64) == [(20, 7)]


def test_the_dealer_spills_live_masks_and_forgets_released_ones(tmp_path) -> None:
    """The live masks beyond the dealer's memory budget (the newest kept) go to the spill
    directory and are read back for their products (the same shares); a released mask is gone,
    its file deleted."""
    k0, k1 = _keys(), _keys()
    p0, p1 = attempt_stream(k0, 0, 0), attempt_stream(k1, 0, 0)
    rows = 64
    shape = (rows, 4)
    dealer = Dealer(k0, k1, spill=tmp_path, memory_elements=2 * rows * 4)
    dealer.begin(0, 0)
    for _ in range(2):  # two masks fit the budget
        assert dealer.value(Item("mask", (shape,), holder=1)) is None
    assert list(tmp_path.iterdir()) == []
    assert dealer.value(Item("mask", ((rows // 2, 4),), holder=1)) is None
    A0, A1, A2 = p1.int64(shape), p1.int64(shape), p1.int64((rows // 2, 4))
    assert [f.name for f in tmp_path.iterdir()] == ["mask-0.npy"]  # the oldest, beyond it
    for mask, A in ((0, A0), (1, A1), (2, A2)):
        B = p0.int64((4, 2))
        c0 = dealer.value(Item("product", ((4, 2),), op="matmul", mask=mask))
        assert c0 is not None and torch.equal(c0 + p1.int64((A.shape[0], 2)), A @ B)
    dealer.release(0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MPCError, match="after its last product"):
        dealer.value(Item("product", ((4, 2),), op="matmul", mask=0))


def test_laplace_draws_have_the_stated_scale() -> None:
    from common.mpc.noise import laplace

    draws = torch.tensor([laplace(2.0) for _ in range(40_000)], dtype=torch.float64)
    assert abs(float(draws.mean())) < 0.05  # sd of the mean: 2·√2/200 ≈ 0.014
    assert 1.95 < float(draws.abs().mean()) < 2.05  # E|η| = scale
    assert abs(float(draws.abs().median()) - 2.0 * 0.6931) < 0.05  # median |η| = scale·ln 2


def test_influence_sensitivity_bounds_replacing_one_sample() -> None:
    """Adversarial replacements never move S = Σ ∇L_aᵀ v by more than the stated Δ."""
    import numpy as np

    from common.ml.model import ModelOwnerState, influence_score, v_bound
    from common.mpc.noise import influence_sensitivity
    from common.mpc.statistics import Shapes

    rng = np.random.default_rng(7)
    d, k, n, bound = 12, 4, 30, 2.0
    worst = 0.0
    for trial in range(200):
        theta = rng.normal(scale=3.0, size=(d + 1, k))
        v = rng.normal(scale=float(rng.uniform(0.1, 5.0)), size=(d + 1, k))
        state = ModelOwnerState(theta=theta, v=v, test_loss=0.0, l2=1.0)
        X = rng.uniform(-bound, bound, size=(n, d))
        y = rng.integers(0, k, size=n)
        shapes = Shapes(
            n_features=d, n_classes=k, n_candidate=n, n_train=1, n_test=1, feature_bound=bound
        )
        delta = influence_sensitivity(shapes, v_bound(v))
        X2, y2 = X.copy(), y.copy()
        # a corner of the box along the direction of one column of v, with a label far from it
        j = int(rng.integers(0, k))
        X2[0] = bound * np.sign(v[:d, j]) * (1 if trial % 2 else -1)
        y2[0] = (j + 1 + trial) % k
        s1 = -influence_score(state, X, y) * n
        s2 = -influence_score(state, X2, y2) * n
        worst = max(worst, abs(s1 - s2) / delta)
    assert worst <= 1.0
    assert worst > 0.05  # the bound is not vacuous by orders of magnitude


def test_noise_is_for_influence_with_a_bound_only() -> None:
    from pydantic import ValidationError

    from common.protocol import CandidateMeta, JobSpec

    base = {"n_features": 4, "n_classes": 2, "candidates": [CandidateMeta(name="c", n_samples=3)]}
    with pytest.raises(ValidationError, match="calibrated for 'influence' only"):
        JobSpec(method="gradient-norm", noise_epsilon=1.0, v_bound=1.0, **base)
    with pytest.raises(ValidationError, match="v_bound: noise_epsilon needs"):
        JobSpec(method="influence", noise_epsilon=1.0, **base)
    assert JobSpec(method="influence", noise_epsilon=1.0, v_bound=1.0, **base).noise_epsilon == 1.0


class _ScriptedModelOwner:
    """A channel end for :func:`serve_dealer`: takes what the dealer pushes, answers a script."""

    def __init__(self, script: list[dict[str, object]]):
        self.script = [json.dumps(m).encode() for m in script]
        self.pushed = 0
        self.values: list[torch.Tensor] = []  # the corrections pushed, in order

    def send(self, data: bytes | memoryview) -> None:
        from common.mpc.communicator import unpack
        from common.mpc.dealer import _HEADER

        data = bytes(data)  # a channel takes any bytes-like message
        self.pushed += 1
        (length,) = _HEADER.unpack(data[: _HEADER.size])
        header = json.loads(data[_HEADER.size : _HEADER.size + length])
        like = torch.empty(header["item"]["sizes"][0], dtype=torch.long)
        self.values.append(unpack(bytearray(data[_HEADER.size + length :]), [like])[0])

    def wait(self, future: object) -> None:
        return None

    def recv(self) -> bytes:
        return self.script.pop(0)


@pytest.mark.parametrize(
    ("script", "served"),
    [
        ([{"fn": "next"}, {"fn": "done", "items": 1}], 1),
        ([{"fn": "retry"}, {"fn": "next"}, {"fn": "done", "items": 2}], 2),
        ([{"fn": "retry"}, {"fn": "retry"}], None),  # a second recomputation
        ([{"fn": "done", "items": 1}], None),  # no decision after the candidate
    ],
)
def test_the_dealer_serves_a_candidate_again_at_most_once(script, served) -> None:
    plan = [Item("square", ((3,),))]
    channel = _ScriptedModelOwner(script)
    dealer = Dealer(_keys(), _keys())
    if served is None:
        with pytest.raises(MPCError, match="the dealer serves the job's plan only"):
            serve_dealer(channel, dealer, lambda index: plan, 1)  # type: ignore[arg-type]
        return
    assert serve_dealer(channel, dealer, lambda index: plan, 1) == served  # type: ignore[arg-type]
    assert channel.pushed == served  # one fresh value per attempt, nothing more


def test_each_candidate_and_attempt_has_its_own_stream_of_the_links_keys() -> None:
    """Deterministic from the link's keys (both ends agree), different for every (candidate,
    attempt) and every link, and no attempt beyond the one recomputation."""
    keys, other = _keys(), _keys()
    draws = {(i, a): attempt_stream(keys, i, a).int64(1000) for i in range(3) for a in range(2)}
    for (i, a), values in draws.items():
        assert torch.equal(values, attempt_stream(keys, i, a).int64(1000))
        assert not torch.equal(values, attempt_stream(other, i, a).int64(1000))
    pooled = torch.cat(list(draws.values()))
    assert pooled.unique().numel() == pooled.numel()  # no value shared between two attempts
    with pytest.raises(MPCError, match="no stream for attempt 2 at candidate 0"):
        attempt_stream(keys, 0, 2)
    with pytest.raises(MPCError, match="no stream for attempt 0 at candidate -1"):
        attempt_stream(keys, -1, 0)


def test_an_owners_provider_switches_streams_per_candidate_and_attempt() -> None:
    from common.mpc.dealer import DealerProvider

    keys = _keys()
    provider = DealerProvider(1, keys, None)
    with pytest.raises(MPCError, match="outside any candidate's computation"):
        provider.square((4,))
    for index in (0, 1):
        provider.begin(index)
        r, _ = provider.square((4,))
        assert torch.equal(r.share, attempt_stream(keys, index, 0).int64(4))
        provider.retry()
        r, _ = provider.square((4,))
        assert torch.equal(r.share, attempt_stream(keys, index, 1).int64(4))
        with pytest.raises(MPCError, match="at most once"):
            provider.retry()
        provider.end()
        with pytest.raises(MPCError, match="outside any candidate's computation"):
            provider.square((4,))


def test_the_dealer_serves_each_attempt_from_its_own_streams() -> None:
    """Two candidates, the first recomputed: each correction is the one of its own attempt's
    streams (what the owners draw for that attempt), not of the streams' next positions."""
    plan = [Item("square", ((3,),))]
    k0, k1 = _keys(), _keys()
    script = [{"fn": "retry"}, {"fn": "next"}, {"fn": "next"}, {"fn": "done", "items": 3}]
    channel = _ScriptedModelOwner(script)  # type: ignore[arg-type]
    assert serve_dealer(channel, Dealer(k0, k1), lambda index: plan, 2) == 3  # type: ignore[arg-type]
    for value, (index, attempt) in zip(channel.values, [(0, 0), (0, 1), (1, 0)], strict=True):
        s0, s1 = attempt_stream(k0, index, attempt), attempt_stream(k1, index, attempt)
        r = s0.int64(3) + s1.int64(3)
        assert torch.equal(value + s1.int64(3), r * r)


@pytest.mark.parametrize(
    ("script", "refused"),
    [
        # a second recomputation of a candidate (the job has one per candidate)
        ([{"fn": "retry"}, {"fn": "retry"}], "second recomputation of candidate 0"),
        ([{"fn": "next"}, {"fn": "retry"}, {"fn": "retry"}], "second recomputation of candidate 1"),
        # a decision beyond the job's last candidate
        (
            [{"fn": "next"}, {"fn": "next"}, {"fn": "next"}],
            "the job's 2 candidates were all served",
        ),
        (
            [{"fn": "next"}, {"fn": "next"}, {"fn": "retry"}],
            "the job's 2 candidates were all served",
        ),
        # out of order: done before the last candidate, or with the wrong count
        ([{"fn": "next"}, {"fn": "done", "items": 1}], r"'next' or one 'retry' for candidate 1"),
        ([{"fn": "retry"}, {"fn": "done", "items": 2}], r"'next' \(after the one retry\)"),
        ([{"fn": "next"}, {"fn": "next"}, {"fn": "done", "items": 3}], "'done' with the 2 items"),
        ([{"fn": "again"}], r"\{'fn': 'again'\}"),
    ],
)
def test_the_dealer_refuses_what_the_job_cannot_contain(script, refused: str) -> None:
    plan = [Item("square", ((3,),))]
    channel = _ScriptedModelOwner(script)
    with pytest.raises(MPCError, match=refused):
        serve_dealer(channel, Dealer(_keys(), _keys()), lambda index: plan, 2)  # type: ignore[arg-type]
    assert channel.script == []  # refused at the message named, not later
