r"""FT's best OOD error over time against the head alignment error $\varphi$ (R5, R6).

Heads $v_0 = u\, a^* + \sigma_\perp \xi_\perp$ ($\xi_\perp \perp a^*$), so
$\varphi^2 = a^4|u^2 - 1|$ is set by u. For each instance the measured
$\min_t \sqrt{L_{ood}(t)}$ (over the saved times) is compared with

- the printed bound
  $\frac{c_\perp}{\sqrt k}\frac{\min(\varphi, \varphi^2/a)}{(1 + a)^2} - \varepsilon$
  (ICLR submission; docs/theory.md shows it is false as stated), and
- the rigorous replacement $c_\perp \delta_0 - \varepsilon a$ (docs/theory.md R5), $\Sigma = I$.

Printed-bound violations are marked. The docs/theory.md counterexample (d = 4, k = 1, $v^* = 5$,
$v_0 = 4.9$) is added as an explicit instance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import linfeat as lf
from linfeat import theory as T

from . import _common as C

# Two groups: the main dimensions with ||v*|| = 1, and k = 1 with ||v*|| = 5, the regime of the
# docs/theory.md counterexample where the printed constant fails (large a, c_perp near 1, k = 1).
_BASE = dict(
    seed=3,
    chunk=C.CHUNK,
    eps=1e-3,
    perp_scale=0.05,
    groups=[dict(a=1.0, dims=C.DIMS), dict(a=5.0, dims=dict(C.DIMS, k=1))],
)
# u = 1 (phi = 0 up to the orthogonal part) is left out: its bound is vacuous.
CONFIGS = {
    "quick": dict(_BASE, seeds=6, u=[0.0, 0.25, 0.5, 0.75, 0.9, 0.97, 1.03, 1.1, 1.25, 1.5, 2.0]),
    "full": dict(
        _BASE,
        seeds=32,
        u=[
            0.0,
            0.125,
            0.25,
            0.375,
            0.5,
            0.625,
            0.75,
            0.875,
            0.9,
            0.95,
            0.98,
            0.99,
            1.01,
            1.02,
            1.05,
            1.1,
            1.125,
            1.25,
            1.375,
            1.5,
            1.75,
            2.0,
        ],
    ),
}


def _heads(key, a_star, u, perp_scale):
    """v0 = u a* + perp_scale * (Gaussian component orthogonal to a*)."""
    xi = jax.random.normal(key, a_star.shape)
    a_hat = a_star / jnp.linalg.norm(a_star, axis=-1, keepdims=True)
    xi = xi - jnp.sum(xi * a_hat, axis=-1, keepdims=True) * a_hat
    return u[:, None] * a_star + perp_scale * xi


def _counterexample():
    """docs/theory.md R5 counterexample: t = 0 already violates the printed bound."""
    b0 = np.array([[np.sqrt(0.19), 0.0, 0.9, 0.0]])
    X = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    p = lf.problem_from_arrays(
        X=X, Y=X @ (5.0 * b0[0]), B0=b0, B_star=b0, v_star=np.array([5.0]), ood_cov=np.eye(4)
    )
    tr = lf.fine_tune(p, jnp.array([4.9]), check=False)
    const = lf.theory.problem_constants(p, jnp.array([4.9]))
    c_perp, phi = const.c_perp, const.phi
    return {
        "ce_min_sqrt": np.sqrt(np.min(np.asarray(tr.metrics.ood_error))),
        "ce_t0_sqrt": np.sqrt(np.asarray(tr.metrics.ood_error[0])),
        "ce_phi": np.asarray(phi),
        "ce_printed": np.asarray(T.r5_printed_bound(c_perp, 1, phi, 5.0, 0.0)),
        "ce_rigorous": np.asarray(T.r5_rigorous_bound(c_perp, phi, 5.0, 0.0)),
        "ce_status": np.asarray(tr.status),
    }


def compute(config, checkpoint=None):
    ckpt = checkpoint or C.Checkpoint()
    chunk, S = config["chunk"], config["seeds"]
    u = np.asarray(config["u"])
    ts = C.save_times()

    def one(item):
        j, group = item
        a, dims = group["a"], group["dims"]
        kP, kH = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config["seed"]), j))
        # seeds x u grid: each problem is used with every u.
        P1 = C.make_problems(kP, S, dims=dims, chunk=chunk, eps=config["eps"], a=a)
        P = jax.tree.map(lambda x: jnp.repeat(x, len(u), axis=0), P1)
        k = C.batch_constants(P)
        uu = jnp.tile(jnp.asarray(u), S)
        H = _heads(kH, jnp.asarray(k["a_star"]), uu, config["perp_scale"] * a)
        # The solver's gradient floor scales like a^3 (see C.solve).
        ft = C.solve(P, H, ts, chunk=chunk)
        phi = np.asarray(jax.vmap(T.head_alignment_error)(H, k["a_star"]))
        return {
            "a": np.full(phi.shape, a),
            "k": np.full(phi.shape, dims["k"]),
            "u": np.asarray(uu),
            "phi": phi,
            "min_sqrt": np.sqrt(
                np.minimum(ft["metric_ood_error"].min(axis=1), ft["final_ood_error"])
            ),
            "t0_sqrt": np.sqrt(ft["metric_ood_error"][:, 0]),
            "printed": np.asarray(
                T.r5_printed_bound(k["c_perp"], dims["k"], phi, k["a"], k["eps"])
            ),
            "rigorous": np.asarray(T.r5_rigorous_bound(k["c_perp"], phi, k["a"], k["eps"])),
            "c_perp": k["c_perp"],
            "status": ft["status"],
        }

    out = C.stacked(ckpt, "norm{}", enumerate(config["groups"]), one, join=np.concatenate)
    out.update(ckpt.run("counterexample", _counterexample))
    out["nonconverged"] = np.array(int(np.sum(out["status"] != 0) + int(out["ce_status"] != 0)))
    out["printed_violations"] = np.array(int(np.sum(out["min_sqrt"] < out["printed"])))
    out["rigorous_violations"] = np.array(
        int(np.sum(out["min_sqrt"] < out["rigorous"] * (1 - 1e-9)))
    )
    pos = out["printed"] > 0
    out["min_ratio_printed"] = np.array(np.min(out["min_sqrt"][pos] / out["printed"][pos]))
    posr = out["rigorous"] > 0
    out["min_ratio_rigorous"] = np.array(np.min(out["min_sqrt"][posr] / out["rigorous"][posr]))
    return out


def facts(results, config) -> dict:
    """The numbers quoted in the figure and in README (one computation for both)."""
    r = results
    return {
        "runs": int(r["phi"].size),
        "printed_violations": int(r["printed_violations"]),
        "rigorous_violations": int(r["rigorous_violations"]),
        "min_ratio_printed": float(r["min_ratio_printed"]),
        "min_ratio_rigorous": float(r["min_ratio_rigorous"]),
        # docs/theory.md's counterexample: min_t sqrt(L_ood) over the printed bound.
        "ce_ratio": float(r["ce_min_sqrt"] / r["ce_printed"]),
        "nonconverged": int(r["nonconverged"]),
    }


def readme(results, config) -> str:
    """README's paragraph; every number comes from `facts` (the results and the config)."""
    f = facts(results, config)
    n = f | C.nums(f, "min_ratio_rigorous", "min_ratio_printed", "ce_ratio", digits=3)
    n |= C.counts(f, "printed_violations", "runs")
    printed = (  # the parenthesis it opens is closed after the counterexample's ratio
        "is violated in {printed_violations} of {runs} runs (ratio down to {min_ratio_printed}"
        if f["printed_violations"]
        else "holds in all {runs} runs (ratio ≥ {min_ratio_printed}"
    )
    rigorous = (
        "is violated in {rigorous_violations} runs (ratio down to {min_ratio_rigorous})"
        if f["rigorous_violations"]
        else "never is (ratio ≥ {min_ratio_rigorous})"
    )
    n.update(printed=printed.format(**n), rigorous=rigorous.format(**n))
    text = """FT's best OOD error over time against φ: the printed R5 constant {printed}, and
        {ce_ratio} for docs/theory.md's counterexample); the rigorous bound {rigorous}."""
    return C.readme_paragraph("ft_lower_bound", text.format(**n))


