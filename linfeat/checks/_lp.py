r"""Checks of the OOD risk identity and of linear probing: R3, R4, R7 and R9 of docs/theory.md.

R3: L_ood = e^T Sigma e (Monte Carlo and dense) and zero iff B^T v = w*; R4: LP with perfect
features is exact (closed form and LP flow); R7: LP's OOD error is O(eps) with the explicit
constant; R9: converged FT fits the ID subspace S while LP misfits it for eps > 0.
"""

from __future__ import annotations

import math

import numpy as np

from ._config import (
    RIGOROUS,
    TOL,
    CheckResult,
    Config,
    Sub,
    _lp_vs_ft,
    _max,
    _pd_mask,
    _ranges,
    formula_row,
    threshold_row,
)

# --- R3: OOD risk identity ------------------------------------------------------------------


def check_r3(data, extra, cfg: Config, seed: int) -> CheckResult:
    rng = np.random.default_rng(seed + 3)
    zs, n_inst = [], 0
    for part in data["mc"]:
        for Sig, e in zip(part["sigma"], part["e"]):
            n_inst += 1
            w, V = np.linalg.eigh(0.5 * (Sig + Sig.T))
            # Projector parts of Sigma have eigenvalues 0 up to rounding (~1e-16): zero them, else
            # their square roots (~1e-8) leak into x and swamp e^T Sigma e when e lies there.
            w = np.where(w > 1e-12 * w.max(), w, 0.0)
            root = V * np.sqrt(w)
            x = rng.standard_normal((cfg.mc_samples, len(e))) @ root.T
            sq = (x @ e) ** 2
            est, se = sq.mean(), sq.std(ddof=1) / math.sqrt(len(sq))
            formula = float(e @ Sig @ e)
            # Rounding floor: the eigenvectors are exact to ~1e-15, so e's parts in null
            # directions of Sigma leak in at that level (matters when e^T Sigma e ~ 1e-17).
            floor = 1e-12 * np.max(np.abs(w)) * float(e @ e)
            zs.append(max(abs(est - formula) - floor, 0.0) / max(se, 1e-300))
    zs = np.asarray(zs)
    # Exact side: linfeat's structured/reduced L_ood vs the dense e^T Sigma e at the final state.
    ft = data["ft"]
    dense = extra["dense_ood"]
    lin = ft["ood"][extra["dense_idx"], -1]
    resid = np.abs(lin - dense) / (1.0 + np.abs(dense))
    # "zero iff B^T v = w*": for PD Sigma, L_ood >= lam_min ||e||^2 along every trajectory.
    pd = _pd_mask(data)
    lam_min = data["prep"]["lam_min"][pd]
    lower = lam_min[:, None] * ft["err"][pd] ** 2
    iff_viol = int(np.sum(np.any(ft["ood"][pd] < lower * (1 - 1e-9) - 1e-15, axis=1)))
    s = TOL["mc_sigmas"]
    subs = [
        Sub(
            f"Monte Carlo ({cfg.mc_samples} OOD samples x ~ N(0, Sigma)) vs e^T Sigma e at the "
            f"final FT state",
            "[paper]",
            RIGOROUS,
            f"|estimate - formula| <= {s:g} standard errors + 1e-12 |Sigma| |e|^2",
            n_inst,
            int(np.sum(zs > s)),
            0,
            "max |z|",
            _max(zs),
        ),
        Sub(
            "linfeat's L_ood (reduced coordinates) vs dense e^T Sigma e",
            "[paper]",
            RIGOROUS,
            "relative residual <= 1e-10",
            len(resid),
            int(np.sum(resid > 1e-10)),
            0,
            "max",
            _max(resid),
        ),
        Sub(
            "zero iff B^T v = w*: L_ood(t) >= lam_min(Sigma) ||e(t)||^2 for PD Sigma",
            "[paper]",
            RIGOROUS,
            "at every saved t, relative slack 1e-9",
            int(pd.sum()),
            iff_viol,
            0,
            "",
            None,
        ),
    ]
    return CheckResult(
        "R3",
        "OOD risk identity",
        "L_ood(v, B) = E_ood[(v^T B x - w*^T x)^2] = e^T Sigma e with e = B^T v - w*; zero iff "
        "B^T v = w*.",
        "[paper]",
        _ranges(data),
        subs,
        notes=[
            f"The {s:g}-sigma rule has a false-alarm probability of about 6e-7 per instance; "
            "the draws are fixed by the seed."
        ],
    )


# --- R4: LP with perfect features ----------------------------------------------------------


def check_r4(data, extra) -> CheckResult:
    prep, meta = data["prep"], data["meta"]
    zero = meta["eps_knob"] == 0.0
    scale = 1.0 + meta["a_knob"][zero]
    dist = prep["lp_to_astar"][zero] / scale
    ood = np.sqrt(np.clip(prep["lp_ood"][zero], 0, None)) / scale
    lpf = extra["lp_flow"]
    tol = TOL["exact"]
    subs = [
        threshold_row(
            "closed-form LP limit from a Gaussian v0: ||v_lp - a*|| / (1 + a)", "[paper]", dist, tol
        ),
        threshold_row(
            "closed-form LP: sqrt(L_ood(v_lp, B0)) / (1 + a), every Sigma kind", "[paper]", ood, tol
        ),
        threshold_row(
            "LP flow (B frozen) integrated to convergence: ||v(inf) - a*|| / (1 + a)",
            "[paper]",
            lpf["dist"],
            TOL["fit"],
            rule=f"<= {TOL['fit']:g} (flow stopped by the gradient test)",
            nonconverged=lpf["nonconverged"],
            strict_convergence=True,
        ),
    ]
    return CheckResult(
        "R4",
        "LP with perfect features is exact",
        "If B0 = U B* and c_S > 0, the LP flow converges to a* = U v* from every v0 and "
        "L_ood(v_lp, B0) = 0 for every Sigma.",
        "[paper]",
        _ranges(data, zero),
        subs,
        numbers={"LP-flow instances (eps = 0, first group)": len(lpf["dist"])},
    )


