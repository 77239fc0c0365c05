"""Checks of the analytic bounds in `linfeat.theory` (R5, R6, R7, R8, R12 and section 1).

References are independent of the code under test: instances are built in plain NumPy with a
known feature distance, constants (c_S, c_perp, kappa) and the LP solution come from NumPy
SVD / lstsq, and probabilities from SciPy's normal CDF.
"""

import decimal
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp
from scipy.stats import norm

from linfeat.theory import (
    head_alignment_error,
    kappa,
    principal_angle_distance,
    procrustes,
    r5_delta0,
    r5_printed_bound,
    r5_rigorous_bound,
    r5_rigorous_error_bound,
    r6_anticoncentration,
    r6_phi_cdf_mc,
    r6_sigma_max,
    r7_lp_error_bound,
    r7_lp_ood_bound,
    r8_eps_threshold,
    r12_ft_wins,
    r12_toy_errors,
)

EPS64 = np.finfo(np.float64).eps
# Tolerances derived from float64 epsilon: RTOL for closed forms evaluated two ways (a few
# hundred roundings), BOUND_SLACK for "x >= bound" checks (only rounding may violate them).
RTOL = 1e3 * EPS64
BOUND_SLACK = 1e4 * EPS64

# Batched, jitted once per module so parametrized cases with equal shapes share a compile.
_procrustes_batch = jax.jit(jax.vmap(procrustes))
_principal_angle_distance_batch = jax.jit(jax.vmap(principal_angle_distance))


# ---------------------------------------------------------------------------------------
# Independent NumPy instance generator
# ---------------------------------------------------------------------------------------


def _orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _spd(rng, d, lo=0.5, hi=2.0):
    O = _orthogonal(rng, d)
    return (O * rng.uniform(lo, hi, d)) @ O.T


def make_instance(rng, *, d, k, m, n, eps, a=None):
    """Random instance with d(B0, B*) = eps exactly and known Procrustes factor R.

    Rows of B0 are R (cos(theta_i) h_i + sin(theta_i) h_{k+i}) with h orthonormal and
    B* = (h_1..h_k), so the principal angles are theta_i, theta_max = 2 arcsin(eps/2) and
    the Procrustes factor is R; S is an independent random m-dimensional subspace.
    """
    H = _orthogonal(rng, d)
    B_star = H[:k]
    theta_max = 2.0 * np.arcsin(eps / 2.0)
    thetas = theta_max * np.concatenate([[1.0], rng.uniform(0.0, 1.0, k - 1)])
    B0_canon = np.cos(thetas)[:, None] * H[:k] + np.sin(thetas)[:, None] * H[k : 2 * k]
    R = _orthogonal(rng, k)
    B0 = R @ B0_canon
    a = rng.uniform(0.5, 3.0) if a is None else a
    v_star = rng.standard_normal(k)
    v_star *= a / np.linalg.norm(v_star)
    Q = _orthogonal(rng, d)[:, :m]
    # Column scales spread kappa(X) over roughly [1, 30].
    G = rng.standard_normal((n, m)) * np.exp(rng.uniform(-1.5, 1.5, m))
    X = G @ Q.T
    Pi_S = Q @ Q.T
    Pi_perp = np.eye(d) - Pi_S
    s_X = np.linalg.svd(X, compute_uv=False)
    c_S, c_perp = (np.linalg.svd(P @ B0.T, compute_uv=False)[k - 1] for P in (Pi_S, Pi_perp))
    return dict(
        B_star=B_star, B0=B0, R=R, v_star=v_star, a_star=R @ v_star, w_star=B_star.T @ v_star,
        a=a, eps=eps, Q=Q, X=X, Pi_S=Pi_S, Pi_perp=Pi_perp, c_S=c_S, c_perp=c_perp,
        kappa=s_X[0] / s_X[m - 1], Sigma=_spd(rng, d),
    )  # fmt: skip


def _phi_np(v0, a_star):
    return np.sqrt(abs(np.dot(v0, a_star) ** 2 - np.dot(a_star, a_star) ** 2))


