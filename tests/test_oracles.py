"""Closed-form oracles (docs/theory.md, section 5, R12b) against an independent SciPy ODE solve.

The reference is the raw two-layer flow for d = 2, k = 1, written in plain NumPy:
state (v, b1, b2), L = (v b.x - y)^2 with x = e1, dv/dt = -dL/dv, db/dt = -dL/db, so the
oracles' scaled time is tau = 2 s t with s = 1.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from linfeat._closed_form_oracles import (
    k1_trajectory,
    k1_trajectory_problem_time,
    r12_toy,
    toy2d_limit,
    toy2d_trajectory,
)

ODE_RTOL, ODE_ATOL = 1e-12, 1e-14
NT = 41  # one time-grid length everywhere, so each jitted oracle compiles once per dtype
EPS64 = float(np.finfo(np.float64).eps)


def tol(kind: str) -> float:
    """Named tolerances, each derived from the solver tolerance or float64 rounding."""
    return {
        # DOP853 at rtol 1e-12 makes local errors <= 1e-12 |z|; over the few hundred steps of
        # t <= 10 on this neutral/contracting flow the global error stays below ~1e-10 |z|.
        "trajectory": 1e-9,
        # Long solves (t = 60): more steps, plus the distance left to the limit, which decays
        # like exp(-4 R t) and is below 1e-30 for the instances used.
        "limit": 1e-8,
        # Closed form against closed form / exact arithmetic: a few hundred ulps.
        "exact": 200 * EPS64,
    }[kind]


def assert_close(actual, expected, kind: str):
    """|actual - expected| <= tol(kind) * max(1, |expected|), elementwise."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    bound = tol(kind) * np.maximum(1.0, np.abs(expected))
    err = np.abs(actual - expected)
    assert np.all(err <= bound), f"max error {err.max():.3e} exceeds {kind} tolerance"


def flow_rhs(t, z, y):
    """Two-layer FT flow, d = 2, k = 1, x = e1: the reference, in plain NumPy."""
    v, b1, _ = z
    r = v * b1 - y
    return np.array([-2.0 * b1 * r, -2.0 * v * r, 0.0])


def solve_flow(v0, b0, y, times):
    """(v, b1, b2) at `times` (increasing, starting at 0 or later) by DOP853."""
    times = np.atleast_1d(np.asarray(times, np.float64))
    sol = solve_ivp(
        flow_rhs,
        (0.0, float(times[-1])),
        np.array([v0, b0[0], b0[1]], np.float64),
        method="DOP853",
        rtol=ODE_RTOL,
        atol=ODE_ATOL,
        t_eval=times,
        args=(y,),
    )
    assert sol.success
    return sol.y


# (v0, alpha0, y): c < 0, c > 0, negative v0, p0 > y, y < 0, c = 0 (both sides), near saddle.
K1_CASES = [
    (0.3, 0.7, 1.0),  # c < 0, p0 < y
    (1.5, 0.2, 1.0),  # c > 0, p0 < y
    (-1.0, 0.7, 2.0),  # c > 0, v0 < 0: alpha changes sign
    (-0.3, 0.9, 1.0),  # c < 0, v0 < 0: v changes sign
    (2.0, 1.5, 0.5),  # c > 0, p0 > y
    (1.0, 2.0, -0.5),  # c < 0, p0 > y, y < 0
    (-0.4, -1.1, -0.8),  # c < 0, y < 0, p0 < -y side
    (0.5, -0.5, 1.0),  # c = 0, p0 y < 0: runs into the saddle
    (0.5, 0.5, 1.0),  # c = 0, p0 y > 0
    (0.7, 0.7, 0.0),  # c = 0, y = 0
    (0.9, -0.4, 0.0),  # c > 0, y = 0
    (0.0, 0.0, 1.0),  # the saddle: stationary
    (0.8, 0.5, 0.4),  # p0 = y: stationary
    (0.5, -0.499, 1.0),  # c ~ 1e-3: long stay near the saddle, then escape
]


