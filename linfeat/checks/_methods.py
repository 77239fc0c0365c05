r"""Checks of the method zoo, part A: M1 (WiSE-FT), M2 (L2-SP), M3 (layer-wise rates),
M4 (partial LP then FT), M7 (weight decay); docs/theory.md, section 9.

Each check draws its own small instances (`_instances`; it does not use `collect`), runs the
public `linfeat.methods` functions at rtol 1e-12 and compares them with an independent
reference: SciPy's DOP853 on the method's full-space ODE in R^d (plain NumPy field), the
closed forms of section 9, and NumPy evaluations of the errors in R^d. Rigorous rows hold on
every instance within `TOL`; observations (the [derived] hypotheses that were refuted or
whose rate is an asymptotic statement) are reported, never asserted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from scipy.integrate import solve_ivp

from .. import _cov
from .. import methods as M
from .._closed_form import linear_probe
from .._generate import init_head, make_problem
from .._methods_run import lp_stage
from .._reduce import reduce
from ._config import OBSERVATION, QUICK, SOLVER, TOL, CheckResult, Sub, threshold_row

T_END = 3.0  # trajectories compared with the R^d reference on [0, T_END]
NS = 64  # every solve saves 64 times, the library's default: one compiled program for all
TS = np.linspace(0.0, T_END, NS)
DIMS = dict(d=8, k=2, m=3)


def _cfg_seed(extra):
    """The run's Config and seed (`run_checks` puts them in `extra`)."""
    return extra.get("cfg", QUICK), extra.get("seed", 0)


_lp_stage = jax.jit(lp_stage)


def _instances(cfg, seed, tag: int, eps=None):
    """(problem, v0) pairs: full 8, else (quick, tests) 2; eps cycles over (0, 0.1, 0.3, 1.0)."""
    num = 8 if cfg.name == "full" else 2
    grid = (0.0, 0.1, 0.3, 1.0) if eps is None else eps
    key = jax.random.fold_in(jax.random.key(seed), 1000 + tag)
    out = []
    for i in range(num):
        kp, kh = jax.random.split(jax.random.fold_in(key, i))
        p = make_problem(kp, **DIMS, feature_error=grid[i % len(grid)], ood="mixture",
                         ood_shift=0.4)  # fmt: skip
        out.append((p, init_head(p, key=kh)))
    return out


def _full(p, v0, ts, *, lam=0.0, lam_v=0.0, eta_v=1.0, eta_B=1.0, mu=0.0, tau=0.0):
    """(v, B) at `ts` of the penalised flow in R^d (SciPy DOP853, rtol 1e-12), after an LP stage
    of length tau (B frozen)."""
    X, Y, B0 = (np.asarray(x) for x in (p.X, p.Y, p.B0))
    v0 = np.asarray(v0)
    k, d = B0.shape

    def rhs(train, lam, lam_v, eta_v, eta_B, mu):
        def f(t, y):
            v, B = y[:k], y[k:].reshape(k, d)
            h = X.T @ (X @ (B.T @ v) - Y)
            dv = -eta_v * (2 * B @ h + 2 * lam_v * (v - v0) + 2 * mu * v)
            dB = -eta_B * (2 * np.outer(v, h) + 2 * lam * (B - B0) + 2 * mu * B)
            return np.concatenate([dv, dB.ravel() * train])

        return f

    # DOP853 (explicit, 8th order) at rtol 1e-12: 20x faster than Radau on these short,
    # mildly stiff horizons, and as accurate (agreed to 1e-12 when this was written)
    kw = dict(method="DOP853", rtol=1e-12, atol=1e-14)
    y0 = np.concatenate([v0, B0.ravel()])
    if tau > 0:
        y0 = solve_ivp(rhs(0.0, 0, 0, 1, 1, 0), (0, tau), y0, **kw).y[:, -1]
    sol = solve_ivp(rhs(1.0, lam, lam_v, eta_v, eta_B, mu), (0, ts[-1]), y0, t_eval=ts, **kw)
    return sol.y[:k].T, sol.y[k:].T.reshape(len(ts), k, d)


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _perp(p, B):
    Q = np.asarray(reduce(p).basis)
    return B - B @ Q @ Q.T


def _engine_row(gaps, what) -> Sub:
    row = threshold_row(
        f"engine (reduced state, Rodas5P) vs SciPy DOP853 in R^d: {what}, max relative gap over "
        f"t in [0, {T_END:g}]",
        "[implementation]",
        gaps,
        TOL["engines"],
        worst_name="max relative gap",
    )
    row.evidence = False
    return row


