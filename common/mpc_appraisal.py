"""The three appraisal functions under two-party MPC (CrypTen, arithmetic secret sharing).

Both parties call the same function with their own inputs; the other party's arguments are
``None``. Rank 0 is the model owner (θ̂, v, D_tr, D_te, τ), rank 1 the data owner (D_a). Shapes are
public metadata. Nothing is revealed but the final score (as an invertible public transform of it)
or the threshold bit.

Fixed-point arithmetic
----------------------
CrypTen encodes reals as int64 with 16 fractional bits (resolution 2⁻¹⁶ ≈ 1.5e-5) and, with two
parties, truncates a product share by share ("local truncation"). That truncation is wrong by about
2⁴⁸ (so 2³² in value) with probability |v|·2³²/2⁶⁴ = |v|/2³² for a product of value v before its
truncation, and a plain product overflows when |v| ≥ 2³¹. Every scaling below exists to keep each
truncated value small, each revealed quantity well above the resolution, and each input of a
nonlinear approximation inside the range where it is accurate. Each scaling names the range it
protects (``RANGE:`` comments).

Reveal discipline: rather than the score itself, each function reveals (or compares) a quantity from
which the score follows by a public, invertible map (e.g. a sum instead of a mean, a squared norm
instead of a norm). This releases exactly the same information and avoids dividing secrets by large
public counts, which would push them under the fixed-point resolution.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from common.compat import exact_decode, import_crypten
from common.errors import ConfigError

crypten = import_crypten()
from crypten.mpc.primitives import beaver  # noqa: E402

MODEL_OWNER = 0
DATA_OWNER = 1
PRECISION_BITS = 16
SCALE = 2**PRECISION_BITS

Method = Literal["influence", "gradient-norm", "finetune"]
Direction = Literal["lower", "higher"]

# Better direction of each score: lower loss change is better, larger gradients are more informative.
DEFAULT_DIRECTION: dict[str, Direction] = {
    "influence": "lower",
    "finetune": "lower",
    "gradient-norm": "higher",
}


# ---------------------------------------------------------------------------------------------
# Fixed-point helpers
# ---------------------------------------------------------------------------------------------


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


def exp_nonpositive(x: Any, *, halvings: int, order: int) -> Any:
    """exp(x) for x ≤ 0: Taylor polynomial of degree ``order`` at x/2^h, squared h times.

    CrypTen's exp, (1 + x/2⁸)^(2⁸), loses 2⁸·2⁻¹⁶ ≈ 0.4 % to quantisation and x²/2⁹ to the limit
    (0.8 % at x = −2). Here the quantisation costs 2^h·2⁻¹⁶ and the Taylor remainder
    2^h·|x/2^h|^(order+1)/(order+1)!. RANGE: the even-degree Taylor polynomial stays in (0, 1) for
    x/2^h ≥ −2.2, so the result is accurate for x ∈ [−2.2·2^h, 0] and tends to 0 (as it should)
    slightly beyond; it explodes only for x < −2.5·2^h.
    """
    y = x.div(2**halvings)
    # Horner: 1 + y(1 + y/2(1 + y/3(...)))
    acc = y.div(order).add(1.0)
    for i in range(order - 1, 0, -1):
        acc = mul_public(acc * y, 1.0 / i, bits=16).add(1.0)
    for _ in range(halvings):
        acc = acc.square()
    return acc


# Softmax: logits minus their row maximum lie in [−gap, 0]; exp_nonpositive with h = 6 is accurate
# for gaps up to 2.2·2⁶ ≈ 140 (quantisation 2⁶·2⁻¹⁶ ≈ 0.1 %, relative). RANGE: logit gap ≤ 140.
SOFTMAX_HALVINGS = 6
SOFTMAX_ORDER = 4
MAX_LOGIT_GAP = 2.2 * 2**SOFTMAX_HALVINGS


def softmax(z: Any) -> Any:
    """Row-wise softmax of an n×k shared matrix."""
    m, _ = z.max(dim=1, keepdim=True)
    e = exp_nonpositive(z - m, halvings=SOFTMAX_HALVINGS, order=SOFTMAX_ORDER)
    # RANGE: the denominator is in [1, k], inside the reciprocal's Newton-Raphson domain.
    with crypten.cfg.temp_override({"functions.reciprocal_all_pos": True}):
        inv = e.sum(dim=1, keepdim=True).reciprocal()
    return e * inv


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


# ---------------------------------------------------------------------------------------------
# The appraisal protocols
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shapes:
    """Public metadata: sizes of everybody's data (features exclude the bias)."""

    n_features: int
    n_classes: int
    n_candidate: int
    n_train: int = 0
    n_test: int = 0
    feature_bound: float = 1.0  # agreed bound on |x|, a power of two (public metadata)

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
    X: np.ndarray  # candidate, with bias column
    y: np.ndarray


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