@pytest.mark.parametrize("v0, alpha0, y", K1_CASES)
def test_k1_trajectory_matches_ode(v0, alpha0, y):
    times = np.linspace(0.0, 10.0, NT)
    v_ref, a_ref, _ = solve_flow(v0, (alpha0, 0.3), y, times)
    v, alpha = k1_trajectory(2.0 * times, v0=v0, alpha0=alpha0, y=y)
    assert_close(v, v_ref, "trajectory")
    assert_close(alpha, a_ref, "trajectory")
    v_t, alpha_t = k1_trajectory_problem_time(times, s=1.0, v0=v0, alpha0=alpha0, y=y)
    assert_close(v_t, v, "exact")
    assert_close(alpha_t, alpha, "exact")


def test_k1_problem_time_scale():
    """X^T X = s Pi_S: X = sqrt(s) e1^T scales the loss by s, i.e. the reference flow at s t."""
    s, v0, alpha0, y = 2.5, 0.4, 0.9, 1.3
    times = np.linspace(0.0, 3.0, NT)
    # Loss (v b1 sqrt(s) - sqrt(s) y)^2 = s (v b1 - y)^2: the reference flow in time s t.
    v_ref, a_ref, _ = solve_flow(v0, (alpha0, 0.0), y, s * times)
    v, alpha = k1_trajectory_problem_time(times, s=s, v0=v0, alpha0=alpha0, y=y)
    assert_close(v, v_ref, "trajectory")
    assert_close(alpha, a_ref, "trajectory")


@pytest.mark.parametrize("v0, alpha0, y", K1_CASES)
def test_k1_invariants_and_limits(v0, alpha0, y):
    """R2 conservation of c, monotone p, tau = 0, small-tau Taylor and tau = 1e3 limit."""
    special = [0.0, 1e-9, 1e-3, 0.1, 1.0, 10.0, 100.0, 1e3]
    tau = np.concatenate([special[:-1], np.geomspace(2e2, 9e2, NT - len(special)), special[-1:]])
    v, alpha = (np.asarray(x) for x in k1_trajectory(tau, v0=v0, alpha0=alpha0, y=y))
    c0 = v0 * v0 - alpha0 * alpha0
    scale = v0 * v0 + alpha0 * alpha0 + abs(y)
    assert np.all(np.abs((v * v - alpha * alpha) - c0) <= tol("exact") * max(1.0, scale))
    assert v[0] == v0 and alpha[0] == alpha0
    p = v * alpha
    gap = (y - p) * np.sign(y - v0 * alpha0)
    assert np.all(np.diff(gap) <= tol("exact") * max(1.0, abs(y)))  # p approaches y monotonically
    # Taylor: z(tau) = z0 + tau z'(0) + O(tau^2).
    r0 = v0 * alpha0 - y
    assert abs(v[1] - (v0 - 1e-9 * alpha0 * r0)) <= 1e-15  # O(tau^2) + rounding
    assert abs(alpha[1] - (alpha0 - 1e-9 * v0 * r0)) <= 1e-15
    if c0 == 0 and y == 0:
        # p' = -2|p| p decays algebraically, p = p0 / (1 + 2|p0| tau): no limit reached.
        assert_close(p, v0 * alpha0 / (1 + 2 * abs(v0 * alpha0) * np.asarray(tau)), "exact")
        return
    # tau = 1e3: at the limit to 1e-12 relative (p = y exactly unless the flow ends at the saddle).
    lim = toy_free_limit(v0, alpha0, y)
    np.testing.assert_allclose([v[-1], alpha[-1]], lim, rtol=1e-12, atol=1e-12)


def toy_free_limit(v0, alpha0, y):
    """Limit of docs/theory.md, section 5, in plain NumPy (with the c = 0 saddle case)."""
    c = v0 * v0 - alpha0 * alpha0
    if c == 0 and v0 * alpha0 * y <= 0:
        return 0.0, 0.0
    q = math.sqrt(c * c + 4 * y * y)
    v_abs, a_abs = math.sqrt((q + c) / 2), math.sqrt((q - c) / 2)
    if c >= 0:
        sv = math.copysign(1.0, v0)
        return sv * v_abs, sv * np.sign(y) * a_abs
    sa = math.copysign(1.0, alpha0)
    return sa * np.sign(y) * v_abs, sa * a_abs


