"""Regression tests for the fixes in `linfeat.theory` (each failed on the code before them).

1. `problem_constants` takes the eigenvalue range of a structured Sigma from m = rank(X), not
   from n (with n >= d and Sigma = Pi_S it reported lambda_min = 1; true value 0).
2. One Procrustes implementation: `procrustes` is `feature_alignment`, returns (dist, U); no
   direct LAPACK call is left in `_theory.py`.
3. One R12(b) decision rule: `r12_ft_wins` and the oracle `r12_toy` agree, including the
   saddle v0 = 0, a = 0 and the boundary a^2 + v0^2 = 1.
4. phi in the factorised form |z - ||a*||^2| |z + ||a*||^2|.
5. Input validation of the public scalar functions (concrete inputs only).

References are exact rational arithmetic (`fractions`) or NumPy, independent of linfeat.
"""

import math
import os
import re
import warnings
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linfeat as lf
from linfeat import _closed_form_oracles as O
from linfeat import theory

# ---------------------------------------------------------------------------------------
# 1. lambda_min of a structured Sigma needs m = rank(X), not n
# ---------------------------------------------------------------------------------------


def _orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _problem(rng, *, d, k, n, rank, cov):
    """Problem with X = G Q^T of the given rank, B* and B0 = B* rotated slightly (NumPy)."""
    H = _orthogonal(rng, d)
    Q = H[:, :rank]
    X = rng.standard_normal((n, rank)) @ Q.T
    O_ = _orthogonal(rng, d)
    B_star = O_[:k]
    v_star = np.linspace(1.0, 0.5, k)
    with warnings.catch_warnings():  # m + k >= d on purpose in some cases
        warnings.simplefilter("ignore", lf.TheoryConditionWarning)
        return lf.problem_from_arrays(
            X=X,
            Y=X @ (B_star.T @ v_star),
            B0=B_star,
            B_star=B_star,
            v_star=v_star,
            ood_cov=cov,
            check_theory=False,
        )


# slow: a compile-bound regression case (8-22 s); linfeat check's rows and
# tests/test_theory_bounds.py cover the same wrappers
@pytest.mark.slow
def test_issue_case_sigma_inside_S_has_lambda_min_zero():
    """d = 10, m = 4, n = 12, Sigma = Pi_S ("inside"): lambda_min = 0, not 1."""
    p = lf.make_problem(jax.random.PRNGKey(0), d=10, k=2, m=4, n=12, ood="inside")
    v0 = jnp.zeros(2)
    for c in (theory.problem_constants(p, v0), jax.jit(theory.problem_constants)(p, v0)):
        assert float(c.lam_min) == 0.0
        assert float(c.lam_max) == 1.0
    assert int(theory.numerical_rank(p.X)) == 4
    bounds = theory.r5_bounds(p, v0)
    assert float(bounds.rigorous_error) > 0  # the head part is informative ...
    assert float(bounds.rigorous) == 0.0  # ... but Sigma sees S only: no bound on sqrt(L_ood)


# slow: a compile-bound regression case (8-22 s); linfeat check's rows and
# tests/test_theory_bounds.py cover the same wrappers
@pytest.mark.slow
def test_issue_case_rigorous_bound_not_violated_by_fine_tuning():
    """The same problem, actual FT run: sqrt(L_ood(t)) >= rigorous bound at every saved t.

    With lambda_min = 1 (old code) the bound was ~0.022 while FT fits S, so L_ood -> 0.
    """
    p = lf.make_problem(jax.random.PRNGKey(0), d=10, k=2, m=4, n=12, ood="inside")
    v0 = jnp.array([0.1, -0.05])
    rig = float(theory.r5_bounds(p, v0).rigorous)
    tr = lf.fine_tune(p, v0)
    ood = np.asarray(tr.metrics.ood_error)
    assert np.min(ood) < 1e-12  # FT fits the training data, hence Pi_S e -> 0
    assert np.all(np.sqrt(np.clip(ood, 0.0, None)) >= rig - 1e-12)


