"""The flow solver against the closed-form oracles of docs/theory.md, section 5."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TIGHT

import linfeat as lf
from linfeat._closed_form_oracles import k1_trajectory_problem_time, toy2d_limit, toy2d_trajectory

# The solver runs at rtol 1e-12 (TIGHT); the oracles are exact to ~1e-13. Measured on these
# cases: at most 6.6e-11 (toy, v0 = -1), the solver's global error after O(1e2) steps of local
# error 1e-12; 1e-9 leaves 15x. (`linfeat check` T1 uses 1e-8 on random instances, whose worst
# case is larger.)
ORACLE_TOL = 1e-9


def _toy_problem(beta0, beta_star, v_star):
    b0 = np.array([math.cos(beta0), math.sin(beta0)])
    w = v_star * np.array([math.cos(beta_star), math.sin(beta_star)])
    X = np.array([[1.0, 0.0]])
    return lf.problem_from_arrays(X=X, Y=X @ w, B0=b0[None], w_star=w, check_theory=False)


@pytest.mark.parametrize("v0", [0.3, -1.0, 2.0])
def test_toy2d_limit_and_trajectory(v0):
    beta0 = beta_star = math.pi / 4
    p = _toy_problem(beta0, beta_star, 1.0)
    ts = np.array([0.0, 0.05, 0.3, 1.0, 3.0])
    tr = lf.fine_tune(p, jnp.array([v0]), ts=ts, **TIGHT)
    ref = toy2d_trajectory(ts, beta0, beta_star, 1.0, v0)
    np.testing.assert_allclose(tr.v[:, 0], ref.v, atol=ORACLE_TOL)
    np.testing.assert_allclose(tr.B[:, 0, :], ref.b, atol=ORACLE_TOL)
    lim = toy2d_limit(beta0, beta_star, 1.0, v0)
    np.testing.assert_allclose(tr.v_final[0], lim.v_inf, atol=ORACLE_TOL)
    np.testing.assert_allclose(tr.B_final[0], lim.b_inf, atol=ORACLE_TOL)
    ood_final = lf.ood_error(p, tr.v_final, tr.B_final)  # Sigma = I, the toy's OOD loss
    np.testing.assert_allclose(ood_final, lim.ft_ood_error, atol=ORACLE_TOL)
    v_lp = lf.linear_probe(p)
    np.testing.assert_allclose(v_lp[0] * p.B0[0], lim.w_lp, atol=1e-12)


CASES = [(0.4, 0.6, 1.5), (-1.2, 0.3, 0.8), (0.2, 0.9, -1.0)]


@pytest.mark.parametrize(("v0", "alpha0", "y"), CASES)
def test_exact_k1_trajectory_whitened(v0, alpha0, y):
    """k = 1, X^T X = s Pi_S, Pi_S b0 parallel to Pi_S w*: b(t) = alpha(t) u + Pi_perp b0."""
    d, m, s = 9, 3, 2.5
    rng = np.random.default_rng(0)
    O = np.linalg.qr(rng.normal(size=(d, d)))[0]
    S, perp = O[:, :m], O[:, m:]
    X = math.sqrt(s) * S.T  # whitened ID data: X^T X = s Pi_S
    u, u_perp = S[:, 0], perp[:, 0]
    b0 = alpha0 * u + math.sqrt(1 - alpha0**2) * u_perp
    w = y * u + 0.7 * perp[:, 1]  # Pi_S w* = y u
    p = lf.problem_from_arrays(X=X, Y=X @ w, B0=b0[None], w_star=w, check_theory=False)
    ts = np.array([0.0, 0.02, 0.2, 1.0, 4.0])
    tr = lf.fine_tune(p, jnp.array([v0]), ts=ts, **TIGHT)
    ref = k1_trajectory_problem_time(ts, s=s, v0=v0, alpha0=alpha0, y=y)
    np.testing.assert_allclose(tr.v[:, 0], ref.v, atol=ORACLE_TOL)
    b_ref = np.asarray(ref.alpha)[:, None] * u + math.sqrt(1 - alpha0**2) * u_perp
    np.testing.assert_allclose(tr.B[:, 0, :], b_ref, atol=ORACLE_TOL)
