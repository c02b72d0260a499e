"""Plaintext multinomial logistic regression, its Hessian, and the reference appraisal functions.

Everything here runs in float64 in the clear. It is (1) what the model owner computes on its own
data (θ̂ and v = H⁻¹ ḡ_test), and (2) the plaintext twin of every MPC computation in
:mod:`common.mpc_appraisal`, used by ``--check``, the tests and the benchmarks.

Conventions: ``X`` is n×d without a bias column; :func:`add_bias` appends a column of ones, so θ is
a (d+1)×k matrix whose last row is the bias. The training objective is

    J(θ) = Σ_{(x,y) ∈ D_tr} L(x, y; θ) + λ‖θ‖²,     L = cross-entropy of softmax(xᵀθ),

with the penalty covering the bias too, so the Hessian is positive definite.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse.linalg

from common.errors import ConfigError

log = logging.getLogger("data_appraisal.model")

# Largest number of parameters for which the Hessian is built and factorised exactly
# (2,000 parameters is a 32 MB matrix). Beyond, conjugate gradients on Hessian-vector products.
EXACT_HESSIAN_MAX_PARAMS = 2_000


def add_bias(X: np.ndarray) -> np.ndarray:
    """Append the bias feature (a column of ones)."""
    return np.hstack([np.asarray(X, dtype=np.float64), np.ones((len(X), 1))])


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(y), n_classes))
    out[np.arange(len(y)), np.asarray(y, dtype=np.int64)] = 1.0
    return out


def softmax(Z: np.ndarray) -> np.ndarray:
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def per_sample_loss(theta: np.ndarray, Xb: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cross-entropy of each sample; ``Xb`` already carries the bias column."""
    Z = Xb @ theta
    m = Z.max(axis=1, keepdims=True)
    logsumexp = (m + np.log(np.exp(Z - m).sum(axis=1, keepdims=True)))[:, 0]
    return logsumexp - Z[np.arange(len(y)), y]


def mean_loss(theta: np.ndarray, Xb: np.ndarray, y: np.ndarray) -> float:
    return float(per_sample_loss(theta, Xb, y).mean())