@pytest.mark.parametrize(
    "n, d, rank, want",
    [
        (12, 10, 4, "min"),  # n >= d, rank < d: S-perp is not empty
        # the other cases compile their own shapes (4-11 s each): -m slow
        pytest.param(12, 10, 10, "S", marks=pytest.mark.slow),  # full rank: S = R^d
        pytest.param(6, 10, 4, "min", marks=pytest.mark.slow),  # n < d (unchanged)
        pytest.param(10, 10, 9, "min", marks=pytest.mark.slow),  # square, rank-deficient
    ],
)
def test_lambda_min_follows_rank(n, d, rank, want):
    rng = np.random.default_rng(n + 100 * rank)
    cov = lf.subspace_cov(d, scale_S=2.0, scale_perp=0.5)
    p = _problem(rng, d=d, k=2, n=n, rank=rank, cov=cov)
    expected = {"min": 0.5, "S": 2.0}[want]
    c = theory.problem_constants(p, jnp.zeros(2))
    assert float(c.lam_min) == expected
    assert float(c.lam_max) == 2.0
    assert float(jax.jit(theory.problem_constants)(p, jnp.zeros(2)).lam_min) == expected


# slow: a compile-bound regression case (8-22 s); linfeat check's rows and
# tests/test_theory_bounds.py cover the same wrappers
@pytest.mark.slow
def test_lambda_min_rank_under_vmap():
    """Same shapes, different ranks in one batch: the rank is traced, the choice per problem."""
    rng = np.random.default_rng(5)
    cov = lf.subspace_cov(10, scale_S=1.0, scale_perp=0.0)  # Sigma = Pi_S
    ps = [_problem(rng, d=10, k=2, n=12, rank=r, cov=cov) for r in (4, 10, 7)]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *ps)
    c = jax.vmap(theory.problem_constants, in_axes=(0, None))(batch, jnp.zeros(2))
    np.testing.assert_array_equal(np.asarray(c.lam_min), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(jax.vmap(theory.numerical_rank)(batch.X)), [4, 10, 7])


# slow: a compile-bound regression case (8-22 s); linfeat check's rows and
# tests/test_theory_bounds.py cover the same wrappers
@pytest.mark.slow
def test_numerical_rank_against_numpy():
    rng = np.random.default_rng(7)
    for n, d, r in [(3, 8, 3), (8, 3, 3), (12, 10, 4), (10, 10, 10), (5, 9, 2), (9, 9, 1)]:
        X = rng.standard_normal((n, r)) @ rng.standard_normal((r, d))
        assert int(theory.numerical_rank(X)) == np.linalg.matrix_rank(X) == r
    assert int(theory.numerical_rank(np.zeros((3, 4)))) == 0


# slow: a compile-bound regression case (8-22 s); linfeat check's rows and
# tests/test_theory_bounds.py cover the same wrappers
@pytest.mark.slow
def test_dense_sigma_lambda_min_clipped_at_zero():
    """A dense PSD Sigma = Pi_perp: eigvalsh gives ~ -1e-16, the constants report 0 and the
    rigorous bound is 0, not NaN (sqrt of a negative)."""
    rng = np.random.default_rng(3)
    d = 10
    Q = _orthogonal(rng, d)[:, :4]
    P = np.eye(d) - Q @ Q.T
    p = _problem(rng, d=d, k=2, n=12, rank=4, cov=0.5 * (P + P.T))
    c = theory.problem_constants(p, jnp.zeros(2))
    assert float(c.lam_min) >= 0.0
    assert np.isfinite(float(theory.r5_bounds(p, jnp.zeros(2)).rigorous))


# slow: a compile-bound regression case (8-22 s); linfeat check's rows and
# tests/test_theory_bounds.py cover the same wrappers
@pytest.mark.slow
def test_problem_level_wrappers_accept_generated_problems():
    """Eager calls validate the computed constants: rounding at eps = sqrt(2), c <= 1 and float32
    must not trip the range checks."""
    # eps = sqrt(2) in both dtypes; a SubspaceCov kind with lambda_min = 0 and the dense kind
    # (each case is a compile; the other pairings are covered by the same code paths)
    for dtype, fe, ood in [
        (jnp.float64, math.sqrt(2.0), "inside"),
        (jnp.float32, math.sqrt(2.0), "random_spd"),
    ]:
        p = lf.make_problem(
            jax.random.PRNGKey(1), d=9, k=2, m=4, feature_error=fe, ood=ood, dtype=dtype
        )
        v0 = jnp.ones(2, p.X.dtype)
        c = theory.problem_constants(p, v0)
        assert float(c.lam_min) >= 0.0
        theory.r5_bounds(p, v0)
        theory.r7_bounds(p)
        theory.r8_threshold(p, v0)


# ---------------------------------------------------------------------------------------
# 2. One Procrustes implementation, no direct LAPACK call
# ---------------------------------------------------------------------------------------