TOY_CASES = [
    (math.pi / 4, math.pi / 4, 1.0, 0.3),
    (math.pi / 4, math.pi / 4, 1.0, -1.0),
    (0.3, 1.2, 2.0, 0.5),
    (1.2, -0.4, 1.5, -0.2),
    (2.5, 0.7, 1.0, 0.8),  # cos(beta0) < 0
    (0.9, 2.9, 0.7, -1.3),  # y < 0
    (math.pi / 4, math.pi / 4, 1.0, -math.cos(math.pi / 4)),  # c = 0: ends at the saddle
]


@pytest.mark.parametrize("beta0, beta_star, v_star, v0", TOY_CASES)
def test_toy2d_limit_matches_long_solve(beta0, beta_star, v_star, v0):
    b0 = (math.cos(beta0), math.sin(beta0))
    w_star = v_star * np.array([math.cos(beta_star), math.sin(beta_star)])
    v_T, b1_T, b2_T = solve_flow(v0, b0, w_star[0], [60.0])[:, -1]
    out = toy2d_limit(beta0, beta_star, v_star, v0)
    assert_close(out.v_inf, v_T, "limit")
    assert_close(out.b_inf, [b1_T, b2_T], "limit")
    w_T = v_T * np.array([b1_T, b2_T])
    assert_close(out.w_ft, w_T, "limit")
    assert_close(out.ft_ood_error, np.sum((w_T - w_star) ** 2), "limit")
    # LP: section 2 closed form v0 + A^+ (Y - A v0), A = X B0^T, X = e1^T, Y = X w*.
    A = np.array([[b0[0]]])
    v_lp = v0 + (np.linalg.pinv(A) @ (np.array([w_star[0]]) - A[:, 0] * v0))[0]
    assert_close(out.w_lp, v_lp * np.array(b0), "exact")
    assert_close(out.lp_ood_error, np.sum((v_lp * np.array(b0) - w_star) ** 2), "exact")


def test_toy2d_theory_printed_values():
    """docs/theory.md, section 5: beta0 = beta* = pi/4, v* = 1."""
    a = toy2d_limit(math.pi / 4, math.pi / 4, 1.0, 0.3)
    assert round(float(a.ft_ood_error), 4) == 0.0368
    assert abs(float(a.lp_ood_error)) <= tol("exact")
    b = toy2d_limit(math.pi / 4, math.pi / 4, 1.0, -1.0)
    assert abs(float(b.ft_ood_error) - 2.0) <= tol("exact")
    assert abs(float(b.lp_ood_error)) <= tol("exact")
    assert float(b.v_inf) == pytest.approx(-1.0, abs=tol("exact"))


@pytest.mark.parametrize("beta0, beta_star, v_star, v0", TOY_CASES[2:6])
def test_toy2d_trajectory_matches_ode(beta0, beta_star, v_star, v0):
    b0 = (math.cos(beta0), math.sin(beta0))
    y = v_star * math.cos(beta_star)
    times = np.append(np.linspace(0.0, 5.0, NT - 1), 200.0)  # last: at the limit
    v_ref, b1_ref, b2_ref = solve_flow(v0, b0, y, times[:-1])
    out = toy2d_trajectory(times, beta0, beta_star, v_star, v0)
    assert out.v.shape == (NT,) and out.b.shape == (NT, 2)
    assert_close(out.v[:-1], v_ref, "trajectory")
    assert_close(out.b[:-1, 0], b1_ref, "trajectory")
    assert np.all(np.asarray(out.b[:-1, 1]) == b2_ref)  # R1: b2 frozen exactly
    lim = toy2d_limit(beta0, beta_star, v_star, v0)
    assert_close(out.v[-1], lim.v_inf, "exact")
    assert_close(out.b[-1], lim.b_inf, "exact")


R12_GRID = [(a, v0) for a in (0.2, 0.7, 1.5, -1.2) for v0 in (-1.4, -0.3, 0.25, 0.9)]


