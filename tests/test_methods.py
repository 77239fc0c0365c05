"""The method zoo (linfeat.methods) against independent references (docs/theory.md, section 9).

References: a SciPy Radau solve of each method's full-space ODE in R^d (plain NumPy field);
the closed forms (LP stage via scipy.linalg.expm, the layer-wise rescaling identity, WiSE-FT's
polynomials against NumPy evaluations of e^T Sigma e in R^d); the invariants.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import FLOW_AGREEMENT, INVARIANT, TIGHT, max_rel_err, rounding
from scipy.integrate import solve_ivp

import linfeat as lf
from linfeat import methods as M

TS = np.array([0.0, 0.05, 0.3, 1.0, 3.0])
KNOBS = {
    "l2_sp": dict(lam=0.7, lam_v=0.3),
    "layerwise_ft": dict(eta_v=2.0, eta_B=0.5),
    "weight_decay_ft": dict(mu=0.2),
    "partial_lp_ft": dict(tau=0.15),
    # every knob at once except alpha: L2-SP and decay together make c(t) a mix (theory 9)
    "combined_ft": dict(lam=0.5, lam_v=0.2, mu=0.1, eta_v=1.3, eta_B=0.7, tau=0.1),
}


@pytest.fixture(scope="module")
def problem():
    p = lf.make_problem(jax.random.key(3), d=8, k=2, m=3, feature_error=0.3, ood="mixture",
                        ood_shift=0.4)  # fmt: skip
    v0 = lf.init_head(p, key=jax.random.key(4))
    return p, v0


def _full_field(p, v0, B0, *, lam=0.0, lam_v=0.0, eta_v=1.0, eta_B=1.0, mu=0.0, train_B=True):
    """The full-space flow in R^d of the penalised loss, in plain NumPy."""
    X, Y = np.asarray(p.X), np.asarray(p.Y)
    k, d = B0.shape

    def rhs(t, y):
        v, B = y[:k], y[k:].reshape(k, d)
        h = X.T @ (X @ (B.T @ v) - Y)
        dv = -eta_v * (2 * B @ h + 2 * lam_v * (v - v0) + 2 * mu * v)
        dB = -eta_B * (2 * np.outer(v, h) + 2 * lam * (B - B0) + 2 * mu * B)
        return np.concatenate([dv, dB.ravel() * train_B])

    return rhs


def _reference(p, v0, name, knobs, ts):
    """(v, B) at `ts` from SciPy Radau at rtol 1e-12 (partial LP-FT: LP to tau, then FT)."""
    v0, B0 = np.asarray(v0), np.asarray(p.B0)
    k, d = B0.shape
    y0 = np.concatenate([v0, B0.ravel()])
    kw = dict(method="Radau", rtol=1e-12, atol=1e-14)
    if "tau" in knobs:
        lp = _full_field(p, v0, B0, train_B=False)
        y0 = solve_ivp(lp, (0.0, knobs["tau"]), y0, **kw).y[:, -1]
        v0 = y0[:k]  # lam_v pulls towards the head FT starts from
        knobs = {n: x for n, x in knobs.items() if n != "tau"}
    sol = solve_ivp(_full_field(p, v0, B0, **knobs), (0.0, ts[-1]), y0, t_eval=ts, **kw)
    return sol.y[:k].T, sol.y[k:].T.reshape(len(ts), k, d)


@pytest.mark.parametrize("name", list(KNOBS))
def test_against_full_space_scipy(problem, name):
    """v(t), B(t) and the OOD error (exact reduced metrics) against the R^d solve; invariants."""
    p, v0 = problem
    knobs = KNOBS[name]
    tr = getattr(M, name)(p, v0, **knobs, ts=TS, t_max=TS[-1], check=False, **TIGHT)
    v_ref, B_ref = _reference(p, v0, name, knobs, TS)
    # two independent adaptive solves at rtol 1e-12: FLOW_AGREEMENT (1e-9, helpers.py)
    assert max_rel_err(tr.v, v_ref) < FLOW_AGREEMENT
    assert max_rel_err(tr.B, B_ref) < FLOW_AGREEMENT
    ood_ref = [float(lf.ood_error(p, v, B)) for v, B in zip(v_ref, B_ref)]
    assert max_rel_err(tr.metrics.ood_error, np.array(ood_ref)) < FLOW_AGREEMENT
    B, B0 = np.asarray(tr.B), np.asarray(p.B0)
    Q = np.asarray(lf.reduce(p).basis)
    perp = (B - B0) - (B - B0) @ Q @ Q.T  # (B(t) - B0) Pi_perp
    V = np.asarray(tr.v)
    vv, BB = np.einsum("ti,tj->tij", V, V), B @ np.swapaxes(B, 1, 2)
    if name == "combined_ft":
        lam, mu, eta_B = knobs["lam"], knobs["mu"], knobs["eta_B"]
        c_inf = lam / (lam + mu)  # c' = -2 eta_B (lam (c - 1) + mu c), c(0) = 1
        c = c_inf + (1 - c_inf) * np.exp(-2 * eta_B * (lam + mu) * TS)
        expect = (c[:, None, None] - 1) * (B0 - B0 @ Q @ Q.T)
        assert np.max(np.abs(perp - expect)) < INVARIANT
        np.testing.assert_allclose(tr.perp_scale, c, rtol=FLOW_AGREEMENT)
    elif name == "weight_decay_ft":
        decay = np.exp(-2 * knobs["mu"] * TS)  # B(t) Pi_perp = e^{-2 mu t} B0 Pi_perp
        expect = (decay[:, None, None] - 1) * (B0 - B0 @ Q @ Q.T)
        assert np.max(np.abs(perp - expect)) < INVARIANT
        np.testing.assert_allclose(tr.perp_scale, decay, rtol=FLOW_AGREEMENT)
        # imbalance decays as e^{-4 mu t} with this loss convention (the 2 mu refuted)
        imb0 = np.outer(v0, v0) - B0 @ B0.T
        imb = vv - BB - np.exp(-4 * knobs["mu"] * TS)[:, None, None] * imb0
        assert np.max(np.abs(imb)) < INVARIANT
        # the metric reports the perp change exactly
        np.testing.assert_allclose(
            tr.metrics.feature_change_perp, np.linalg.norm(perp, axis=(1, 2)), atol=INVARIANT
        )
    else:
        assert np.max(np.abs(perp)) < INVARIANT  # S-perp features frozen exactly
    if name == "layerwise_ft":
        q = vv / knobs["eta_v"] - BB / knobs["eta_B"]  # conserved
        assert np.max(np.abs(q - q[0])) < INVARIANT


def test_layerwise_equals_rescaled_ft(problem):
    """(v, B)(t) = (rho^-1/4 v~, rho^1/4 B~)(sqrt(eta_v eta_B) t), FT from (rho^1/4 v0, ...)."""
    p, v0 = problem
    eta_v, eta_B = 0.4, 3.0
    rho, c = eta_B / eta_v, np.sqrt(eta_v * eta_B)
    tr = M.layerwise_ft(p, v0, eta_v=eta_v, eta_B=eta_B, ts=TS, t_max=TS[-1], check=False, **TIGHT)
    p2 = p._replace(B0=rho ** (-0.25) * p.B0)
    ft = lf.fine_tune(p2, rho**0.25 * v0, ts=c * TS, t_max=c * TS[-1], check=False, **TIGHT)
    assert max_rel_err(tr.v, rho ** (-0.25) * ft.v) < FLOW_AGREEMENT
    assert max_rel_err(tr.B, rho**0.25 * ft.B) < FLOW_AGREEMENT


def test_lp_stage_closed_form_with_null_space():
    """v(tau) = v0 + ... against expm of the LP flow, where Phi has a null space (c_S = 0)."""
    rng = np.random.default_rng(1)
    d, m = 7, 3
    O = np.linalg.qr(rng.normal(size=(d, d)))[0]
    S = O[:, :m]
    X = rng.normal(size=(2 * m, m)) @ S.T
    # one feature in S, one orthogonal to S: Phi = X B0^T has a null space
    B0 = np.stack([S[:, 0], O[:, m]])
    w = rng.normal(size=d)
    p = lf.problem_from_arrays(X=X, Y=X @ w, B0=B0, w_star=w, check_theory=False)
    v0 = np.array([0.3, -1.1])
    Phi = X @ B0.T
    for tau in (0.0, 0.07, 0.9):
        # the LP flow dv/dt = -2 Phi^T (Phi v - Y) as an augmented linear system [v; 1]
        L = np.zeros((3, 3))
        L[:2, :2], L[:2, 2] = -2 * Phi.T @ Phi, 2 * Phi.T @ p.Y
        ref = (scipy.linalg.expm(tau * L) @ np.r_[v0, 1.0])[:2]
        from linfeat._methods_run import lp_stage

        got = lp_stage(lf.reduce(p), jnp.asarray(v0), tau)
        np.testing.assert_allclose(got, ref, atol=1e3 * rounding(np.float64))
        assert abs(float(got[1]) - v0[1]) < rounding(np.float64)  # null-space part fixed


# slow: WiSE-FT's quartic and frozen S-perp features are asserted by check M1
# (tests/test_checks.py)
@pytest.mark.slow
def test_wise_ft_polynomials_and_frozen_perp(problem):
    """OOD error: quartic in alpha (weights), convex quadratic (outputs), vs NumPy in R^d."""
    p, v0 = problem
    ft = lf.fine_tune(p, v0, **TIGHT)
    poly = M.wise_ft_ood_polynomials(p, ft)
    B0, Bf = np.asarray(p.B0), np.asarray(ft.B_final)
    vf, v0n = np.asarray(ft.v_final), np.asarray(v0)
    Q = np.asarray(lf.reduce(p).basis)
    Sig = np.asarray(lf._cov.to_dense(p.ood_cov, Q))
    w = np.asarray(p.w_star)
    alphas = np.array([-0.5, 0.0, 0.3, 0.5, 0.8, 1.0, 1.7])
    for a in alphas:
        Ba, va = (1 - a) * B0 + a * Bf, (1 - a) * v0n + a * vf
        np.testing.assert_allclose(Ba - Ba @ Q @ Q.T, B0 - B0 @ Q @ Q.T, atol=1e-13)
        e = Ba.T @ va - w
        ref = e @ Sig @ e
        assert abs(np.polyval(poly.weight[::-1], a) - ref) < 1e-10 * (1 + ref)
        np.testing.assert_allclose(M.wise_ft_metrics(p, ft, a).ood_error, ref, rtol=1e-10)
        ee = (1 - a) * (B0.T @ v0n - w) + a * (Bf.T @ vf - w)
        ref_e = ee @ Sig @ ee
        assert abs(np.polyval(poly.ensemble[::-1], a) - ref_e) < 1e-10 * (1 + ref_e)
        np.testing.assert_allclose(M.output_ensemble(p, ft, a).ood_error, ref_e, rtol=1e-10)
    assert poly.ensemble[2] >= 0 and poly.weight[4] > 0  # convex; genuinely degree 4
    # the quartic fitted through 5 alphas predicts the others (an independent least-squares fit)
    vals = [float(M.wise_ft_metrics(p, ft, a).ood_error) for a in alphas]
    fit = np.polyfit(alphas[:5], vals[:5], 4)
    np.testing.assert_allclose(np.polyval(fit, alphas[5:]), vals[5:], rtol=1e-8)
    # d/d alpha by autodiff against a central difference
    g = jax.grad(lambda a: M.wise_ft_metrics(p, ft, a).ood_error)(0.4)
    h = 1e-5
    fd = (vals_at(p, ft, 0.4 + h) - vals_at(p, ft, 0.4 - h)) / (2 * h)
    assert abs(g - fd) < 1e-7 * (1 + abs(fd))  # FD error O(h^2) ~ 1e-10 plus rounding/h


def vals_at(p, ft, a):
    return float(M.wise_ft_metrics(p, ft, a).ood_error)


@pytest.mark.slow
def test_wise_ft_trajectory_end_is_post_processing(problem):
    p, v0 = problem
    tr = M.wise_ft(p, v0, alpha=0.6, **TIGHT)
    ft = lf.fine_tune(p, v0, **TIGHT)
    post = M.wise_ft_metrics(p, ft, 0.6)
    assert max_rel_err(tr.final_metrics.ood_error, post.ood_error) < FLOW_AGREEMENT
    assert float(tr.final_metrics.feature_change_perp) == 0.0


@pytest.mark.parametrize(
    ("fn", "kw", "match"),
    [
        (M.l2_sp, dict(lam=-0.1), "lam"),
        (M.l2_sp, dict(lam=0.1, lam_v=float("nan")), "lam_v"),
        (M.layerwise_ft, dict(eta_v=0.0), "eta_v"),
        (M.layerwise_ft, dict(eta_B=-1.0), "eta_B"),
        (M.partial_lp_ft, dict(tau=-1.0), "tau"),
        (M.weight_decay_ft, dict(mu=float("inf")), "mu"),
        (M.wise_ft, dict(alpha=float("nan")), "alpha"),
    ],
)
def test_bad_knobs_raise(problem, fn, kw, match):
    p, v0 = problem
    with pytest.raises(ValueError, match=f"`{match}`"):
        fn(p, v0, **kw)


@pytest.mark.slow
def test_vmap_over_knob_equals_loop(problem):
    p, v0 = problem
    lams = jnp.array([0.1, 1.5])
    run = lambda lam: M.l2_sp(p, v0, lam=lam, ts=TS, t_max=TS[-1], check=False)  # noqa: E731
    batched = jax.vmap(run)(lams)
    for i, lam in enumerate(lams):
        one = run(lam)
        np.testing.assert_allclose(batched.v[i], one.v, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(batched.metrics.ood_error[i], one.metrics.ood_error,
                                   rtol=1e-12)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KNOBS))
def test_grad_wrt_knob_matches_central_difference(problem, name):
    p, v0 = problem
    (knob, x0), *rest = KNOBS[name].items()

    def f(x):
        tr = getattr(M, name)(p, v0, **{knob: x}, **dict(rest), ts=TS, t_max=TS[-1],
                              check=False, **TIGHT)  # fmt: skip
        return tr.metrics.ood_error[-1]

    g = float(jax.grad(f)(x0))
    h = 1e-4 * max(1.0, abs(x0))
    fd = (float(f(x0 + h)) - float(f(x0 - h))) / (2 * h)
    # FD truncation O(h^2) ~ 1e-8 and solver noise rtol / h ~ 1e-8
    assert np.isfinite(g) and abs(g - fd) < 1e-6 * (1 + abs(fd))


def test_penalised_structured_solve_equals_dense_jacobian_solve():
    """The zoo flow's closed-form (I - alpha J)^{-1} (`PenalisedFlow.factor`: every knob on)
    equals the dense solve with the jax.jacfwd Jacobian on random states, and reduces to
    `FineTune.factor` at the default knobs (rounding level: both are exact eliminations)."""
    from linfeat._flows import FineTune, FlowData
    from linfeat._methods_flows import FT_KNOBS, Knobs, MethodData, PenalisedFlow
    from linfeat._rodas5p import dense_factor

    rng = np.random.default_rng(3)
    k, r = 3, 5
    flow = PenalisedFlow()

    def arr(*s):
        return jnp.asarray(rng.normal(size=s))

    for trial in range(6):
        data = FlowData(jnp.asarray(rng.uniform(0.0, 3.0, r)), arr(r))
        if trial == 0:
            kn = Knobs(**{n: jnp.asarray(x) for n, x in FT_KNOBS.items()})
        else:
            lam, lam_v, mu = rng.uniform(0.0, 2.0, 3)
            eta_v, eta_B = rng.uniform(0.2, 3.0, 2)
            kn = Knobs(*map(jnp.asarray, (1.0, lam, lam_v, eta_v, eta_B, mu, 0.0)))
        args = MethodData(data, arr(k), arr(k, r), jnp.asarray(0.7), kn)
        y, b = (arr(k), arr(k, r), jnp.asarray(0.5)), (arr(k), arr(k, r), arr())
        alpha = jnp.asarray(rng.uniform(1e-3, 0.05))
        fast = flow.factor(y, args, alpha)(b)
        dense = dense_factor(flow.field, y, args, alpha)(b)
        for a, c in zip(fast, dense):
            np.testing.assert_allclose(a, c, rtol=0, atol=rounding(jnp.float64) * 100)
        if trial == 0:
            ft = FineTune().factor(y[:2], data, alpha)(b[:2])
            for a, c in zip(fast[:2], ft):
                np.testing.assert_allclose(a, c, rtol=0, atol=rounding(jnp.float64))