def mul_pow2(x: Any, exponent: int) -> Any:
    """x · 2^exponent exactly (an integer product, or one truncation for a negative exponent)."""
    return x.mul(2**exponent) if exponent >= 0 else x.div(2 ** (-exponent))


def _candidate(do: DataOwnerInputs | None, shapes: Shapes) -> tuple[Any, Any]:
    n, d, k = shapes.n_candidate, shapes.d, shapes.n_classes
    X = share(None if do is None else _rows(do.X, shapes.feature_bound), (n, d), src=DATA_OWNER)
    Y = share(None if do is None else _one_hot(do.y, k), (n, k), src=DATA_OWNER)
    return X, Y


def _v_scale(v: np.ndarray) -> float:
    """The model owner's private power of two c with max_j ‖v_j/c‖₁ ≤ 8 (v normalised).

    RANGE: for rows with entries in [−1, 1], each entry of X·(v/c) stays in [−8, 8], so the products R⊙(Xv/c)
    truncate with failure probability ≤ 2⁻²⁹ per element, whatever the scale of H⁻¹.
    """
    bound = float(np.abs(v).sum(axis=0).max())
    return float(2.0 ** max(0, math.ceil(math.log2(max(bound, 1e-300) / 8.0))))


def influence_statistic(
    shapes: Shapes, mo: ModelOwnerInputs | None, do: DataOwnerInputs | None
) -> Any:
    """Shared S = Σ_a ∇L_aᵀ v, so that the score is −S/|D_a|.

    ∇L_aᵀ v = Σ_j (p_aj − y_aj)(x_a · v_j): one Beaver product X [θ | v/c] gives the logits and
    X v/c together, then an elementwise product and a sum. The model owner's private scale c is
    multiplied back in under MPC, so the data owner never learns the magnitude of v.
    """
    d, k = shapes.d, shapes.n_classes
    X, Y = _candidate(do, shapes)
    if mo is not None:
        assert mo.v is not None
        v = _params(mo.v, shapes.feature_bound)
        c = _v_scale(v)
        W_plain: np.ndarray | None = np.hstack([_params(mo.theta, shapes.feature_bound), v / c])
        c_plain: np.ndarray | None = np.array(c)
    else:
        W_plain, c_plain = None, None
    W = share(W_plain, (d, 2 * k), src=MODEL_OWNER)
    c_shared = share(c_plain, (), src=MODEL_OWNER)
    ZU = X.matmul(W)  # RANGE: logits and X v/c, both O(10)
    Z, U = ZU[:, :k], ZU[:, k:]
    R = softmax(Z) - Y  # entries in [−1, 1]
    s_scaled = (R * U).sum()  # ≤ 8·n·k in magnitude
    return s_scaled * c_shared


def influence_sensitivity(shapes: Shapes, v_bound: float) -> float:
    """How much S = Σ_a ∇L_aᵀ v can change when one candidate sample is replaced by another.

    |∇L_aᵀ v| = |Σ_j (p_aj − y_aj)(x̃_a · v_j)| ≤ ‖p_a − y_a‖₁ · max_j |x̃_a · v_j|
    ≤ 2 · ‖x̃_a‖₂ · max_j ‖v_j‖₂, with x̃ = [x, 1] and |x_i| ≤ B, so ‖x̃‖₂ ≤ √(d B² + 1).
    Replacing one sample removes one term and adds another: twice that bound.
    """
    row_norm = math.sqrt(shapes.n_features * shapes.feature_bound**2 + 1.0)
    return 2.0 * 2.0 * row_norm * v_bound


def laplace(scale: float) -> float:
    """One draw of Laplace(0, scale) from the operating system's generator (difference of two
    exponentials). Floating-point caveats of textbook Laplace sampling apply (docs/threat-model.md).
    """
    u1 = (secrets.randbits(53) + 0.5) / 2.0**53
    u2 = (secrets.randbits(53) + 0.5) / 2.0**53
    return scale * (math.log(u1) - math.log(u2))


