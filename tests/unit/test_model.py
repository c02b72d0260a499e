"""Tests of common.ml.model: the plaintext logistic regression, its Hessian and the appraisal functions.

Every reference value here is computed independently in the test (scipy.special's log-softmax,
per-sample gradient loops, a Kronecker-product Hessian, finite differences, scipy's BFGS and
trust-region Newton), so a mistake in :mod:`common.ml.model` cannot cancel out against itself.

Notation: n = |D_tr|, m = |D_a| (the candidate), λ = ``l2``. The training objective is
J(θ) = Σ_tr L + λ‖θ‖²; ``hessian`` is the Hessian of J/n.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse.linalg
import scipy.special
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

import common.ml.model as model
from common.errors import ConfigError
from common.ml.data import load_dataset
from common.ml.examples import mnist_like, write_example_data
from common.ml.model import (
    GRADIENT_TOL,
    LogisticRegression,
    ModelOwnerState,
    add_bias,
    exact_utility,
    finetune_score,
    finetune_theta,
    gradient_norm_score,
    hessian,
    hessian_vector_product,
    influence_score,
    inverse_hvp,
    mean_loss,
    minibatches,
    one_hot,
    per_sample_loss,
    prepare_model_owner,
    softmax,
    sum_grad,
)

# --------------------------------------------------------------------------------------------------
# Independent reference implementations
# --------------------------------------------------------------------------------------------------


def ref_log_softmax(Z: np.ndarray) -> np.ndarray:
    return np.asarray(scipy.special.log_softmax(Z, axis=1))


def ref_losses(theta: np.ndarray, Xb: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy −log softmax(xᵀθ)_y."""
    return -ref_log_softmax(Xb @ theta)[np.arange(len(y)), y]


def ref_objective(theta: np.ndarray, Xb: np.ndarray, y: np.ndarray, l2: float) -> float:
    """J(θ) = Σ L + λ‖θ‖²."""
    return float(ref_losses(theta, Xb, y).sum() + l2 * np.sum(theta * theta))


def ref_per_sample_grads(theta: np.ndarray, Xb: np.ndarray, y: np.ndarray) -> np.ndarray:
    """∇θ L(x_i, y_i) for every sample, one (d+1)×k matrix each, by an explicit loop."""
    k = theta.shape[1]
    grads = np.empty((len(Xb), *theta.shape))
    for i, (x, label) in enumerate(zip(Xb, y, strict=True)):
        p = np.exp(ref_log_softmax((x @ theta)[None, :])[0])
        e = np.zeros(k)
        e[label] = 1.0
        grads[i] = np.outer(x, p - e)
    return grads


