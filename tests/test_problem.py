"""Problems, generators, the exact reduction and the metrics (docs/theory.md sections 1-2)."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import max_rel_err, rounding

import linfeat as lf
from linfeat._cov import to_dense
from linfeat._linalg import row_space_basis
from linfeat._metrics import reduced_metrics


def _arrays(seed=0, d=12, k=2, m=4, n=6):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(d, m)))[0]
    X = rng.normal(size=(n, m)) @ Q.T
    O = np.linalg.qr(rng.normal(size=(d, 2 * k)))[0]
    B_star, B0 = O[:, :k].T, (0.9 * O[:, :k] + math.sqrt(1 - 0.81) * O[:, k:]).T
    v_star = rng.normal(size=k)
    return dict(X=X, Y=X @ B_star.T @ v_star, B0=B0, B_star=B_star, v_star=v_star)


# ---------------------------------------------------------------- generators


@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.1, 1.0, math.sqrt(2)])
def test_make_problem_feature_error_is_exact(eps):
    p = lf.make_problem(jax.random.key(1), d=30, k=3, m=6, feature_error=eps)
    k = p.B0.shape[0]
    for B in (p.B0, p.B_star):
        assert np.abs(B @ B.T - np.eye(k)).max() < rounding(B.dtype)
    # Independent reference: 2 sin(theta_max / 2) from the principal angles (NumPy SVD).
    cos = np.clip(np.linalg.svd(np.asarray(p.B0 @ p.B_star.T), compute_uv=False), -1, 1)
    theta = np.arccos(cos.min())
    assert abs(2 * np.sin(theta / 2) - eps) < 1e-7  # arccos near 1 loses half the digits
    assert abs(float(lf.feature_distance(p.B0, p.B_star)) - eps) < 1e-12


def test_make_problem_structure():
    p = lf.make_problem(
        jax.random.key(2), d=40, k=2, m=5, n=9, v_star_norm=3.0, ood="mixture", ood_shift=0.25
    )
    assert p.X.shape == (9, 40) and np.linalg.matrix_rank(np.asarray(p.X)) == 5
    np.testing.assert_allclose(p.Y, p.X @ p.w_star, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(p.w_star), 3.0, rtol=1e-13)
    assert float(p.ood_cov.scale_S) == 0.75 and float(p.ood_cov.scale_perp) == 0.25
    c = lf.theory.problem_constants(p, jnp.zeros(2))
    c_S, c_perp = float(c.c_S), float(c.c_perp)
    assert 0 < c_S <= 1 and 0 < c_perp <= 1


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_one_call_site_draws_equal_separate_draws(dtype):
    # make_problem draws its Gaussians in one vmapped call (`_gaussians`, one compiled
    # random-number kernel instead of one per draw); under the default counter-based threefry
    # each slice is bit for bit the separate jax.random.normal draw, so problems are unchanged.
    from linfeat._generate import _gaussians

    keys = tuple(jax.random.split(jax.random.key(7), 3))
    shapes = ((13, 4), (2,), (3, 5))
    for key, shape, z in zip(keys, shapes, _gaussians(keys, shapes, dtype)):
        assert z.dtype == dtype
        np.testing.assert_array_equal(z, jax.random.normal(key, shape, dtype))


def test_make_problem_vmaps_over_key_and_knobs():
    keys = jax.random.split(jax.random.key(3), 4)
    eps = jnp.array([0.0, 0.01, 0.1, 1.0])
    ps = jax.vmap(lambda key, e: lf.make_problem(key, d=20, k=2, m=4, feature_error=e))(keys, eps)
    assert ps.B0.shape == (4, 2, 20)
    for i in range(4):
        one = lf.make_problem(keys[i], d=20, k=2, m=4, feature_error=eps[i])
        np.testing.assert_allclose(ps.B0[i], one.B0, atol=1e-14)
        dist = jax.vmap(lambda q: lf.feature_distance(q.B0, q.B_star))(ps)
        np.testing.assert_allclose(dist[i], eps[i], atol=1e-12)


def test_problems_from_arrays_stack_and_vmap():
    ps = [lf.problem_from_arrays(**_arrays(seed)) for seed in range(3)]
    stacked = lf.stack_problems(ps)
    reference = jax.tree.map(lambda *xs: jnp.stack(xs), *ps)
    assert jax.tree.structure(stacked) == jax.tree.structure(reference)
    for got, want in zip(jax.tree.leaves(stacked), jax.tree.leaves(reference)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    got = jax.vmap(lf.linear_probe)(stacked)
    for i, p in enumerate(ps):
        np.testing.assert_allclose(got[i], lf.linear_probe(p), rtol=1e-12)


def test_stack_problems_errors_name_the_item():
    p = lf.problem_from_arrays(**_arrays(0))
    with pytest.raises(ValueError, match="empty"):
        lf.stack_problems([])
    with pytest.raises(ValueError, match=r"problems\[1\]. is a dict"):
        lf.stack_problems([p, {}])
    other = _arrays(1)
    other.pop("B_star"), other.pop("v_star")
    other["w_star"] = _arrays(1)["B_star"].T @ _arrays(1)["v_star"]
    with pytest.raises(ValueError, match=r"problems\[1\]. differs"):
        lf.stack_problems([p, lf.problem_from_arrays(**other)])


# ---------------------------------------------------------------- exact reduction


@pytest.mark.parametrize("ood", ["isotropic", "perp", "mixture", "random_spd"])
def test_reduced_metrics_equal_dense_metrics(ood):
    # The frame's quadratic forms (docs/theory.md, section 2) against the metrics in R^d at
    # random points (v, B = B0 + C Q^T) of the reachable set.
    p = lf.make_problem(
        jax.random.key(4), d=25, k=2, m=4, n=7, feature_error=0.2, ood=ood, ood_rank=0
    )
    red = lf.reduce(p)
    Q = np.asarray(red.basis)
    assert np.abs(Q.T @ Q - np.diag(np.asarray(red.mask_S))).max() < 1e-13
    rng = np.random.default_rng(0)
    for _ in range(3):
        v, v0 = rng.normal(size=2), rng.normal(size=2)
        A = np.asarray(red.A0) + rng.normal(size=(2, red.r)) * np.asarray(red.mask_S)
        B = np.asarray(p.B0) + (A - np.asarray(red.A0)) @ Q.T
        got = reduced_metrics(red, v, A, v0)
        ref = lf.metrics(p, v, B, v0, p.B0)
        for name in (
            "train_loss",
            "id_error",
            "id_subspace_error",
            "ood_error",
            "feature_distance",
            "feature_change_S",
            "balancedness_drift",
            "grad_norm",
        ):
            assert max_rel_err(getattr(got, name), getattr(ref, name)) < 1e-11, name
    # X^T X is diagonal in the basis Q.
    XS = np.asarray(red.XQ)
    off = XS.T @ XS - np.diag(np.diag(XS.T @ XS))
    assert np.abs(off).max() < 1e-12 * np.abs(XS).max() ** 2


def test_reduced_errors_keep_relative_accuracy_at_small_eps():
    # LP at feature_error 1e-6: the OOD error is O(eps^2) ~ 1e-12; the frame's blocks are
    # O(eps), so the quadratic form keeps its relative accuracy (no cancellation of O(1)
    # terms). Reference: the dense error in R^d, e computed as a vector (exact to rounding).
    p = lf.make_problem(jax.random.key(1), d=30, k=3, m=6, feature_error=1e-6)
    red = lf.reduce(p)
    v = lf.linear_probe(p)
    got = reduced_metrics(red, v, red.A0, v).ood_error
    ref = lf.ood_error(p, v, p.B0)
    assert 0 < float(ref) < 1e-10
    assert max_rel_err(got, ref) < 1e-6


def test_row_space_basis_rank_deficient():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(8, 3)) @ rng.normal(size=(3, 30))  # n = 8 rows spanning m = 3 dims
    Q, s2, mask = row_space_basis(jnp.asarray(X))
    assert int(mask.sum()) == 3
    Qn = np.asarray(Q)[:, np.asarray(mask) > 0]
    np.testing.assert_allclose(Qn.T @ Qn, np.eye(3), atol=1e-13)
    np.testing.assert_allclose(X @ Qn @ Qn.T, X, atol=1e-12)  # spans rowspace(X)
    np.testing.assert_allclose(
        np.sort(np.asarray(s2))[-3:],
        np.sort(np.linalg.svd(X, compute_uv=False) ** 2)[-3:],
        rtol=1e-11,
    )


# ---------------------------------------------------------------- metrics


def test_ood_error_matches_monte_carlo_R3():
    """R3: L_ood = e^T Sigma e equals the Monte-Carlo mean of (v^T B x - w*^T x)^2."""
    p = lf.make_problem(jax.random.key(6), d=15, k=2, m=3, feature_error=0.3, ood="random_spd")
    v = jnp.array([0.7, -1.1])
    Sigma = np.asarray(p.ood_cov)
    x = np.random.default_rng(1).multivariate_normal(np.zeros(15), Sigma, size=400_000)
    e = np.asarray(p.B0.T @ v - p.w_star)
    samples = (x @ e) ** 2
    mc, se = samples.mean(), samples.std() / math.sqrt(len(samples))
    assert abs(float(lf.ood_error(p, v, p.B0)) - mc) < 5 * se  # 5 standard errors


def test_structured_cov_equals_dense():
    p = lf.make_problem(jax.random.key(7), d=18, k=2, m=4, ood="mixture", ood_shift=0.3, ood_rank=2)
    Q = np.asarray(row_space_basis(p.X)[0])
    dense = p._replace(ood_cov=to_dense(p.ood_cov, jnp.asarray(Q[:, :4])))
    v = jnp.array([0.3, 2.0])
    assert max_rel_err(lf.ood_error(p, v, p.B0), lf.ood_error(dense, v, p.B0)) < 1e-12


def test_procrustes_rotation_and_distance():
    rng = np.random.default_rng(8)
    p = lf.make_problem(jax.random.key(8), d=20, k=3, m=5, feature_error=0.4)
    U = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    dist, U_hat = lf.theory.procrustes(U @ p.B0, p.B_star)
    np.testing.assert_allclose(dist, 0.4, atol=1e-12)  # rotation-invariant
    np.testing.assert_allclose(U_hat, U, atol=1e-12)  # B0 B*^T = cos(theta) I, so U_hat = U


def test_head_alignment_error_definition():
    p = lf.make_problem(jax.random.key(9), d=20, k=2, m=4, v_star_norm=2.0)
    a = lf.init_head(p, "aligned")
    phi = lambda v0: float(lf.theory.problem_constants(p, v0).phi)  # noqa: E731
    np.testing.assert_allclose(a, lf.theory.problem_constants(p, a).a_star, atol=1e-14)
    assert phi(a) < 1e-6  # phi = 0 at v0 = a*
    assert phi(-a) < 1e-6  # blind to the sign (docs/theory.md, R5)
    np.testing.assert_allclose(phi(jnp.zeros(2)), 4.0, rtol=1e-12)  # ||v*||^2


# ---------------------------------------------------------------- bad input


def test_bad_shapes_and_values():
    a = _arrays()
    with pytest.raises(ValueError, match="`Y`.*shape"):
        lf.problem_from_arrays(**{**a, "Y": a["Y"][:-1]})
    with pytest.raises(ValueError, match="`X` must have 2 dimension"):
        lf.problem_from_arrays(**{**a, "X": a["X"][0]})
    X = a["X"].copy()
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="`X` contains 1 NaN or inf"):
        lf.problem_from_arrays(**{**a, "X": X})
    with pytest.raises(ValueError, match="rows of `B0` must be orthonormal.*orthonormalize_rows"):
        lf.problem_from_arrays(**{**a, "B0": 1.1 * a["B0"]})
    fixed = lf.orthonormalize_rows(1.1 * a["B0"])
    lf.problem_from_arrays(**{**a, "B0": fixed})
    with pytest.raises(ValueError, match="k <= m"):
        lf.problem_from_arrays(**{**a, "X": a["X"][:1], "Y": a["Y"][:1]})
    with pytest.raises(ValueError, match="both `B_star` and `v_star`"):
        lf.problem_from_arrays(**{**a, "v_star": None})
    with pytest.raises(ValueError, match="symmetric"):
        lf.problem_from_arrays(**a, ood_cov=np.triu(np.ones((12, 12))))
    with pytest.raises(ValueError, match="positive semidefinite"):
        lf.problem_from_arrays(**a, ood_cov=-np.eye(12))
    with pytest.raises(ValueError, match=r"\[0, sqrt\(2\)\]"):
        lf.make_problem(jax.random.key(0), d=10, k=1, m=2, feature_error=1.5)
    with pytest.raises(ValueError, match="k <= m"):
        lf.make_problem(jax.random.key(0), d=10, k=3, m=2)
    with pytest.raises(ValueError, match="m < d"):
        lf.make_problem(jax.random.key(0), d=10, k=1, m=10)


def test_theory_condition_warnings():
    with pytest.warns(lf.TheoryConditionWarning, match="m \\+ k"):
        lf.make_problem(jax.random.key(0), d=6, k=2, m=4)
    a = _arrays()
    # B0 inside S: the features do not see S-perp, c_perp = 0.
    Q = np.linalg.svd(a["X"])[2][:2]
    with pytest.warns(lf.TheoryConditionWarning, match="c_perp"):
        lf.problem_from_arrays(**{**a, "B0": Q})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lf.problem_from_arrays(**a)  # a healthy problem warns about nothing


@pytest.mark.slow  # runs the eigensolver's loops in Python (about 90 s)
def test_metrics_disable_jit_equals_jit():
    p = lf.make_problem(jax.random.key(10), d=16, k=2, m=3, feature_error=0.2, ood="perp")
    v = jnp.array([0.4, -0.9])

    def both(p, v):
        red = lf.reduce(p)
        return lf.metrics(p, v, p.B0, v, p.B0), reduced_metrics(red, v, red.A0, v)

    got = jax.jit(both)(p, v)
    with jax.disable_jit():
        ref = both(p, v)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