def gradient_norm_statistic(
    shapes: Shapes, mo: ModelOwnerInputs | None, do: DataOwnerInputs | None
) -> tuple[Any, float]:
    """Shared q = ‖Σ_a ∇L_a‖² / s² with s = ⌈√|D_a|⌉ public; the score is s·√q.

    RANGE: without the scale, ‖Σ∇L‖² ≈ 10⁷ at MNIST size overflows the fixed-point products
    (the naive result was −9.7e8). Entries of G/s are O(1) when the per-sample gradients are
    roughly independent and ≤ √n when they all align, so each square stays far below 2³¹ and
    q stays above the resolution; sqrt is taken in the clear after the reveal. With normalised
    features the feature rows of X'ᵀR are G/B, so their squares are multiplied back by B² (a power
    of two: exact).
    """
    d, k, n = shapes.d, shapes.n_classes, shapes.n_candidate
    X, Y = _candidate(do, shapes)
    theta_plain = None if mo is None else _params(mo.theta, shapes.feature_bound)
    theta = share(theta_plain, (d, k), src=MODEL_OWNER)
    R = softmax(X.matmul(theta)) - Y
    s = math.ceil(math.sqrt(n))
    G_scaled = matmul_truncated(X.t(), R, SCALE * s)  # X'ᵀ R / s, one truncation
    squares = G_scaled.square()
    log2_bound = round(math.log2(shapes.feature_bound))
    q = mul_pow2(squares[:-1].sum(), 2 * log2_bound) + squares[-1].sum()
    return q, float(s)


def _sum_test_loss(theta: Any, X_te: Any, Y_te: Any, k: int) -> Any:
    """Σ over the test set of the cross-entropy: Σ [log Σ_j exp(z_j − m) + m − z_y]."""
    Z = X_te.matmul(theta)
    m, _ = Z.max(dim=1, keepdim=True)
    e = exp_nonpositive(Z - m, halvings=SOFTMAX_HALVINGS, order=SOFTMAX_ORDER)
    log_norm = log_in_range(e.sum(dim=1), upper=float(k))  # RANGE: Σ_j exp ∈ [1, k]
    return log_norm.sum() + (m.squeeze(1).sum() - (Z * Y_te).sum())


def finetune_statistic(
    shapes: Shapes,
    mo: ModelOwnerInputs | None,
    do: DataOwnerInputs | None,
    *,
    steps: int,
    lr: float,
    l2: float,
    batch_size: int | None = None,
) -> Any:
    """Shared Δ = Σ_te L(θ_T) − Σ_te L(θ̂); the score is Δ/|D_te|.

    θ_T is θ̂ after ``steps`` gradient steps on D_tr ∪ D_a (minibatches: the public
    :func:`common.model.minibatches`).
    Both test losses are computed under MPC with the same approximations, so their bias cancels in
    the difference.

    RANGE: the step is θ ← θ − η·(ΣB ∇L)/|B| − (2ηλ/|B|)·θ. With η/|B| ≈ 1e-5 < 2⁻¹⁶, a naive
    product keeps no bit of η/|B| and drifts (3.107 against 2.955 after 16 steps). Instead the
    gradient is computed as ĝ = γ·(Σ∇L')/|B| with γ = 2⁴ by folding γ/|B| into the matmul's
    only truncation (entries ≤ 16), and η/γ and 2ηλ/|B| are applied with 14 significant bits. In
    normalised coordinates (θ'_feature = B·θ_feature, ∇' = ∇/B) the feature rows' step is
    B²·η/γ·ĝ, the bias row's η/γ·ĝ.
    """
    from common.model import minibatches

    d, k = shapes.d, shapes.n_classes
    n_tr, n_a, n_te = shapes.n_train, shapes.n_candidate, shapes.n_test
    X_a, Y_a = _candidate(do, shapes)
    B = shapes.feature_bound
    X_tr = share(None if mo is None else _rows(mo.X_train, B), (n_tr, d), src=MODEL_OWNER)
    Y_tr = share(None if mo is None else _one_hot(mo.y_train, k), (n_tr, k), src=MODEL_OWNER)
    X_te = share(None if mo is None else _rows(mo.X_test, B), (n_te, d), src=MODEL_OWNER)
    Y_te = share(None if mo is None else _one_hot(mo.y_test, k), (n_te, k), src=MODEL_OWNER)
    theta0 = share(None if mo is None else _params(mo.theta, B), (d, k), src=MODEL_OWNER)

    X = crypten.cat([X_tr, X_a], dim=0)
    Y = crypten.cat([Y_tr, Y_a], dim=0)
    grad_gain = 16  # ĝ = γ · mean gradient, |ĝ| ≤ 16
    theta = theta0
    batches = minibatches(n_tr + n_a, batch_size)
    for t in range(steps):
        rows = batches[t % len(batches)]
        size = len(rows)
        if size == n_tr + n_a:
            Xb, Yb = X, Y
        else:  # a public selection of rows: local on each share
            index = torch.as_tensor(rows, dtype=torch.long)
            Xb, Yb = X[index], Y[index]
        R = softmax(Xb.matmul(theta)) - Yb
        divisor = round(SCALE * size / grad_gain)
        g_hat = matmul_truncated(Xb.t(), R, divisor)
        step = crypten.cat(
            [
                mul_public(g_hat[:-1], lr * B * B / grad_gain),  # feature rows
                mul_public(g_hat[-1:], lr / grad_gain),  # bias row
            ],
            dim=0,
        )
        theta = theta - step - mul_public(theta, 2.0 * lr * l2 / size)
    return _sum_test_loss(theta, X_te, Y_te, k) - _sum_test_loss(theta0, X_te, Y_te, k)


