r"""The ID-OOD trade-off of LP, FT and LP-FT across feature errors and shift sizes (R9, R12).

Random problems at several feature errors $\varepsilon$; the OOD second moment is the mixture
$\Sigma_\rho = (1 - \rho)\Pi_S + \rho\,\Pi_{S^\perp}$, whose error is linear in $\rho$:
$L_\rho = (1 - \rho)\|\Pi_S e\|^2 + \rho\|\Pi_{S^\perp} e\|^2$, so one solve per instance gives
every shift size. R9: FT (and LP-FT) fit ID ($\Pi_S e = 0$), LP does not. R12(a): with the
shift inside S ($\rho \to 0$) converged FT has zero OOD error and beats LP. R12(b): in the
2-D toy with bad features ($B_0 \perp w^*$) FT beats LP iff $a^2 + v_0^2 > 1$ (panel c:
closed-form boundary, ODE solves as points).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import linfeat as lf
from linfeat import theory as O

from . import _common as C

_BASE = C.base_config(seed=4, head_scale=0.5, rho=[0.0, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0])
CONFIGS = {
    "quick": dict(_BASE, seeds=12, eps=[0.02, 0.1, 0.3, 0.7, 1.4], toy_grid=7),
    "full": dict(
        _BASE, seeds=96, eps=[0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.4], toy_grid=13
    ),
}


def _toy_batch(a):
    """R12(b) toy problems: X = e1^T, w* = (a, 0), B0 = e2^T, Sigma = I (stacked)."""

    def one(a):
        X = jnp.array([[1.0, 0.0]])
        w = jnp.stack([a, 0.0 * a])
        return lf.Problem(
            X=X,
            Y=X @ w,
            B0=jnp.array([[0.0, 1.0]]),
            w_star=w,
            B_star=jnp.array([[1.0, 0.0]]),
            v_star=a[None],
            id_cov=jnp.diag(jnp.array([1.0, 0.0])),
            ood_cov=jnp.eye(2),
        )

    return jax.vmap(one)(jnp.asarray(a))


def _row(P, H, v_lp, ft, lpft):
    """The arrays kept at one eps (C.eps_sweep): errors on S and on S-perp, final states."""
    # With Sigma = Pi_perp, ood_error is ||Pi_perp e||^2; id_subspace_error is ||Pi_S e||^2.
    lp_metrics = jax.vmap(lambda p, v: lf.metrics(p, v, p.B0, v, p.B0))(P, v_lp)
    return {
        "lp_S": np.asarray(lp_metrics.id_subspace_error),
        "lp_perp": C.ood_error_batch(P, v_lp),
        "ft_S": ft["final_id_subspace_error"],
        "ft_perp": ft["final_ood_error"],
        "lpft_S": lpft["final_id_subspace_error"],
        "lpft_perp": lpft["final_ood_error"],
        "status": np.stack([ft["status"], lpft["status"]]),
    }


def compute(config, checkpoint=None):
    ckpt = checkpoint or C.Checkpoint()
    out = C.eps_sweep(config, ckpt, _row, scale_S=0.0, scale_perp=1.0)  # (eps, seeds)

    def toy():
        g = np.linspace(0.1, 1.5, config["toy_grid"])
        A, V0 = (x.ravel() for x in np.meshgrid(g, g, indexing="ij"))
        P = _toy_batch(A)
        n = A.size
        tr = C.solve(P, jnp.asarray(V0)[:, None], C.save_times(), chunk=n)
        lp = A**2 + V0**2  # LP cannot move: X B0^T = 0 (and the LP flow is trivial)
        exact = np.asarray(O.r12_toy(A, V0).ft_error)
        return {
            "toy_a": A,
            "toy_v0": V0,
            "toy_ft": tr["final_ood_error"],
            "toy_lp": lp,
            "toy_ft_exact": exact,
            "toy_status": tr["status"],
        }

    out.update(ckpt.run("toy", toy))
    out["eps"] = np.asarray(config["eps"])
    out["rho"] = np.asarray(config["rho"])
    out["nonconverged"] = np.array(int(np.sum(out["status"] != 0) + np.sum(out["toy_status"] != 0)))
    out["toy_max_dev"] = np.array(np.max(np.abs(out["toy_ft"] - out["toy_ft_exact"])))
    pred = (out["toy_a"] ** 2 + out["toy_v0"] ** 2) > 1
    meas = out["toy_ft"] < out["toy_lp"]
    out["toy_agree"] = np.array(int(np.sum(pred == meas)))
    return out


def _ood(r, tag, rho):
    return (1 - rho) * r[f"{tag}_S"] + rho * r[f"{tag}_perp"]


def ft_lp_ratio(r):
    """L_rho(FT) / L_rho(LP), shape (eps, seeds, rho): panel (b) and README."""
    return np.stack([_ood(r, "ft", q) / _ood(r, "lp", q) for q in r["rho"]], axis=-1)


def ft_wins_up_to(r) -> np.ndarray:
    """Per eps: the largest grid rho up to which (every grid rho <= it) FT's median OOD error
    over seeds is below LP's; NaN where it is not even at the smallest rho."""
    wins = np.median(ft_lp_ratio(r), axis=1) < 1  # (eps, rho)
    upto = np.cumprod(wins, axis=1).astype(bool)
    last = upto.sum(axis=1) - 1
    return np.where(last >= 0, r["rho"][np.maximum(last, 0)], np.nan)