def _ranges(cfg, eps=(0.0, 0.1, 0.3, 1.0), **extra) -> dict:
    return {"(d, k, m)": [DIMS["d"], DIMS["k"], DIMS["m"]], "eps": list(eps), "n": "2m",
            "Sigma": "0.6 Pi_S + 0.4 Pi_perp", "heads": "N(0, I)", **extra}  # fmt: skip


# --- M1: WiSE-FT ------------------------------------------------------------------------------


def check_m1(data, extra) -> CheckResult:
    cfg, seed = _cfg_seed(extra)
    alphas = np.linspace(-0.5, 1.5, 9)
    frozen, quartic, fit4, fit2, convex, lead, best = [], [], [], [], [], [], []
    for p, v0 in _instances(cfg, seed, 1):
        # the weight-space interpolation with the FT point at T_END (any FT point will do)
        tr = M.wise_ft(p, v0, alpha=1.0, ts=TS, t_max=T_END, check=False, **SOLVER)
        poly = M.wise_ft_ood_polynomials(p, tr)
        V, Bs = _full(p, v0, TS)
        B0, w = np.asarray(p.B0), np.asarray(p.w_star)
        Sig = np.asarray(_cov.to_dense(p.ood_cov, reduce(p).basis))
        vals, ens = [], []
        for a in alphas:
            Ba, va = (1 - a) * B0 + a * Bs[-1], (1 - a) * np.asarray(v0) + a * V[-1]
            frozen.append(np.linalg.norm(_perp(p, Ba - B0)) / np.sqrt(DIMS["k"]))
            e = Ba.T @ va - w
            ee = (1 - a) * (B0.T @ np.asarray(v0) - w) + a * (V[-1] @ Bs[-1] - w)
            vals.append(e @ Sig @ e)
            ens.append(ee @ Sig @ ee)
        vals, ens = np.array(vals), np.array(ens)
        quartic.append(_rel(np.polyval(np.asarray(poly.weight)[::-1], alphas), vals))
        c4 = np.polyfit(alphas[::2], vals[::2], 4)  # through 5 alphas, predict the other 4
        fit4.append(_rel(np.polyval(c4, alphas[1::2]), vals[1::2]))
        c2 = np.polyfit(alphas[[0, 4, 8]], ens[[0, 4, 8]], 2)
        fit2.append(_rel(np.polyval(c2, alphas), ens))
        convex.append(-float(poly.ensemble[2]) / max(float(np.max(ens)), 1e-300))
        lead.append(float(poly.weight[4]) / max(float(np.max(vals)), 1e-300))
        fine = np.linspace(0, 1, 101)
        curve = np.polyval(np.asarray(poly.weight)[::-1], fine)
        best.append(float(np.min(curve) / min(curve[0], curve[-1])))
    subs = [
        threshold_row("||(B_alpha - B0) Pi_perp||_F / sqrt(k), B_ft from the R^d flow, 9 alphas",
                      "[derived]", frozen, TOL["frozen"]),
        threshold_row("library quartic (from the engine) vs e^T Sigma e of the R^d interpolation",
                      "[derived]", quartic, TOL["engines"], worst_name="max relative gap"),
        threshold_row("OOD error of the R^d interpolation: degree-4 fit through 5 alphas predicts "
                      "the other 4", "[derived]", fit4, 1e-8, worst_name="max relative gap"),
        threshold_row("output ensemble in R^d: quadratic through 3 alphas predicts all 9",
                      "[derived]", fit2, 1e-8, worst_name="max relative gap"),
        threshold_row("output ensemble convex: -(alpha^2 coefficient) / max error <= 0",
                      "[derived]", convex, 0.0, worst_name="max"),
        Sub("leading (alpha^4) coefficient / max error: > 0 means degree exactly 4",
            "[observation]", OBSERVATION, "report min", len(lead), None, 0, "min",
            float(np.min(lead))),
        Sub("min over alpha in [0, 1] of L_ood / min(L_ood(0), L_ood(1)) (< 1: WiSE-FT beats "
            "both ends)", "[observation]", OBSERVATION, "report median", len(best), None, 0,
            "median", float(np.median(best))),
    ]  # fmt: skip
    return CheckResult(
        "M1", "WiSE-FT: frozen S-perp features, quartic OOD error, convex ensemble",
        "theta_alpha = (1 - alpha) theta_0 + alpha theta_ft has B_alpha Pi_perp = B0 Pi_perp for "
        "every alpha, its OOD error is a polynomial of degree 4 in alpha, and the output "
        "ensemble's is a convex quadratic (docs/theory.md 9.1: proved).",
        "[derived]", _ranges(cfg, alpha=[float(alphas[0]), float(alphas[-1])]), subs,
    )  # fmt: skip


