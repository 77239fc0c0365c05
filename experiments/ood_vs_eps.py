r"""OOD error against the pretrained feature error $\varepsilon$ for LP, FT and LP-FT.

R7: LP's OOD error is $O(\varepsilon^2)$, below $\lambda_{\max}\varepsilon^2 a^2(1 + \kappa/c_S)^2$.
R5 (rigorous form): FT's
$\sqrt{L_{ood}(t)} \ge \sqrt{\lambda_{\min}}(c_\perp\delta_0 - \varepsilon a)$
at every t, so FT's error stays O(1) as $\varepsilon \to 0$ and LP wins (R8). R13: LP-FT stays
at LP's O($\varepsilon^2$) level. $\Sigma = I$, Gaussian heads, the same problems (common random
numbers) at every $\varepsilon$.
"""

from __future__ import annotations

import jax
import numpy as np

from linfeat import theory as T

from . import _common as C

_BASE = C.base_config(seed=2, head_scale=0.5, a=1.0)
CONFIGS = {
    "quick": dict(_BASE, seeds=16, eps=np.logspace(-4, np.log10(1.4), 7).tolist()),
    "full": dict(_BASE, seeds=128, eps=np.logspace(-4, np.log10(1.4), 13).tolist()),
}


def _row(P, H, v_lp, ft, lpft):
    """The arrays kept at one eps (C.eps_sweep): errors, R13's rise and the R5, R7 bounds."""
    k = C.batch_constants(P)
    phi = np.asarray(jax.vmap(T.head_alignment_error)(H, k["a_star"]))
    return {
        "lp": C.ood_error_batch(P, v_lp),
        "ft_final": ft["final_ood_error"],
        "ft_min": np.minimum(ft["metric_ood_error"].min(axis=1), ft["final_ood_error"]),
        "lpft_final": lpft["final_ood_error"],
        "lpft_max_rise": lpft["metric_ood_error"].max(axis=1) - lpft["metric_ood_error"][:, 0],
        "r7_upper": np.asarray(T.r7_lp_ood_bound(k["eps"], k["a"], k["kappa"], k["c_S"], 1.0)),
        "r5_lower_sqrt": np.asarray(T.r5_rigorous_bound(k["c_perp"], phi, k["a"], k["eps"], 1.0)),
        "status": np.stack([ft["status"], lpft["status"]]),
        "eps_measured": k["eps"],
    }


def compute(config, checkpoint=None):
    out = C.eps_sweep(config, checkpoint or C.Checkpoint(), _row, a=config["a"])  # (eps, seeds)
    out["eps"] = np.asarray(config["eps"])
    out["nonconverged"] = np.array(int(np.sum(out["status"] != 0)))
    # Fitted log-log slopes over the smallest half of the eps grid (medians over seeds).
    half = _fit_size(out["eps"])
    le = np.log10(out["eps"][:half])
    for key in ("lp", "lpft_final", "ft_min"):
        med = np.median(out[key][:half], axis=1)
        out[f"slope_{key}"] = np.array(np.polyfit(le, np.log10(np.maximum(med, 1e-300)), 1)[0])
    # R13 (observation): LP-FT's largest rise above its t = 0 error, per eps (max over seeds).
    out["lpft_rise_by_eps"] = out["lpft_max_rise"].max(axis=1)
    out["r7_violations"] = np.array(int(np.sum(out["lp"] > out["r7_upper"] * (1 + 1e-9))))
    lower = np.maximum(out["r5_lower_sqrt"], 0.0) ** 2
    out["r5_violations"] = np.array(int(np.sum(out["ft_min"] < lower * (1 - 1e-9))))
    return out


def _fit_size(eps):
    """Number of grid points (the smallest eps) the log-log slopes are fitted on."""
    return len(eps) // 2 + 1


RISE_TOL = 1e-6  # a rise of LP-FT's OOD error above its t = 0 value smaller than this is none


def r13_rise(r, tol=RISE_TOL) -> dict:
    """R13 (observation): where LP-FT's OOD error rises above its t = 0 (LP) value.

    `eps_ok`: the largest eps up to which (every grid eps <= it) no seed rises by more than
    `tol` (NaN if the smallest already does), `rise_ok` the largest rise there; `max_rise`, the
    largest rise over all eps and seeds, at `eps_at_max`, where `seeds_rising` seeds rise by
    more than `tol`.
    """
    rise = r["lpft_rise_by_eps"]
    ok = np.cumprod(rise <= tol).astype(bool)
    at = int(np.argmax(rise))
    return {
        "eps_ok": float(r["eps"][ok][-1]) if ok.any() else float("nan"),
        "rise_ok": float(rise[ok].max()) if ok.any() else float("nan"),
        "all_ok": bool(ok.all()),
        "max_rise": float(rise[at]),
        "eps_at_max": float(r["eps"][at]),
        "seeds_rising": int(np.sum(r["lpft_max_rise"][at] > tol)),
        "seeds": int(r["lpft_max_rise"].shape[1]),
        "tol": tol,
    }


def facts(results, config) -> dict:
    """The numbers quoted in the figure and in README (one computation for both)."""
    r = results
    eps = r["eps"]
    return {
        "seeds": int(r["lp"].shape[1]),
        "instances": int(r["lp"].size),
        "slope_lp": float(r["slope_lp"]),
        "slope_lpft": float(r["slope_lpft_final"]),
        "slope_ft_min": float(r["slope_ft_min"]),
        "fit_eps_max": float(eps[: _fit_size(eps)][-1]),
        "r7_violations": int(r["r7_violations"]),
        "r5_violations": int(r["r5_violations"]),
        # R8: median over seeds of LP / min_t FT at the smallest eps.
        "eps_min": float(eps[0]),
        "ratio_at_eps_min": float(np.median(r["lp"][0] / r["ft_min"][0])),
        "r13": r13_rise(r),
        "nonconverged": int(r["nonconverged"]),
    }