def sum_grad(theta: np.ndarray, Xb: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Σ_samples ∇θ L = Xbᵀ (softmax(Xb θ) − Y), a (d+1)×k matrix (no penalty)."""
    k = theta.shape[1]
    return Xb.T @ (softmax(Xb @ theta) - one_hot(y, k))


def hessian_vector_product(
    theta: np.ndarray, Xb: np.ndarray, V: np.ndarray, *, l2: float
) -> np.ndarray:
    """H V for H the Hessian of the regularised *mean* objective (1/n)(Σ L + λ‖θ‖²)."""
    n = len(Xb)
    P = softmax(Xb @ theta)
    A = Xb @ V  # n×k: the directional change of the logits
    JA = P * A - P * (P * A).sum(axis=1, keepdims=True)  # (diag p − p pᵀ) a, row by row
    return (Xb.T @ JA + 2.0 * l2 * V) / n


def hessian(theta: np.ndarray, Xb: np.ndarray, *, l2: float) -> np.ndarray:
    """Dense Hessian of the regularised mean objective, in the row-major order of ``theta.ravel()``."""
    n, d = Xb.shape
    k = theta.shape[1]
    P = softmax(Xb @ theta)
    H = np.zeros((d, k, d, k))
    for j in range(k):
        for jj in range(j, k):
            w = P[:, j] * ((j == jj) - P[:, jj])
            block = (Xb * w[:, None]).T @ Xb
            H[:, j, :, jj] = block
            H[:, jj, :, j] = block
    H = H.reshape(d * k, d * k) / n
    H[np.diag_indices_from(H)] += 2.0 * l2 / n
    return H


def inverse_hvp(
    theta: np.ndarray, Xb: np.ndarray, G: np.ndarray, *, l2: float, rtol: float = 1e-10
) -> np.ndarray:
    """Solve H v = G. Exact (Cholesky) up to EXACT_HESSIAN_MAX_PARAMS parameters, CG beyond."""
    shape = theta.shape
    size = theta.size
    if size <= EXACT_HESSIAN_MAX_PARAMS:
        H = hessian(theta, Xb, l2=l2)
        return np.asarray(scipy.linalg.solve(H, G.ravel(), assume_a="pos")).reshape(shape)
    op = scipy.sparse.linalg.LinearOperator(
        (size, size),
        matvec=lambda v: hessian_vector_product(theta, Xb, v.reshape(shape), l2=l2).ravel(),
        dtype=np.float64,
    )
    v, info = scipy.sparse.linalg.cg(op, G.ravel(), rtol=rtol, atol=0.0, maxiter=20 * size)
    if info != 0:
        raise ConfigError(f"conjugate gradients did not converge for H⁻¹g (info={info})")
    return np.asarray(v).reshape(shape)


def feature_bound(*arrays: np.ndarray) -> float:
    """The public feature bound: max |x| rounded up to a power of two (at least 2⁻⁴).

    Rounding leaks at most the binary order of magnitude of the largest feature, which the
    feature-encoding metadata states anyway.
    """
    largest = max((float(np.abs(a).max()) for a in arrays if a.size), default=1.0)
    return float(2.0 ** max(-4, math.ceil(math.log2(max(largest, 2.0**-4)))))


GRADIENT_TOL = 1e-7
"""Default convergence tolerance of :class:`LogisticRegression`: an absolute bound on ‖∇J‖₂.

J is λ-strongly convex with modulus 2λ, so ‖θ − θ*‖₂ ≤ ‖∇J(θ)‖₂ / (2λ): at λ = 1 the fitted θ is
within 5e-8 of the exact minimiser in every coordinate. Float64 evaluates ∇J of the sets used
here to about 1e-12, far below it."""


class LogisticRegression:
    """Multinomial logistic regression trained with L-BFGS on Σ L + λ‖θ‖² (bias included).

    ``converged_`` is true exactly when the fitted θ has ‖∇J(θ)‖₂ ≤ ``tol`` (an absolute
    tolerance, see :data:`GRADIENT_TOL`); ``grad_norm_`` is that norm. L-BFGS-B runs until its
    gradient test holds, or until its line search can no longer make progress in float64; Newton
    steps (conjugate gradients on exact Hessian-vector products) then finish the job. Both count
    towards ``max_iter``; a fit that ends above ``tol`` logs a warning and says so in ``converged_``.
    """

    def __init__(
        self, *, n_classes: int, l2: float = 1.0, max_iter: int = 5_000, tol: float = GRADIENT_TOL
    ) -> None:
        if not (math.isfinite(l2) and l2 > 0):
            raise ConfigError(f"l2 must be finite and > 0 so that H is invertible, got {l2}")
        if not isinstance(n_classes, int | np.integer) or n_classes < 2:
            raise ConfigError(f"n_classes must be at least 2, got {n_classes}")
        if not (math.isfinite(tol) and tol > 0):
            raise ConfigError(f"tol must be finite and > 0, got {tol}")
        self.n_classes = n_classes
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol

    def fit(
        self, X: np.ndarray, y: np.ndarray, *, init: np.ndarray | None = None
    ) -> LogisticRegression:
        Xb = add_bias(X)
        k = self.n_classes
        y = np.asarray(y)
        if len(y) != len(Xb) or len(y) == 0:
            raise ConfigError(
                f"fit needs as many labels as samples (> 0), got {len(y)} and {len(Xb)}"
            )
        if y.min() < 0 or y.max() >= k:
            raise ConfigError(f"labels must lie in 0..{k - 1}, found {y.min()}..{y.max()}")
        Y = one_hot(y, k)
        shape = (Xb.shape[1], k)
        size = shape[0] * k

        def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
            theta = flat.reshape(shape)
            Z = Xb @ theta
            m = Z.max(axis=1, keepdims=True)
            E = np.exp(Z - m)
            s = E.sum(axis=1, keepdims=True)
            loss = float((m[:, 0] + np.log(s[:, 0])).sum() - (Z * Y).sum())
            loss += self.l2 * float(flat @ flat)
            grad = Xb.T @ (E / s - Y) + 2.0 * self.l2 * theta
            return loss, grad.ravel()

        x0 = np.zeros(size) if init is None else np.asarray(init, np.float64).ravel().copy()
        # max |g| ≤ tol/√size implies ‖g‖₂ ≤ tol; ftol = 0: no stop on a small decrease of J
        result = scipy.optimize.minimize(
            objective,
            x0,
            jac=True,
            method="L-BFGS-B",
            options={
                "maxiter": self.max_iter,
                "gtol": self.tol / math.sqrt(size),
                "ftol": 0.0,
                "maxcor": 30,
            },
        )
        x, iterations = result.x, int(result.nit)
        grad = objective(x)[1]
        norm = float(np.linalg.norm(grad))
        while norm > self.tol and iterations < self.max_iter:
            step = self._newton_step(x.reshape(shape), Xb, grad.reshape(shape))
            # backtrack on ‖∇J‖: near θ* the objective itself is flat to float64's precision
            t = 1.0
            while t >= 2.0**-20:
                candidate = x + t * step
                candidate_grad = objective(candidate)[1]
                if float(np.linalg.norm(candidate_grad)) < norm:
                    break
                t /= 2
            else:
                break  # no step reduces the gradient any more
            x, grad = candidate, candidate_grad
            norm = float(np.linalg.norm(grad))
            iterations += 1
        self.coef_ = x.reshape(shape)
        self.n_iter_ = iterations
        self.grad_norm_ = norm
        self.converged_ = norm <= self.tol
        if not self.converged_:
            log.warning(
                "L-BFGS stopped after %d iterations without converging: ‖∇J‖ = %.2e > tol %.1e (%s)",
                self.n_iter_,
                norm,
                self.tol,
                result.message,
            )
        return self

    def _newton_step(self, theta: np.ndarray, Xb: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Solve H p = −∇J by conjugate gradients on Hessian-vector products of the sum objective."""
        P = softmax(Xb @ theta)
        shape = theta.shape

        def hvp(flat: np.ndarray) -> np.ndarray:
            V = flat.reshape(shape)
            A = Xb @ V
            JA = P * A - P * (P * A).sum(axis=1, keepdims=True)
            return (Xb.T @ JA + 2.0 * self.l2 * V).ravel()

        op = scipy.sparse.linalg.LinearOperator((theta.size, theta.size), matvec=hvp)
        step, _ = scipy.sparse.linalg.cg(op, -grad.ravel(), rtol=1e-10, atol=0.0, maxiter=500)
        return np.asarray(step)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(add_bias(X) @ self.coef_)

    def mean_loss(self, X: np.ndarray, y: np.ndarray) -> float:
        return mean_loss(self.coef_, add_bias(X), y)


@dataclass(frozen=True)
class ModelOwnerState:
    """What the model owner computes in the clear before any MPC: θ̂ and v = H⁻¹ ḡ_test."""

    theta: np.ndarray  # (d+1)×k
    v: np.ndarray  # (d+1)×k, H⁻¹ times the mean test-loss gradient
    test_loss: float  # mean test loss at θ̂
    l2: float


def prepare_model_owner(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    n_classes: int,
    l2: float = 1.0,
) -> ModelOwnerState:
    model = LogisticRegression(n_classes=n_classes, l2=l2).fit(X_train, y_train)
    theta = model.coef_
    Xb_te = add_bias(X_test)
    g_test = sum_grad(theta, Xb_te, y_test) / len(X_test)
    v = inverse_hvp(theta, add_bias(X_train), g_test, l2=l2)
    return ModelOwnerState(theta=theta, v=v, test_loss=mean_loss(theta, Xb_te, y_test), l2=l2)


# ---------------------------------------------------------------------------------------------
# Plaintext twins of the three appraisal functions, and the exact utility.
# ---------------------------------------------------------------------------------------------


def influence_score(state: ModelOwnerState, X_cand: np.ndarray, y_cand: np.ndarray) -> float:
    """−1/|D_a| Σ_a ∇L(x', y'; θ̂)ᵀ v  with v = H⁻¹ ḡ_test (lower is better)."""
    G = sum_grad(state.theta, add_bias(X_cand), y_cand)
    return -float((G * state.v).sum()) / len(X_cand)


def gradient_norm_score(theta: np.ndarray, X_cand: np.ndarray, y_cand: np.ndarray) -> float:
    """‖Σ_a ∇θ L(x', y'; θ̂)‖₂ of the unregularised loss (higher is better)."""
    return float(np.linalg.norm(sum_grad(theta, add_bias(X_cand), y_cand)))


# Seed of the public minibatch order. Both parties derive the same permutation from it; it says
# nothing about the data, only which rows form each batch.
MINIBATCH_SEED = 0


def minibatches(n: int, batch_size: int | None) -> list[np.ndarray]:
    """The public minibatch schedule of fine-tuning: row indices of D_tr ∪ D_a, one array a batch.

    Full batch when ``batch_size`` is None or ≥ n; otherwise a fixed public permutation of the rows
    (so that batches mix both owners' data) cut into contiguous chunks, the last one possibly
    smaller. Step t uses batch t mod (number of batches).
    """
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if batch_size is None or batch_size >= n:
        return [np.arange(n)]
    order = np.random.default_rng(MINIBATCH_SEED).permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def finetune_theta(
    theta: np.ndarray,
    Xb: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    lr: float,
    l2: float,
    batch_size: int | None = None,
) -> np.ndarray:
    """T gradient steps θ ← θ − η ∇[(1/|B|) Σ_B L + (λ/|B|)‖θ‖²] over the batches of D, cycling.

    The batches are :func:`minibatches` (the full set by default).
    """
    theta = theta.copy()
    batches = minibatches(len(Xb), batch_size)
    for t in range(steps):
        b = batches[t % len(batches)]
        m = len(b)
        theta -= lr * (sum_grad(theta, Xb[b], y[b]) / m + (2.0 * l2 / m) * theta)
    return theta


def finetune_score(
    state: ModelOwnerState,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_cand: np.ndarray,
    y_cand: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    steps: int,
    lr: float,
    batch_size: int | None = None,
) -> float:
    """Mean test-loss change after fine-tuning θ̂ on D_tr ∪ D_a (lower is better)."""
    Xb = np.vstack([add_bias(X_train), add_bias(X_cand)])
    y = np.concatenate([y_train, y_cand])
    theta = finetune_theta(
        state.theta, Xb, y, steps=steps, lr=lr, l2=state.l2, batch_size=batch_size
    )
    Xb_te = add_bias(X_test)
    return mean_loss(theta, Xb_te, y_test) - mean_loss(state.theta, Xb_te, y_test)


def exact_utility(
    state: ModelOwnerState,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_cand: np.ndarray,
    y_cand: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
) -> float:
    """U(D_a): mean test loss after retraining on D_tr ∪ D_a (warm start from θ̂) minus before."""
    k = state.theta.shape[1]
    model = LogisticRegression(n_classes=k, l2=state.l2).fit(
        np.vstack([X_train, X_cand]), np.concatenate([y_train, y_cand]), init=state.theta
    )
    return model.mean_loss(X_test, y_test) - state.test_loss


def v_bound(v: np.ndarray) -> float:
    """The public bound on max_j ‖v_j‖₂ that calibrates the influence noise: a power of two, so that
    publishing it tells the data owner the size of v only to within a factor of two."""
    largest = float(np.linalg.norm(v, axis=0).max())
    return float(2.0 ** math.ceil(math.log2(max(largest, 2.0**-30))))