# --- M2: L2-SP --------------------------------------------------------------------------------


def _hessian_min(p, lam):
    """Smallest eigenvalue of the Hessian of F = L + lam ||A - A0||^2 at (v_lp, A0), in the
    reduced coordinates that move (the columns of Q with s > 0)."""
    red, v_lp, k = reduce(p), linear_probe(p), DIMS["k"]

    def F(z):
        v, A = z[:k], z[k:].reshape(red.A0.shape)
        return jnp.sum((red.XQ @ (A.T @ v) - red.Y) ** 2) + lam * jnp.sum((A - red.A0) ** 2)

    H = np.asarray(jax.jit(jax.hessian(F))(jnp.concatenate([v_lp, red.A0.ravel()])))
    keep = np.r_[np.ones(k), np.tile(np.asarray(red.sigma2) > 0, k)].astype(bool)
    return float(np.linalg.eigvalsh(H[np.ix_(keep, keep)])[0])


def _l2sp_fate(p, v0, lam):
    """L2-SP (lam_v = 0) from v0 on a problem where LP fits, run to t = 1e8: ('converged',
    measured decay rate / smallest Hessian eigenvalue) or ('escaped', d log|v| / d log t on
    [1e6, 1e8]); and ||(B - B0) Pi_S||_F / c_S at the end."""
    red, v_lp = reduce(p), np.asarray(linear_probe(p))
    A0 = np.asarray(red.A0)

    def dist(tr):
        dv = np.sum((np.asarray(tr.v) - v_lp) ** 2, axis=1)
        return np.sqrt(dv + np.sum((np.asarray(tr.A) - A0) ** 2, axis=(1, 2)))

    run = lambda ts: M.l2_sp(p, v0, lam=lam, ts=ts, t_max=ts[-1], grad_tol=1e-300,  # noqa: E731
                             check=False)  # fmt: skip
    ts = np.r_[0.0, np.logspace(-2, 8, NS - 1)]
    tr = run(ts)
    c_S = float(np.linalg.svd(A0, compute_uv=False)[-1])  # sigma_k(Pi_S B0^T) = sigma_k(B0 Q)
    drift = float(tr.final_metrics.feature_change_S) / c_S
    dd = dist(tr)
    if dd[-1] < 1e-8:
        h = _hessian_min(p, lam)
        # The linear regime, where dist decays as e^{-h t}, starts where dist crosses 1e-3.
        # Runs can wander far (dist ~ 10) and collapse late, between two logarithmic saves:
        # bracket the crossing on finer grids until it is known to within 1/h (one e-fold).
        j = int(np.argmax(dd < 1e-3))
        lo, hi = ts[max(j - 1, 1)], ts[j]
        for _ in range(8):
            if hi - lo <= 1.0 / h:
                break
            grid = np.r_[0.0, np.linspace(lo, hi, NS - 1)]
            dg = dist(run(grid))
            jj = max(int(np.argmax((dg < 1e-3) & (grid > 0))), 2)
            lo, hi = grid[jj - 1], grid[jj]
        lin = np.r_[0.0, np.linspace(lo, lo + 20.0 / h, NS - 1)]
        dd = dist(run(lin))
        win = (dd > 1e-11) & (dd < 1e-4) & (lin > 0)
        if win.sum() >= 3:
            rate = -np.polyfit(lin[win], np.log(dd[win]), 1)[0]
            return "converged", rate / h, drift
        return "unresolved", np.nan, drift
    late = ts >= 1e6
    nv = np.linalg.norm(np.asarray(tr.v), axis=1)
    return "escaped", np.polyfit(np.log(ts[late]), np.log(nv[late]), 1)[0], drift


