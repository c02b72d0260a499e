"""The appraisal statistics under two-party MPC (CrypTen, arithmetic secret sharing).

Both owners call the same function with their own inputs; the other party's are ``None``. Rank 0 is
the model owner (θ̂, v, D_tr, D_te), rank 1 the data owner (D_a). Shapes are public metadata, and
so is the cut of the candidate into chunks of ``job.chunk_rows`` rows, which every method streams
(one masked copy per chunk; docs/protocol.md, "Streaming"). Each function returns a *shared*
statistic; :mod:`common.mpc.appraisal` opens it (or compares it with τ), and the method's public
transform (:mod:`common.methods`) turns it into the score.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import ConfigError, DataError
from common.methods import gradient_norm_scale
from common.ml.data import Candidate, ReadAhead
from common.ml.model import minibatches
from common.mpc import truncation
from common.mpc.compat import import_crypten
from common.mpc.fixedpoint import (
    DATA_OWNER,
    MODEL_OWNER,
    SCALE,
    SOFTMAX_HALVINGS,
    SOFTMAX_ORDER,
    exp_nonpositive,
    log_in_range,
    matmul_truncated,
    max_slack,
    mul_pow2,
    mul_public,
    row_max,
    share,
    softmax,
)
from common.mpc.plan import planning
from common.mpc.products import Masked, Stacked, encode_exact, private_operand, shared_from_raw
from common.protocol import JobSpec

crypten = import_crypten()
StepCallback = Callable[[int, int], None]  # (steps done, steps in all) within one candidate


@dataclass(frozen=True)
class Shapes:
    """Public metadata of one candidate's appraisal: everybody's sizes (features without bias)."""

    n_features: int
    n_classes: int
    n_candidate: int
    n_train: int = 0
    n_test: int = 0
    feature_bound: float = 1.0  # agreed bound on |x|, a power of two (public metadata)

    @classmethod
    def of(cls, job: JobSpec, index: int) -> Shapes:
        return cls(
            n_features=job.n_features,
            n_classes=job.n_classes,
            n_candidate=job.candidates[index].n_samples,
            n_train=job.n_train,
            n_test=job.n_test,
            feature_bound=job.feature_bound,
        )

    @property
    def d(self) -> int:
        return self.n_features + 1


def logit_gap_bound(theta: np.ndarray, bound: float) -> float:
    """An upper bound on max_j z_j − min_j z_j over all inputs with |x| ≤ bound (model owner only)."""
    spread = theta.max(axis=1) - theta.min(axis=1)
    return float(bound * spread[:-1].sum() + spread[-1])


@dataclass
class ModelOwnerInputs:
    theta: np.ndarray  # (d+1)×k
    v: np.ndarray | None = None  # (d+1)×k, H⁻¹ ḡ_test (influence only)
    X_train: np.ndarray | None = None  # with bias column (fine-tuning only)
    y_train: np.ndarray | None = None
    X_test: np.ndarray | None = None  # with bias column (fine-tuning only)
    y_test: np.ndarray | None = None
    threshold: float | None = None  # τ, the model owner's secret (threshold reveal only)


@dataclass
class DataOwnerInputs:
    """The data owner's candidate: validated on disk and read in chunks (``candidate``, what the
    worker gives), or arrays in memory (``X`` with its bias column, and ``y``)."""

    X: np.ndarray | None = None
    y: np.ndarray | None = None
    candidate: Candidate | None = None
    _ahead: (
        tuple[tuple[int, float, range | None], ReadAhead[tuple[torch.Tensor, np.ndarray]]] | None
    ) = field(default=None, init=False, repr=False)

    def chunks(
        self, rows: int, part: range | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The candidate ``rows`` rows at a time, X with its bias column (a fresh array each);
        only the chunks numbered in ``part`` (a shard's range) when it is given."""
        if self.candidate is not None:
            if self.candidate.rows != rows:
                raise ConfigError(
                    f"the candidate was opened with {self.candidate.rows} rows per chunk, the "
                    f"job's chunks have {rows}"
                )
            yield from self.candidate.chunks(bias=True, part=part)
            return
        if self.X is None or self.y is None:
            raise ConfigError("the data owner's inputs have neither a candidate file nor arrays")
        for i, lo in enumerate(range(0, len(self.y), rows)):
            if part is None or i in part:
                yield np.array(self.X[lo : lo + rows], dtype=np.float64), self.y[lo : lo + rows]

    def _encoding(
        self, rows: int, bound: float, part: range | None
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        for X, y in self.chunks(rows, part):
            X[:, :-1] /= bound  # _rows, in place on the fresh chunk
            yield encode_exact(X), y

    def prefetch(self, rows: int, bound: float, part: range | None = None) -> None:
        """Start reading and encoding the first chunk (of ``part``) in the background, before it
        is due (the worker calls it before the rendezvous, and for the next candidate after each
        one)."""
        if self._ahead is None:
            self._ahead = ((rows, bound, part), ReadAhead(self._encoding(rows, bound, part)))

    def encoded(
        self, rows: int, bound: float, part: range | None = None
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """The chunks (those of ``part``, when given) with their features divided by ``bound``,
        fixed-point encoded (:func:`common.mpc.products.encode_exact`), and the labels. Each next
        chunk is read and encoded in the background while this one is used (:class:`ReadAhead`:
        two chunks in memory at most); the first one may already be (:meth:`prefetch`)."""
        key, ahead = self._ahead or ((rows, bound, part), None)
        self._ahead = None
        if ahead is None or key != (rows, bound, part):
            if ahead is not None:
                ahead.close()
            ahead = ReadAhead(self._encoding(rows, bound, part))
        try:
            yield from ahead
        finally:
            ahead.close()


def chunk_bounds(n: int, rows: int) -> list[tuple[int, int]]:
    """The public chunks of a candidate of ``n`` rows: ``[lo, hi)`` row ranges of ``rows`` rows
    (the last one the rest). A function of public metadata only, so the dealer's inputless plan
    run (:mod:`common.mpc.plan`) cuts the candidate exactly as the owners do."""
    if rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1, got {rows}")
    return [(lo, min(lo + rows, n)) for lo in range(0, n, rows)]


def _candidate_chunks(
    do: DataOwnerInputs | None,
    shapes: Shapes,
    rows: int,
    *,
    spill: Path | None = None,
    part: range | None = None,
) -> Iterator[tuple[Masked, Any]]:
    """The candidate chunk by chunk (only the chunks numbered in ``part``, a shard's range, when
    given): each chunk's X masked once, one way (its own Masked: E sent now and dropped with the
    chunk), and its labels shared. The data owner reads each chunk from its file as it is due; its
    size must be the one the public chunking predicts."""
    k, d = shapes.n_classes, shapes.d
    source = None if do is None else do.encoded(rows, shapes.feature_bound, part)
    bounds = chunk_bounds(shapes.n_candidate, rows)
    for lo, hi in bounds if part is None else bounds[part.start : part.stop]:
        m = hi - lo
        X_plain: torch.Tensor | None = None  # rows [x/B, 1], encoded
        y_plain: np.ndarray | None = None
        if source is not None:
            try:
                X_plain, y_plain = next(source)
            except StopIteration:
                raise DataError(f"the candidate ended at row {lo}, the job says {hi}") from None
            if len(y_plain) != m:
                raise DataError(
                    f"the candidate's chunk at row {lo} has {len(y_plain)} rows, not {m}"
                )
        X = Masked(X_plain, (m, d), holder=DATA_OWNER, spill=spill)
        del X_plain
        Y = share(_one_hot(y_plain, k), (m, k), src=DATA_OWNER)
        yield X, Y
        del X, Y  # before the next chunk is used: one chunk's E or X in memory at a time


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere a
    no-op). Called after each group of chunks: the chunks' n×k temporaries, freed between the long
    -lived small tensors of the truncation checks, would otherwise fragment the heap and let a
    party's resident memory grow with the chunk count (1.1–1.3 GB at 10⁶ rows, 123 chunks, against
    0.4–0.6 GB at 60,000) although nothing is kept."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