def ref_objective_grad(theta: np.ndarray, Xb: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """∇J(θ) = Σ ∇L + 2λθ (vectorised, but written independently of common.ml.model)."""
    P = np.exp(ref_log_softmax(Xb @ theta))
    Y = np.eye(theta.shape[1])[y]
    return Xb.T @ (P - Y) + 2.0 * l2 * theta


def ref_hessian(theta: np.ndarray, Xb: np.ndarray, l2: float) -> np.ndarray:
    """Hessian of J/n as Σ_i (x_i x_iᵀ) ⊗ (diag p_i − p_i p_iᵀ) / n + (2λ/n) I, in θ.ravel() order."""
    n = len(Xb)
    P = np.exp(ref_log_softmax(Xb @ theta))
    C = np.einsum("na,ab->nab", P, np.eye(theta.shape[1])) - np.einsum("na,nb->nab", P, P)
    H = np.einsum("ni,nj,nab->iajb", Xb, Xb, C, optimize=True).reshape(theta.size, theta.size)
    return (H + 2.0 * l2 * np.eye(theta.size)) / n


def ref_fit(Xb: np.ndarray, y: np.ndarray, k: int, l2: float, *, method: str) -> np.ndarray:
    """argmin J with scipy's dense BFGS or trust-exact (Newton with a trust region), using the
    analytical gradient and Hessian written above."""
    shape = (Xb.shape[1], k)
    n = len(Xb)

    def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
        theta = flat.reshape(shape)
        return ref_objective(theta, Xb, y, l2), ref_objective_grad(theta, Xb, y, l2).ravel()

    def hess(flat: np.ndarray) -> np.ndarray:
        return n * ref_hessian(flat.reshape(shape), Xb, l2)

    options = {"gtol": 1e-9} if method == "BFGS" else {"gtol": 1e-10}
    result = scipy.optimize.minimize(
        fun,
        np.zeros(Xb.shape[1] * k),
        jac=True,
        hess=None if method == "BFGS" else hess,
        method=method,
        options=options,
    )
    theta = result.x.reshape(shape)
    # BFGS may stop on "precision loss" before gtol: what matters is that it is a tight optimum.
    # J is 2λ-strongly convex, so ‖θ − θ*‖ ≤ ‖∇J(θ)‖ / (2λ).
    assert np.linalg.norm(ref_objective_grad(theta, Xb, y, l2)) / (2 * l2) < 1e-6
    return theta


def assert_stationary(theta: np.ndarray, Xb: np.ndarray, y: np.ndarray, l2: float) -> None:
    """θ is within 1e-5 (Euclidean) of argmin J, by strong convexity, and ‖∇J‖ is tiny."""
    grad = ref_objective_grad(theta, Xb, y, l2)
    grad0 = ref_objective_grad(np.zeros_like(theta), Xb, y, l2)
    assert np.linalg.norm(grad) / (2 * l2) < 1e-5
    assert np.linalg.norm(grad) < 1e-6 * np.linalg.norm(grad0)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


def fd_gradient(f: Any, theta: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of a scalar or array function of θ, per entry of θ."""
    out = []
    for idx in range(theta.size):
        flat = np.zeros(theta.size)
        flat[idx] = eps
        step = flat.reshape(theta.shape)
        out.append((np.asarray(f(theta + step)) - np.asarray(f(theta - step))) / (2 * eps))
    return np.array(out)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def synthetic(n: int, *, d: int = 5, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small multinomial-logistic problem with every class present."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d + 1, k)) * 1.5
    P = np.exp(ref_log_softmax(add_bias(X) @ W))
    y = np.array([rng.choice(k, p=p) for p in P], dtype=np.int64)
    y[:k] = np.arange(k)
    return X, y


@pytest.fixture(scope="module", autouse=True)
def _single_threaded_blas() -> Any:
    """These problems are tiny: a multi-threaded BLAS is 10-30x slower on a busy 2-core machine."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (features /16), shuffled with a fixed seed."""
    bunch = load_digits()
    X = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(1).permutation(len(y))
    return X[order], y[order]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """write_example_data's split, loaded back, with the model owner's state."""
    split = write_example_data(tmp_path_factory.mktemp("example"))
    train, test = load_dataset(split.train), load_dataset(split.test)
    candidates = [load_dataset(path) for path in split.candidates]
    state = prepare_model_owner(train.X, train.y, test.X, test.y, n_classes=10, l2=0.5)
    return {"split": split, "train": train, "test": test, "cand": candidates, "state": state}


# --------------------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------------------


def test_add_bias_and_one_hot() -> None:
    X = np.array([[2.0, 3.0], [4.0, 5.0], [6.0, 7.0]])
    np.testing.assert_array_equal(add_bias(X), [[2, 3, 1], [4, 5, 1], [6, 7, 1]])
    np.testing.assert_array_equal(one_hot(np.array([2, 0, 1, 2]), 3), np.eye(3)[[2, 0, 1, 2]])


def test_softmax_is_stable_for_huge_logits() -> None:
    Z = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [1e4, 1e4, 0.0], [1e4, 1e4 - 1.0, 3.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        P = softmax(Z)
    assert np.isfinite(P).all()
    e = 1.0 / (1.0 + np.exp(-1.0))
    expected = np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0], [e, 1 - e, 0]])
    np.testing.assert_allclose(P, expected, rtol=1e-12, atol=1e-300)
    # Moderate logits: equals the textbook formula and is shift invariant per row.
    Z = np.random.default_rng(0).normal(size=(6, 4)) * 3
    np.testing.assert_allclose(softmax(Z), np.exp(Z) / np.exp(Z).sum(1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(softmax(Z + np.arange(6)[:, None] * 100.0), softmax(Z), rtol=1e-12)


def test_per_sample_loss_matches_log_softmax() -> None:
    X, y = synthetic(30)
    Xb = add_bias(X)
    theta = np.random.default_rng(1).normal(size=(6, 3))
    Z = Xb @ theta
    naive = -np.log((np.exp(Z) / np.exp(Z).sum(1, keepdims=True))[np.arange(30), y])
    np.testing.assert_allclose(per_sample_loss(theta, Xb, y), naive, rtol=1e-12)
    np.testing.assert_allclose(per_sample_loss(theta, Xb, y), ref_losses(theta, Xb, y), rtol=1e-12)
    assert mean_loss(theta, Xb, y) == pytest.approx(naive.mean(), rel=1e-12)


def test_per_sample_loss_huge_logits() -> None:
    # Xb = I, so the logits of sample i are row i of θ.
    theta = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 0.0], [0.0, 0.0, 0.0]])
    y = np.array([1, 2, 0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = per_sample_loss(theta, np.eye(3), y)
    np.testing.assert_allclose(loss, [1e4, 1e4 + np.log(2.0), np.log(3.0)], rtol=1e-12)
    loss = per_sample_loss(theta, np.eye(3), np.array([0, 0, 2]))
    np.testing.assert_allclose(loss, [0.0, np.log(2.0), np.log(3.0)], atol=1e-12)


def test_sum_grad_matches_finite_differences_and_sample_loop() -> None:
    X, y = synthetic(40)
    Xb = add_bias(X)
    theta = np.random.default_rng(2).normal(size=(6, 3))
    G = sum_grad(theta, Xb, y)
    assert G.shape == theta.shape
    fd = fd_gradient(lambda t: per_sample_loss(t, Xb, y).sum(), theta).reshape(theta.shape)
    np.testing.assert_allclose(G, fd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(G, ref_per_sample_grads(theta, Xb, y).sum(0), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_classes": 3, "l2": 0.0}, "l2"),
        ({"n_classes": 3, "l2": -1.0}, "l2"),
        ({"n_classes": 1, "l2": 1.0}, "n_classes"),
        ({"n_classes": 0, "l2": 1.0}, "n_classes"),
    ],
    ids=["l2=0", "l2<0", "k=1", "k=0"],
)
def test_logistic_regression_rejects_bad_config(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LogisticRegression(**kwargs)


def test_fit_binary_is_stationary_and_matches_bfgs(digits: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = digits
    keep = np.flatnonzero((y == 3) | (y == 8))[:200]
    Xs, ys = X[keep], (y[keep] == 8).astype(np.int64)
    for l2 in (1.0, 0.1):
        fitted = LogisticRegression(n_classes=2, l2=l2).fit(Xs, ys)
        Xb = add_bias(Xs)
        assert fitted.coef_.shape == (65, 2)
        assert_stationary(fitted.coef_, Xb, ys, l2)
        np.testing.assert_allclose(
            fitted.coef_, ref_fit(Xb, ys, 2, l2, method="BFGS"), rtol=0, atol=1e-5
        )
        # predict_proba / mean_loss are the model at coef_.
        np.testing.assert_allclose(
            fitted.predict_proba(Xs), np.exp(ref_log_softmax(Xb @ fitted.coef_)), rtol=1e-12
        )
        assert fitted.mean_loss(Xs, ys) == pytest.approx(
            ref_losses(fitted.coef_, Xb, ys).mean(), rel=1e-12
        )


def test_fit_ten_classes_is_stationary_and_matches_newton(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = digits[0][:250], digits[1][:250]
    Xb = add_bias(X)
    fitted = LogisticRegression(n_classes=10, l2=1.0).fit(X, y)
    assert fitted.coef_.shape == (65, 10)
    assert_stationary(fitted.coef_, Xb, y, 1.0)
    np.testing.assert_allclose(
        fitted.coef_, ref_fit(Xb, y, 10, 1.0, method="trust-exact"), rtol=0, atol=1e-5
    )
    # The penalty matters: a much weaker one gives a clearly different, larger θ.
    weak = LogisticRegression(n_classes=10, l2=0.01).fit(X, y)
    assert np.linalg.norm(weak.coef_) > 2 * np.linalg.norm(fitted.coef_)


def test_fit_warm_start_from_optimum_stays_and_does_not_mutate_init() -> None:
    X, y = synthetic(60, seed=3)
    cold = LogisticRegression(n_classes=3, l2=0.5).fit(X, y)
    init = cold.coef_.copy()
    warm = LogisticRegression(n_classes=3, l2=0.5).fit(X, y, init=init)
    np.testing.assert_array_equal(init, cold.coef_)
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=1e-7)
    assert warm.n_iter_ <= 3 < cold.n_iter_


# --------------------------------------------------------------------------------------------------
# Hessian and inverse-Hessian-vector products
# --------------------------------------------------------------------------------------------------


def test_hessian_matches_finite_differences_symmetric_positive_definite() -> None:
    X, y = synthetic(50)
    Xb = add_bias(X)
    n, l2 = len(X), 0.7
    theta = np.random.default_rng(4).normal(size=(6, 3))
    H = hessian(theta, Xb, l2=l2)
    assert H.shape == (18, 18)
    # Row j of the FD matrix is ∂g/∂θ_j with g the mean-objective gradient (∇J / n).
    fd = fd_gradient(lambda t: ref_objective_grad(t, Xb, y, l2).ravel() / n, theta, eps=1e-5)
    np.testing.assert_allclose(H, fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(H, ref_hessian(theta, Xb, l2), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-15 * np.abs(H).max())
    # The data term is PSD, so every eigenvalue is at least the penalty's 2λ/n.
    eig = np.linalg.eigvalsh(H)
    assert eig.min() >= 2 * l2 / n * (1 - 1e-9)
    assert eig.max() > 10 * eig.min()  # not just the penalty


def test_hessian_vector_product_matches_dense_hessian(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    rng = np.random.default_rng(5)
    X, _ = synthetic(50)
    problems = [(add_bias(X), rng.normal(size=(6, 3))), (add_bias(digits[0][:120]), None)]
    for Xb, theta in problems:
        if theta is None:
            theta = rng.normal(size=(Xb.shape[1], 10)) * 0.3
        H = hessian(theta, Xb, l2=0.3)
        for _ in range(3):
            V = rng.normal(size=theta.shape)
            HV = hessian_vector_product(theta, Xb, V, l2=0.3)
            assert HV.shape == theta.shape
            np.testing.assert_allclose(HV.ravel(), H @ V.ravel(), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("problem", ["synthetic", "digits"])
def test_inverse_hvp_exact_and_cg_paths_agree(
    problem: str, digits: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(6)
    if problem == "synthetic":
        X, y = synthetic(50)
        k, l2 = 3, 1.0
    else:
        X, y = digits[0][:200], digits[1][:200]
        k, l2 = 10, 1.0
    Xb = add_bias(X)
    theta = LogisticRegression(n_classes=k, l2=l2).fit(X, y).coef_
    G = rng.normal(size=theta.shape)
    H = ref_hessian(theta, Xb, l2)
    exact = inverse_hvp(theta, Xb, G, l2=l2)
    monkeypatch.setattr(model, "EXACT_HESSIAN_MAX_PARAMS", 0)
    calls = {"n": 0}
    real_hvp = model.hessian_vector_product

    def counting_hvp(*args: Any, **kwargs: Any) -> np.ndarray:
        calls["n"] += 1
        return real_hvp(*args, **kwargs)

    monkeypatch.setattr(model, "hessian_vector_product", counting_hvp)
    cg = inverse_hvp(theta, Xb, G, l2=l2)
    assert calls["n"] > 0  # the CG path really ran
    assert exact.shape == cg.shape == theta.shape
    assert rel_err(cg, exact) < 1e-6
    np.testing.assert_allclose(H @ exact.ravel(), G.ravel(), rtol=1e-8, atol=1e-10)
    assert rel_err(H @ cg.ravel(), G.ravel()) < 1e-8
    np.testing.assert_allclose(exact.ravel(), np.linalg.solve(H, G.ravel()), rtol=1e-8, atol=1e-10)


def test_inverse_hvp_reports_cg_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    X, _ = synthetic(20)
    monkeypatch.setattr(model, "EXACT_HESSIAN_MAX_PARAMS", 0)
    monkeypatch.setattr(scipy.sparse.linalg, "cg", lambda *a, **kw: (np.zeros(18), 7), raising=True)
    with pytest.raises(ConfigError, match="conjugate gradients"):
        inverse_hvp(np.zeros((6, 3)), add_bias(X), np.ones((6, 3)), l2=1.0)


# --------------------------------------------------------------------------------------------------
# The model owner's state and the appraisal functions
# --------------------------------------------------------------------------------------------------


def test_prepare_model_owner() -> None:
    X, y = synthetic(120, seed=7)
    Xtr, ytr, Xte, yte = X[:80], y[:80], X[80:], y[80:]
    state = prepare_model_owner(Xtr, ytr, Xte, yte, n_classes=3, l2=0.4)
    Xb, Xb_te = add_bias(Xtr), add_bias(Xte)
    assert state.l2 == 0.4
    assert state.theta.shape == state.v.shape == (6, 3)
    assert_stationary(state.theta, Xb, ytr, 0.4)
    assert state.test_loss == pytest.approx(ref_losses(state.theta, Xb_te, yte).mean(), rel=1e-12)
    g_test = ref_per_sample_grads(state.theta, Xb_te, yte).mean(0)
    H = ref_hessian(state.theta, Xb, 0.4)
    np.testing.assert_allclose(H @ state.v.ravel(), g_test.ravel(), rtol=1e-9, atol=1e-12)


def test_prepare_model_owner_cg_path_on_mnist_like() -> None:
    train, test, _ = mnist_like(n_candidate=1, n_train=150, n_test=60, seed=0)
    state = prepare_model_owner(train.X, train.y, test.X, test.y, n_classes=10, l2=1.0)
    assert state.theta.size > model.EXACT_HESSIAN_MAX_PARAMS  # 785×10: the CG path
    Xb = add_bias(train.X)
    assert_stationary(state.theta, Xb, train.y, 1.0)
    g_test = ref_objective_grad(state.theta, add_bias(test.X), test.y, 0.0) / len(test.X)
    Hv = hessian_vector_product(state.theta, Xb, state.v, l2=1.0)
    assert rel_err(Hv, g_test) < 1e-8


def test_influence_score_matches_literal_definition() -> None:
    X, y = synthetic(90, seed=8)
    Xtr, ytr, Xte, yte, Xa, ya = X[:50], y[:50], X[50:70], y[50:70], X[70:77], y[70:77]
    l2 = 0.5
    state = prepare_model_owner(Xtr, ytr, Xte, yte, n_classes=3, l2=l2)
    theta = state.theta
    Hinv = np.linalg.inv(ref_hessian(theta, add_bias(Xtr), l2))
    g_te = ref_per_sample_grads(theta, add_bias(Xte), yte)
    g_a = ref_per_sample_grads(theta, add_bias(Xa), ya)
    total = 0.0
    for gt in g_te:
        for ga in g_a:
            total += gt.ravel() @ Hinv @ ga.ravel()
    expected = -total / (len(Xa) * len(Xte))
    assert abs(expected) > 1e-3  # a non-degenerate example
    assert influence_score(state, Xa, ya) == pytest.approx(expected, rel=1e-8)
    # With a hand-made state too (θ not an optimum), the score is −(1/m) Σ_a ∇L(a)ᵀ v.
    rng = np.random.default_rng(9)
    v = rng.normal(size=(6, 3))
    fake = ModelOwnerState(theta=rng.normal(size=(6, 3)), v=v, test_loss=0.0, l2=l2)
    literal = -sum(
        g.ravel() @ v.ravel() for g in ref_per_sample_grads(fake.theta, add_bias(Xa), ya)
    )
    assert influence_score(fake, Xa, ya) == pytest.approx(literal / len(Xa), rel=1e-10)


def test_gradient_norm_score_is_frobenius_norm_of_summed_gradients() -> None:
    X, y = synthetic(30, seed=10)
    theta = np.random.default_rng(11).normal(size=(6, 3))
    summed = ref_per_sample_grads(theta, add_bias(X), y).sum(0)
    expected = float(np.sqrt((summed**2).sum()))
    assert gradient_norm_score(theta, X, y) == pytest.approx(expected, rel=1e-12)
    # It is the norm of the sum, not the sum of the norms.
    per_sample = sum(np.sqrt((g**2).sum()) for g in ref_per_sample_grads(theta, add_bias(X), y))
    assert expected < 0.99 * per_sample


def test_minibatches() -> None:
    for full in (minibatches(10, None), minibatches(10, 10), minibatches(10, 25)):
        assert len(full) == 1 and np.array_equal(full[0], np.arange(10))
    batches = minibatches(10, 4)
    assert [len(b) for b in batches] == [4, 4, 2]
    # a permutation of every row, the same every time (both parties derive it independently)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(10))
    assert all(np.array_equal(a, b) for a, b in zip(batches, minibatches(10, 4), strict=True))
    assert [len(b) for b in minibatches(9, 3)] == [3, 3, 3]
    assert [len(b) for b in minibatches(5, 1)] == [1] * 5
    # shuffled: with 600 model-owner rows first, the first batch of 64 mixes both owners' rows
    first = minibatches(6600, 64)[0]
    assert (first < 600).any() and (first >= 600).any()


def test_finetune_theta_one_step_is_a_manual_gradient_step() -> None:
    X, y = synthetic(25, seed=12)
    Xb = add_bias(X)
    theta0 = np.random.default_rng(13).normal(size=(6, 3))
    before = theta0.copy()
    lr, l2, n = 0.3, 0.8, len(X)
    step = theta0 - lr * ref_objective_grad(theta0, Xb, y, l2) / n
    np.testing.assert_allclose(
        finetune_theta(theta0, Xb, y, steps=1, lr=lr, l2=l2), step, rtol=1e-12, atol=1e-14
    )
    np.testing.assert_array_equal(theta0, before)  # the input is not modified
    np.testing.assert_array_equal(finetune_theta(theta0, Xb, y, steps=0, lr=lr, l2=l2), theta0)


def test_finetune_theta_cycles_through_uneven_minibatches() -> None:
    X, y = synthetic(10, seed=14)
    Xb = add_bias(X)
    theta = np.random.default_rng(15).normal(size=(6, 3))
    lr, l2 = 0.2, 0.5
    order = minibatches(10, 4)  # 3 batches of 4, 4, 2 rows
    assert [len(b) for b in order] == [4, 4, 2]
    expected = theta.copy()
    for rows in [order[0], order[1], order[2], order[0], order[1]]:  # 5 steps, cycling
        m = len(rows)
        expected = expected - lr * ref_objective_grad(expected, Xb[rows], y[rows], l2) / m
    got = finetune_theta(theta, Xb, y, steps=5, lr=lr, l2=l2, batch_size=4)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    full = finetune_theta(theta, Xb, y, steps=5, lr=lr, l2=l2, batch_size=None)
    assert not np.allclose(got, full)
    np.testing.assert_array_equal(
        full, finetune_theta(theta, Xb, y, steps=5, lr=lr, l2=l2, batch_size=99)
    )


def test_finetune_score_small_lr_is_first_order(example: dict[str, Any]) -> None:
    state, train, test = example["state"], example["train"], example["test"]
    cand = example["cand"][0]
    args = (state, train.X, train.y, cand.X, cand.y, test.X, test.y)
    assert finetune_score(*args, steps=1, lr=1e-12) == pytest.approx(0.0, abs=1e-11)
    # One full-batch step from θ̂: the D_tr part of the gradient vanishes (θ̂ is the optimum), so
    # Δθ = −η Σ_a ∇L / (n + m) and the test-loss change is −η ḡ_testᵀ Σ_a ∇L / (n + m) + O(η²).
    n, m, lr = len(train.X), len(cand.X), 1e-5
    g_test = ref_objective_grad(state.theta, add_bias(test.X), test.y, 0.0) / len(test.X)
    G_a = ref_objective_grad(state.theta, add_bias(cand.X), cand.y, 0.0)
    predicted = -lr * float((g_test * G_a).sum()) / (n + m)
    assert predicted < 0
    assert finetune_score(*args, steps=1, lr=lr) == pytest.approx(predicted, rel=1e-3)


def test_finetune_score_clean_data_helps_and_noisy_hurts(example: dict[str, Any]) -> None:
    state, train, test = example["state"], example["train"], example["test"]
    scores = [
        finetune_score(state, train.X, train.y, c.X, c.y, test.X, test.y, steps=20, lr=0.5)
        for c in (example["cand"][0], example["cand"][9])
    ]
    assert scores[0] < -1e-3
    assert scores[0] < scores[1]


# --------------------------------------------------------------------------------------------------
# The exact utility and the influence score's first-order prediction of it
# --------------------------------------------------------------------------------------------------


def test_exact_utility_on_example_data(
    example: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, train, test = example["state"], example["train"], example["test"]
    assert example["split"].n_flipped[9] > example["split"].n_flipped[0]
    theta_before = state.theta.copy()
    fits: list[tuple[LogisticRegression, np.ndarray, np.ndarray, np.ndarray | None]] = []

    class Spy(LogisticRegression):
        def fit(self, X: np.ndarray, y: np.ndarray, *, init: np.ndarray | None = None) -> Any:
            fits.append((self, X, y, None if init is None else np.array(init)))
            return super().fit(X, y, init=init)

    monkeypatch.setattr(model, "LogisticRegression", Spy)
    utilities = []
    for cand in (example["cand"][0], example["cand"][9]):
        u = exact_utility(state, train.X, train.y, cand.X, cand.y, test.X, test.y)
        refit, X_all, y_all, init = fits[-1]
        # Warm start from θ̂, on D_tr ∪ D_a, with the owner's λ, to a stationary point.
        assert init is not None
        np.testing.assert_array_equal(init, theta_before)
        np.testing.assert_array_equal(X_all, np.vstack([train.X, cand.X]))
        np.testing.assert_array_equal(y_all, np.concatenate([train.y, cand.y]))
        assert refit.l2 == state.l2
        assert_stationary(refit.coef_, add_bias(X_all), y_all, state.l2)
        expected = ref_losses(refit.coef_, add_bias(test.X), test.y).mean() - state.test_loss
        assert u == pytest.approx(expected, rel=1e-10, abs=1e-14)
        utilities.append(u)
    np.testing.assert_array_equal(state.theta, theta_before)  # θ̂ is not modified
    assert utilities[0] < 0  # 130 clean digits help a 100-sample model
    assert utilities[0] < utilities[1]


def test_influence_score_predicts_exact_utility(digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Adding D_a to J = Σ_tr L + λ‖θ‖² is an upweighting by ε = 1/n of (1/n)·J, so

        Δθ ≈ −(1/n) H⁻¹ Σ_a ∇L(a)   and   U ≈ ḡ_testᵀ Δθ = (m/n) · influence_score,

    i.e. influence_score ≈ U · n / m, with the same sign (both are "lower is better").
    """
    X, y = digits
    n, m = 300, 5
    Xtr, ytr, Xte, yte = X[:n], y[:n], X[n : n + 400], y[n : n + 400]
    state = prepare_model_owner(Xtr, ytr, Xte, yte, n_classes=10, l2=1.0)
    scaled_u, scores = [], []
    for c in range(12):
        lo = n + 400 + m * c
        Xa, ya = X[lo : lo + m], y[lo : lo + m].copy()
        if c % 3 == 0:
            ya = (ya + 3) % 10  # mislabelled candidates must look harmful
        u = exact_utility(state, Xtr, ytr, Xa, ya, Xte, yte)
        scaled_u.append(u * n / m)
        scores.append(influence_score(state, Xa, ya))
    scaled, score = np.array(scaled_u), np.array(scores)
    np.testing.assert_array_equal(np.sign(scaled), np.sign(score))
    assert (score[::3] > 0).all()
    assert np.corrcoef(scaled, score)[0, 1] > 0.95
    ratio = score / scaled
    assert 0.7 < np.median(ratio) < 1.4
    assert ((ratio > 0.5) & (ratio < 2.0)).all()


@pytest.mark.parametrize("l2", [float("nan"), float("inf")])
def test_non_finite_penalty_is_rejected(l2: float) -> None:
    with pytest.raises(ConfigError, match="l2"):
        LogisticRegression(n_classes=3, l2=l2)


def test_non_integer_class_count_is_rejected() -> None:
    with pytest.raises(ConfigError, match="n_classes"):
        LogisticRegression(n_classes=2.5)  # type: ignore[arg-type]


def test_labels_outside_the_classes_are_rejected() -> None:
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 3
    with pytest.raises(ConfigError, match=r"0\.\.2"):
        LogisticRegression(n_classes=3).fit(X, np.where(y == 2, -1, y))


@pytest.mark.parametrize("batch_size", [0, -2])
def test_bad_batch_size_is_a_config_error(batch_size: int) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        minibatches(10, batch_size)


def test_convergence_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    """converged_ means exactly ‖∇J‖₂ ≤ tol, measured by an independent gradient."""
    digits = load_digits()
    X, y = digits.data[:200] / 16.0, digits.target[:200]
    Xb = np.hstack([X, np.ones((len(X), 1))])
    fitted = LogisticRegression(n_classes=10).fit(X, y)
    norm = float(np.linalg.norm(ref_objective_grad(fitted.coef_, Xb, y, 1.0)))
    assert fitted.converged_ and norm <= GRADIENT_TOL
    assert fitted.grad_norm_ == pytest.approx(norm, rel=1e-3, abs=1e-12)
    with caplog.at_level("WARNING", logger="data_appraisal.model"):
        stopped = LogisticRegression(n_classes=10, max_iter=2).fit(X, y)
    assert not stopped.converged_ and stopped.n_iter_ <= 2
    assert np.linalg.norm(ref_objective_grad(stopped.coef_, Xb, y, 1.0)) > GRADIENT_TOL
    assert "without converging" in caplog.text
    # a tolerance the data cannot meet in float64 is reported, not claimed
    strict = LogisticRegression(n_classes=10, tol=1e-30).fit(X, y)
    assert not strict.converged_ and strict.grad_norm_ > 1e-30


def test_warm_start_refit_reaches_the_absolute_tolerance() -> None:
    """The refit of exact_utility starts next to θ* where L-BFGS-B's line search stalls in float64
    (it stopped at ‖∇J‖ ≈ 2e-5 on the example data); the Newton steps finish the job."""
    digits = load_digits()
    X, y = digits.data / 16.0, digits.target
    theta0 = LogisticRegression(n_classes=10).fit(X[:100], y[:100]).coef_
    refit = LogisticRegression(n_classes=10).fit(X[:400], y[:400], init=theta0)
    Xb = np.hstack([X[:400], np.ones((400, 1))])
    assert refit.converged_
    assert np.linalg.norm(ref_objective_grad(refit.coef_, Xb, y[:400], 1.0)) <= GRADIENT_TOL


def test_large_step_finetuning_amplifies_one_fixed_point_unit(digits_split) -> None:
    """docs/results.md: at η = 10 plaintext fine-tuning itself turns a 2⁻¹⁶ change of θ̂ into a
    large score change (so MPC rounding must too), while at η = 0.1 it stays a rounding error."""
    from common.ml.data import load_dataset

    tr, te = load_dataset(digits_split.train), load_dataset(digits_split.test)
    cand = load_dataset(digits_split.candidates[2])
    state = model.prepare_model_owner(tr.X, tr.y, te.X, te.y, n_classes=10, l2=1.0)
    nudged = model.ModelOwnerState(
        theta=state.theta + np.random.default_rng(0).normal(0, 2**-16, state.theta.shape),
        v=state.v,
        test_loss=state.test_loss,
        l2=state.l2,
    )

    def change(lr: float) -> float:
        a, b = (
            model.finetune_score(s, tr.X, tr.y, cand.X, cand.y, te.X, te.y, steps=12, lr=lr)
            for s in (state, nudged)
        )
        return abs(a - b)

    assert change(0.1) < 1e-4
    assert change(10.0) > 0.1