# --- R7: LP is O(eps) -------------------------------------------------------------------------


def check_r7(data, extra) -> CheckResult:
    prep, meta = data["prep"], data["meta"]
    pos = meta["eps_knob"] > 0
    r_err = prep["lp_err"][pos] / prep["r7_err"][pos]
    r_ood = prep["lp_ood"][pos] / prep["r7_ood"][pos]
    zero = ~pos
    z_res = prep["lp_err"][zero] / (1 + prep["a"][zero])
    subs = [
        # R7's bounds are formulas of the same instance, so the slack is relative (1e-9
        # against the solver's 1e-12 tolerance on the LP limit, which is computed in closed form)
        threshold_row(
            "||e_lp|| <= eps a (1 + kappa/c_S)",
            "[derived]",
            r_err,
            1 + 1e-9,
            rule="ratio <= 1 + 1e-9",
            worst_name="max ratio",
        ),
        threshold_row(
            "L_ood(LP) <= lam_max eps^2 a^2 (1 + kappa/c_S)^2, every Sigma kind",
            "[derived]",
            r_ood,
            1 + 1e-9,
            rule="ratio <= 1 + 1e-9",
            worst_name="max ratio",
        ),
        threshold_row("eps = 0: ||e_lp|| / (1 + a)", "[derived]", z_res, TOL["exact"]),
        # eps enters every bound; the generator builds B0 at Procrustes distance eps from B*
        # by construction (principal angles), the library measures it by an SVD: two
        # independent computations of the same number (rounding only: 1e-12 + 1e-9 eps)
        threshold_row(
            "library feature error d(B0, B*) = the generator's feature_error",
            "[derived]",
            np.abs(prep["eps"] - meta["eps_knob"]) / (1e-3 + meta["eps_knob"]),
            1e-9,
            rule="|eps - knob| / (1e-3 + knob) <= 1e-9",
            worst_name="max relative gap",
            evidence=False,
        ),
        formula_row(data, "R7", "both bounds"),
    ]
    by_eps = {
        f"eps={e:g}": _max(r_err[meta["eps_knob"][pos] == e])
        for e in sorted(set(meta["eps_knob"][pos]))
    }
    return CheckResult(
        "R7",
        "LP's OOD error is O(eps)",
        "||e_lp|| <= eps a (1 + kappa(X)/c_S) and L_ood(LP) <= lam_max eps^2 a^2 (1 + "
        "kappa/c_S)^2.",
        "[derived]",
        _ranges(data),
        subs,
        numbers={"max ratio ||e_lp|| / bound by eps": by_eps},
    )


# --- R9: FT beats LP in distribution -----------------------------------------------------


def check_r9(data, extra) -> CheckResult:
    ft, prep, meta = data["ft"], data["prep"], data["meta"]
    scale = 1.0 + prep["a"]
    conv = ft["status"] == 0
    ft_S = ft["err_S"][:, -1] / scale
    pos = meta["eps_knob"] > 0
    lp_S = prep["lp_err_S"] / scale
    subs = [
        Sub(
            "converged FT fits S: ||Pi_S e_ft(inf)|| / (1 + a)",
            "[paper]",
            RIGOROUS,
            f"<= {TOL['fit']:g} on converged runs; non-converged runs fail the check",
            len(ft_S),
            int(np.sum(conv & (ft_S > TOL["fit"]))),
            int(np.sum(~conv)),
            "max",
            _max(ft_S[conv]),
            strict_convergence=True,
        ),
        # R9 says LP's misfit is positive; we can certify that down to the level at which R4
        # calls the closed-form LP exact (TOL["exact"] = 1e-8 relative: its rounding is
        # ~1e-14). That it also exceeds FT's fit (TOL["fit"] = 1e-6, the resolution at which
        # FT's residual counts as zero) is the ID *comparison*, which small eps and k close to
        # m can make unresolvable without contradicting R9: the full run has instances with
        # misfit 1.1e-7. Those are counted in the numbers, not failed. (A multiple of FT's own
        # final residual is no threshold: that value is the solver's global error at the stop,
        # 1e-9 to 1e-7, and it moved by 2x between builds with identical step counts.)
        threshold_row(
            "eps > 0 (generic w* not in rowspace B0): LP misfits S, ||Pi_S e_lp|| > 0 at LP's "
            "exactness level",
            "[paper]",
            lp_S[pos],
            TOL["exact"],
            above=True,
            rule=f"||Pi_S e_lp|| / (1 + a) > {TOL['exact']:g}",
            worst_name="min ||Pi_S e_lp|| / (1+a)",
        ),
    ]
    lp, _, ft_final = _lp_vs_ft(data)
    pd = _pd_mask(data) & pos
    tradeoff = float(np.mean(lp[pd] < ft_final[pd])) if pd.any() else None
    return CheckResult(
        "R9",
        "FT beats LP in distribution",
        "If Pi_S w* is not in Pi_S rowspace(B0), FT reaches zero training loss (Pi_S e_ft = 0) "
        "while LP has ||Pi_S e_lp|| > 0.",
        "[paper]",
        _ranges(data),
        subs,
        numbers={
            "ID-OOD trade-off: fraction (eps > 0, PD Sigma) where LP has lower final OOD "
            "loss": tradeoff,
            f"eps > 0 instances where LP's misfit is below FT's fit resolution "
            f"({TOL['fit']:g}): the ID win is not resolved there": int(
                np.sum(lp_S[pos] <= TOL["fit"])
            ),
        },
    )