@dataclass(frozen=True)
class Outcome:
    """What one party learns about one candidate."""

    score: float | None  # score mode
    accept: bool | None  # threshold mode


def _public_transform(method: str, shapes: Shapes, extra: float) -> tuple[Any, Any]:
    """Maps between the revealed statistic and the score, and from τ to the statistic's scale."""
    if method == "influence":
        n = shapes.n_candidate
        return (lambda stat: -stat / n), (lambda tau: -tau * n)
    if method == "gradient-norm":
        s = extra
        return (lambda stat: s * math.sqrt(max(stat, 0.0))), (lambda tau: (max(tau, 0.0) / s) ** 2)
    if method == "finetune":
        n_te = shapes.n_test
        return (lambda stat: stat / n_te), (lambda tau: tau * n_te)
    raise ConfigError(f"unknown method {method!r}")


def appraise_candidate(
    method: Method,
    shapes: Shapes,
    mo: ModelOwnerInputs | None,
    do: DataOwnerInputs | None,
    *,
    reveal: Literal["score", "threshold"] = "score",
    direction: Direction | None = None,
    steps: int = 16,
    lr: float = 0.1,
    l2: float = 1.0,
    batch_size: int | None = None,
    reveal_to: Literal["both", "model_owner"] = "both",
    noise_epsilon: float | None = None,
    v_bound: float | None = None,
) -> Outcome:
    """Run one appraisal under MPC; both parties call this with their own inputs.

    With ``reveal_to="model_owner"`` only the model owner's worker receives the result (the data
    owner's share goes one way); the data owner's outcome is empty.
    """
    dst = None if reveal_to == "both" else MODEL_OWNER
    extra = 0.0
    if method == "influence":
        stat = influence_statistic(shapes, mo, do)
    elif method == "gradient-norm":
        stat, extra = gradient_norm_statistic(shapes, mo, do)
    elif method == "finetune":
        stat = finetune_statistic(shapes, mo, do, steps=steps, lr=lr, l2=l2, batch_size=batch_size)
    else:
        raise ConfigError(f"unknown method {method!r}; choose influence, gradient-norm or finetune")
    if noise_epsilon is not None:
        # The data owner's noise, unknown to the model owner, is added before anything is opened.
        if method != "influence" or v_bound is None:
            raise ConfigError("noise needs the influence method and the public bound v_bound")
        scale = influence_sensitivity(shapes, v_bound) / noise_epsilon
        eta = None if do is None else np.array(laplace(scale))
        stat = stat + share(eta, (), src=DATA_OWNER)

    to_score, tau_to_stat = _public_transform(method, shapes, extra)
    if reveal == "score":
        opened = reveal_float(stat, dst)
        if opened is None:
            return Outcome(score=None, accept=None)
        return Outcome(score=float(to_score(float(opened))), accept=None)

    # Threshold: τ stays the model owner's secret; only the comparison bit is opened.
    direction = direction or DEFAULT_DIRECTION[method]
    tau_stat = None
    if mo is not None:
        if mo.threshold is None:
            raise ConfigError("threshold reveal needs the model owner's threshold τ")
        tau_stat = np.array(tau_to_stat(mo.threshold))
    t = share(tau_stat, (), src=MODEL_OWNER)
    # The map from statistic to score is increasing for gradient-norm and fine-tuning and
    # decreasing for influence (score = −S/n), which flips the comparison.
    stat_better_low = (direction == "lower") != (method == "influence")
    bit = stat.lt(t) if stat_better_low else stat.gt(t)
    # the comparison result carries its own encoder (scale 1 in CrypTen), so decode through it
    opened_bit = bit.get_plain_text() if dst is None else bit.get_plain_text(dst=dst)
    if opened_bit is None:
        return Outcome(score=None, accept=None)
    return Outcome(score=None, accept=bool(round(float(opened_bit))))
