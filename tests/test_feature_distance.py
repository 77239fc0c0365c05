"""The reduced feature distance (`linfeat._metrics.frame_feature_distance`, docs/theory.md 2.4).

Reference: the Procrustes distance in R^d from NumPy's SVD (U = P R^T of B B*^T, then the
spectral norm of B - U B*), outside any jitted program. Cases cover both branches of the
computation (the direct Delta where s_min(M) > 1/4, the expansion below), d -> 0, a singular
M (no unique U) and the derivative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfeat._eigh import eigvalsh, polar
from linfeat._metrics import _EXPANSION_BELOW, frame_feature_distance

EPS = float(np.finfo(np.float64).eps)


def reference(B, Bs):
    P, _, Rt = np.linalg.svd(B @ Bs.T)
    return np.linalg.norm(B - P @ Rt @ Bs, 2)


def orthonormal_rows(rng, k, d):
    return np.linalg.qr(rng.normal(size=(d, k)))[0].T


def points(seed):
    """(B, B*) pairs from B = B* (d = 0) to rows orthogonal to B* (s_min(M) = 0)."""
    rng = np.random.default_rng(seed)
    d, k = 30, int(rng.integers(1, 8))
    Bs = orthonormal_rows(rng, k, d)
    out = []
    for scale in (0.0, 1e-9, 1e-4, 0.1, 0.5, 2.0):
        out.append((Bs + scale * rng.normal(size=(k, d)), Bs))
    far = orthonormal_rows(rng, 2 * k, d)[k:]  # orthogonal to a different B*
    out.append((far + 0.1 * rng.normal(size=(k, d)), Bs))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_matches_svd_reference_on_both_branches(seed):
    dist = jax.jit(frame_feature_distance)
    branches = set()
    for B, Bs in points(seed):
        d = B.shape[1]
        got = float(dist(jnp.asarray(B), jnp.asarray(Bs), jnp.eye(d)))
        ref = reference(B, Bs)
        s_min = np.linalg.svd(B @ Bs.T, compute_uv=False).min()
        branches.add(bool(s_min > _EXPANSION_BELOW))
        # Backward-stable k x k eigensolves on O(1 + |B|^2) entries: absolute error a few
        # hundred ulps of that size (observed <= 6e-16).
        scale = 1.0 + np.linalg.norm(B, 2) ** 2
        assert abs(got - ref) <= 256 * EPS * scale, (got, ref, s_min)
    assert branches == {True, False}


def test_absolute_accuracy_as_distance_vanishes():
    # The direct branch forms Delta = H - U H* itself: the error stays at rounding level of
    # |B| as d -> 0, where the expansion (cancelling O(1) terms in d^2) would leave an
    # absolute error of order sqrt(eps) ~ 1e-8 in d.
    rng = np.random.default_rng(3)
    k, d = 4, 20
    Bs = orthonormal_rows(rng, k, d)
    for scale in (1e-12, 1e-10, 1e-7):
        B = Bs + scale * rng.normal(size=(k, d))
        got = float(frame_feature_distance(jnp.asarray(B), jnp.asarray(Bs), jnp.eye(d)))
        assert abs(got - reference(B, Bs)) <= 256 * EPS


def test_singular_overlap_has_the_unique_distance():
    # Two rows of B orthogonal to rowspace(B*): M = B B*^T has two zero singular values and
    # U is not unique there; d is (section 2.4): here the rows (Bs_0... ) give sqrt(2) exactly.
    rng = np.random.default_rng(4)
    k, d = 4, 16
    Bs = orthonormal_rows(rng, k, d)
    Z = np.linalg.qr(np.concatenate([Bs.T, rng.normal(size=(d, 2))], 1))[0][:, k:].T
    B = Bs.copy()
    B[0], B[1] = Z[0], 0.5 * Z[1]
    assert np.linalg.svd(B @ Bs.T, compute_uv=False).min() < 1e-15
    got = float(frame_feature_distance(jnp.asarray(B), jnp.asarray(Bs), jnp.eye(d)))
    assert abs(got - reference(B, Bs)) < 1e-14
    g = jax.grad(frame_feature_distance)(jnp.asarray(B) + 1e-3, jnp.asarray(Bs), jnp.eye(d))
    assert bool(jnp.all(jnp.isfinite(g)))


def test_frame_gram_metric():
    # B = H G^T with a non-orthonormal frame: the same number as in R^d.
    rng = np.random.default_rng(5)
    k, d, p = 3, 18, 9
    G = rng.normal(size=(d, p))
    Hs = np.linalg.lstsq(G, orthonormal_rows(rng, k, d).T, rcond=None)[0].T
    Bs = Hs @ G.T
    Bs_on = np.linalg.qr(Bs.T)[0].T  # B* must have orthonormal rows: take them in span(G)
    Hs = np.linalg.lstsq(G, Bs_on.T, rcond=None)[0].T
    H = Hs + 0.3 * rng.normal(size=(k, p))
    got = float(frame_feature_distance(jnp.asarray(H), jnp.asarray(Hs), jnp.asarray(G.T @ G)))
    assert abs(got - reference(H @ G.T, Hs @ G.T)) < 1e-12


def test_derivative_matches_finite_differences_and_the_polar_route():
    rng = np.random.default_rng(6)
    k, d = 5, 25
    Bs = jnp.asarray(orthonormal_rows(rng, k, d))
    eye = jnp.eye(d)

    def polar_route(B):  # the previous implementation: polar factor, then lambda_max
        D = B - polar(B @ Bs.T) @ Bs
        return jnp.sqrt(eigvalsh(D @ D.T)[-1])

    f = lambda B: frame_feature_distance(B, Bs, eye)  # noqa: E731
    for B in (Bs + 0.3 * rng.normal(size=(k, d)), 0.1 * Bs + 0.2 * rng.normal(size=(k, d))):
        B = jnp.asarray(B)
        T = jnp.asarray(rng.normal(size=(k, d)))
        jvp = float(jax.jvp(f, (B,), (T,))[1])
        h = 1e-6
        fd = float((f(B + h * T) - f(B - h * T)) / (2 * h))
        assert abs(jvp - fd) < 1e-7 * (1 + abs(fd))  # central difference: O(h^2) + eps/h
        assert float(jnp.max(jnp.abs(jax.grad(f)(B) - jax.grad(polar_route)(B)))) < 1e-12