@contextlib.contextmanager
def _spill_directory(needed: bool, prefix: str) -> Iterator[Path | None]:
    """A private directory (mkdtemp: mode 0700, removed at the end, also on an error) for this
    party's masked chunks while a computation keeps more than one of them; None when it keeps one
    at a time, and in the plan's inputless run (which keeps no tensor)."""
    if not needed or planning() is not None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as spill:
        yield Path(spill)


@dataclass(frozen=True)
class Part:
    """What one worker pair computes of a candidate (docs/protocol.md, "Shards"): the public
    chunks numbered in ``chunks`` (None: every chunk) and, for shard 0 of several, ``others``:
    given this pair's raw shares, the other shards' raw shares of Σ X_cᵀ R_c over their chunks,
    to be added in the ring (this party's own shares, handed over inside the party)."""

    chunks: range | None = None
    others: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None = None


WHOLE_CANDIDATE = Part()


def _residual_products(
    job: JobSpec, shapes: Shapes, theta: Any, do: DataOwnerInputs | None, part: Part
) -> torch.Tensor:
    """This party's raw shares (scale 2³², not yet truncated) of Σ_c X_cᵀ R_c over the candidate's
    public chunks (those of ``part``, plus the other shards' sums it brings), with
    R = softmax(Xθ) − Y.

    Each chunk is masked once, one way (its own Masked; E sent once) and gives its logits X_c θ;
    the softmax runs once per group of ``job.softmax_chunks`` chunks on their logits stacked (its
    rounds do not depend on its rows, so a group of g chunks takes one softmax's rounds instead of
    g), then each chunk's X_cᵀ R_c reuses its E. While a group's softmax waits, its chunks but the
    last are kept in the party's private spill directory (one chunk's tensors in memory at a
    time), each read back once for its X_cᵀ R_c and then deleted. The raw shares of all chunks add
    up in the ring, to be truncated once; with shards, the groups start at the shard's first
    chunk, and shard 0 adds the other shards' sums to its own.
    """
    bounds = chunk_bounds(shapes.n_candidate, job.chunk_rows)
    if part.chunks is not None:
        bounds = bounds[part.chunks.start : part.chunks.stop]
    group = min(job.softmax_chunks, len(bounds))
    raw: torch.Tensor | None = None
    with _spill_directory(group > 1, "da-softmax-") as spill:
        pending: list[tuple[Masked, Any, Any]] = []  # the group's chunks: X, Y and logits
        chunks = _candidate_chunks(do, shapes, job.chunk_rows, part=part.chunks)
        for i, (X, Y) in enumerate(chunks):
            pending.append((X, Y, X.matmul(theta)))
            if len(pending) < group and i + 1 < len(bounds):
                if spill is not None:
                    X.spill(spill)
                continue
            if len(pending) == 1:
                R = softmax(pending[0][2]) - Y  # RANGE: logits O(10); entries of R in [−1, 1]
            else:
                Z = crypten.cat([z for _, _, z in pending], dim=0)
                R = softmax(Z) - crypten.cat([y for _, y, _ in pending], dim=0)
                del Z
            offsets = np.cumsum([0] + [x.shape[0] for x, _, _ in pending])
            # the last chunk first: it is still in memory (the order of a sum does not matter)
            for j in reversed(range(len(pending))):
                X_j = pending[j][0]
                R_j = R if len(pending) == 1 else R[int(offsets[j]) : int(offsets[j + 1])]
                product = X_j.raw_tmatmul(R_j)
                raw = product if raw is None else raw + product
                X_j.discard()
            pending = []
            del X, Y, R
            _trim_heap()
    assert raw is not None  # every working shard has at least one chunk
    if part.others is not None:
        for other in part.others(raw):
            raw = raw + other  # the ring's addition: the shares of the sum of the shards' sums
    return raw


