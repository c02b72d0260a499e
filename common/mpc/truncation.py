"""Detect every failed two-party truncation before anything is opened (docs/protocol.md,
"Truncation failures").

With two parties CrypTen truncates a shared value x by a public integer D share by share
(``ArithmeticSharedTensor.div_``). When x₀ + x₁ overflows int64 (probability |x|/2⁶⁴ for a
uniform share) the result is off by exactly ±2⁶⁴/D (ring units) plus rounding: a wildly wrong
score. A :class:`Ledger`, active for one attempt at one candidate's statistic, sees every such
truncation (the hook on ``div_`` installed by :func:`install`) and records *check values* on the
result's shares, locally (linear, no traffic):

* the result y (n elements) is cut into groups of g consecutive elements; each group gets r check
  values c = Σ ρᵢ·yᵢ with public odd ρᵢ < ρmax (the same pseudo-random ρ on both parties, fresh
  for every attempt);
* honest |yᵢ| ≤ M (the site's declared bound, :func:`bounded`; by default a pre-truncation value
  ≤ 2⁴⁰ and a result ≤ 2⁸), and g·ρmax·M ≤ E/4 with E = 2⁶⁴/D, so honest |c| ≤ E/4, while one
  failed element (or three) moves c by a non-zero multiple of E: |c| ≥ 3E/4;
* two failures in one group cancel in a check only if their ρ coincide (probability 1/N per check,
  N = ρmax/2 odd values); four or more are bounded by their own (tiny) probability.

At the end of the attempt :meth:`Ledger.failures` compares every check value with ±E/2 in one
batched comparison (:func:`common.mpc.fixedpoint.ltz`) and opens only the *count* of out-of-range
checks to both owners. g, r and ρmax are chosen per site (:func:`layout`) so that the probability
of an undetected failure is at most ``BUDGET`` per truncated element, from the declared bounds
alone; :attr:`Ledger.bound` sums it over the run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from common.errors import MPCError
from common.mpc.compat import import_crypten
from common.mpc.plan import planning

crypten = import_crypten()
from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor  # noqa: E402

RING = 2.0**64
# Undetected-failure probability allowed per truncated element: BUDGET in the large sites (those
# that grow with n and dominate a run's total), SMALL_BUDGET in a site of fewer than SMALL_SITE
# elements (d×k gradients, scalars: fewer checks where the values are large).
BUDGET = 2.0**-74
SMALL_BUDGET = 2.0**-72
SMALL_SITE = 2**16
# Comparisons of check values done at once by Ledger.failures (the comparison's temporaries, a few
# hundred bytes an element, stay below 0.5 GB); a run with more pays one comparison's rounds per slice
COMPARE_BATCH = 2**20
# RANGE (the default site): a pre-truncation value ≤ 2⁴⁰ ring units (a product of fixed-point
# values of magnitude ≤ 2⁸ at scale 2³²) and a result ≤ 2²⁴ ring units (2⁸ at scale 2¹⁶).
DEFAULT_PRE = 2**40
DEFAULT_POST = 2**24
MAX_GROUP = 2**16
MAX_CHECKS = 4
ROUNDING = 2  # each result differs from x/D by less than 2 ring units


@dataclass(frozen=True)
class Layout:
    """How one site is checked: groups of ``group`` elements, ``checks`` check values per group,
    ρ odd below ``rho_max`` (``rho_max`` 2: ρ = 1), and the undetected-failure probability per
    element that this guarantees (``bound``)."""

    group: int
    checks: int
    rho_max: int
    bound: float

    @property
    def cost(self) -> float:
        """Comparisons per truncated element (two per check value: c < −E/2 and c > E/2)."""
        return 2 * self.checks / self.group


def _pow2_floor(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(x))) if x >= 1 else 0


@functools.lru_cache(maxsize=4096)
def layout(divisor: int, bound: int, budget: float = BUDGET) -> Layout:
    """The cheapest check of a truncation by ``divisor`` whose honest results are ≤ ``bound``
    (ring units, rounding included) with undetected-failure probability ≤ ``budget`` per element.

    p = bound·D/2⁶⁴ bounds each element's failure probability. A group of g fails twice with
    probability ≤ (g·p)²/2 and four times with ≤ (g·p)⁴/24; summed over the groups of a site of n
    elements these are ≤ n·p·(g·p)/2 and n·p·(g·p)³/24. A pair cancels in all r checks with
    probability N⁻ʳ; one or three failures never cancel (an odd sum of odd ρ is not 0, and with
    ρmax ≤ D/8 (D not a power of two; ρ = 1 for 5 ≤ D < 16) the sum of three does not wrap to
    about 0; for D a power of two the error is an odd multiple of 2⁶⁴/D modulo 2⁶⁴). g = 1 (c = y) detects every failure with certainty when
    honest results stay below E/2 (any value a fixed-point product can represent).
    """
    E = RING / divisor
    p = min(1.0, bound * divisor / RING)
    best = layout_exact(divisor, bound)
    pow2 = divisor & (divisor - 1) == 0
    if not pow2 and divisor < 5:  # three failures of one sign could wrap to about 0
        return best
    rho_cap = divisor if pow2 else max(2, _pow2_floor(divisor / 8))  # ρ = 1 for D < 16
    g = 2
    while g <= MAX_GROUP:
        rho_max = min(rho_cap, _pow2_floor(E / (4 * g * bound)))
        if rho_max < 2:
            break
        n_rho = rho_max // 2
        group_p = g * p
        for r in range(1, MAX_CHECKS + 1):
            per_element = p * group_p / 2 * float(n_rho) ** -r + p * group_p**3 / 24
            if per_element <= budget:
                candidate = Layout(g, r, rho_max, per_element)
                if candidate.cost < best.cost:
                    best = candidate
                break
        g *= 2
    return best


def layout_exact(divisor: int, bound: int) -> Layout:
    """One check per element (c = y): certain when honest results stay below E/2."""
    p = min(1.0, bound * divisor / RING)
    return Layout(1, 1, 2, 0.0 if bound < RING / divisor / 2 else p)


@dataclass(frozen=True)
class Site:
    """One truncation: its divisor, the honest bound of its results, its size and its layout."""

    divisor: int
    bound: int
    numel: int
    layout: Layout

    @property
    def n_checks(self) -> int:
        return self.layout.checks * -(-self.numel // self.layout.group)


_current: Ledger | None = None
_declared: list[float] = []  # a stack of declared result bounds (values at scale 2¹⁶)


@contextlib.contextmanager
def bounded(value: float) -> Iterator[None]:
    """Declare that the truncations inside this block give results of magnitude ≤ ``value``
    (at scale 2¹⁶; RANGE of the call site), instead of the default site's bounds."""
    _declared.append(float(value))
    try:
        yield
    finally:
        _declared.pop()