@pytest.mark.parametrize("a, v0", R12_GRID)
def test_r12_toy_matches_ode_and_claim(a, v0):
    out = r12_toy(a, v0)
    # LP cannot move (A = X B0^T = 0): error^2 = |(0, v0) - (a, 0)|^2.
    assert_close(out.lp_error, a * a + v0 * v0, "exact")
    v_inf2 = (v0**2 + math.sqrt(v0**4 + 4 * a * a)) / 2  # docs/theory.md, R12(b)
    assert_close(out.ft_error, v_inf2, "exact")
    v_T, b1_T, b2_T = solve_flow(v0, (0.0, 1.0), a, [60.0])[:, -1]
    w_T = v_T * np.array([b1_T, b2_T])
    assert_close(out.ft_error, np.sum((w_T - np.array([a, 0.0])) ** 2), "limit")
    assert_close(out.v_inf, v_T, "limit")
    assert bool(out.ft_wins) == (a * a + v0 * v0 > 1)  # docs/theory.md, away from the boundary


def test_r12_claim_dense_grid():
    """FT wins iff a^2 + v0^2 > 1, on a dense grid (NumPy formulas and the module)."""
    a, v0 = np.meshgrid(np.linspace(-2, 2, 81), np.linspace(-2, 2, 81))
    lp = a**2 + v0**2
    ft = (v0**2 + np.sqrt(v0**4 + 4 * a**2)) / 2
    away = (np.abs(lp - 1) > 1e-6) & (a != 0) & (v0 != 0)
    assert np.all(((ft < lp) == (lp > 1))[away])
    out = r12_toy(a, v0)
    assert np.all((np.asarray(out.ft_wins) == (lp > 1))[away])


def test_r12_edge_cases():
    """v0 = 0 is the saddle (stationary), a = 0 a tie: FT does not strictly win."""
    for a in (0.5, 1.5):
        out = r12_toy(a, 0.0)
        v_T, b1_T, _ = solve_flow(0.0, (0.0, 1.0), a, [10.0])[:, -1]
        assert v_T == 0.0 and b1_T == 0.0
        assert float(out.ft_error) == pytest.approx(a * a, abs=tol("exact"))
        assert not bool(out.ft_wins)
    out = r12_toy(0.0, 0.8)
    assert float(out.ft_error) == pytest.approx(float(out.lp_error), abs=tol("exact"))
    assert not bool(out.ft_wins)


def test_vmap_equals_loop_and_jit():
    cases = np.array(K1_CASES)
    tau = jnp.linspace(0.0, 5.0, NT)
    f = jax.jit(lambda v0, a0, y: k1_trajectory(tau, v0=v0, alpha0=a0, y=y))
    batched = jax.vmap(f)(*cases.T)
    for i, (v0, a0, y) in enumerate(K1_CASES):
        v, alpha = k1_trajectory(tau, v0=v0, alpha0=a0, y=y)
        assert_close(batched.v[i], v, "exact")
        assert_close(batched.alpha[i], alpha, "exact")
    toy = np.array(TOY_CASES)
    lim = jax.jit(jax.vmap(toy2d_limit))(*toy.T)
    with jax.disable_jit():
        for i, args in enumerate(TOY_CASES):
            one = toy2d_limit(*args)
            for got, want in zip(lim, one, strict=True):
                assert_close(got[i], want, "exact")
        r12 = r12_toy(1.5, -0.3)
    assert_close(r12_toy(1.5, -0.3).ft_error, r12.ft_error, "exact")


@pytest.mark.slow
def test_k1_disable_jit_equals_jit():
    # Op-by-op Python loop over the 128 root-finder iterations: several seconds, so `slow`.
    tau = np.array([0.0, 0.7, 3.0])
    jitted = k1_trajectory(tau, v0=-1.0, alpha0=0.7, y=2.0)
    with jax.disable_jit():
        eager = k1_trajectory(tau, v0=-1.0, alpha0=0.7, y=2.0)
    for got, want in zip(eager, jitted, strict=True):
        assert_close(got, want, "exact")


def test_float32_stays_float32():
    f32 = np.float32
    tau = np.linspace(0, 3, NT)
    v, alpha = k1_trajectory(tau.astype(f32), v0=f32(0.3), alpha0=f32(0.7), y=1.0)
    assert v.dtype == alpha.dtype == jnp.float32
    v64, a64 = k1_trajectory(tau, v0=0.3, alpha0=0.7, y=1.0)
    np.testing.assert_allclose(v, v64, rtol=1e-5)
    np.testing.assert_allclose(alpha, a64, rtol=1e-5)
    assert toy2d_limit(f32(0.5), f32(0.5), f32(1.0), f32(0.3)).w_ft.dtype == jnp.float32