def residual_shares(
    job: JobSpec,
    shapes: Shapes,
    mo: ModelOwnerInputs | None,
    do: DataOwnerInputs | None,
    part: Part,
) -> torch.Tensor:
    """This party's raw shares (scale 2³²) of Σ X_cᵀ R_c over the chunks of ``part``: what a
    shard s > 0 computes of influence and gradient norm (its truncations are the softmax's)."""
    theta_plain = None if mo is None else _params(mo.theta, shapes.feature_bound)
    theta = private_operand(theta_plain, (shapes.d, shapes.n_classes), owner=MODEL_OWNER)
    return _residual_products(job, shapes, theta, do, part)


def _one_hot(y: np.ndarray | None, k: int) -> np.ndarray | None:
    if y is None:
        return None
    out = np.zeros((len(y), k))
    out[np.arange(len(y)), np.asarray(y, dtype=np.int64)] = 1.0
    return out


# Feature normalisation. Each owner divides its features by the agreed bound B (a power of two, so
# exactly) before sharing, and the model owner multiplies the feature rows of θ and v by B, so that
# X' θ' = X θ. RANGE: every entry of every shared row [x/B, 1] is in [−1, 1], whatever the scale of
# the raw features; the products Xᵀ R, whose truncation-failure probability grows with their
# magnitude (≈ Σ|G|/2³²), then stay as small as for features in [0, 1]. Gradients with respect to
# the feature rows of θ' are G/B; the protocols below undo that with public powers of two.


