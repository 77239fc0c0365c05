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

_BASE = C.base_config(seed=5, eps=0.01, head_scale=0.5)
CONFIGS = {"quick": dict(_BASE, seeds=32), "full": dict(_BASE, seeds=256)}


def compute(config, checkpoint=None):
    ckpt = checkpoint or C.Checkpoint()
    dims, chunk, S = config["dims"], config["chunk"], config["seeds"]
    kP, kH = jax.random.split(jax.random.PRNGKey(config["seed"]))
    ts = C.save_times()

    def one(item):
        c, (s, e) = item
        n = e - s
        P = C.make_problems(jax.random.fold_in(kP, c), n, dims=dims, chunk=chunk, eps=config["eps"])
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
        out["r7_upper"] = np.asarray(T.r7_lp_ood_bound(k["eps"], k["a"], k["kappa"], k["c_S"], 1.0))
        return out

    chunks = enumerate(C._chunks(S, chunk))
    out = C.stacked(ckpt, "chunk{:03d}", chunks, one, join=np.concatenate)
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
    floats = ("frac_early_stop_beats_lp", "median_ratio_ftmin_lp", "lpft_max_rise")
    return {
        "seeds": int(r["ft_ood"].shape[0]),
        "eps": config["eps"],
        **{key: float(r[key]) for key in floats},
        **{key: int(r[key]) for key in ("r5_violations", "nonconverged")},
    }


def readme(results, config) -> str:
    """README's paragraph; every number comes from `facts` (the results and the config)."""
    f = facts(results, config)
    n = f | C.nums(f, "median_ratio_ftmin_lp", "lpft_max_rise") | C.counts(f, "seeds")
    n["percent"] = C.num(100 * f["frac_early_stop_beats_lp"])
    below = "below it in {percent}% of seeds" if f["frac_early_stop_beats_lp"] else "never below it"
    r5 = (
        "below the R5 bound at {r5_violations} saved points"
        if f["r5_violations"]
        else "never below the R5 bound"
    )
    lpft = (
        "never rises above its t = 0 value, LP's error (R13; largest rise 0)"
        if f["lpft_max_rise"] <= 0
        else "rises above its t = 0 value, LP's error, by up to {lpft_max_rise} (R13)"
    )
    n.update(below=below.format(**n), r5=r5.format(**n), lpft=lpft.format(**n))
    text = """early stopping does not rescue FT (R11): over {seeds} seeds (ε = {eps:g}) its best
        OOD error over time is a median {median_ratio_ftmin_lp} times LP's and {below}, and
        {r5}; LP-FT's OOD error {lpft}."""
    return C.readme_paragraph("time_course", text.format(**n))


def plot(results, config, outdir):
    r, f = results, facts(results, config)
    x = r["ts"][1:]
    fig, axes = C.figure(1, 2, figsize=(11.0, 4.0))
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
    for key, color, ls, lw, label in (
        ("r5_lower", C.COLORS["FT"], ":", 2, "R5 lower bound on FT, every t (median)"),
        ("r7_upper", C.COLORS["LP"], ":", 2, "R7 upper bound on LP (median)"),
        ("lp_closed_form_ood", C.COLORS["LP"], "--", 1, "LP closed form (median)"),
    ):
        ax.axhline(np.median(r[key]), color=color, ls=ls, lw=lw, label=label)
    ax.set_ylim(bottom=1e-7)
    ax.set_title(
        f"(a) R11: early-stopped FT beats LP in {C.num(100 * f['frac_early_stop_beats_lp'])}% "
        f"of seeds; median $\\min_t$FT/LP = {C.num(f['median_ratio_ftmin_lp'])}"
    )
    ax.legend(fontsize=6.5, loc="lower left")
    axes[1].set_ylim(bottom=1e-20)
    axes[1].set_title("(b) R9: FT and LP-FT fit ID; LP keeps an ID error")
    axes[1].legend(fontsize=6.5, loc="lower left")
    title = (
        f"time_course: $\\varepsilon = {f['eps']}$, {f['seeds']} seeds (median, 5-95% "
        f"band); R5 violations {f['r5_violations']}; LP-FT max rise above t=0: "
        f"{C.num(f['lpft_max_rise'])} (R13); non-converged {f['nonconverged']}"
    )
    return C.finish(fig, outdir, "time_course", title)
