"""`linfeat._polar.polar_factor` (Newton-Schulz) against LAPACK's SVD, and the feature distance
that uses it (docs/theory.md, section 2.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfeat import _polar
from linfeat._metrics import _frame_distance, _polar_by_eigh, frame_feature_distance
from linfeat._polar import polar_factor

EPS = np.finfo(np.float64).eps


def _cases(rng, k, b=32):
    Q1 = np.linalg.qr(rng.normal(size=(b, k, k)))[0]
    Q2 = np.linalg.qr(rng.normal(size=(b, k, k)))[0]

    def svd(s):
        return (Q1 * s) @ np.swapaxes(Q2, 1, 2)

    G = rng.normal(size=(b, k, k))
    return {
        "gaussian": G,
        "near orthogonal": Q1 + 0.01 * G,
        "kappa 1e4": svd(np.logspace(0, -4, k)),
        "kappa 1e9": svd(np.logspace(0, -9, k)),
        "rank deficient": svd(np.where(np.arange(k) < (k + 1) // 2, 1.0, 0.0)),
        "repeated": svd(np.where(np.arange(k) < k // 2, 2.0, 0.5)),
        "huge": 1e150 * G,
        "tiny": 1e-150 * G,
    }


@pytest.mark.parametrize("k", [1, 2, 3, 10, 17])
def test_polar_factor_matches_the_svd(k):
    rng = np.random.default_rng(k)
    f = jax.jit(jax.vmap(polar_factor))
    for name, M in _cases(rng, k).items():
        U = np.asarray(f(jnp.asarray(M)))
        u, s, vt = np.linalg.svd(M)
        norm = s[:, 0]
        # backward error: U P = M with P = U^T M symmetric: rounding (measured <= 10 eps for
        # k <= 40) plus the directions the stop treats as zero, s_i <= 2 delta s_max with
        # delta = STOP_PER_K k eps (linfeat._polar's docstring)
        P = np.swapaxes(U, 1, 2) @ M
        res = np.linalg.norm(U @ P - M, 2, axis=(1, 2)) / norm
        asym = np.linalg.norm(P - np.swapaxes(P, 1, 2), 2, axis=(1, 2)) / norm
        bound = 4 * _polar.STOP_PER_K * k * EPS
        assert np.all(res <= bound) and np.all(asym <= bound), (name, res.max(), asym.max())
        # forward error: U = u v^T on the range; the polar factor's condition number is
        # 2 / (s_{k-1} + s_k) relative to |M| (Higham, Functions of Matrices, Thm 8.9)
        keep = s > 1e-12 * norm[:, None]
        ref = np.einsum("bik,bk,bkj->bij", u, keep, vt)
        gap = np.where(keep[:, -1], s[:, -1] + s[:, max(k - 2, 0)], s[:, 0])
        err = np.linalg.norm(U - ref, 2, axis=(1, 2))
        assert np.all(err <= 100 * k * EPS * norm / gap), (name, (err * gap / norm).max() / EPS)
        if name == "rank deficient":  # a partial isometry: U^T U the projector on M's rows
            proj = np.swapaxes(vt, 1, 2) @ (keep[..., None] * vt)
            assert np.abs(np.swapaxes(U, 1, 2) @ U - proj).max() <= 100 * k * EPS


def test_special_inputs_and_batch_independence():
    assert np.all(np.asarray(polar_factor(jnp.zeros((4, 4)))) == 0.0)
    assert np.all(np.isnan(np.asarray(polar_factor(jnp.full((3, 3), jnp.nan)))))
    D = jnp.diag(jnp.asarray([3.0, -2.0, 0.5]))
    np.testing.assert_allclose(polar_factor(D), jnp.diag(jnp.sign(jnp.diag(D))), atol=2e-16)
    with pytest.raises(ValueError, match="square"):
        polar_factor(jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="real floating"):
        polar_factor(jnp.ones((2, 2), jnp.int32))
    # under vmap the loop runs to the slowest lane; stopped lanes are frozen exactly, so a
    # well-conditioned lane's result does not depend on an ill-conditioned neighbour
    rng = np.random.default_rng(3)
    good = jnp.asarray(rng.normal(size=(10, 10)))
    Q = np.linalg.qr(rng.normal(size=(10, 10)))[0]
    bad = jnp.asarray((Q * np.logspace(0, -10, 10)) @ Q.T)
    alone = polar_factor(good)
    both = jax.vmap(polar_factor)(jnp.stack([good, bad]))
    assert np.array_equal(np.asarray(both[0]), np.asarray(alone))


def test_float32_stays_float32():
    rng = np.random.default_rng(5)
    M = rng.normal(size=(10, 10))
    U = polar_factor(jnp.asarray(M, jnp.float32))
    assert U.dtype == jnp.float32
    u, _, vt = np.linalg.svd(M)
    assert np.abs(np.asarray(U, np.float64) - u @ vt).max() < 1e-4


def test_no_custom_calls():
    # matrix products and a while loop only: no LAPACK kernel, so no deadlock between two
    # batched LAPACK calls on the 2-thread CPU pool (linfeat._eigh's docstring)
    text = jax.jit(jax.vmap(polar_factor)).lower(jnp.ones((8, 5, 5))).as_text()
    assert "custom_call" not in text


def _distance_case(kind):
    rng = np.random.default_rng(7)
    k, r = 6, 15
    G = rng.normal(size=(r, r)) / np.sqrt(r) + np.eye(r)
    gram = jnp.asarray(G.T @ G)
    L = np.linalg.cholesky(G.T @ G)
    Hs = np.linalg.qr(rng.normal(size=(r, k)))[0].T @ np.linalg.inv(L)  # Hs gram Hs^T = I
    H = {
        "direct": Hs + 0.05 * rng.normal(size=(k, r)),
        "expanded": 0.1 * rng.normal(size=(k, r)),
        "singular": np.concatenate([Hs[:3], np.zeros((3, r))]),
    }[kind]
    np.testing.assert_allclose(Hs @ (G.T @ G) @ Hs.T, np.eye(k), atol=1e-12)
    return jnp.asarray(H), jnp.asarray(Hs), gram


KINDS = ["direct", "expanded", "singular"]  # s_min(M) > 1/4, < 1/4, and M singular


@pytest.mark.parametrize("kind", KINDS)
def test_distance_value_matches_the_eigensolve_route(kind):
    # one formula, two polar factors: Newton-Schulz (the value) and the eigensolve route (the
    # custom JVP's); the same d to rounding, vmapped too
    H, Hs, gram = _distance_case(kind)
    d = float(frame_feature_distance(H, Hs, gram))
    ref = float(_frame_distance(H, Hs, gram, _polar_by_eigh))
    assert abs(d - ref) <= 64 * H.shape[0] * EPS * (1.0 + ref)
    vf = jax.vmap(lambda h: frame_feature_distance(h, Hs, gram))(jnp.stack([H, 2.0 * H]))
    assert float(vf[0]) == d


@pytest.mark.slow  # a reverse-mode compile (~12 s); the default suite differentiates the
# distance in tests/test_feature_distance.py (against finite differences and the SVD route)
@pytest.mark.parametrize("kind", KINDS)
def test_distance_gradient_is_the_eigensolve_routes(kind):
    H, Hs, gram = _distance_case(kind)
    route = lambda H: _frame_distance(H, Hs, gram, _polar_by_eigh)  # noqa: E731
    f = lambda H: frame_feature_distance(H, Hs, gram)  # noqa: E731
    np.testing.assert_array_equal(np.asarray(jax.grad(f)(H)), np.asarray(jax.grad(route)(H)))
