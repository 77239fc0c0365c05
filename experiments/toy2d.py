r"""Figure 2 of the paper as a plot: the 2-D toy where fine-tuning distorts the feature.

$d = 2$, $k = 1$, one training input $x = e_1$ (the ID direction), pretrained feature
$b_0 = (\cos\beta_0, \sin\beta_0)$, $w^* = v^*(\cos\beta^*, \sin\beta^*)$. FT only moves the
feature along $e_1$ (R1), so the feature slides horizontally and the predictor's off-ID
component ends at $v_\infty \sin\beta_0$ instead of $w^*_2$; LP keeps $b_0$ and rescales it.

Measured: `lf.fine_tune` (adaptive ODE solve) on the toy. Analytic: the closed-form trajectory
and limit of docs/theory.md, section 5 (`linfeat.theory`).
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np

import linfeat as lf
from linfeat import theory as O

from . import _common as C

_BASE = dict(seed=0, beta0=np.pi / 4, beta_star=np.pi / 4, v_star=1.4, heads=[0.3, -1.0, 1.5])
CONFIGS = {
    "quick": dict(_BASE, sweep_heads=21, num_save=40),
    "full": dict(_BASE, sweep_heads=61, num_save=60),
}


def _toy_problem(beta0, beta_star, v_star):
    b0 = np.array([[np.cos(beta0), np.sin(beta0)]])
    b_star = np.array([[np.cos(beta_star), np.sin(beta_star)]])
    X = np.array([[1.0, 0.0]])
    w_star = v_star * b_star[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lf.TheoryConditionWarning)  # m + k = d here
        return lf.problem_from_arrays(
            X=X,
            Y=X @ w_star,
            B0=b0,
            B_star=b_star,
            v_star=np.array([v_star]),
            ood_cov=np.eye(2),
            id_cov=np.diag([1.0, 0.0]),
        )


def compute(config, checkpoint=None):
    b0, bs, vs = config["beta0"], config["beta_star"], config["v_star"]
    p = _toy_problem(b0, bs, vs)
    ts = np.concatenate([[0.0], np.logspace(-2.5, 2, config["num_save"] - 1)])
    out = {"ts": ts}
    heads = np.asarray(config["heads"], float)
    status = []
    for i, h in enumerate(heads):
        tr = lf.fine_tune(p, jnp.array([h]), ts=jnp.asarray(ts), check=False)
        status.append(int(tr.status))
        out[f"ft_v_{i}"] = np.asarray(tr.v[:, 0])
        out[f"ft_b_{i}"] = np.asarray(tr.B[:, 0, :])
        out[f"ft_ood_{i}"] = np.asarray(tr.metrics.ood_error)
        ex = O.toy2d_trajectory(ts, b0, bs, vs, h)
        out[f"cf_v_{i}"] = np.asarray(ex.v)
        out[f"cf_b_{i}"] = np.asarray(ex.b)
        # Dense closed-form path for the lines.
        tt = np.concatenate([[0.0], np.logspace(-3, 3, 400)])
        ex = O.toy2d_trajectory(tt, b0, bs, vs, h)
        out[f"cfd_t_{i}"] = tt
        out[f"cfd_v_{i}"] = np.asarray(ex.v)
        out[f"cfd_b_{i}"] = np.asarray(ex.b)
        lim = O.toy2d_limit(b0, bs, vs, h)
        out[f"lim_wft_{i}"] = np.asarray(lim.w_ft)
        out[f"lim_wlp_{i}"] = np.asarray(lim.w_lp)
        out[f"lim_ft_ood_{i}"] = np.asarray(lim.ft_ood_error)
        out[f"lim_lp_ood_{i}"] = np.asarray(lim.lp_ood_error)
        # LP measured: the LP flow from the same head.
        lp = lf.linear_probe_flow(p, jnp.array([h]), ts=jnp.asarray(ts), check=False)
        status.append(int(lp.status))
        out[f"lp_ood_{i}"] = np.asarray(lp.metrics.ood_error)
        out[f"lp_w_{i}"] = np.asarray(lp.v_final[0] * p.B0[0])
    # Sweep of the head: converged FT OOD error, measured vs closed form.
    sweep = np.linspace(-2.0, 2.0, config["sweep_heads"])
    # Skip the c = 0 heads (|v0| = cos beta0, a jump of the limit) and the v0 = 0 saddle.
    sweep = sweep[(np.abs(np.abs(sweep) - np.cos(b0)) > 1e-3) & (np.abs(sweep) > 1e-9)]
    meas = []
    for h in sweep:
        # Same save times as above: one compilation for every FT solve of the toy.
        tr = lf.fine_tune(p, jnp.array([h]), ts=jnp.asarray(ts), check=False)
        status.append(int(tr.status))
        meas.append(float(lf.ood_error(p, tr.v_final, tr.B_final)))  # the converged state
    fine = np.linspace(-2.0, 2.0, 801)
    out["sweep_v0"] = sweep
    out["sweep_ft_ood"] = np.array(meas)
    out["sweep_fine_v0"] = fine
    out["sweep_fine_ft_ood"] = np.asarray(O.toy2d_limit(b0, bs, vs, fine).ft_ood_error)
    out["sweep_fine_lp_ood"] = np.asarray(O.toy2d_limit(b0, bs, vs, fine).lp_ood_error)
    out["status"] = np.array(status)
    out["nonconverged"] = np.array(int(np.sum(np.array(status) != 0)))
    out["max_traj_dev"] = np.array(
        max(float(np.max(np.abs(out[f"ft_b_{i}"] - out[f"cf_b_{i}"]))) for i in range(len(heads)))
    )
    return out


def facts(results, config) -> dict:
    """The numbers quoted in the figure and in README (one computation for both)."""
    r = results
    heads = config["heads"]
    return {
        "v0": heads[0],
        "t_end": float(r["ts"][-1]),
        # FT from the first head: the measured (ODE) OOD error at the last save time and the
        # closed-form limit t -> infinity.
        "ft_ood": float(r["ft_ood_0"][-1]),
        "ft_ood_limit": float(r["lim_ft_ood_0"]),
        "lp_ood_limit": float(r["lim_lp_ood_0"]),
        # The LP flow's measured OOD error at the last save time, worst over the heads.
        "lp_ood_max": max(float(r[f"lp_ood_{i}"][-1]) for i in range(len(heads))),
        "max_traj_dev": float(r["max_traj_dev"]),
        "nonconverged": int(r["nonconverged"]),
    }


def readme(results, config) -> str:
    """README's paragraph; every number comes from `facts` (the results and the config)."""
    f = facts(results, config)
    n = f | C.nums(f, "ft_ood", "ft_ood_limit", digits=3) | C.nums(f, "lp_ood_max", "max_traj_dev")
    text = """the paper's Figure 2: FT slides the feature along the ID direction only (R1) and
        ends off w\\* (OOD error {ft_ood} at t = {t_end:g} for v0 = {v0:g}; closed-form limit
        {ft_ood_limit}), while LP is exact (its flow ends at OOD error {lp_ood_max}); solver and
        closed form differ by at most {max_traj_dev} on the feature b(t)."""
    return C.readme_paragraph("toy2d", text.format(**n))


