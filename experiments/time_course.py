r"""ID and OOD error against time for FT, LP and LP-FT: early stopping does not rescue FT (R11).

Good features ($\varepsilon$ small), Gaussian heads, $\Sigma = I$. The R5 lower bound (rigorous
form) holds at every t, so $\min_t L_{ood}(FT)$ stays above LP's converged error (R7 upper
bound drawn); LP-FT stays at LP's level throughout (R13).
"""

from __future__ import annotations

import jax
import numpy as np

import linfeat as lf
from linfeat import theory as T

from . import _common as C

_BASE = dict(seed=5, dims=C.DIMS, chunk=C.CHUNK, eps=0.01, head_scale=0.5)
CONFIGS = {"quick": dict(_BASE, seeds=32), "full": dict(_BASE, seeds=256)}


def compute(config, checkpoint=None):
    ckpt = checkpoint or C.Checkpoint()
    dims, chunk, S = config["dims"], config["chunk"], config["seeds"]
    kP, kH = jax.random.split(jax.random.PRNGKey(config["seed"]))
    ts = C.save_times()
    rows = []
    for c, (s, e) in enumerate(C._chunks(S, chunk)):

        def one(s=s, e=e, c=c):
            n = e - s
            P = C.make_problems(
                jax.random.fold_in(kP, c), n, dims=dims, chunk=chunk, eps=config["eps"]
            )
            H = C.gaussian_heads(jax.random.fold_in(kH, c), n, dims["k"], config["head_scale"])
            v_lp = jax.vmap(lf.linear_probe)(P)
            ft = C.solve(P, H, ts, chunk=chunk)
            lp = C.solve(P, H, ts, chunk=chunk, method="lp")
            lpft = C.solve(P, v_lp, ts, chunk=chunk)
            k = C.batch_constants(P)
            phi = np.asarray(jax.vmap(T.head_alignment_error)(H, k["a_star"]))
            out = {}
            for tag, tr in (("ft", ft), ("lp", lp), ("lpft", lpft)):
                out[f"{tag}_ood"] = tr["metric_ood_error"]
                out[f"{tag}_final_ood"] = tr["final_ood_error"]
                out[f"{tag}_id"] = tr["metric_id_error"]
                out[f"{tag}_status"] = tr["status"]
            out["lp_closed_form_ood"] = C.ood_error_batch(P, v_lp)
            out["r5_lower"] = (
                np.maximum(np.asarray(T.r5_rigorous_bound(k["c_perp"], phi, k["a"], k["eps"])), 0.0)
                ** 2
            )
            out["r7_upper"] = np.asarray(
                T.r7_lp_ood_bound(k["eps"], k["a"], k["kappa"], k["c_S"], 1.0)
            )
            return out

        rows.append(ckpt.run(f"chunk{c:03d}", one))
    out = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
    out["ts"] = C.save_times()
    out["nonconverged"] = np.array(
        int(sum(np.sum(out[f"{t}_status"] != 0) for t in ("ft", "lp", "lpft")))
    )
    ft_min = np.minimum(out["ft_ood"].min(axis=1), out["ft_final_ood"])
    out["frac_early_stop_beats_lp"] = np.array(np.mean(ft_min < out["lp_closed_form_ood"]))
    out["median_ratio_ftmin_lp"] = np.array(np.median(ft_min / out["lp_closed_form_ood"]))
    out["r5_violations"] = np.array(
        int(np.sum(out["ft_ood"] < out["r5_lower"][:, None] * (1 - 1e-9)))
    )
    out["lpft_max_rise"] = np.array(np.max(out["lpft_ood"] - out["lpft_ood"][:, :1]))
    return out