def r13_sentence(rr: dict) -> str:
    """The R13 observation in words (README and the figure's title)."""
    tol = C.num(rr["tol"], 1)
    if rr["all_ok"]:
        return f"LP-FT's OOD error never rises above its t = 0 value (by more than {tol}) at any ε"
    head = (
        f"LP-FT's OOD error never rises above its t = 0 value (by more than {tol}) for "
        f"ε ≤ {C.num(rr['eps_ok'])}; its largest rise"
        if np.isfinite(rr["eps_ok"])
        else "LP-FT's OOD error rises above its t = 0 value already at the smallest ε; its "
        "largest rise"
    )
    return (
        f"{head}, {C.num(rr['max_rise'])}, is at ε = {C.num(rr['eps_at_max'])} (where "
        f"{rr['seeds_rising']} of {rr['seeds']} seeds rise by more than {tol})"
    )


def readme(results, config) -> str:
    """README's paragraph; every number comes from `facts` (the results and the config)."""
    f = facts(results, config)
    n = f | C.nums(f, "slope_lp", "slope_lpft", digits=3) | C.counts(f, "seeds", "instances")
    n |= C.nums(f, "fit_eps_max", "slope_ft_min", "ratio_at_eps_min", "eps_min")
    n["r13"] = r13_sentence(f["r13"])
    text = """LP and LP-FT OOD errors scale as ε² (fitted log-log slopes {slope_lp} and
        {slope_lpft}, medians over {seeds} seeds for ε ≤ {fit_eps_max}) under the R7 upper bound
        ({r7_violations} violations in {instances} instances); FT's best error over time stays
        O(1) (slope {slope_ft_min}) above the R5 lower bound ({r5_violations} violations), so
        LP/FT → 0 as ε → 0 (R8: median ratio {ratio_at_eps_min} at ε = {eps_min}). R13 is an
        observation: {r13}."""
    return C.readme_paragraph("ood_vs_eps", text.format(**n))


def plot(results, config, outdir):
    r, f = results, facts(results, config)
    eps = r["eps"]
    fig, axes = C.figure(1, 2, figsize=(10.5, 4.3), gridspec_kw=dict(width_ratios=[1.5, 1]))
    ax = axes[0]
    for key, name, marker, label, extra in (
        ("lp", "LP", "o", f"LP (slope {C.num(f['slope_lp'], 3)})", {}),
        ("ft_final", "FT", "o", "FT, $t \\to \\infty$", {}),
        ("ft_min", "FT", "v", "FT, $\\min_t$ (early stopping)", dict(ls="--", alpha=0.08)),
        ("lpft_final", "LP-FT", "s", f"LP-FT (slope {C.num(f['slope_lpft'], 3)})", {}),
    ):
        C.band(ax, eps, r[key].T, color=C.COLORS[name], marker=marker, label=label, **extra)
    ax.plot(
        eps,
        np.median(r["r7_upper"], axis=1),
        color=C.COLORS["LP"],
        ls=":",
        lw=2,
        label="R7 upper bound on LP (median over seeds)",
    )
    lower = np.maximum(r["r5_lower_sqrt"], 0.0) ** 2
    med_lower = np.median(lower, axis=1)
    ok = med_lower > 0
    ax.plot(
        eps[ok],
        med_lower[ok],
        color=C.COLORS["FT"],
        ls=":",
        lw=2,
        label="R5 lower bound on FT, all t (rigorous; median)",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=max(1e-12, 0.3 * np.nanmin(np.median(r["lp"], axis=1))))
    ax.set_xlabel("pretrained feature error $\\varepsilon = d(B_0, B^*)$")
    ax.set_ylabel("OOD error $L_{ood}$ ($\\Sigma = I$)")
    ax.set_title("(a) R7, R8, R13: LP and LP-FT are $O(\\varepsilon^2)$, FT is not")
    ax.legend(loc="lower right", fontsize=6.8)

    ax = axes[1]
    for key, name, marker, label in (
        ("lp", "LP", "o", "$L_{ood}(LP) / \\min_t L_{ood}(FT)$"),
        ("lpft_final", "LP-FT", "s", "$L_{ood}(LP\\text{-}FT) / \\min_t L_{ood}(FT)$"),
    ):
        ratio = (r[key] / r["ft_min"]).T
        C.band(ax, eps, ratio, color=C.COLORS[name], marker=marker, label=label)
    ax.axhline(1.0, color=C.COLORS["bound"], lw=1, ls="--", label="equal error")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("$\\varepsilon$")
    ax.set_ylabel("OOD error ratio")
    ax.set_title("(b) R8: ratio $\\to 0$ as $\\varepsilon \\to 0$")
    ax.legend(loc="upper left", fontsize=6.8)
    title = (
        f"ood_vs_eps: {f['seeds']} seeds per $\\varepsilon$, median and 5-95% band; "
        f"R7 violations {f['r7_violations']}, R5 violations {f['r5_violations']}, "
        f"non-converged {f['nonconverged']}\nR13 (observation): {r13_sentence(f['r13'])}"
    )
    return C.finish(fig, outdir, "ood_vs_eps", title)
