"""linfeat._eigh: pure-JAX Jacobi eigh, its degenerate-safe derivative, and the small helpers.

Reference values come from numpy (LAPACK, outside any jitted program); the library code must
lower without a LAPACK custom call (batched LAPACK kernels deadlock in jitted vmaps on CPU).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfeat import _eigh as E
from linfeat import _linalg as L

EPS = float(np.finfo(np.float64).eps)
# Jacobi is backward stable: eigenvalues within a few hundred ulps of ||S||; vectors likewise.
TOL = 256 * EPS  # ~6e-14, the "near machine precision" bar (observed: ~1e-15)

LAPACK = re.compile(r"lapack|syev|gesdd|gesvd|getrf|potrf|geqrf|orgqr|trsm|heev", re.I)


def custom_call_targets(f, *args) -> list[str]:
    """Targets of the custom calls in the lowered (StableHLO) text of `jax.jit(f)(*args)`."""
    text = jax.jit(f).lower(*args).as_text()
    return re.findall(r"custom_call\s*@([\w.$-]+)|call_target_name\s*=\s*\"([^\"]+)\"", text)


def assert_lapack_free(f, *args):
    targets = [a or b for a, b in custom_call_targets(f, *args)]
    bad = [t for t in targets if LAPACK.search(t)]
    assert not bad, f"LAPACK custom calls in the lowered program: {bad}"


def sym(rng, c, scale=1.0):
    X = rng.standard_normal((c, c))
    return scale * (X + X.T) / 2


def with_spectrum(rng, lam):
    Q, _ = np.linalg.qr(rng.standard_normal((len(lam), len(lam))))
    return (Q * np.asarray(lam, float)) @ Q.T


def check_decomposition(S, lam, V, tol=TOL):
    S, lam, V = np.asarray(S), np.asarray(lam), np.asarray(V)
    c = S.shape[-1]
    nrm = max(np.linalg.norm(S, 2), np.finfo(S.dtype).tiny)
    lam0 = np.linalg.eigvalsh(S)
    assert np.all(np.diff(lam) >= 0), "eigenvalues must ascend"
    assert np.max(np.abs(lam - lam0), initial=0) <= tol * nrm
    assert np.max(np.abs(V.T @ V - np.eye(c)), initial=0) <= tol
    assert np.max(np.abs((V * lam) @ V.T - S), initial=0) <= tol * nrm


def matrices():
    rng = np.random.default_rng(0)
    out = {f"random {c}": sym(rng, c) for c in (1, 2, 3, 5, 8, 21, 45, 64)}
    out |= {
        "identity 7": np.eye(7),
        "zero 4": np.zeros((4, 4)),
        "diagonal 9": np.diag(rng.standard_normal(9)),
        "diagonal repeated 6": np.diag([2.0, -1, 2, 0, -1, 2]),
        "1x1 negative": np.array([[-3.5]]),
        "2x2 antidiagonal": np.array([[0.0, 1], [1, 0]]),
        "2x2 equal": np.array([[1.0, 1e-300], [1e-300, 1.0]]),
        "repeated 12": with_spectrum(rng, [3, 3, 3, 3, 0.5, -1, 0.2, -2, -2, -2, -2, 1]),
        "two clusters 21": with_spectrum(rng, [1.0] * 10 + [-1.0] * 10 + [0.0]),
        "zero block 10": np.pad(sym(rng, 5), ((0, 5), (0, 5))),
        "rank-deficient Gram 12": (lambda X: X @ X.T)(rng.standard_normal((12, 3))),
        "Gram of rank-deficient data 21": (lambda X: X.T @ X)(
            rng.standard_normal((30, 4)) @ rng.standard_normal((4, 21))
        ),
        "tiny 8": sym(rng, 8, 1e-200),
        "huge 8": sym(rng, 8, 1e200),
        "graded 10": (lambda D, A: D @ A @ D)(np.diag(10.0 ** np.arange(-5, 5)), sym(rng, 10)),
        "nearly degenerate 6": with_spectrum(rng, [1, 1 + 1e-12, 1 + 2e-12, 2, 2 + 1e-15, 3]),
    }
    return out


MATRICES = matrices()


@pytest.mark.parametrize("name", list(MATRICES))
def test_eigh_matches_numpy(name):
    S = MATRICES[name]
    lam, V = jax.jit(E.eigh)(S)
    assert lam.dtype == V.dtype == jnp.float64
    check_decomposition(S, lam, V)
    np.testing.assert_array_equal(jax.jit(E.eigvalsh)(S), lam)


def test_symmetrises_and_accepts_ints():
    rng = np.random.default_rng(1)
    S = sym(rng, 6)
    skew = rng.standard_normal((6, 6))
    lam, V = E.eigh(S + skew - skew.T)  # only the symmetric part counts, like jnp.linalg.eigh
    check_decomposition(S, lam, V)
    lam_i, _ = E.eigh(np.array([[2, 1], [1, 2]]))
    np.testing.assert_allclose(lam_i, [1.0, 3.0], rtol=TOL)


def test_non_finite_input_returns_nan():
    lam, V = jax.jit(E.eigh)(jnp.full((5, 5), jnp.nan))
    assert np.all(np.isnan(lam))


def cluster_projectors(lam, V, gap=1e-8):
    """Spectral projectors of the groups of eigenvalues closer than `gap` (basis-free)."""
    lam, V = np.asarray(lam), np.asarray(V)
    cuts = np.flatnonzero(np.diff(lam) > gap * max(np.max(np.abs(lam)), 1e-300)) + 1
    return [V[:, g] @ V[:, g].T for g in np.split(np.arange(len(lam)), cuts)]


def test_vmap_and_stack_equal_a_python_loop():
    names = ("random 21", "two clusters 21", "Gram of rank-deficient data 21")
    Ss = np.stack([MATRICES[k] for k in names])
    Ss = np.concatenate([Ss, Ss[::-1] * 3.0])
    loop = [jax.jit(E.eigh)(S) for S in Ss]
    for lam, V in (jax.jit(jax.vmap(E.eigh))(Ss), jax.jit(E.eigh)(Ss)):
        for i, (l0, V0) in enumerate(loop):
            # A converged matrix is frozen, so its result does not depend on the rest of the
            # batch; what remains is rounding (vectorised vs scalar code), which moves
            # eigenvectors by ~eps/gap, and bases of degenerate eigenspaces arbitrarily.
            np.testing.assert_allclose(lam[i], l0, rtol=0, atol=16 * EPS * np.max(np.abs(l0)))
            for P, P0 in zip(cluster_projectors(lam[i], V[i]), cluster_projectors(l0, V0)):
                np.testing.assert_allclose(P, P0, rtol=0, atol=1e-12)
    nested = jax.jit(jax.vmap(jax.vmap(E.eigvalsh)))(Ss.reshape(2, 3, 21, 21))
    np.testing.assert_allclose(nested.reshape(6, 21), np.stack([l for l, _ in loop]), atol=1e-13)


def test_float32_stays_float32():
    rng = np.random.default_rng(2)
    S = sym(rng, 21).astype(np.float32)
    lam, V = jax.jit(E.eigh)(S)
    assert lam.dtype == V.dtype == jnp.float32
    check_decomposition(S.astype(np.float64), lam, V, tol=256 * float(np.finfo(np.float32).eps))
    assert jax.jit(E.svdvals)(S[:, :5]).dtype == jnp.float32
    assert jax.jit(E.polar)(S[:5, :5]).dtype == jnp.float32
    assert jax.jit(E.lstsq)(S[:, :5], S[:, 0]).dtype == jnp.float32


# ---------------------------------------------------------------------------------------
# No LAPACK in the lowered programs
# ---------------------------------------------------------------------------------------


def test_lapack_detector_sees_jnp_linalg():
    S = jnp.eye(4)
    assert any(LAPACK.search(a or b) for a, b in custom_call_targets(jnp.linalg.eigh, S))


def test_no_lapack_custom_calls():
    rng = np.random.default_rng(3)
    S, M = jnp.asarray(sym(rng, 6)), jnp.asarray(rng.standard_normal((6, 6)))
    X = jnp.asarray(rng.standard_normal((8, 4)) @ rng.standard_normal((4, 12)))
    b = jnp.asarray(rng.standard_normal(8))
    for f, args in [
        (E.eigh, (S,)),
        (E.eigvalsh, (S,)),
        (jax.vmap(E.eigh), (jnp.stack([S, S]),)),
        (jax.grad(lambda S: jnp.sum(E.eigh(S)[1][:, -1] ** 4)), (S,)),
        (E.svdvals, (M,)),
        (E.polar, (M,)),
        (E.lstsq, (X.T, X.T @ jnp.ones(8))),
        (E.lstsq, (X, b)),
        (L.row_space_basis, (X,)),
        (L.orthonormalize, (X.T,)),
        (L.polar, (X.T[:, :4],)),
        (L.singular_values, (X,)),
        (jax.grad(lambda X: jnp.sum(L.row_space_basis(X)[0] ** 2)), (X,)),
    ]:
        assert_lapack_free(f, *args)


# ---------------------------------------------------------------------------------------
# Derivatives
# ---------------------------------------------------------------------------------------


def central_fd(f, x, t, h):
    return (f(x + h * t) - f(x - h * t)) / (2 * h)


def assert_grad_matches_fd(f, x, t, h=1e-6, rtol=1e-7):
    g = jax.jit(jax.grad(f))(x)
    assert np.all(np.isfinite(g))
    d, d0 = float(jnp.sum(g * t)), float(central_fd(jax.jit(f), x, t, h))
    assert abs(d - d0) <= rtol * max(abs(d0), 1e-3 * np.linalg.norm(g) * np.linalg.norm(t)), (d, d0)
    return g


def test_grad_distinct_eigenvalues_matches_fd_and_lapack():
    rng = np.random.default_rng(4)
    S = jnp.asarray(sym(rng, 9))
    a = jnp.asarray(rng.standard_normal(9))
    B = jnp.asarray(rng.standard_normal((9, 9)))
    T = jnp.asarray(sym(rng, 9))

    def weighted(eigh):
        def f(S):
            lam, V = eigh(S)
            return jnp.sum(jnp.sin(lam) * (V.T @ a) ** 2) + jnp.trace(
                V @ jnp.diag(lam**3) @ V.T @ B
            )

        return f

    g = assert_grad_matches_fd(weighted(E.eigh), S, T)
    np.testing.assert_allclose(g, jax.grad(weighted(jnp.linalg.eigh))(S), rtol=1e-10, atol=1e-12)
    # forward mode, and second order, agree with LAPACK's derivative too
    f, f0 = weighted(E.eigh), weighted(jnp.linalg.eigh)
    np.testing.assert_allclose(jax.jvp(f, (S,), (T,))[1], jax.jvp(f0, (S,), (T,))[1], rtol=1e-10)
    h, h0 = jax.jit(jax.hessian(f))(S), jax.hessian(f0)(S)
    np.testing.assert_allclose(h, h0, rtol=1e-8, atol=1e-10)
    # vmap of grad equals a loop
    Ss = jnp.stack([S, 2 * S, S + 1])
    grad = jax.jit(jax.grad(f))
    np.testing.assert_allclose(
        jax.jit(jax.vmap(jax.grad(f)))(Ss), np.stack([grad(x) for x in Ss]), atol=1e-12
    )


@pytest.mark.parametrize("case", ["top cluster", "both clusters", "identity block"])
def test_grad_at_degenerate_eigenvalues_is_finite_and_matches_fd(case):
    rng = np.random.default_rng(5)
    lam = {
        "top cluster": [3, 3, 3, 3, 1, 0.5, -0.2, -1, -2, 0.1],
        "both clusters": [3, 3, 3, 3, 1, 0.5, -2, -2, -2, -2],
        "identity block": [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    }[case]
    S = jnp.asarray(with_spectrum(rng, lam))
    B = jnp.asarray(rng.standard_normal((10, 10)))
    a = jnp.asarray(rng.standard_normal(10))
    r = 4 if case != "identity block" else 6

    def f(S):  # invariant under rotations inside each degenerate eigenspace
        lam, V = E.eigh(S)
        P = V[:, -r:] @ V[:, -r:].T  # projector onto the top-r eigenspace (gap below it)
        return jnp.sum(P * B) + a @ P @ a + jnp.sum(jnp.cos(lam))

    for _ in range(3):
        assert_grad_matches_fd(f, S, jnp.asarray(sym(rng, 10)))


def test_grad_cluster_split_by_input_rounding():
    """A Gram matrix X^T X with a repeated singular value of X, n >> c: the computed cluster is
    split by several eps * lam_max (the rounding of X^T X), more than c * eps * lam_max for
    small c. A c*eps-relative degeneracy tolerance gave gradient errors up to 1e-3 here; the
    sqrt(eps)-relative `degenerate_tol` keeps them at finite-difference level."""
    rng = np.random.default_rng(6)
    n, c = 4000, 4

    def f(X, B):
        lam, V = E.eigh(X.T @ X)
        return jnp.sum((V[:, 1:] @ V[:, 1:].T) * B) + jnp.sum(lam**2)

    f_jit, g_jit = jax.jit(f), jax.jit(jax.grad(f))
    errs = []
    for _ in range(6):
        U, _ = np.linalg.qr(rng.standard_normal((n, c)))
        W, _ = np.linalg.qr(rng.standard_normal((c, c)))
        X = jnp.asarray((U * np.array([3.0, 3, 3, 1])) @ W.T)
        B = jnp.asarray(rng.standard_normal((c, c)))
        T = jnp.asarray(rng.standard_normal((n, c)))
        d = float(jnp.sum(g_jit(X, B) * T))
        d0 = float(central_fd(lambda X: f_jit(X, B), X, T, 1e-6))
        errs.append(abs(d - d0) / abs(d0))
    assert max(errs) < 1e-7, errs


def test_grad_row_space_projector_of_rank_deficient_data():
    """Q from `row_space_basis` of X (8 rows spanning 4 dims of R^12): the projector QQ^T onto
    rowspace(X) is smooth on the rank-4 matrices, and its gradient is finite and equals both
    central differences along rank-preserving directions and the closed form
    2 X^{+T} C_sym (I - P)."""
    rng = np.random.default_rng(7)
    n, m, d = 8, 4, 12
    A0, B0 = rng.standard_normal((n, m)), rng.standard_normal((m, d))
    X = jnp.asarray(A0 @ B0)
    C = jnp.asarray(rng.standard_normal((d, d)))

    def f(X):
        Q, s2, mask = L.row_space_basis(X)
        return jnp.sum((Q @ Q.T) * C)

    for _ in range(3):  # tangent directions of the rank-4 manifold: dA B0 + A0 dB
        T = rng.standard_normal((n, m)) @ B0 + A0 @ rng.standard_normal((m, d))
        g = assert_grad_matches_fd(f, X, jnp.asarray(T))
    Xp = np.linalg.pinv(np.asarray(X))
    P = Xp @ np.asarray(X)
    Cs = (np.asarray(C) + np.asarray(C).T) / 2
    np.testing.assert_allclose(g, 2 * Xp.T @ Cs @ (np.eye(d) - P), rtol=1e-8, atol=1e-10)


def test_grad_of_helpers_is_finite_at_singular_inputs():
    rng = np.random.default_rng(8)
    M = with_spectrum(rng, [2.0, 1.0, 0.0, 0.0])  # singular, with a repeated zero
    Z = jnp.zeros((4, 4))
    W = jnp.asarray(rng.standard_normal((4, 4)))
    for fn in (
        lambda M: jnp.sum(E.polar(M) * W),
        lambda M: jnp.sum(E.svdvals(M) * jnp.arange(4.0)),
        lambda M: jnp.sum(E.lstsq(M, W[:, 0]) ** 2),
        lambda M: jnp.sum(E.eigh(M)[1] ** 3) + jnp.sum(E.eigvalsh(M)),
    ):
        grad = jax.jit(jax.grad(fn))
        for x in (jnp.asarray(M), Z, jnp.eye(4)):
            assert np.all(np.isfinite(grad(x)))


def test_polar_derivative_at_orthogonal_input():
    """At an orthogonal M all singular values are 1 (fully degenerate): the Newton-Schulz step
    makes the derivative exact, U'(M)[T] = U skew(U^T T)."""
    rng = np.random.default_rng(9)
    U0, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    T = rng.standard_normal((5, 5))
    _, dU = jax.jvp(E.polar, (jnp.asarray(U0),), (jnp.asarray(T),))
    K = U0.T @ T
    np.testing.assert_allclose(dU, U0 @ (K - K.T) / 2, atol=1e-12)
    _, dP = jax.jvp(L.polar, (jnp.asarray(U0[:, :3]),), (jnp.asarray(T[:, :3]),))
    Y = U0[:, :3]
    Kc = Y.T @ T[:, :3]  # Stiefel: dP = T - Y sym(Y^T T)
    np.testing.assert_allclose(dP, T[:, :3] - Y @ (Kc + Kc.T) / 2, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def spectrum_matrix(rng, m, k, s):
    U, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    W, _ = np.linalg.qr(rng.standard_normal((k, len(s))))
    return (U * np.asarray(s, float)) @ W.T


def helper_cases():
    rng = np.random.default_rng(10)
    return {
        "tall": rng.standard_normal((30, 7)),
        "wide": rng.standard_normal((5, 9)),
        "square": rng.standard_normal((6, 6)),
        "rank-deficient": spectrum_matrix(rng, 20, 8, [3, 2, 1, 0.5, 0.1]),
        "graded": spectrum_matrix(rng, 40, 6, [1, 1e-3, 1e-6, 1e-9, 1e-12, 0]),
        "zero": np.zeros((6, 4)),
        "column": rng.standard_normal((7, 1)),
    }


HELPER_CASES = helper_cases()


@pytest.mark.parametrize("name", list(HELPER_CASES))
def test_svdvals(name):
    M = HELPER_CASES[name]
    s, s0 = jax.jit(E.svdvals)(M), np.linalg.svd(M, compute_uv=False)
    assert s.shape == s0.shape and np.all(np.diff(s) <= 0)
    # absolute accuracy ~eps * s_max, like an SVD (two Gram passes), also for tiny values
    np.testing.assert_allclose(s, s0, rtol=0, atol=TOL * max(s0[0], 1e-300))


@pytest.mark.parametrize("name", list(HELPER_CASES))
def test_lstsq_matches_jnp(name):
    M = HELPER_CASES[name]
    rng = np.random.default_rng(11)
    b = rng.standard_normal(M.shape[0])
    Bm = rng.standard_normal((M.shape[0], 3))
    s = np.linalg.svd(M, compute_uv=False)
    keep = s > max(M.shape) * EPS * s[0] if s[0] > 0 else s > 0
    kappa = s[0] / s[keep][-1] if keep.any() else 1.0
    for rhs in (b, Bm):
        x, x0 = jax.jit(E.lstsq)(M, rhs), jnp.linalg.lstsq(M, rhs)[0]
        assert x.shape == x0.shape
        # both are the minimum-norm solution to rounding amplified by the kept condition number
        np.testing.assert_allclose(x, x0, rtol=0, atol=TOL * kappa * max(np.max(np.abs(x0)), 1))


def test_polar():
    rng = np.random.default_rng(12)
    for M in (
        rng.standard_normal((6, 6)),
        spectrum_matrix(rng, 5, 5, [3, 2, 2, 1, 0.5]),
        np.eye(4),
    ):
        P, _, Qt = np.linalg.svd(M)
        np.testing.assert_allclose(jax.jit(E.polar)(M), P @ Qt, atol=TOL * 10)
    # singular: orthogonal, and equal to P Q^T on the range of M^T (the rest is a completion)
    for M in (spectrum_matrix(rng, 6, 6, [2, 1, 0.5, 0.1]), np.zeros((3, 3))):
        U = np.asarray(jax.jit(E.polar)(M))
        np.testing.assert_allclose(U.T @ U, np.eye(len(M)), atol=TOL)
        P, s, Qt = np.linalg.svd(M)
        r = int(np.sum(s > len(M) * EPS * s[0])) if s[0] > 0 else 0
        np.testing.assert_allclose(U @ Qt[:r].T, P[:, :r], atol=TOL * 10)


def test_linalg_keeps_semantics():
    rng = np.random.default_rng(13)
    X = jnp.asarray(rng.standard_normal((8, 4)) @ rng.standard_normal((4, 12)))
    Q, s2, mask = jax.jit(L.row_space_basis)(X)
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(Q[:, 4:], 0.0)  # numerical rank zero: exact zero columns
    np.testing.assert_allclose(Q.T @ Q, np.diag(mask), atol=TOL)
    s = np.linalg.svd(np.asarray(X), compute_uv=False)
    np.testing.assert_allclose(np.sqrt(s2[:4]), s[:4], rtol=1e-12)
    s3 = np.linalg.svd(np.asarray(X[:3]), compute_uv=False)
    np.testing.assert_allclose(jax.jit(L.singular_values)(X[:3]), s3, rtol=1e-12)
    W = jax.jit(L.orthonormalize)(X.T)  # 12 x 8 of rank 4: 4 orthonormal + 4 zero columns
    norms = np.sort(np.linalg.norm(W, axis=0))
    np.testing.assert_allclose(norms, [0, 0, 0, 0, 1, 1, 1, 1], atol=TOL)
    Y = jnp.asarray(rng.standard_normal((12, 5)))
    Pp = jax.jit(L.polar)(Y)
    U, _, Vt = np.linalg.svd(np.asarray(Y), full_matrices=False)
    np.testing.assert_allclose(Pp, U @ Vt, atol=TOL)