def check_m2(data, extra) -> CheckResult:
    cfg, seed = _cfg_seed(extra)
    lam, lam_v = 0.7, 0.3
    frozen, gaps, lp_fit = [], [], []
    for p, v0 in _instances(cfg, seed, 2):
        tr = M.l2_sp(p, v0, lam=lam, lam_v=lam_v, ts=TS, t_max=T_END, check=False, **SOLVER)
        V, Bs = _full(p, v0, TS, lam=lam, lam_v=lam_v)
        gaps.append(max(_rel(tr.v, V), _rel(tr.B, Bs)))
        frozen.append(np.max(np.linalg.norm(_perp(p, Bs - np.asarray(p.B0)), axis=(1, 2))))
    fates = {"converged": [], "escaped": [], "unresolved": []}
    zero = _instances(cfg, seed, 22, eps=(0.0,))[: None if cfg.name == "full" else 1]
    for i, (p, v0) in enumerate(zero):
        v_lp = linear_probe(p)
        # (v_lp, B0) is a zero of F = L + lam ||B - B0||^2 when LP fits: the global minimum
        lp_fit.append(float(np.sqrt(np.sum((np.asarray(p.X) @ (np.asarray(p.B0).T @ v_lp)
                                            - np.asarray(p.Y)) ** 2))))  # fmt: skip
        for scale in (0.5, 1.5):
            fate, x, y = _l2sp_fate(p, scale * v0, 0.1)
            fates[fate].append((x, y))
    conv, esc = np.array(fates["converged"]), np.array(fates["escaped"])
    subs = [
        threshold_row("(B(t) - B0) Pi_perp in the R^d flow (SciPy), max over t, Frobenius",
                      "[derived]", frozen, TOL["frozen"]),
        _engine_row(gaps, "v and B"),
        threshold_row("eps = 0: LP fits the ID data, ||X B0^T v_lp - Y|| (so F(v_lp, B0) = 0 = "
                      "min F for lam_v = 0)", "[derived]", lp_fit, TOL["exact"]),
        Sub("runs (eps = 0, lam = 0.1, lam_v = 0) that converge to (v_lp, B0): measured decay "
            "rate / smallest Hessian eigenvalue of F (1 = exponential, as the linearisation "
            "predicts; 'sublinear' refuted)", "[observation]", OBSERVATION,
            "report max |ratio - 1|",
            len(conv), None, 0, "max |ratio - 1|",
            float(np.max(np.abs(conv[:, 0] - 1))) if len(conv) else None),
        Sub("runs (same) that do not reach the global minimum but escape to |v| -> inf: "
            "d log|v| / d log t on [1e6, 1e8] (1/3 predicted)", "[observation]", OBSERVATION,
            "report median exponent", len(esc), None, 0, "median",
            float(np.median(esc[:, 0])) if len(esc) else None),
    ]  # fmt: skip
    runs = len(conv) + len(esc) + len(fates["unresolved"])
    notes = [
        f"{len(conv)} of {runs} runs from heads 0.5 v0 and 1.5 v0 converged to "
        "(v_lp, B0); the others ran off with ||(B - B0) Pi_S||_F -> c_S "
        + (
            f"(||(B - B0) Pi_S||_F / c_S = {np.median(esc[:, 1]):.4f} at t = 1e8, median)"
            if len(esc)
            else ""
        )
        + ": the infimum of F along that valley is lam c_S^2 > 0, approached as t^(-1/3)."
    ]
    if fates["unresolved"]:
        notes.append(
            f"{len(fates['unresolved'])} run(s) converged to (v_lp, B0) (distance < 1e-8 at "
            "t = 1e8) but their decay rate was not resolved: fewer than three saves fell between "
            "1e-4 and 1e-11 after the crossing of 1e-3; they are left out of the rate row."
        )
    return CheckResult(
        "M2", "L2-SP: frozen S-perp features; its minimum and how it is reached",
        "With loss + lam ||B - B0||_F^2 (+ lam_v ||v - v0||^2) the features stay frozen on S-perp "
        "exactly; if LP fits the ID data and lam_v = 0, (v_lp, B0) is the global minimum. The "
        "issue's 'reached sublinearly' is refuted (docs/theory.md 9.2): when reached, the "
        "approach is exponential; from some heads it is not reached at all.",
        "[derived]", _ranges(cfg, lam=lam, lam_v=lam_v), subs, notes=notes,
    )  # fmt: skip


# --- M3: layer-wise rates ---------------------------------------------------------------------