def facts(results, config) -> dict:
    """The numbers quoted in the figure and in README (one computation for both)."""
    r = results
    ratio0 = ft_lp_ratio(r)[..., int(np.argmin(r["rho"]))]
    upto = ft_wins_up_to(r)
    return {
        "seeds": int(r["ft_S"].shape[1]),
        "instances": int(r["ft_S"].size),
        # R9: ID error on S, ||Pi_S e||^2 (the ID error up to the ID covariance).
        "ft_id_max": float(max(r["ft_S"].max(), r["lpft_S"].max())),
        "lp_id_median": float(np.median(r["lp_S"])),
        "lp_id_min": float(np.min(r["lp_S"])),
        # R12(a): the smallest rho (0: the shift inside S).
        "rho_min": float(np.min(r["rho"])),
        "ft_wins_at_rho_min": int(np.sum(ratio0 < 1)),
        "eps_first": float(r["eps"][0]),
        "eps_last": float(r["eps"][-1]),
        "wins_upto_first": float(upto[0]),
        "wins_upto_last": float(upto[-1]),
        "toy_agree": int(r["toy_agree"]),
        "toy_solves": int(r["toy_a"].size),
        "toy_max_dev": float(r["toy_max_dev"]),
        "nonconverged": int(r["nonconverged"]),
    }


def _upto(rho, rho_min):
    if not np.isfinite(rho):
        return "for no ρ"
    return f"only for ρ = {rho:g}" if rho == rho_min else f"for ρ ≤ {rho:g}"


def readme(results, config) -> str:
    """README's paragraph; every number comes from `facts` (the results and the config)."""
    f = facts(results, config)
    n = f | C.nums(f, "ft_id_max", "lp_id_median", "lp_id_min", "toy_max_dev")
    n |= C.counts(f, "ft_wins_at_rho_min", "instances")
    first, last = (np.nan_to_num(f[k], nan=-1.0) for k in ("wins_upto_first", "wins_upto_last"))
    n.update(
        inside="inside S" if f["rho_min"] == 0 else "closest to S",
        more=", the more so the worse the features" if last > first else "",
        upto_first=_upto(f["wins_upto_first"], f["rho_min"]),
        upto_last=_upto(f["wins_upto_last"], f["rho_min"]),
    )
    text = """FT and LP-FT fit ID (error on S at most {ft_id_max}), LP does not (median
        {lp_id_median}, at least {lp_id_min}; R9); FT beats LP OOD when the shift lies {inside}
        (ρ = {rho_min:g}: in {ft_wins_at_rho_min} of {instances} instances, R12a) or close to
        it{more} (FT's median OOD error is below LP's at ε = {eps_first:g} {upto_first}, at
        ε = {eps_last:g} {upto_last}), and the R12(b) toy boundary a² + v0² = 1 matches
        {toy_agree}/{toy_solves} solves (max |ODE − closed form| {toy_max_dev})."""
    return C.readme_paragraph("tradeoff", text.format(**n))