def test_procrustes_distance_is_feature_distance():
    rng = np.random.default_rng(11)
    B0 = _orthogonal(rng, 7)[:3]
    Bs = _orthogonal(rng, 7)[:3]
    dist, U = theory.procrustes(B0, Bs)
    dist2 = lf.feature_distance(jnp.asarray(B0), jnp.asarray(Bs))
    assert np.shape(dist) == () and np.shape(U) == (3, 3)
    assert float(dist) == float(dist2)
    np.testing.assert_allclose(np.asarray(U) @ np.asarray(U).T, np.eye(3), atol=1e-13)
    np.testing.assert_allclose(float(dist), np.linalg.norm(B0 - np.asarray(U) @ Bs, 2), rtol=1e-12)


@pytest.mark.parametrize("module", ["_geometry", "_bounds", "_constants", "_theory_args"])
def test_no_direct_lapack_call_in_theory_modules(module):
    """A batched LAPACK call deadlocks on the CPU target: the theory goes through `_linalg`."""
    with open(os.path.join(os.path.dirname(lf.__file__), module + ".py")) as f:
        source = f.read()
    pattern = r"(?:jnp|np|jax\.numpy|scipy)\.linalg\.(?:svd|eigh|eigvalsh|lstsq|qr)\b"
    assert not re.findall(pattern, source)


# ---------------------------------------------------------------------------------------
# 3. R12(b): one decision rule, the saddle v0 = 0, a = 0 and the boundary
# ---------------------------------------------------------------------------------------


def _exact_wins(a: float, v0: float) -> bool:
    """docs/theory.md R12(b) on the exact values of the float inputs."""
    A, V = Fraction(a), Fraction(v0)
    return a != 0 and v0 != 0 and A * A + V * V > 1


def test_r12_saddle_v0_zero_is_a_tie():
    for a in (2.0, 0.5, 1.0, -1.5):
        lp, ft = theory.r12_toy_errors(a, 0.0)
        assert float(lp) == float(ft) == a * a  # FT stays at the saddle: w_ft = 0
        assert not bool(theory.r12_ft_wins(a, 0.0))
        out = O.r12_toy(a, 0.0)
        assert not bool(out.ft_wins)
        assert float(out.ft_error) == pytest.approx(float(ft), abs=1e-14)


def test_r12_a_zero_is_a_tie():
    for v0 in (0.3, 1.0, 1.5, -2.0):
        lp, ft = theory.r12_toy_errors(0.0, v0)
        assert float(lp) == float(ft) == v0 * v0
        assert not bool(theory.r12_ft_wins(0.0, v0))
        assert not bool(O.r12_toy(0.0, v0).ft_wins)


@pytest.mark.parametrize(
    "a, v0",
    [
        (1.0, 1e-10),  # just outside: FT wins by v0^2/2 ~ 5e-21, below the errors' rounding
        (1.0, -1e-10),
        (np.nextafter(1.0, 0.0), 1e-9),  # just inside: a^2 + v0^2 - 1 ~ -2.2e-16 + 1e-18
        (-np.nextafter(1.0, 2.0), 1e-200),  # just outside through a
        (0.6, 0.8 + 1e-15),  # off the circle by ~1.6e-15
        (0.6, 0.8 - 1e-15),
        (1.0, 0.0),  # on the circle, but v0 = 0: the saddle, a tie
        (0.0, -1.0),  # on the circle, a = 0: a tie
    ],
)
def test_r12_boundary_matches_exact_arithmetic(a, v0):
    want = _exact_wins(a, v0)
    assert bool(theory.r12_ft_wins(a, v0)) == want
    assert bool(jax.jit(theory.r12_ft_wins)(a, v0)) == want
    assert bool(O.r12_toy(a, v0).ft_wins) == want


@pytest.mark.parametrize("a, v0", [(0.6, 0.8), (0.8, -0.6), (math.sqrt(0.5), math.sqrt(0.5))])
def test_r12_on_the_circle_up_to_rounding_the_two_modules_agree(a, v0):
    """a^2 + v0^2 - 1 is below an ulp here (binary floats cannot sit on the circle off the
    axes): either answer is a tie of the limits, but theory, jit and oracle give the same one."""
    got = bool(theory.r12_ft_wins(a, v0))
    assert bool(jax.jit(theory.r12_ft_wins)(a, v0)) == got
    assert bool(O.r12_toy(a, v0).ft_wins) == got
    lp, ft = theory.r12_toy_errors(a, v0)
    assert abs(float(lp) - float(ft)) < 1e-15