def _rows(X: np.ndarray | None, bound: float) -> np.ndarray | None:
    """[x, 1] → [x/B, 1] (the owner's side, in the clear)."""
    if X is None:
        return None
    out = np.array(X, dtype=np.float64)
    out[:, :-1] /= bound
    return out


def _params(P: np.ndarray, bound: float) -> np.ndarray:
    """θ or v → the same map in normalised coordinates: feature rows times B."""
    out = np.array(P, dtype=np.float64)
    out[:-1] *= bound
    return out


def _v_scale(v: np.ndarray) -> float:
    """The model owner's private power of two c with max_j ‖v_j/c‖₁ ≤ 8 (v normalised).

    RANGE: every entry of v/c is in [−8, 8] (and each entry of X·(v/c) too, for rows in [−1, 1]),
    so ⟨XᵀR/s, v/c⟩ stays far below 2³¹ and is truncated once, whatever the scale of H⁻¹.
    """
    bound = float(np.abs(v).sum(axis=0).max())
    return float(2.0 ** max(0, math.ceil(math.log2(max(bound, 1e-300) / 8.0))))


def influence_statistic(
    job: JobSpec,
    shapes: Shapes,
    mo: ModelOwnerInputs | None,
    do: DataOwnerInputs | None,
    on_step: StepCallback | None = None,
    part: Part = WHOLE_CANDIDATE,
) -> Any:
    """Shared S = Σ_a ∇L_aᵀ v, so that the score is −S/|D_a|.

    S = Σ_a Σ_j (p_aj − y_aj)(x_a · v_j) = ⟨Xᵀ R, v⟩ with R = softmax(Xθ) − Y: the logits are
    one masked product Xθ (X masked once, one way; θ is the model owner's in the clear), and
    G = XᵀR/s (s = ⌈√|D_a|⌉ public) a second one with the same E (the model owner sends only its
    share of R, masked, one way: n·k elements, where an elementwise R ⊙ Xv opened both operands in
    both directions, 4·n·k). Then ⟨G, v/c⟩ is one d·k Beaver product summed before its single
    truncation. The model owner's private scale c is multiplied back in under MPC, so the data
    owner never learns the magnitude of v. The candidate streams: each public chunk
    (:func:`chunk_bounds`) is masked and its raw shares of X_cᵀ R_c (scale 2³²) are added in the
    ring, so G is truncated once for the whole candidate. RANGE: |G| ≤ √n per entry (|x|,
    |R| ≤ 1), |v/c| entries ≤ 8, and the sum ⟨G, v/c⟩ = S/(s·c) is what is truncated.
    """
    d, k, n = shapes.d, shapes.n_classes, shapes.n_candidate
    if mo is not None:
        assert mo.v is not None
        v = _params(mo.v, shapes.feature_bound)
        c = _v_scale(v)
        theta_plain: np.ndarray | None = _params(mo.theta, shapes.feature_bound)
        v_plain: np.ndarray | None = (v / c).reshape(-1, 1)
        c_plain: np.ndarray | None = np.array(c)
    else:
        theta_plain, v_plain, c_plain = None, None, None
    theta = private_operand(theta_plain, (d, k), owner=MODEL_OWNER)
    v_scaled = private_operand(v_plain, (d * k, 1), owner=MODEL_OWNER)
    # c is an integer (a power of two ≥ 1), shared at scale 1: S/c · c is then an integer product
    # with no truncation, so |S| may reach MAX_STATISTIC (2⁴⁰), not 2³¹ as a fixed-point product's
    # 2³²-scaled intermediate allows: a candidate of 10⁶ rows fits (common.protocol.range_problem).
    c_tensor = torch.zeros(()) if c_plain is None else torch.as_tensor(c_plain, dtype=torch.float64)
    c_shared = crypten.cryptensor(c_tensor, src=MODEL_OWNER, precision=0)
    s = gradient_norm_scale(n)
    raw = _residual_products(job, shapes, theta, do, part)
    # RANGE: |G| = |XᵀR/s| ≤ √n per entry, |⟨G, v/c⟩| ≤ 8·d·k·√n (worst cases: aligned
    # gradients), each declared to the truncation checks for its own truncation: G's bound is what
    # lets the checks certify its d·k elements (the larger one would leave them unchecked)
    with truncation.bounded(max(16.0, math.sqrt(n))):
        G = shared_from_raw(raw, SCALE * s)  # XᵀR/s, one truncation for all chunks
    with truncation.bounded(max(16.0, 8.0 * d * k * math.sqrt(n))):
        s_scaled = matmul_truncated(G.reshape(1, d * k), v_scaled, SCALE).sum() * s
    if on_step is not None:
        on_step(1, 1)
    with truncation.bounded(2.0**30):  # RANGE: S itself, any representable value (one element)
        return s_scaled * c_shared


