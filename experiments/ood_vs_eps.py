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

import linfeat as lf
from linfeat import _theory as T

from . import _common as C

_BASE = dict(seed=2, dims=C.DIMS, chunk=C.CHUNK, head_scale=0.5, a=1.0)
CONFIGS = {
    "quick": dict(_BASE, seeds=16, eps=np.logspace(-4, np.log10(1.4), 7).tolist()),
    "full": dict(_BASE, seeds=128, eps=np.logspace(-4, np.log10(1.4), 13).tolist()),
}


def compute(config, checkpoint=None):
    ckpt = checkpoint or C.Checkpoint()
    dims, chunk, S = config["dims"], config["chunk"], config["seeds"]
    kP, kH = jax.random.split(jax.random.PRNGKey(config["seed"]))
    ts = C.save_times()
    H = C.gaussian_heads(kH, S, dims["k"], config["head_scale"])
    rows = []
    for i, eps in enumerate(config["eps"]):

        def one(eps=eps):
            # Same key at every eps: the same S, B*, v*, X; only B0 moves (common random numbers).
            P = C.make_problems(kP, S, dims=dims, chunk=chunk, eps=eps, a=config["a"])
            v_lp = jax.vmap(lf.linear_probe)(P)
            ft = C.solve(P, H, ts, chunk=chunk)
            lpft = C.solve(P, v_lp, ts, chunk=chunk)
            k = C.batch_constants(P)
            phi = np.asarray(jax.vmap(T.head_alignment_error)(H, k["a_star"]))
            return {
                "lp": C.ood_error_batch(P, v_lp),
                "ft_final": ft["final_ood_error"],
                "ft_min": np.minimum(ft["metric_ood_error"].min(axis=1), ft["final_ood_error"]),
                "lpft_final": lpft["final_ood_error"],
                "lpft_max_rise": lpft["metric_ood_error"].max(axis=1)
                - lpft["metric_ood_error"][:, 0],
                "r7_upper": np.asarray(
                    T.r7_lp_ood_bound(k["eps"], k["a"], k["kappa"], k["c_S"], 1.0)
                ),
                "r5_lower_sqrt": np.asarray(
                    T.r5_rigorous_bound(k["c_perp"], phi, k["a"], k["eps"], 1.0)
                ),
                "status": np.stack([ft["status"], lpft["status"]]),
                "eps_measured": k["eps"],
            }

        rows.append(ckpt.run(f"eps{i:02d}", one))
    out = {key: np.stack([r[key] for r in rows]) for key in rows[0]}  # (num_eps, seeds)
    out["eps"] = np.asarray(config["eps"])
    out["nonconverged"] = np.array(int(np.sum(out["status"] != 0)))
    # Fitted log-log slopes over the smallest half of the eps grid (medians over seeds).
    half = len(config["eps"]) // 2 + 1
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


def _rise_ok(r, tol=1e-6):
    """(largest eps up to which LP-FT never rises above its t = 0 error by > tol, that rise)."""
    rise = r["lpft_rise_by_eps"]
    ok = np.cumprod(rise <= tol).astype(bool)
    if not ok.any():
        return float("nan"), float("nan")
    return float(r["eps"][ok][-1]), float(rise[ok].max())


def plot(results, config, outdir):
    plt = C.pyplot()
    r = results
    eps = r["eps"]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.3), gridspec_kw=dict(width_ratios=[1.5, 1]))
    ax = axes[0]
    C.band(
        ax,
        eps,
        r["lp"].T,
        color=C.COLORS["LP"],
        marker="o",
        label=f"LP (slope {C.fmt(r['slope_lp'], 2)})",
    )
    C.band(ax, eps, r["ft_final"].T, color=C.COLORS["FT"], marker="o", label="FT, $t \\to \\infty$")
    C.band(
        ax,
        eps,
        r["ft_min"].T,
        color=C.COLORS["FT"],
        ls="--",
        marker="v",
        alpha=0.08,
        label="FT, $\\min_t$ (early stopping)",
    )
    C.band(
        ax,
        eps,
        r["lpft_final"].T,
        color=C.COLORS["LP-FT"],
        marker="s",
        label=f"LP-FT (slope {C.fmt(r['slope_lpft_final'], 2)})",
    )
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
    ratio = r["lp"] / r["ft_min"]
    C.band(
        ax,
        eps,
        ratio.T,
        color=C.COLORS["LP"],
        marker="o",
        label="$L_{ood}(LP) / \\min_t L_{ood}(FT)$",
    )
    C.band(
        ax,
        eps,
        (r["lpft_final"] / r["ft_min"]).T,
        color=C.COLORS["LP-FT"],
        marker="s",
        label="$L_{ood}(LP\\text{-}FT) / \\min_t L_{ood}(FT)$",
    )
    ax.axhline(1.0, color=C.COLORS["bound"], lw=1, ls="--", label="equal error")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("$\\varepsilon$")
    ax.set_ylabel("OOD error ratio")
    ax.set_title("(b) R8: ratio $\\to 0$ as $\\varepsilon \\to 0$")
    ax.legend(loc="upper left", fontsize=6.8)
    eps_ok, rise = _rise_ok(r)
    fig.suptitle(
        f"ood_vs_eps: {config['seeds']} seeds per $\\varepsilon$, median and 5-95% band; "
        f"R7 violations {int(r['r7_violations'])}, R5 violations {int(r['r5_violations'])}, "
        f"non-converged {int(r['nonconverged'])}\nR13 (observation): LP-FT's largest rise above "
        f"its t = 0 error is {C.fmt(rise, 2)} for $\\varepsilon \\leq$ {C.fmt(eps_ok, 2)}; "
        f"{C.fmt(r['lpft_rise_by_eps'].max(), 2)} at most over all $\\varepsilon$",
        fontsize=9,
    )
    fig.tight_layout()
    return C.savefig(fig, outdir, "ood_vs_eps")