def test_r12_theory_and_oracle_agree_on_a_grid_with_axes_and_circle():
    a = np.concatenate([np.linspace(-2.0, 2.0, 41), [0.0, 1.0, -1.0, 0.6, 0.8]])
    v0 = np.concatenate([np.linspace(-2.0, 2.0, 41), [0.0, 1.0, -1.0, 0.6, 0.8]])
    A, V0 = np.meshgrid(a, v0, indexing="ij")
    th = np.asarray(theory.r12_ft_wins(A, V0))
    orc = O.r12_toy(A, V0)
    np.testing.assert_array_equal(th, np.asarray(orc.ft_wins))
    want = np.vectorize(_exact_wins)(A, V0)
    # (+-0.6, +-0.8) etc. are on the circle up to rounding; on the axes the ties are exact.
    clear = (np.abs(A**2 + V0**2 - 1) > 1e-12) | (A == 0) | (V0 == 0)
    assert (~clear).sum() >= 8
    np.testing.assert_array_equal(th[clear], want[clear])
    lp, ft = theory.r12_toy_errors(A, V0)
    np.testing.assert_allclose(np.asarray(ft), np.asarray(orc.ft_error), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(orc.lp_error), rtol=1e-15)


def test_r12_random_points_near_the_circle():
    rng = np.random.default_rng(12)
    theta = rng.uniform(0.0, 2 * np.pi, 2000)
    r = 1.0 + rng.choice([-1.0, 1.0], 2000) * 10.0 ** rng.uniform(-15, -6, 2000)
    A, V0 = r * np.cos(theta), r * np.sin(theta)
    want = np.vectorize(_exact_wins)(A, V0)
    exact_gap = np.vectorize(lambda x, y: float(Fraction(x) ** 2 + Fraction(y) ** 2 - 1))
    margin = np.abs(exact_gap(A, V0))
    clear = margin > 1e-13  # cancellation-free evaluation: decided correctly off rounding level
    got = np.asarray(theory.r12_ft_wins(A, V0))
    np.testing.assert_array_equal(got[clear], want[clear])
    assert clear.sum() > 1500
    # Rounding-level points included: the same bits under jit and in the (jitted) oracle.
    np.testing.assert_array_equal(got, np.asarray(jax.jit(theory.r12_ft_wins)(A, V0)))
    np.testing.assert_array_equal(got, np.asarray(O.r12_toy(A, V0).ft_wins))


# ---------------------------------------------------------------------------------------
# 4. phi, factorised
# ---------------------------------------------------------------------------------------


def _phi2_exact(v0, a_star) -> Fraction:
    z = sum(Fraction(float(x)) * Fraction(float(y)) for x, y in zip(v0, a_star, strict=True))
    a2 = sum(Fraction(float(y)) ** 2 for y in a_star)
    return abs(z * z - a2 * a2)


def test_phi_factorised_near_aligned_head():
    """v0 = a*(1 + 1e-9): phi^2 ~ 2e-9 ||a*||^4 to ~1e-6 relative; with exact dot products
    (a* = 1) the factorised form is exact to rounding while the naive one loses ~8 digits."""
    h = 1e-9
    rng = np.random.default_rng(4)
    for a_star in [rng.standard_normal(3), np.array([1.0, -2.0, 0.5]), rng.standard_normal(7)]:
        v0 = (1 + h) * a_star
        got = float(theory.head_alignment_error(v0, a_star)) ** 2
        a4 = float(np.dot(a_star, a_star)) ** 2
        np.testing.assert_allclose(got, 2e-9 * a4, rtol=1e-6)
        np.testing.assert_allclose(got, float(_phi2_exact(v0, a_star)), rtol=1e-6)
    a_star, v0 = np.array([1.0]), np.array([1.0 + h])
    exact = float(_phi2_exact(v0, a_star))
    got = float(theory.head_alignment_error(v0, a_star)) ** 2
    naive = float(np.dot(v0, a_star) ** 2 - np.dot(a_star, a_star) ** 2)
    assert abs(got - exact) / exact < 1e-14
    assert abs(naive - exact) / exact > 1e-12  # the subtraction of squares loses digits


def _aligned_k1_problem():
    """k = 1, B0 = B* = e3, v* = 1: a* = 1 exactly, so phi is exact at any head."""
    X = np.eye(4)[:2]
    b = np.eye(4)[2:3]
    return lf.problem_from_arrays(
        X=X, Y=X @ b[0], B0=b, B_star=b, v_star=np.array([1.0]), check_theory=False
    )


def test_problem_constants_phi_factorised():
    p = _aligned_k1_problem()
    v0 = np.array([1.0 + 1e-9])
    exact = float(_phi2_exact(v0, [1.0]))
    got = float(theory.problem_constants(p, jnp.asarray(v0)).phi) ** 2
    assert abs(got - exact) / exact < 1e-14