def gradient_norm_statistic(
    job: JobSpec,
    shapes: Shapes,
    mo: ModelOwnerInputs | None,
    do: DataOwnerInputs | None,
    on_step: StepCallback | None = None,
    part: Part = WHOLE_CANDIDATE,
) -> Any:
    """Shared q = ‖Σ_a ∇L_a‖² / s² with s = ⌈√|D_a|⌉ public; the score is s·√q.

    RANGE: without the scale, ‖Σ∇L‖² ≈ 10⁷ at MNIST size overflows the fixed-point products
    (the naive result was −9.7e8). Entries of G/s are O(1) when the per-sample gradients are
    roughly independent and ≤ √n when they all align, so each square stays far below 2³¹ and
    q stays above the resolution; sqrt is taken in the clear after the reveal. With normalised
    features the feature rows of X'ᵀR are G/B, so their squares are multiplied back by B² (a power
    of two: exact).
    """
    n = shapes.n_candidate
    s = gradient_norm_scale(n)
    # X'ᵀ R / s, one truncation: each chunk's raw shares of X_cᵀ R_c (scale 2³², the chunk's own
    # masked X, E reused with a fresh B) are added in the ring, then truncated once for the sum
    raw = residual_shares(job, shapes, mo, do, part)
    # RANGE: |G/s| ≤ √n per entry, its squares ≤ n, each declared for its own truncation
    with truncation.bounded(max(16.0, math.sqrt(n))):
        G_scaled = shared_from_raw(raw, SCALE * s)
    with truncation.bounded(max(16.0, float(n))):
        squares = G_scaled.square()
        log2_bound = round(math.log2(shapes.feature_bound))
        q = mul_pow2(squares[:-1].sum(), 2 * log2_bound) + squares[-1].sum()
    if on_step is not None:
        on_step(1, 1)
    return q