def plot(results, config, outdir):
    plt = C.pyplot()
    r, f = results, facts(results, config)
    eps, rho = r["eps"], r["rho"]
    fig, axes = C.figure(1, 3, figsize=(13.5, 4.1))
    # (a) ID vs OOD for two shift sizes.
    ax = axes[0]
    cmap = plt.get_cmap("viridis")
    floor = 1e-12  # fitted ID errors (~1e-20) drawn at this floor
    for tag, name, mk in (("lp", "LP", "o"), ("ft", "FT", "^"), ("lpft", "LP-FT", "s")):
        for rh, fill in ((1.0, True), (0.1, False)):
            idm = np.maximum(np.median(r[f"{tag}_S"], axis=1), floor)
            oodm = np.median(_ood(r, tag, rh), axis=1)
            ax.plot(idm, oodm, "-", color=C.COLORS[name], lw=0.8, alpha=0.6)
            cols = [cmap(i / max(len(eps) - 1, 1)) for i in range(len(eps))]
            if fill:
                ax.scatter(
                    idm,
                    oodm,
                    c=cols,
                    marker=mk,
                    s=28,
                    edgecolors=C.COLORS[name],
                    linewidths=1.2,
                    zorder=3,
                )
            else:
                ax.scatter(
                    idm,
                    oodm,
                    marker=mk,
                    s=28,
                    edgecolors=cols,
                    facecolors="none",
                    linewidths=1.2,
                    zorder=3,
                )
        ax.plot([], [], mk, color=C.COLORS[name], label=name)
    ax.plot([], [], "o", color="0.4", label="$\\rho = 1$ (OOD = $S^\\perp$)")
    ax.plot([], [], "o", mfc="none", color="0.4", label="$\\rho = 0.1$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ID error $\\|\\Pi_S e\\|^2$ (fitted: drawn at 1e-12)")
    ax.set_ylabel("OOD error $L_\\rho$ (median over seeds)")
    ax.set_title("(a) R9: FT, LP-FT fit ID; colour = $\\varepsilon$ (dark small)")
    ax.legend(fontsize=6.5, loc="upper center")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(eps) - 1))
    cb = fig.colorbar(sm, ax=ax, ticks=range(len(eps)), pad=0.01)
    cb.ax.set_yticklabels([f"{e:g}" for e in eps], fontsize=6)
    cb.set_label("$\\varepsilon$", fontsize=8)

    # (b) FT / LP OOD ratio vs shift size.
    ax = axes[1]
    x = np.where(rho > 0, rho, rho[rho > 0].min() / 3)
    ratio = ft_lp_ratio(r)
    for i, e in enumerate(eps):
        ratios = ratio[i]
        C.band(
            ax,
            x,
            np.maximum(ratios, 1e-16),
            color=cmap(i / max(len(eps) - 1, 1)),
            label=f"$\\varepsilon = {e:g}$",
            alpha=0.1,
        )
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.fill_between([x.min(), x.max()], 1e-16, 1.0, color="#2ca02c", alpha=0.06, lw=0)
    ax.text(x.min() * 1.1, 0.3, "FT wins", color="#2ca02c", fontsize=8)
    ax.annotate(
        "$\\rho = 0$: FT error exactly 0 (R12a)",
        xy=(x.min(), 1.2e-4),
        xytext=(x.min() * 1.1, 2e-4),
        fontsize=6.5,
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-4, None)
    ax.set_xlabel(
        "shift off S, $\\rho$ in $\\Sigma = (1-\\rho)\\Pi_S + \\rho\\Pi_{S^\\perp}$ "
        "(leftmost: $\\rho = 0$)"
    )
    ax.set_ylabel("$L_{ood}(FT) / L_{ood}(LP)$")
    ax.set_title("(b) R12(a): OOD inside S $\\Rightarrow$ FT wins; bad features too")
    ax.legend(fontsize=6, ncol=2, loc="lower right")

    # (c) R12(b) toy phase diagram.
    ax = axes[2]
    win = r["toy_ft"] < r["toy_lp"]
    ax.scatter(
        r["toy_a"][win],
        r["toy_v0"][win],
        marker="o",
        color=C.COLORS["FT"],
        s=18,
        label="ODE: FT beats LP",
    )
    ax.scatter(
        r["toy_a"][~win],
        r["toy_v0"][~win],
        marker="s",
        color=C.COLORS["LP"],
        s=18,
        label="ODE: LP beats FT",
    )
    th = np.linspace(0, np.pi / 2, 200)
    ax.plot(np.cos(th), np.sin(th), "k-", lw=1.5, label="R12(b): $a^2 + v_0^2 = 1$")
    ax.set_xlim(0, 1.6)
    ax.set_ylim(0, 1.6)
    ax.set_aspect("equal")
    ax.set_xlabel("target $a = w^*_1$")
    ax.set_ylabel("initial head $v_0$")
    ax.set_title(f"(c) R12(b) toy, $B_0 \\perp w^*$: {f['toy_agree']}/{f['toy_solves']} agree")
    ax.legend(fontsize=6.5, loc="upper right", frameon=True, framealpha=0.95)
    title = (
        f"tradeoff: {f['seeds']} seeds per $\\varepsilon$ (median, 5-95% band); toy: max "
        f"|ODE - closed form| {C.num(f['toy_max_dev'])}; non-converged {f['nonconverged']}"
    )
    return C.finish(fig, outdir, "tradeoff", title)