# ---------------------------------------------------------------------------------------
# 5. Input validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: theory.r6_anticoncentration(1.0, 1.0, 1.5), "delta"),
        (lambda: theory.r6_anticoncentration(1.0, 1.0, 0.0), "delta"),
        (lambda: theory.r6_anticoncentration(1.0, 0.0, 0.5), "sigma"),
        (lambda: theory.r6_anticoncentration(-1.0, 1.0, 0.5), "a"),
        (lambda: theory.r6_sigma_max(1.0, float("nan")), "delta"),
        (lambda: theory.r6_phi_cdf_mc(jax.random.key(0), np.ones(2), -1.0, 8), "sigma"),
        (lambda: theory.r6_phi_cdf_mc(jax.random.key(0), np.ones(2), 1.0, 0), "num"),
        (lambda: theory.r5_delta0(0.0, 1.0), "a"),
        (lambda: theory.r5_delta0(1.0, -0.1), "phi"),
        (lambda: theory.r5_printed_bound(0.5, 1, 1.0, 1.0, 1.5), "eps"),
        (lambda: theory.r5_printed_bound(0.5, 0, 1.0, 1.0, 0.1), "k"),
        (lambda: theory.r5_rigorous_error_bound(0.5, 1.0, 1.0, 2.5), "eps"),
        (lambda: theory.r5_rigorous_error_bound(1.5, 1.0, 1.0, 0.1), "c_perp"),
        (lambda: theory.r5_rigorous_bound(0.5, 1.0, 1.0, 0.1, -0.1), "lam_min"),
        (lambda: theory.r5_rigorous_bound(0.5, np.array([1.0, -1.0]), 1.0, 0.1), "phi"),
        (lambda: theory.r7_lp_error_bound(0.1, 1.0, 0.5, 0.5), "kappa"),
        (lambda: theory.r7_lp_error_bound(0.1, 1.0, 2.0, 0.0), "c_S"),
        (lambda: theory.r7_lp_ood_bound(0.1, 1.0, 2.0, 0.5, float("inf")), "lam_max"),
        (lambda: theory.r8_eps_threshold(0.5, 1.0, float("nan"), 2.0, 0.5), "a"),
        (lambda: theory.r5_perp_bound(0.1, -1.0, 1.0, 1.0), "train_loss"),
        (lambda: theory.r5_perp_bound(0.1, 1.0, 0.0, 1.0), "sigma2_min"),
        (lambda: theory.r12_ft_wins(float("nan"), 1.0), "a"),
        (lambda: theory.r12_toy_errors(1.0, float("inf")), "v0"),
        (lambda: theory.head_alignment_error(np.ones(2), np.ones(3)), "v0"),
        (lambda: theory.head_alignment_error(np.array([1.0, np.nan]), np.ones(2)), "v0"),
        (lambda: theory.kappa(np.ones(3)), "X"),
    ],
)
def test_invalid_concrete_inputs_raise_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"`{name}`"):
        call()


def test_validation_messages_say_how_to_fix():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        theory.r6_sigma_max(1.0, 1.0)
    with pytest.raises(ValueError, match=r"procrustes\(B0, B_star\)"):
        theory.r5_printed_bound(0.5, 1, 1.0, 1.0, -0.1)
    with pytest.raises(ValueError, match=r"1 of 2 entries bad"):
        theory.r5_rigorous_bound(0.5, np.array([1.0, -1.0]), 1.0, 0.1)


def test_boundary_values_are_accepted():
    s2 = math.sqrt(2.0)
    theory.r5_printed_bound(1.0, 1, 0.0, 1.0, s2 * (1 + 1e-9))  # rounding above sqrt(2)
    theory.r5_rigorous_error_bound(1.0 + 1e-9, 0.0, 1.0, 2.0)  # any-U eps up to 2
    theory.r7_lp_error_bound(1.9, 0.0, 1.0, 1.0)
    theory.r6_sigma_max(0.0, 0.5)
    theory.r5_perp_bound(0.1, np.array([0.0, np.nan]), 1.0, 0.0)  # NaN loss: diverged run
    theory.r12_ft_wins(-3.0, 0.0)


def test_validation_skipped_for_tracers():
    """Under jit/vmap the values are unknown: no check, the formula's value comes back."""
    out = jax.jit(theory.r6_anticoncentration)(1.0, 1.0, 1.5)
    assert float(out) == pytest.approx(math.sqrt(math.pi) / 2 * 1.5)
    out = jax.vmap(theory.r5_delta0)(jnp.array([1.0, 2.0]), jnp.array([-1.0, 1.0]))
    assert out.shape == (2,)