def check_m3(data, extra) -> CheckResult:
    cfg, seed = _cfg_seed(extra)
    inv, inv_full, resc, gaps = [], [], [], []
    for i, (p, v0) in enumerate(_instances(cfg, seed, 3)):
        eta_v, eta_B = ((2.0, 0.5), (0.3, 3.0))[i % 2]
        tr = M.layerwise_ft(p, v0, eta_v=eta_v, eta_B=eta_B, ts=TS, t_max=T_END, check=False,
                            **SOLVER)  # fmt: skip
        V, Bs = _full(p, v0, TS, eta_v=eta_v, eta_B=eta_B)
        gaps.append(max(_rel(tr.v, V), _rel(tr.B, Bs)))
        for (vv, BB), out in (((np.asarray(tr.v), np.asarray(tr.B)), inv), ((V, Bs), inv_full)):
            q = np.einsum("ti,tj->tij", vv, vv) / eta_v - BB @ np.swapaxes(BB, 1, 2) / eta_B
            out.append(np.max(np.abs(q - q[0])) / np.max(np.abs(q[0])))
        rho, c = eta_B / eta_v, np.sqrt(eta_v * eta_B)
        ft = M.wise_ft(p._replace(B0=rho**-0.25 * p.B0), rho**0.25 * v0, alpha=1.0, ts=c * TS,
                       t_max=c * T_END, check=False, **SOLVER)  # fmt: skip
        resc.append(max(_rel(tr.v, rho**-0.25 * np.asarray(ft.v)),
                        _rel(tr.B, rho**0.25 * np.asarray(ft.B))))  # fmt: skip
    subs = [
        threshold_row("v v^T / eta_v - B B^T / eta_B conserved: R^d flow (SciPy), relative drift",
                      "[derived]", inv_full, TOL["invariant"]),
        threshold_row("same, engine", "[derived]", inv, TOL["invariant"]),
        threshold_row("(v, B)(t) = (rho^-1/4 v~, rho^1/4 B~)(sqrt(eta_v eta_B) t), (v~, B~) FT "
                      "from (rho^1/4 v0, rho^-1/4 B0): relative gap", "[derived]", resc,
                      TOL["engines"]),
        _engine_row(gaps, "v and B"),
    ]  # fmt: skip
    return CheckResult(
        "M3", "Layer-wise rates: conserved quantity and the rescaling to FT",
        "v' = -eta_v grad_v L, B' = -eta_B grad_B L conserves v v^T / eta_v - B B^T / eta_B and is "
        "standard FT from (rho^1/4 v0, rho^-1/4 B0), rho = eta_B / eta_v, in time "
        "sqrt(eta_v eta_B) t, mapped back by (rho^-1/4, rho^1/4) (docs/theory.md 9.3: proved).",
        "[derived]", _ranges(cfg, **{"(eta_v, eta_B)": [[2.0, 0.5], [0.3, 3.0]]}), subs,
    )  # fmt: skip


# --- M4: partial LP then FT ------------------------------------------------------------------


def check_m4(data, extra) -> CheckResult:
    cfg, seed = _cfg_seed(extra)
    closed, limit, gaps, mono = [], [], [], []
    taus = (0.0, 0.05, 0.5, 5.0)
    for p, v0 in _instances(cfg, seed, 4):
        red = reduce(p)
        Phi, Y = np.asarray(p.X) @ np.asarray(p.B0).T, np.asarray(p.Y)
        k = DIMS["k"]
        L = np.zeros((k + 1, k + 1))
        L[:k, :k], L[:k, k] = -2 * Phi.T @ Phi, 2 * Phi.T @ Y
        for tau in taus:
            ref = (scipy.linalg.expm(tau * L) @ np.r_[np.asarray(v0), 1.0])[:k]
            got = np.asarray(_lp_stage(red, v0, tau))
            closed.append(np.max(np.abs(got - ref)) / (1 + np.max(np.abs(ref))))
        lam_min = np.linalg.eigvalsh(Phi.T @ Phi)[0]
        v_inf = np.asarray(_lp_stage(red, v0, 50.0 / lam_min))  # e^{-100} of the gap is left
        v_lp = np.asarray(linear_probe(p, v0))
        limit.append(np.max(np.abs(v_inf - v_lp)) / (1 + np.max(np.abs(v_lp))))
        tau = 0.15
        tr = M.partial_lp_ft(p, v0, tau=tau, ts=TS, t_max=T_END, check=False, **SOLVER)
        V, Bs = _full(p, v0, TS, tau=tau)
        gaps.append(max(_rel(tr.v, V), _rel(tr.B, Bs)))
        if cfg.name == "full":  # an observation: full mode only (10 solves to convergence)
            oods = [
                float(M.partial_lp_ft(p, v0, tau=t, check=False, **SOLVER).final_metrics.ood_error)
                for t in (0.0, 0.02, 0.1, 0.5, 2.0)
            ]
            mono.append(bool(np.all(np.diff(oods) <= 1e-12)))
    subs = [
        threshold_row("closed-form LP stage vs expm of the LP flow, tau in {0, 0.05, 0.5, 5}",
                      "[derived]", closed, TOL["exact"]),
        threshold_row("tau -> inf: v(tau) = the LP limit closest to v0", "[derived]", limit,
                      TOL["exact"]),
        _engine_row(gaps, "v and B after LP to tau = 0.15"),
        Sub("converged OOD error non-increasing in tau on (0, 0.02, 0.1, 0.5, 2)",
            "[observation]", OBSERVATION, "report fraction (full mode only)", len(mono), None, 0,
            "fraction", float(np.mean(mono)) if mono else None),
    ]  # fmt: skip
    return CheckResult(
        "M4", "Partial LP then FT: the LP stage in closed form",
        "The LP flow for time tau is v(tau) = v0 + U diag((1 - e^{-2 kappa tau}) / kappa) U^T "
        "Phi^T (Y - Phi v0), Phi^T Phi = U diag(kappa) U^T (= v* + e^{-2 Phi^T Phi tau}(v0 - v*) "
        "on range(Phi^T); the null-space part of v0 never moves); then FT (docs/theory.md 9.4).",
        "[derived]", _ranges(cfg, tau=list(taus)), subs,
    )  # fmt: skip