def _decorate(ax, xlabel, ylabel, title, loc):
    """Log-log axes with their labels, title and legend (every panel of the figure)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=6.3, loc=loc)


def plot(results, config, outdir):
    r, f = results, facts(results, config)
    groups = config["groups"]
    fig, axes = C.figure(1, len(groups) + 1, figsize=(4.2 * (len(groups) + 1), 3.9))
    for ax, group in zip(axes, groups):
        a, k = group["a"], group["dims"]["k"]
        sel = r["a"] == a
        phi = r["phi"][sel]
        ax.plot(
            phi,
            r["min_sqrt"][sel],
            "o",
            ms=3,
            mfc="none",
            color=C.COLORS["FT"],
            label="FT: $\\min_t \\sqrt{L_{ood}(t)}$ (measured)",
        )
        order = np.argsort(phi)
        for bound in ("printed", "rigorous"):
            b = r[bound][sel][order]
            ax.plot(
                phi[order],
                np.where(b > 0, b, np.nan),
                ".",
                ms=3,
                color=C.COLORS[bound],
                label=f"{bound} R5 bound (per instance)",
            )
        # Bound curves with the median c_perp.
        grid = np.logspace(np.log10(max(phi[phi > 0].min(), 1e-3)), np.log10(phi.max()), 200)
        cp = float(np.median(r["c_perp"][sel]))
        curves = {
            "printed": T.r5_printed_bound(cp, k, grid, a, config["eps"]),
            "rigorous": T.r5_rigorous_bound(cp, grid, a, config["eps"]),
        }
        for bound, curve in curves.items():
            ax.plot(grid, np.asarray(curve), color=C.COLORS[bound], lw=1)
        bad = sel & (r["min_sqrt"] < r["printed"])
        if np.any(bad):
            ax.plot(
                r["phi"][bad],
                r["min_sqrt"][bad],
                "x",
                color="k",
                ms=7,
                mew=1.5,
                label=f"printed bound violated ({int(bad.sum())})",
            )
        title = f"(R5) $\\|v^*\\| = {a:g}$, $k = {k}$, $\\varepsilon = {config['eps']:g}$"
        _decorate(ax, "head alignment error $\\varphi$", "$\\sqrt{L_{ood}}$", title, "lower right")
    ax = axes[-1]
    pos = r["printed"] > 0
    ratio = r["min_sqrt"][pos] / r["printed"][pos]
    viol = ratio < 1
    ax.plot(
        r["phi"][pos][~viol],
        ratio[~viol],
        "o",
        ms=3,
        mfc="none",
        color=C.COLORS["printed"],
        label="random instances",
    )
    ax.plot(r["phi"][pos][viol], ratio[viol], "x", ms=6, color="k", label="violations")
    ax.plot(
        [r["ce_phi"]],
        [r["ce_min_sqrt"] / r["ce_printed"]],
        "*",
        ms=12,
        color="#ff7f0e",
        label=f"counterexample (ratio {C.num(f['ce_ratio'], 3)})",
    )
    posr = r["rigorous"] > 0
    ax.plot(
        r["phi"][posr],
        r["min_sqrt"][posr] / r["rigorous"][posr],
        ".",
        ms=3,
        color=C.COLORS["rigorous"],
        label="rigorous bound (measured / bound)",
    )
    ax.axhline(1.0, color="k", lw=1, ls="--")
    printed, rigorous = (C.num(f[k], 3) for k in ("min_ratio_printed", "min_ratio_rigorous"))
    title = f"(R5) printed: min ratio {printed}; rigorous: {rigorous}"
    _decorate(ax, "$\\varphi$", "measured / bound", title, "upper right")
    title = (
        f"ft_lower_bound: {f['printed_violations']} printed-bound violations, "
        f"{f['rigorous_violations']} rigorous-bound violations among {f['runs']} FT runs "
        f"(min over {C.NUM_SAVE} saved times); non-converged {f['nonconverged']}"
    )
    return C.finish(fig, outdir, "ft_lower_bound", title)
