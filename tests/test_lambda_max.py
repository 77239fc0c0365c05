"""`linfeat._lambda_max.lambda_max` (Householder + bisection) against LAPACK and its derivative."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfeat._lambda_max import lambda_max


def _cases(rng, k, b=64):
    A = rng.normal(size=(b, k, k))
    Q = np.linalg.qr(rng.normal(size=(b, k, k)))[0]
    lam = np.where(np.arange(k) < (k + 1) // 2, 1.0, 0.3)  # top eigenvalue repeated
    graded = np.logspace(0, -12, k)
    return {
        "symmetric": A + np.swapaxes(A, 1, 2),
        "psd": A @ np.swapaxes(A, 1, 2),
        "negative definite": -(A @ np.swapaxes(A, 1, 2)) - np.eye(k),
        "repeated top": (Q * lam) @ np.swapaxes(Q, 1, 2),
        "graded": (Q * graded) @ np.swapaxes(Q, 1, 2),
        "diagonal": np.stack([np.diag(rng.normal(size=k)) for _ in range(b)]),
        "tiny": 1e-200 * (A @ np.swapaxes(A, 1, 2)),
        "huge": 1e200 * (A @ np.swapaxes(A, 1, 2)),
    }


@pytest.mark.parametrize("k", [1, 2, 3, 10, 17])
def test_matches_lapack(k):
    # Householder tridiagonalisation and the Sturm count are backward stable: the result is an
    # eigenvalue of S + E with |E| <= c k eps |S|; c = 8 (observed: <= 16 eps |S| at k <= 40)
    rng = np.random.default_rng(k)
    f = jax.jit(jax.vmap(lambda_max))
    eps = np.finfo(np.float64).eps
    for name, S in _cases(rng, k).items():
        ref = np.linalg.eigvalsh(S)[:, -1]
        out = np.asarray(f(jnp.asarray(S)))
        scale = np.linalg.norm(S, 2, axis=(1, 2))
        err = np.abs(out - ref) / np.where(scale > 0, scale, 1.0)
        assert np.all(err <= 8 * max(k, 2) * eps), (name, err.max() / eps)


def test_special_inputs_and_errors():
    assert float(lambda_max(jnp.zeros((4, 4)))) == 0.0
    assert float(lambda_max(2.5 * jnp.eye(3))) == 2.5
    assert np.isnan(float(lambda_max(jnp.full((3, 3), jnp.nan))))
    S = jnp.asarray([[1.0, 2.0], [0.0, 1.0]])  # the symmetric part, like eigvalsh: [[1,1],[1,1]]
    assert float(lambda_max(S)) == pytest.approx(2.0, rel=1e-15)
    with pytest.raises(ValueError, match="square"):
        lambda_max(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="square"):
        lambda_max(jnp.ones((0, 0)))
    with pytest.raises(TypeError, match="real floating"):
        lambda_max(jnp.ones((2, 2), jnp.int32))


def test_float32_stays_float32():
    rng = np.random.default_rng(5)
    A = rng.normal(size=(10, 10))
    S = (A @ A.T).astype(np.float32)
    out = lambda_max(jnp.asarray(S))
    assert out.dtype == jnp.float32
    ref = np.linalg.eigvalsh(S.astype(np.float64))[-1]
    assert abs(float(out) - ref) <= 80 * np.finfo(np.float32).eps * ref


def test_no_lapack_call_in_the_value():
    # the primal program is plain arithmetic (batched LAPACK kernels can deadlock on a 2-thread
    # CPU pool, docs/solvers.md); only the derivative calls the Jacobi eigh, also LAPACK-free
    text = jax.jit(jax.vmap(lambda_max)).lower(jnp.ones((4, 6, 6))).as_text()
    assert "lapack" not in text.lower() and "custom_call" not in text


def test_derivative_is_the_top_eigenvector_quadratic_form():
    rng = np.random.default_rng(7)
    A = jnp.asarray(rng.normal(size=(10, 10)))
    S = A @ A.T  # distinct eigenvalues
    dS = jnp.asarray(rng.normal(size=(10, 10)))
    lam, V = np.linalg.eigh(np.asarray(S))
    u = V[:, -1]
    # d lambda_max = u^T sym(dS) u, and the gradient is u u^T (symmetric input convention)
    _, t = jax.jvp(lambda_max, (S,), (dS,))
    assert float(t) == pytest.approx(float(u @ (0.5 * (dS + dS.T)) @ u), rel=1e-12)
    g = jax.grad(lambda_max)(S)
    np.testing.assert_allclose(g, np.outer(u, u), atol=1e-13)
    # and central differences (step 1e-5: truncation ~1e-10 relative, rounding ~eps lam / h)
    h = 1e-5
    fd = (lambda_max(S + h * dS) - lambda_max(S - h * dS)) / (2 * h)
    assert float(t) == pytest.approx(float(fd), abs=1e-8 * lam[-1])
    # vmapped derivatives equal the per-matrix ones
    Ss = jnp.stack([S, S + jnp.eye(10), 2 * S])
    gs = jax.vmap(jax.grad(lambda_max))(Ss)
    for i in range(3):
        np.testing.assert_allclose(gs[i], jax.grad(lambda_max)(Ss[i]), atol=1e-13)