# --- M7: weight decay -------------------------------------------------------------------------


def check_m7(data, extra) -> CheckResult:
    cfg, seed = _cfg_seed(extra)
    imb4, imb2, perp, gaps, metric = [], [], [], [], []
    mu = 0.2
    for p, v0 in _instances(cfg, seed, 7):
        tr = M.weight_decay_ft(p, v0, mu=mu, ts=TS, t_max=T_END, check=False, **SOLVER)
        V, Bs = _full(p, v0, TS, mu=mu)
        B0 = np.asarray(p.B0)
        gaps.append(max(_rel(tr.v, V), _rel(tr.B, Bs)))
        imb = np.einsum("ti,tj->tij", V, V) - Bs @ np.swapaxes(Bs, 1, 2)
        size = np.max(np.abs(imb[0]))
        imb4.append(np.max(np.abs(imb - np.exp(-4 * mu * TS)[:, None, None] * imb[0])) / size)
        imb2.append(np.max(np.abs(imb - np.exp(-2 * mu * TS)[:, None, None] * imb[0])) / size)
        c = np.exp(-2 * mu * TS)[:, None, None]
        perp.append(np.max(np.abs(_perp(p, Bs) - c * _perp(p, B0))))
        ref = np.linalg.norm(_perp(p, Bs - B0), axis=(1, 2))
        metric.append(_rel(tr.metrics.feature_change_perp[1:], ref[1:]))
    subs = [
        threshold_row("v v^T - B B^T = e^{-4 mu t}(v0 v0^T - B0 B0^T) in the R^d flow, relative",
                      "[derived]", imb4, TOL["invariant"]),
        threshold_row("B(t) Pi_perp = e^{-2 mu t} B0 Pi_perp in the R^d flow", "[derived]", perp,
                      TOL["invariant"]),
        _engine_row(gaps, "v and B (B from the reduced state and the S-perp factor)"),
        threshold_row("feature_change_perp metric vs ||(B - B0) Pi_perp||_F of the R^d flow",
                      "[implementation]", metric, TOL["engines"], worst_name="max relative gap"),
        Sub("the issue's e^{-2 mu t}: relative gap to the R^d imbalance (O(1): refuted)",
            "[observation]", OBSERVATION, "report min", len(imb2), None, 0, "min",
            float(np.min(imb2))),
    ]  # fmt: skip
    subs[3].evidence = False
    return CheckResult(
        "M7", "Weight decay: the imbalance decays as e^{-4 mu t}; B Pi_perp as e^{-2 mu t}",
        "With loss ||X B^T v - Y||^2 + mu(||v||^2 + ||B||_F^2) and v' = -grad_v, the imbalance "
        "v v^T - B B^T decays as e^{-4 mu t} (the issue's e^{-2 mu t} holds for the penalty "
        "mu/2 (...); refuted as stated) and B Pi_perp = e^{-2 mu t} B0 Pi_perp (docs/theory.md "
        "9.5: proved).",
        "[derived]", _ranges(cfg, mu=mu), subs,
    )  # fmt: skip