def declared() -> float | None:
    """The innermost declared bound (None: the default site's)."""
    return _declared[-1] if _declared else None


def _site_bound(divisor: int) -> int:
    if _declared:
        return math.ceil(_declared[-1] * 2**16) + ROUNDING
    return min(DEFAULT_POST, DEFAULT_PRE // divisor) + ROUNDING


class Ledger:
    """The check values of one attempt at one candidate's statistic (a context manager)."""

    def __init__(self, seed: bytes):
        self.seed = seed
        self.sites: list[Site] = []
        self._checks: list[tuple[torch.Tensor, int]] = []  # check values' shares and E/2
        self._rho: dict[tuple[int, int, int], torch.Tensor] = {}
        self.planning = planning() is not None
        self.rank = crypten.communicator.get().get_rank()

    def __enter__(self) -> Ledger:
        global _current
        if _current is not None:
            raise MPCError("a truncation ledger is already active")
        install()
        _current = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _current
        _current = None

    @property
    def bound(self) -> float:
        """The probability that a failure of this run goes undetected (declared bounds)."""
        return sum(s.numel * s.layout.bound for s in self.sites)

    @property
    def n_checks(self) -> int:
        return sum(s.n_checks for s in self.sites)

    def _rhos(self, lay: Layout) -> torch.Tensor:
        """r × g public odd multipliers, the same on both parties, fresh for every attempt."""
        key = (lay.group, lay.checks, lay.rho_max)
        if key not in self._rho:
            digest = hashlib.sha256(self.seed + repr(key).encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
            half = torch.randint(0, lay.rho_max // 2, (lay.group, lay.checks), generator=gen)
            self._rho[key] = (half * 2 + 1).t().contiguous()
        return self._rho[key]

    def record(self, share: torch.Tensor, divisor: int) -> None:
        """Check values of one truncation's result (this party's share of it)."""
        bound = _site_bound(divisor)
        n = share.numel()
        lay = layout(divisor, bound, BUDGET if n >= SMALL_SITE else SMALL_BUDGET)
        exact = layout_exact(divisor, bound)
        if n <= lay.checks * -(-n // lay.group) and exact.bound == 0.0:
            lay = exact  # a small result: one check per element is fewer, and certain
        site = Site(divisor, bound, n, lay)
        self.sites.append(site)
        if self.planning or site.numel == 0:
            return
        flat = share.reshape(-1)
        if lay.group == 1:
            checks = flat.clone()
        else:
            # Σ ρ·y per group and check as r elementwise products and sums, not an int64 matmul of
            # a (groups × g) by a (g × r) matrix: torch's int64 kernel runs that about 20× slower.
            # The last group, when short, sums its own elements only (as if padded with zeros: a
            # site of 6,600 elements in groups of 65,536 would multiply ten times its size).
            g, rhos = lay.group, self._rhos(lay)
            full = flat.numel() // g
            parts = []
            if full:
                rows = flat[: full * g].view(full, g)
                parts.append(torch.stack([(rows * rho).sum(dim=1) for rho in rhos], dim=1))
            tail = flat[full * g :]
            if tail.numel():
                parts.append((rhos[:, : tail.numel()] * tail).sum(dim=1).view(1, -1))
            checks = torch.cat(parts).reshape(-1)
        self._checks.append((checks, int(RING / divisor / 2)))

    def replay(self, sites: list[Site]) -> None:
        """Sites of a computation that the plan's run skipped (:func:`common.mpc.plan.shape_memo`)."""
        self.sites.extend(sites)

    def failures(self) -> int:
        """Compare every check value with ±E/2 (one batched comparison) and open the count of
        out-of-range checks to both owners: 0 in every run without a failure."""
        from common.mpc.fixedpoint import ltz

        total = self.n_checks
        if total == 0:
            return 0
        count: Any = None
        for both in self._comparands(total):
            out = ltz(crypten.mpc.MPCTensor.from_shares(both, precision=0)).sum()
            count = out if count is None else count + out
        count = count.reveal()
        if self.planning:
            return 0
        opened = int(count.item())
        if not 0 <= opened <= 2 * total:  # a sum of 2·total bits: never outside, unless shares
            raise MPCError(  # were inconsistent (a deviating party, or computations diverged)
                f"the opened count of failed truncation checks is {opened}, not a count of "
                f"{2 * total} comparisons: the parties' shares are inconsistent (a party deviated "
                "from the protocol or the computations diverged); no result is given"
            )
        return opened

    def _comparands(self, total: int) -> Iterator[torch.Tensor]:
        """The 2·total values to compare with 0 (c + E/2 and E/2 − c of every check value c, in
        order), in slices of COMPARE_BATCH: a slice's comparison is its own, so that its
        temporaries stay bounded (fine-tuning at 200,000 rows has 785,000 check values; the
        cut positions depend on ``total`` alone, the same on both parties)."""
        if self.planning:
            for start in range(0, 2 * total, COMPARE_BATCH):
                yield torch.zeros(min(COMPARE_BATCH, 2 * total - start), dtype=torch.long)
            return
        pending: list[torch.Tensor] = []
        held = given = 0
        for c, half in self._checks:
            t = torch.full_like(c, half if self.rank == 0 else 0)
            pending += [c + t, t - c]  # < 0 iff c < −E/2, iff c > E/2
            held += 2 * c.numel()
            given += 2 * c.numel()
            while held >= COMPARE_BATCH:
                joined = torch.cat(pending)
                yield joined[:COMPARE_BATCH]
                pending, held = [joined[COMPARE_BATCH:].clone()], held - COMPARE_BATCH
        assert given == 2 * total  # the recorded check values are the sites' (the plan's) count
        if held:
            yield torch.cat(pending)


def current() -> Ledger | None:
    return _current


def _integer(y: Any) -> int | None:
    if isinstance(y, bool):
        return None
    if isinstance(y, int):
        return y
    if isinstance(y, float) and y.is_integer():
        return int(y)
    return None


def install() -> None:
    """Hook ``ArithmeticSharedTensor.div_`` (every two-party truncation goes through it). Idempotent;
    outside a ledger the hook calls CrypTen's ``div_`` unchanged."""
    if getattr(ArithmeticSharedTensor.div_, "_data_appraisal", False):
        return
    original = ArithmeticSharedTensor.div_

    def div_(self: Any, y: Any) -> Any:
        ledger = _current
        if ledger is None:
            return original(self, y)
        divisor = _integer(y)
        if divisor is None:
            if torch.is_tensor(y) and not torch.is_floating_point(y):
                raise MPCError(
                    "a truncation by a tensor of divisors is not checked for failures "
                    "(common.mpc.truncation): truncate by a public integer"
                )
            return original(self, y)  # a product with a public real: its own truncation
        out = original(self, divisor)
        if divisor > 1:
            ledger.record(out.share, divisor)
        return out

    div_._data_appraisal = True  # type: ignore[attr-defined]
    ArithmeticSharedTensor.div_ = div_


def attempt_seed(digest: bytes, index: int, attempt: int) -> bytes:
    """The public seed of the check multipliers of one attempt at candidate ``index``."""
    tag = index.to_bytes(8, "big") + attempt.to_bytes(1, "big")
    return hashlib.sha256(b"truncation-checks" + digest + tag).digest()


def planned_checks(job: Any, index: int) -> Ledger:
    """The ledger of candidate ``index``'s first attempt, from the plan's inputless run: its sites,
    check count and :attr:`Ledger.bound` (public: they depend on the job's shapes only)."""
    from common.mpc.plan import compute_plan

    seen: list[Ledger] = []
    original = Ledger.failures

    def failures(self: Ledger) -> int:
        seen.append(self)
        return original(self)

    Ledger.failures = failures  # type: ignore[method-assign]
    try:
        compute_plan(job, index)
    finally:
        Ledger.failures = original  # type: ignore[method-assign]
    return seen[0]