def _sum_test_loss(theta: Any, X_te: Masked, Y_te: Any, k: int) -> Any:
    """Σ over the test set of the cross-entropy: Σ [log Σ_j exp(z_j − m) + m − z_y]."""
    Z = X_te.matmul(theta)
    m = row_max(Z)
    e = exp_nonpositive(Z - m, halvings=SOFTMAX_HALVINGS, order=SOFTMAX_ORDER)
    # RANGE: Σ_j exp ∈ [1, k·e^slack] (m may be up to max_slack below the row's maximum)
    log_norm = log_in_range(e.sum(dim=1), upper=k * math.exp(max_slack(k)))
    return log_norm.sum() + (m.squeeze(1).sum() - (Z * Y_te).sum())


def finetune_statistic(
    job: JobSpec,
    shapes: Shapes,
    mo: ModelOwnerInputs | None,
    do: DataOwnerInputs | None,
    on_step: StepCallback | None = None,
    part: Part = WHOLE_CANDIDATE,
) -> Any:
    """Shared Δ = Σ_te L(θ_T) − Σ_te L(θ̂); the score is Δ/|D_te|.

    θ_T is θ̂ after ``steps`` gradient steps on D_tr ∪ D_a (minibatches: the public
    :func:`common.ml.model.minibatches`).
    Both test losses are computed under MPC with the same approximations, so their bias cancels in
    the difference.

    RANGE: the step is θ ← θ − η·(ΣB ∇L)/|B| − (2ηλ/|B|)·θ. With η/|B| ≈ 1e-5 < 2⁻¹⁶, a naive
    product keeps no bit of η/|B| and drifts (3.107 against 2.955 after 16 steps). Instead the
    gradient is computed as ĝ = γ·(Σ∇L')/|B| with γ = 2⁴ by folding γ/|B| into the matmul's
    only truncation (entries ≤ 16), and η/γ and 2ηλ/|B| are applied with 14 significant bits. In
    normalised coordinates (θ'_feature = B·θ_feature, ∇' = ∇/B) the feature rows' step is
    B²·η/γ·ĝ, the bias row's η/γ·ĝ.
    """
    if part != WHOLE_CANDIDATE:  # PartyConfig and run_local refuse it first (shard_problem)
        raise ConfigError("fine-tuning runs in one shard: each step needs the whole gradient")
    # a candidate of one chunk stays in memory (the bound is one chunk: spilling it would only
    # read it back in every step)
    several = len(chunk_bounds(shapes.n_candidate, job.chunk_rows)) > 1
    with _spill_directory(several, "da-finetune-") as spill:
        return _finetune(job, shapes, mo, do, on_step, spill)