def plot(results, config, outdir):
    r, f = results, facts(results, config)
    b0, bs, vs = config["beta0"], config["beta_star"], config["v_star"]
    heads = config["heads"]
    fig, axes = C.figure(1, 3, figsize=(12.5, 4.0))

    # (a) geometry for the first head.
    ax = axes[0]
    i = 0
    w_star = vs * np.array([np.cos(bs), np.sin(bs)])
    b0v = np.array([np.cos(b0), np.sin(b0)])
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.annotate("", xy=(1.6, 0), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="0.3"))
    ax.text(1.62, 0.04, "ID direction $x = e_1$", ha="right", va="bottom", fontsize=8)
    s = np.linspace(-0.2, 1.8, 2)
    ax.plot(
        s * b0v[0],
        s * b0v[1],
        color=C.COLORS["LP"],
        ls=":",
        lw=1,
        label="span($B_0$) (LP's predictors)",
    )
    ax.annotate("", xy=w_star, xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color="k", lw=1.8))
    ax.text(*(w_star + [0.03, 0.05]), "$w^*$", fontsize=10)
    ax.annotate(
        "", xy=b0v, xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color=C.COLORS["LP"], lw=1.2)
    )
    ax.text(b0v[0] - 0.18, b0v[1] + 0.02, "$B_0$", color=C.COLORS["LP"], fontsize=10)
    # Feature path b(t): closed form line, solver dots, limit star.
    cfb = r[f"cfd_b_{i}"]
    ax.plot(
        cfb[:, 0], cfb[:, 1], color=C.COLORS["FT"], lw=1.2, label="FT feature $b(t)$, closed form"
    )
    fb = r[f"ft_b_{i}"]
    ax.plot(
        fb[::3, 0],
        fb[::3, 1],
        "o",
        mfc="none",
        color=C.COLORS["FT"],
        ms=4,
        label="FT feature $b(t)$, ODE solve",
    )
    # Predictor path w(t) = v(t) b(t).
    wpath = r[f"cfd_v_{i}"][:, None] * cfb
    ax.plot(
        wpath[:, 0],
        wpath[:, 1],
        color=C.COLORS["FT"],
        ls="--",
        lw=1.0,
        label="FT predictor $w(t) = v(t)\\,b(t)$",
    )
    wmeas = r[f"ft_v_{i}"][:, None] * fb
    ax.plot(wmeas[::3, 0], wmeas[::3, 1], "s", mfc="none", color=C.COLORS["FT"], ms=3)
    wft, wlp = r[f"lim_wft_{i}"], r[f"lim_wlp_{i}"]
    ax.plot(
        *wft,
        marker="*",
        color=C.COLORS["FT"],
        ms=13,
        ls="none",
        label=f"$w_{{ft}}^\\infty$ closed form (OOD err {C.num(f['ft_ood_limit'], 3)})",
    )
    ax.plot(
        *wlp,
        marker="D",
        color=C.COLORS["LP"],
        ms=7,
        ls="none",
        mfc="none",
        mew=1.5,
        label=f"$w_{{lp}}^\\infty$ (OOD err {C.num(f['lp_ood_limit'])})",
    )
    ax.plot(*r[f"lp_w_{i}"], marker=".", color=C.COLORS["LP"], ms=5, ls="none")
    ax.set_aspect("equal")
    ax.set_xlim(-0.3, 2.1)
    ax.set_ylim(-1.05, 1.35)
    ax.set_xlabel("$x_1$ (ID)")
    ax.set_ylabel("$x_2$ (OOD only)")
    ax.set_title(f"(a) Figure 2 toy, $v_0 = {heads[i]}$: FT moves $b$ along $e_1$ only (R1)")
    ax.legend(loc="lower right", fontsize=6.2)

    # (b) OOD error vs time: closed form lines, ODE dots, LP flow.
    ax = axes[1]
    ts = r["ts"]
    colors = ["#d62728", "#ff7f0e", "#8c564b"]
    for i, h in enumerate(heads):
        tt = r[f"cfd_t_{i}"]
        w = r[f"cfd_v_{i}"][:, None] * r[f"cfd_b_{i}"]
        err = np.sum((w - w_star) ** 2, axis=1)
        ax.plot(tt[1:], err[1:], color=colors[i], lw=1.2, label=f"FT $v_0={h}$: closed form")
        ax.plot(ts[1::2], r[f"ft_ood_{i}"][1::2], "o", mfc="none", color=colors[i], ms=4)
        ax.plot(ts[1::2], r[f"lp_ood_{i}"][1::2], "x", color=colors[i], ms=4, alpha=0.7)
    ax.plot([], [], "o", mfc="none", color="0.3", label="FT, ODE solve")
    ax.plot([], [], "x", color="0.3", label="LP flow, ODE solve ($\\to 0$)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 20)
    ax.set_xlabel("flow time $t$")
    ax.set_ylabel("OOD error $L_{ood} = \\|w(t) - w^*\\|^2$")
    ax.set_title("(b) OOD error along the flow (R5: FT stays away from $w^*$)")
    ax.legend(fontsize=6.5, loc="center left")

    # (c) converged OOD error vs head.
    ax = axes[2]
    ax.plot(
        r["sweep_fine_v0"],
        r["sweep_fine_ft_ood"],
        color=C.COLORS["FT"],
        label="FT limit, closed form (sec. 4)",
    )
    ax.plot(
        r["sweep_v0"],
        r["sweep_ft_ood"],
        "o",
        mfc="none",
        color=C.COLORS["FT"],
        label="FT, ODE solve to convergence",
    )
    ax.plot(
        r["sweep_fine_v0"],
        r["sweep_fine_lp_ood"],
        color=C.COLORS["LP"],
        label="LP (any $v_0$): 0, perfect features",
    )
    for x in (-np.cos(b0), np.cos(b0)):
        ax.axvline(x, color="0.5", ls=":", lw=0.8)
    ax.set_xlabel("initial head $v_0$")
    ax.set_ylabel("converged OOD error")
    ax.set_title(f"(c) FT's limit vs $v_0$ ($\\beta_0 = \\beta^* = \\pi/4$, $v^* = {vs}$)")
    ax.legend(fontsize=6.5)
    title = (
        f"toy2d: the paper's Figure 2 (max |ODE - closed form| on $b(t)$: "
        f"{C.num(f['max_traj_dev'])}; non-converged: {f['nonconverged']})"
    )
    return C.finish(fig, outdir, "toy2d", title)