def _shapes(rng):
    k = int(rng.integers(1, 4))
    m = int(rng.integers(k, k + 4))
    d = int(rng.integers(max(m + k + 1, 2 * k), m + k + 6))
    return dict(d=d, k=k, m=m, n=m + int(rng.integers(0, 4)))


# ---------------------------------------------------------------------------------------
# Section 1: feature distance, kappa
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-9, 1e-4, 0.3, 1.0, 1.4])
def test_procrustes_matches_principal_angles(eps):
    """[derived, section 1] min_U ||B0 - U B*||_2 = 2 sin(theta_max / 2), minimiser P Q^T."""
    rng = np.random.default_rng(0)
    insts = [make_instance(rng, d=9, k=3, m=4, n=6, eps=eps) for _ in range(5)]
    B0, B_star, R = (np.stack([i[n] for i in insts]) for n in ("B0", "B_star", "R"))
    dist, U = (np.asarray(x) for x in _procrustes_batch(B0, B_star))
    pad = np.asarray(_principal_angle_distance_batch(B0, B_star))
    # The generator fixes the distance up to the rounding of B0's unit-norm rows (~1e-16
    # absolute), which bounds the accuracy of any method at tiny eps: atol = 1e-14.
    np.testing.assert_allclose(pad, eps, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dist, eps, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(U, R, atol=1e-9 if eps > 1e-6 else 1e-6)
    if eps < 1e-6:
        # Why the atan2 route: arccos of the smallest cosine alone returns 0 here.
        cos_min = np.linalg.svd(B0[0] @ B_star[0].T, compute_uv=False)[-1]
        assert abs(2 * np.sin(np.arccos(min(cos_min, 1.0)) / 2) - eps) > 1e-3 * eps
    # No other orthogonal V does better: random ones and small rotations of the optimum.
    for j in range(5):
        for trial in range(40):
            if trial < 20:
                V = _orthogonal(rng, 3)
            else:
                W = rng.standard_normal((3, 3)) * 1e-3
                V = scipy.linalg.expm(W - W.T) @ U[j]
            other = np.linalg.norm(B0[j] - V @ B_star[j], 2)
            assert other >= dist[j] - BOUND_SLACK


@pytest.mark.parametrize("k, d", [(1, 4), (3, 8)])
def test_principal_angle_distance_unrelated_subspaces(k, d):
    """Random pairs: both routes agree and lie in [0, sqrt 2]."""
    rng = np.random.default_rng(d)
    B0 = np.stack([_orthogonal(rng, d)[:k] for _ in range(20)])
    Bs = np.stack([_orthogonal(rng, d)[:k] for _ in range(20)])
    dist, _ = _procrustes_batch(B0, Bs)
    pad = np.asarray(_principal_angle_distance_batch(B0, Bs))
    np.testing.assert_allclose(np.asarray(dist), pad, rtol=1e-12)
    assert np.all((pad >= 0.0) & (pad <= np.sqrt(2.0) + RTOL))


def test_kappa_against_numpy():
    kappa_jit = jax.jit(kappa)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((7, 5))
    np.testing.assert_allclose(float(kappa_jit(X)), np.linalg.cond(X), rtol=RTOL)
    # Rank-deficient X = G Q^T: the zero singular values are cut off.
    Q = _orthogonal(rng, 8)[:, :3]
    X = rng.standard_normal((6, 3)) @ Q.T
    s = np.linalg.svd(X, compute_uv=False)
    np.testing.assert_allclose(float(kappa_jit(X)), s[0] / s[2], rtol=RTOL)
    assert np.isnan(float(kappa_jit(np.zeros((3, 4)))))


# ---------------------------------------------------------------------------------------
# R5
# ---------------------------------------------------------------------------------------


def test_r5_printed_constant_counterexample():
    """[derived, R5] docs/theory.md's counterexample: the printed bound fails at t = 0."""
    b0 = np.array([np.sqrt(0.19), 0.0, 0.9, 0.0])
    B0 = B_star = b0[None, :]
    v_star, v0 = np.array([5.0]), np.array([4.9])
    Q = np.eye(4)[:, :2]  # S = span(e1, e2)
    Pi_perp = np.eye(4) - Q @ Q.T
    k, m, d = 1, 2, 4
    assert m + k < d
    c_S = np.linalg.svd(Q @ Q.T @ B0.T, compute_uv=False)[k - 1]
    c_perp = np.linalg.svd(Pi_perp @ B0.T, compute_uv=False)[k - 1]
    assert c_S > 0.4 and np.isclose(c_perp, 0.9, rtol=RTOL)
    eps, U = procrustes(B0, B_star)
    a_star = np.asarray(U) @ v_star
    phi = float(head_alignment_error(v0, a_star))
    np.testing.assert_allclose(phi, _phi_np(v0, a_star), rtol=RTOL)
    w_star = B_star.T @ v_star
    w_norm = np.linalg.norm(w_star)
    err0 = np.linalg.norm(B0.T @ v0 - w_star)  # Sigma = I, so sqrt(L_ood(0)) = ||e(0)||
    np.testing.assert_allclose(err0, 0.1, rtol=1e-12)

    printed = float(r5_printed_bound(c_perp, k, phi, w_norm, eps))
    expected = c_perp / np.sqrt(k) * min(phi, phi**2 / w_norm) / (1 + w_norm) ** 2
    np.testing.assert_allclose(printed, expected, rtol=RTOL)
    assert round(printed, 3) == 0.124  # docs/theory.md's "0.9 * 4.95 / 36 ~ 0.124"
    assert printed > err0 + 0.02  # the printed bound is violated at t = 0

    rigorous = float(r5_rigorous_bound(c_perp, phi, 5.0, eps))
    assert 0.0 < rigorous <= err0


@pytest.mark.parametrize("a, c_perp", [(5.0, 0.9), (20.0, 0.99), (100.0, 0.999)])
def test_r5_printed_constant_fails_by_up_to_factor_two(a, c_perp):
    """[derived, R5] Family v0 = (1 + h) a*, k = 1, B0 = B*, at t = 0.

    phi^2 = a^4 |2h + h^2| and ||e(0)|| = |h| a; with a sqrt(|2h + h^2|) = 1 the printed bound
    is c_perp a^3 |2h + h^2| / (1 + a)^2, so ||e(0)|| / printed = (1 + a)^2 / (c_perp a^2 |2 + h|)
    -> 1 / (2 c_perp): the printed constant is too large by up to a factor of about 2.
    """
    h = -1.0 + np.sqrt(1.0 - 1.0 / a**2)  # root of |2h + h^2| = 1/a^2 with h < 0
    b0 = np.array([np.sqrt(1.0 - c_perp**2), 0.0, c_perp, 0.0])  # S = span(e1, e2)
    v_star = np.array([a])
    v0 = (1.0 + h) * v_star
    err0 = np.linalg.norm(b0 * v0[0] - b0 * v_star[0])
    phi = float(head_alignment_error(v0, v_star))
    printed = float(r5_printed_bound(c_perp, 1, phi, a, 0.0))
    expected_ratio = (1.0 + a) ** 2 / (c_perp * a**2 * abs(2.0 + h))
    np.testing.assert_allclose(err0 / printed, expected_ratio, rtol=1e-9)
    assert err0 / printed < 0.81
    assert err0 >= float(r5_rigorous_error_bound(c_perp, phi, a, 0.0))


def test_r5_delta0_stable_q_prime():
    """q' without cancellation, against a 50-digit `decimal` evaluation of the naive form."""
    decimal.getcontext().prec = 50
    a = np.array([0.5, 1.0, 3.0])
    for phi in [1e-6, 1e-2, 1.0, 10.0]:
        P = decimal.Decimal(phi)
        q = np.array([float((A * A + P * P / 2).sqrt() - A) for A in map(decimal.Decimal, a)])
        ref = np.minimum(np.minimum(1.0, q / (2 * (2 + a))), phi**2 / (2 * a**2 * (2 * a + 1)))
        got = np.asarray(r5_delta0(a, phi))
        np.testing.assert_allclose(got, ref, rtol=RTOL)
        assert np.all(got > 0)


def _r5_instances(num, eps_values, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        inst = make_instance(rng, **_shapes(rng), eps=eps_values[i % len(eps_values)])
        k = inst["a_star"].shape[0]
        # Heads from far away (Gaussian) down to very close to a* (where the bound is tightest).
        if i % 3 == 0:
            v0 = rng.standard_normal(k) * rng.uniform(0.1, 2.0)
        else:
            u = rng.standard_normal(k)
            v0 = inst["a_star"] + 10 ** rng.uniform(-4, 0.5) * u / np.linalg.norm(u)
        inst["v0"] = v0
        inst["phi"] = _phi_np(v0, inst["a_star"])
        out.append(inst)
    return out


def _stack(insts, *names):
    return [jnp.asarray(np.array([inst[n] for inst in insts])) for n in names]


def test_r5_rigorous_bound_at_t0():
    """[derived, R5] ||e(0)|| = ||B0^T v0 - w*|| and sqrt(L_ood(0)) dominate the bound."""
    insts = _r5_instances(300, [0.0, 1e-5, 1e-3, 1e-2], seed=3)
    err = np.array([np.linalg.norm(i["B0"].T @ i["v0"] - i["w_star"]) for i in insts])
    ood = np.array(
        [np.sqrt(e @ i["Sigma"] @ e) for i in insts for e in [i["B0"].T @ i["v0"] - i["w_star"]]]
    )
    lam_min = np.array([np.linalg.eigvalsh(i["Sigma"])[0] for i in insts])
    c_perp, phi, a, eps = _stack(insts, "c_perp", "phi", "a", "eps")
    err_bound = np.asarray(jax.vmap(r5_rigorous_error_bound)(c_perp, phi, a, eps))
    ood_bound = np.asarray(jax.vmap(r5_rigorous_bound)(c_perp, phi, a, eps, lam_min))
    assert np.all(err >= err_bound - BOUND_SLACK)
    assert np.all(ood >= ood_bound - BOUND_SLACK)
    positive = err_bound > 0
    assert positive.sum() >= 100  # the check is not vacuous on most instances
    ratio = err[positive] / err_bound[positive]
    assert ratio.min() >= 1.0


def _invariant_set_point(rng, inst, v):
    """(v, B) with R1 (B Pi_perp = B0 Pi_perp) and R2 (v v^T - B B^T = v0 v0^T - I), or None.

    B = B0 Pi_perp + C Q^T with C C^T = N = v v^T - v0 v0^T + B0 Pi_S B0^T, C = N^(1/2) [I 0] R
    for a random orthogonal R; None when N is not PSD (v not reachable on the invariant set).
    """
    B0, Q, v0 = inst["B0"], inst["Q"], inst["v0"]
    k, m = B0.shape[0], Q.shape[1]
    N = np.outer(v, v) - np.outer(v0, v0) + B0 @ inst["Pi_S"] @ B0.T
    lam, V = np.linalg.eigh(N)
    if lam[0] < 0:
        return None
    C = (V * np.sqrt(lam)) @ V.T @ np.eye(k, m) @ _orthogonal(rng, m)
    return B0 @ inst["Pi_perp"] + C @ Q.T


def test_r5_rigorous_bound_on_flow_invariant_set():
    """[derived, R5] 'for all t': the bound holds at every (v, B) satisfying R1 and R2.

    The FT trajectory stays in that set, so this is stronger than following one flow.
    """
    rng = np.random.default_rng(4)
    insts = _r5_instances(60, [0.0, 1e-4, 1e-3], seed=5)
    errs, bounds = [], []
    for inst in insts:
        bound = float(r5_rigorous_error_bound(inst["c_perp"], inst["phi"], inst["a"], inst["eps"]))
        k = inst["a_star"].shape[0]
        for _ in range(40):
            u = rng.standard_normal(k)
            v = inst["a_star"] + 10 ** rng.uniform(-5, 0.5) * u / np.linalg.norm(u)
            B = _invariant_set_point(rng, inst, v)
            if B is None:
                continue
            # The construction really is on the invariant set (R1, R2).
            np.testing.assert_allclose(
                B @ inst["Pi_perp"], inst["B0"] @ inst["Pi_perp"], atol=1e-12
            )
            np.testing.assert_allclose(
                np.outer(v, v) - B @ B.T, np.outer(inst["v0"], inst["v0"]) - np.eye(k), atol=1e-10
            )
            errs.append(np.linalg.norm(B.T @ v - inst["w_star"]))
            bounds.append(bound)
    errs, bounds = np.array(errs), np.array(bounds)
    assert len(errs) >= 500
    assert np.all(errs >= bounds - BOUND_SLACK)
    positive = bounds > 0
    assert positive.sum() >= 200
    assert (errs[positive] / bounds[positive]).min() >= 1.0


# ---------------------------------------------------------------------------------------
# R6
# ---------------------------------------------------------------------------------------

NUM_HEADS = 40_000


def _phi_cdf_exact(t, a, sigma):
    """P[phi <= t] for v0 ~ N(0, sigma^2 I): z = v0^T a* ~ N(0, (sigma a)^2), |z^2 - a^4| <= t^2."""
    sd = sigma * a
    hi = np.sqrt(a**4 + t**2)
    lo = np.sqrt(np.maximum(a**4 - t**2, 0.0))
    return 2.0 * (norm.cdf(hi / sd) - norm.cdf(lo / sd))


@pytest.mark.parametrize(
    "a, sigma, delta, k",
    [(1.0, 20.0, 0.1, 1), (2.0, 5.0, 0.5, 3), (0.5, 2.0, 0.5, 2), (1.0, 1.0, 0.9, 4)],
)
def test_r6_anticoncentration(a, sigma, delta, k):
    """[derived, R6] P[phi <= (sqrt(pi)/2) a delta sigma] <= delta.

    Margin: with N = 40000 heads the binomial standard error of the empirical probability is
    at most sqrt(0.25 / N) = 0.0025. The chosen cases have an exact probability at least
    10 standard errors below delta, and the Monte Carlo estimate is required to match the
    exact value within 5 standard errors (a false failure has probability < 1e-6 per case;
    the keys are fixed, so the suite is deterministic).
    """
    key = jax.random.key(int(100 * a + 10 * sigma + k))
    a_star = np.full(k, a / np.sqrt(k))
    phi = np.asarray(r6_phi_cdf_mc(key, a_star, sigma, NUM_HEADS))
    assert phi.shape == (NUM_HEADS,)
    thr = float(r6_anticoncentration(a, sigma, delta))
    p_hat = np.mean(phi <= thr)
    p = _phi_cdf_exact(thr, a, sigma)
    se = np.sqrt(p * (1 - p) / NUM_HEADS)
    assert p <= delta - 10 * se
    assert abs(p_hat - p) <= 5 * se + 1 / NUM_HEADS
    assert p_hat <= delta


def test_r6_anticoncentration_exact_cdf_grid():
    """[derived, R6] The exact CDF stays below delta on a wide grid (it is tight: sup ~ 0.9998).

    P[phi <= t] depends on (sigma / a, delta) only (scale z by a^2).
    """
    r = np.logspace(-2, 3, 301)[:, None]  # sigma / a
    delta = np.linspace(1e-3, 0.999, 300)[None, :]
    p = _phi_cdf_exact(np.sqrt(np.pi) / 2 * delta * r, 1.0, r)
    assert np.all(p <= delta)
    assert np.max(p / delta) > 0.99  # the constant sqrt(pi)/2 cannot be raised much


@pytest.mark.parametrize("a, delta", [(0.5, 0.05), (1.0, 0.1), (3.0, 0.3)])
def test_r6_small_head_is_well_separated(a, delta):
    """[derived, R6] sigma <= a / (2 sqrt(ln(2/delta))) gives phi >= a^2/sqrt(2) w.p. >= 1-delta.

    Same standard-error argument as above; the exact failure probability is far below delta.
    """
    sigma = float(r6_sigma_max(a, delta))
    np.testing.assert_allclose(sigma, a / (2 * np.sqrt(np.log(2 / delta))), rtol=RTOL)
    phi = np.asarray(r6_phi_cdf_mc(jax.random.key(7), np.array([a, 0.0]), sigma, NUM_HEADS))
    # phi < a^2/sqrt2 iff |z| in (a^2/sqrt2, a^2 sqrt(3/2)), z ~ N(0, (sigma a)^2).
    sd = sigma * a
    p = 2 * (norm.cdf(a**2 * np.sqrt(1.5) / sd) - norm.cdf(a**2 / np.sqrt(2) / sd))
    se = np.sqrt(max(p * (1 - p), delta * (1 - delta)) / NUM_HEADS)
    p_hat = np.mean(phi < a**2 / np.sqrt(2))
    assert p <= delta - 10 * se
    assert abs(p_hat - p) <= 5 * se + 1 / NUM_HEADS
    assert p_hat <= delta


def test_head_alignment_error_special_values():
    """[paper] phi = ||v*||^2 at v0 = 0, phi = 0 at v0 = +-a*; accurate near the zeros."""
    a_star = np.array([1.0, -2.0, 0.5])
    a2 = a_star @ a_star
    np.testing.assert_allclose(float(head_alignment_error(np.zeros(3), a_star)), a2, rtol=RTOL)
    assert float(head_alignment_error(a_star, a_star)) == 0.0
    assert float(head_alignment_error(-a_star, a_star)) == 0.0
    # v0 = (1 + h) a*: phi^2 = a^4 h (2 + h) exactly; the naive difference loses ~all digits.
    h = 1e-10
    np.testing.assert_allclose(
        float(head_alignment_error((1 + h) * a_star, a_star)) ** 2,
        a2**2 * h * (2 + h),
        rtol=1e-5,
    )


# ---------------------------------------------------------------------------------------
# R7, R8
# ---------------------------------------------------------------------------------------


def _lp_error(inst):
    """LP's converged predictor error by NumPy least squares (independent of linfeat)."""
    A = inst["X"] @ inst["B0"].T
    v_lp = np.linalg.lstsq(A, inst["X"] @ inst["w_star"], rcond=None)[0]
    return inst["B0"].T @ v_lp - inst["w_star"]


@pytest.mark.parametrize("eps", [1e-3, 1e-2, 1e-1])
def test_r7_lp_bound(eps):
    """[derived, R7] ||e_lp|| <= eps a (1 + kappa/c_S) and L_ood(LP) <= lam_max (...)^2."""
    rng = np.random.default_rng(int(1e4 * eps))
    insts = [make_instance(rng, **_shapes(rng), eps=eps) for _ in range(200)]
    e_lp = [_lp_error(i) for i in insts]
    err = np.array([np.linalg.norm(e) for e in e_lp])
    ood = np.array([e @ i["Sigma"] @ e for e, i in zip(e_lp, insts, strict=True)])
    lam_max = jnp.asarray([np.linalg.eigvalsh(i["Sigma"])[-1] for i in insts])
    e_, a, kap, c_S = _stack(insts, "eps", "a", "kappa", "c_S")
    err_bound = np.asarray(jax.vmap(r7_lp_error_bound)(e_, a, kap, c_S))
    ood_bound = np.asarray(jax.vmap(r7_lp_ood_bound)(e_, a, kap, c_S, lam_max))
    assert np.all(err <= err_bound * (1 + BOUND_SLACK))
    assert np.all(ood <= ood_bound * (1 + BOUND_SLACK))
    assert np.all(err > 0)  # imperfect features: LP does not reach w*
    ratio = err / err_bound
    assert 0 < ratio.max() <= 1.0


def test_r8_threshold():
    """[derived, R8] below the threshold LP's OOD loss is below FT's at t = 0 (and any t)."""
    rng = np.random.default_rng(8)
    checked = 0
    for inst in _r5_instances(200, [1e-6, 1e-5, 1e-4], seed=9):
        lam = np.linalg.eigvalsh(inst["Sigma"])
        args = (inst["c_perp"], inst["phi"], inst["a"], inst["kappa"], inst["c_S"])
        thr = float(r8_eps_threshold(*args, lam[0], lam[-1]))
        # At the threshold the two bounds meet; below it LP's upper bound is strictly lower.
        meet = functools.partial(np.isclose, rtol=1e-9, atol=0.0)  # values ~1e-10: no atol
        for scale, cmp in [(1.0, meet), (0.5, np.less)]:
            ft_lower = r5_rigorous_bound(
                inst["c_perp"], inst["phi"], inst["a"], scale * thr, lam[0]
            )
            lp_upper = np.sqrt(
                r7_lp_ood_bound(scale * thr, inst["a"], inst["kappa"], inst["c_S"], lam[-1])
            )
            assert cmp(float(lp_upper), float(ft_lower))
        if inst["eps"] < thr:
            checked += 1
            e_lp = _lp_error(inst)
            e_ft0 = inst["B0"].T @ inst["v0"] - inst["w_star"]
            assert e_lp @ inst["Sigma"] @ e_lp < e_ft0 @ inst["Sigma"] @ e_ft0
            # And on points of the FT invariant set (any t), via R5's bound:
            for _ in range(5):
                v = inst["v0"] + rng.standard_normal(inst["v0"].shape) * 0.3
                B = _invariant_set_point(rng, inst, v)
                if B is not None:
                    e = B.T @ v - inst["w_star"]
                    assert e_lp @ inst["Sigma"] @ e_lp < e @ inst["Sigma"] @ e
    assert checked >= 50


# ---------------------------------------------------------------------------------------
# R12(b)
# ---------------------------------------------------------------------------------------


def test_r12_ft_wins_iff_condition():
    """[derived, R12b] FT wins iff a^2 + v0^2 > 1 (for a != 0, v0 != 0)."""
    a = np.linspace(-2.0, 2.0, 160)
    v0 = np.linspace(-2.0, 2.0, 162)  # even counts: the grids avoid a = 0 and v0 = 0
    A, V0 = np.meshgrid(a, v0, indexing="ij")
    lp, ft = (np.asarray(x) for x in jax.vmap(jax.vmap(r12_toy_errors))(A, V0))
    claim = A**2 + V0**2 > 1
    # Cancellation-free identity LP - FT = 2a^2(a^2 + v0^2 - 1)/(2a^2 + v0^2 + sqrt(v0^4 + 4a^2)).
    gap = 2 * A**2 * (A**2 + V0**2 - 1) / (2 * A**2 + V0**2 + np.sqrt(V0**4 + 4 * A**2))
    np.testing.assert_allclose(lp - ft, gap, atol=1e-13)
    away = np.abs(A**2 + V0**2 - 1) > 1e-9
    np.testing.assert_array_equal((ft < lp)[away], claim[away])
    np.testing.assert_array_equal(np.asarray(jax.vmap(jax.vmap(r12_ft_wins))(A, V0)), claim)
    # a = 0: w* = 0 and both methods keep error^2 = v0^2, a tie even where a^2 + v0^2 > 1.
    lp0, ft0 = r12_toy_errors(0.0, 1.5)
    assert float(lp0) == float(ft0) and not bool(r12_ft_wins(0.0, 1.5))


@pytest.mark.parametrize("a, v0", [(1.0, 0.3), (0.5, -1.5), (2.0, 0.05), (-0.7, 0.4)])
def test_r12_toy_against_ode(a, v0):
    """[derived, R12b] Converged FT from the flow (SciPy) matches v_inf^2; LP's error too."""

    # FT flow on L = (v b1 - a)^2 with b2 = 1 frozen (R1); b1(0) = 0.
    def rhs(_, y):
        v, b1 = y
        r = v * b1 - a
        return [-2 * b1 * r, -2 * v * r]

    sol = solve_ivp(rhs, (0.0, 200.0), [v0, 0.0], method="DOP853", rtol=1e-12, atol=1e-14)
    v, b1 = sol.y[:, -1]
    w_ft = np.array([v * b1, v * 1.0])
    lp, ft = r12_toy_errors(a, v0)
    np.testing.assert_allclose(np.sum((w_ft - [a, 0.0]) ** 2), float(ft), rtol=1e-9)
    np.testing.assert_allclose(np.sum((np.array([0.0, v0]) - [a, 0.0]) ** 2), float(lp), rtol=RTOL)


# ---------------------------------------------------------------------------------------
# Transformations and dtypes
# ---------------------------------------------------------------------------------------


# slow: vmap = loop (10 s); the bounds are vmapped by linfeat check in tests/test_checks.py
@pytest.mark.slow
def test_vmap_equals_loop():
    """vmap over instances equals a Python loop of single-instance (jitted) calls."""
    rng = np.random.default_rng(10)

    def check(f, *batched_args, **tol):
        batched = jax.jit(jax.vmap(f))(*batched_args)
        single = jax.jit(f)
        looped = [single(*row) for row in zip(*batched_args, strict=True)]
        for got, want in zip(
            jax.tree.leaves(batched),
            jax.tree.leaves(jax.tree.map(lambda *x: jnp.stack(x), *looped)),
            strict=True,
        ):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol)

    check(head_alignment_error, rng.standard_normal((6, 3)), rng.standard_normal((6, 3)), rtol=RTOL)
    B0 = np.stack([_orthogonal(rng, 6)[:2] for _ in range(4)])
    Bs = np.stack([_orthogonal(rng, 6)[:2] for _ in range(4)])
    check(principal_angle_distance, B0, Bs, rtol=RTOL)
    check(procrustes, B0, Bs, rtol=RTOL, atol=1e-12)
    check(kappa, rng.standard_normal((5, 4, 7)), rtol=RTOL)
    check(r5_rigorous_bound, *[rng.uniform(0.1, 1.0, 8) for _ in range(5)], rtol=RTOL)
    check(r12_toy_errors, rng.uniform(-2, 2, 8), rng.uniform(-2, 2, 8), rtol=RTOL)


def test_jit_equals_no_jit_and_float32_stays_float32():
    args = (0.7, 1.3, 2.0, 1e-3, 0.8)
    jitted = jax.jit(r5_rigorous_bound)(*args)
    with jax.disable_jit():
        eager = r5_rigorous_bound(*args)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=RTOL)

    # Output dtypes by abstract evaluation (no compilation): float32 in, float32 out.
    def dtype(f, *a):
        return jax.eval_shape(f, *a).dtype

    f32 = np.float32
    assert dtype(r5_rigorous_bound, *map(f32, args)) == jnp.float32
    assert dtype(r5_printed_bound, *map(f32, (0.7, 1, 1.3, 2.0, 1e-3))) == jnp.float32
    assert dtype(r8_eps_threshold, *map(f32, (0.7, 1.3, 2.0, 3.0, 0.5))) == jnp.float32
    assert dtype(r7_lp_ood_bound, *map(f32, (1e-3, 1.3, 2.0, 0.5, 1.0))) == jnp.float32
    assert dtype(r6_anticoncentration, *map(f32, (1.0, 0.5, 0.1))) == jnp.float32
    assert dtype(r6_sigma_max, *map(f32, (1.0, 0.1))) == jnp.float32
    ones = np.ones(2, f32)
    assert dtype(head_alignment_error, ones, ones) == jnp.float32
    B = np.eye(3, 5, dtype=f32)
    assert dtype(principal_angle_distance, B, B) == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.eval_shape(procrustes, B, B))
    assert dtype(kappa, np.ones((3, 2), f32)) == jnp.float32
    mc = jax.eval_shape(lambda key: r6_phi_cdf_mc(key, ones, f32(1.0), 8), jax.random.key(0))
    assert mc.dtype == jnp.float32 and mc.shape == (8,)