def facts(results, config) -> dict:
    """The numbers quoted in the figure and in README (one computation for both)."""
    r = results
    return {
        "seeds": int(r["ft_ood"].shape[0]),
        "eps": config["eps"],
        "frac_early_stop_beats_lp": float(r["frac_early_stop_beats_lp"]),
        "median_ratio_ftmin_lp": float(r["median_ratio_ftmin_lp"]),
        "r5_violations": int(r["r5_violations"]),
        "lpft_max_rise": float(r["lpft_max_rise"]),
        "nonconverged": int(r["nonconverged"]),
    }


def readme(results, config) -> str:
    """README's paragraph; every number comes from `facts` (the results and the config)."""
    f = facts(results, config)
    frac = f["frac_early_stop_beats_lp"]
    below = "never below it" if frac == 0 else f"below it in {C.num(100 * frac)}% of seeds"
    r5 = (
        "never below the R5 bound"
        if f["r5_violations"] == 0
        else f"below the R5 bound at {f['r5_violations']} saved points"
    )
    rise = f["lpft_max_rise"]
    lpft = (
        "LP-FT's OOD error never rises above its t = 0 value, LP's error (R13; largest rise 0)"
        if rise <= 0
        else f"LP-FT's OOD error rises above its t = 0 value, LP's error, by up to {C.num(rise)} "
        "(R13)"
    )
    text = (
        f"early stopping does not rescue FT (R11): over {C.count(f['seeds'])} seeds "
        f"(ε = {f['eps']:g}) its best OOD error over time is a median "
        f"{C.num(f['median_ratio_ftmin_lp'])} times LP's and {below}, and {r5}; {lpft}."
    )
    return C.readme_paragraph("time_course", text)


def plot(results, config, outdir):
    plt = C.pyplot()
    r = results
    f = facts(results, config)
    x = r["ts"][1:]
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.0))
    for ax, kind, label in (
        (axes[0], "ood", "OOD error $L_{ood}(t)$ ($\\Sigma = I$)"),
        (axes[1], "id", "ID error $L_{id}(t)$"),
    ):
        for tag, name in (("ft", "FT"), ("lp", "LP"), ("lpft", "LP-FT")):
            C.band(
                ax,
                x,
                np.maximum(r[f"{tag}_{kind}"][:, 1:], 1e-30),
                color=C.COLORS[name],
                label=name if tag != "lp" else "LP (flow on $v$)",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("flow time $t$")
        ax.set_ylabel(label)
    ax = axes[0]
    ax.axhline(
        np.median(r["r5_lower"]),
        color=C.COLORS["FT"],
        ls=":",
        lw=2,
        label="R5 lower bound on FT, every t (median)",
    )
    ax.axhline(
        np.median(r["r7_upper"]),
        color=C.COLORS["LP"],
        ls=":",
        lw=2,
        label="R7 upper bound on LP (median)",
    )
    ax.axhline(
        np.median(r["lp_closed_form_ood"]),
        color=C.COLORS["LP"],
        ls="--",
        lw=1,
        label="LP closed form (median)",
    )
    ax.set_ylim(bottom=1e-7)
    ax.set_title(
        f"(a) R11: early-stopped FT beats LP in {C.num(100 * f['frac_early_stop_beats_lp'])}% "
        f"of seeds; median $\\min_t$FT/LP = {C.num(f['median_ratio_ftmin_lp'])}"
    )
    ax.legend(fontsize=6.5, loc="lower left")
    axes[1].set_ylim(bottom=1e-20)
    axes[1].set_title("(b) R9: FT and LP-FT fit ID; LP keeps an ID error")
    axes[1].legend(fontsize=6.5, loc="lower left")
    fig.suptitle(
        f"time_course: $\\varepsilon = {f['eps']}$, {f['seeds']} seeds (median, 5-95% "
        f"band); R5 violations {f['r5_violations']}; LP-FT max rise above t=0: "
        f"{C.num(f['lpft_max_rise'])} (R13); non-converged {f['nonconverged']}",
        fontsize=9,
    )
    fig.tight_layout()
    return C.savefig(fig, outdir, "time_course")