def _finetune(
    job: JobSpec,
    shapes: Shapes,
    mo: ModelOwnerInputs | None,
    do: DataOwnerInputs | None,
    on_step: StepCallback | None,
    spill: Path | None,
) -> Any:
    """:func:`finetune_statistic`'s body; the candidate's chunks kept in ``spill`` between steps
    (in memory when ``spill`` is None).

    The candidate is masked once, chunk by chunk (one Masked per public chunk, E sent once), and,
    when it has more than one chunk, each party writes its tensor of each chunk (the model owner's
    E, the data owner's X) to its private ``spill`` directory. Each step's gradient is then
    computed group by group: the model owner's D_tr with the candidate's first
    ``softmax_chunks`` chunks, then each further ``softmax_chunks`` chunks (one softmax per
    group); a minibatch's rows are sorted first (the batch's gradient is a sum: its order does not
    matter), so each group reads its chunks back once. The groups' raw shares of Xᵀ R (scale 2³²)
    are added in the ring and truncated once, as in one piece. What stays in memory is D_tr, D_te,
    θ, one chunk's tensors and the labels' shares (n·k ring elements).
    """
    steps, lr, l2 = job.steps, job.lr, job.l2
    d, k = shapes.d, shapes.n_classes
    n_tr, n_a, n_te = shapes.n_train, shapes.n_candidate, shapes.n_test
    B = shapes.feature_bound
    # Each owner's rows masked once, one way, and reused in every step (common.mpc.products).
    chunks = list(_candidate_chunks(do, shapes, job.chunk_rows, spill=spill))
    X_tr = Masked(None if mo is None else _rows(mo.X_train, B), (n_tr, d), holder=MODEL_OWNER)
    Y_tr = share(None if mo is None else _one_hot(mo.y_train, k), (n_tr, k), src=MODEL_OWNER)
    X_te = Masked(None if mo is None else _rows(mo.X_test, B), (n_te, d), holder=MODEL_OWNER)
    Y_te = share(None if mo is None else _one_hot(mo.y_test, k), (n_te, k), src=MODEL_OWNER)
    theta0 = share(None if mo is None else _params(mo.theta, B), (d, k), src=MODEL_OWNER)

    X = Stacked([X_tr, *(X_c for X_c, _ in chunks)])
    Y = crypten.cat([Y_tr, *(Y_c for _, Y_c in chunks)], dim=0)
    del chunks
    # the groups' edges in the stacked rows (public): D_tr with the first softmax_chunks chunks,
    # then each further softmax_chunks chunks; each group runs one softmax
    bounds = chunk_bounds(n_a, job.chunk_rows)
    g = job.softmax_chunks
    ends = [hi for i, (_, hi) in enumerate(bounds) if (i + 1) % g == 0 or i + 1 == len(bounds)]
    edges = np.array([0, *(n_tr + hi for hi in ends)])
    grad_gain = 16  # ĝ = γ · mean gradient, |ĝ| ≤ 16
    theta = theta0
    batches = minibatches(n_tr + n_a, job.batch_size)
    for t in range(steps):
        rows = batches[t % len(batches)]
        size = len(rows)
        full = size == n_tr + n_a
        ordered = np.arange(size) if full else np.sort(rows)
        cuts = np.searchsorted(ordered, edges)
        raw: torch.Tensor | None = None
        for lo, hi in itertools.pairwise(cuts):
            if lo == hi:
                continue
            selection = None if full and (lo, hi) == (0, size) else ordered[lo:hi]
            Yb = Y if selection is None else Y[torch.as_tensor(selection, dtype=torch.long)]
            R = softmax(X.matmul(theta, selection)) - Yb
            part = X.raw_tmatmul(R, selection)
            raw = part if raw is None else raw + part
            del Yb, R
            if spill is not None:  # more than one chunk: as in _residual_products
                _trim_heap()
        assert raw is not None
        with truncation.bounded(grad_gain):  # RANGE: |ĝ| ≤ γ
            g_hat = shared_from_raw(raw, round(SCALE * size / grad_gain))
        step = crypten.cat(
            [
                mul_public(g_hat[:-1], lr * B * B / grad_gain),  # feature rows
                mul_public(g_hat[-1:], lr / grad_gain),  # bias row
            ],
            dim=0,
        )
        theta = theta - step - mul_public(theta, 2.0 * lr * l2 / size)
        if on_step is not None:
            on_step(t + 1, steps)
    return _sum_test_loss(theta, X_te, Y_te, k) - _sum_test_loss(theta0, X_te, Y_te, k)


Statistic = Callable[..., Any]
STATISTICS: dict[str, Statistic] = {
    "influence": influence_statistic,
    "gradient-norm": gradient_norm_statistic,
    "finetune": finetune_statistic,
}
