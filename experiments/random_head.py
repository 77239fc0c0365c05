r"""The head alignment error $\varphi$ of Gaussian heads against the R6 bounds.

$v_0 \sim N(0, \sigma^2 I_k)$ and $\varphi^2 = |(v_0^T a^*)^2 - \|a^*\|^4|$ for the aligned true
head $a^*$ of random problems ($a = \|a^*\| = \|v^*\|$). R6 [derived]:
(i) anti-concentration $P[\varphi \le \tfrac{\sqrt\pi}{2} a \delta \sigma] \le \delta$, i.e. the
CDF satisfies $F(x) \le 2x/(\sqrt\pi a\sigma)$; (ii) $P[\varphi < a^2/\sqrt 2] \le
2e^{-a^2/(4\sigma^2)}$ (the $\sigma_{\max}$ statement inverted). Many batches give 5-95% bands.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import linfeat as lf
from linfeat import theory as T

from . import _common as C

_BASE = C.base_config(seed=6, a=1.0, sigmas_cdf=[0.1, 0.3, 1.0, 3.0])
CONFIGS = {
    "quick": dict(_BASE, batches=8, per_batch=4000, sigmas=np.logspace(-1, 1, 9).tolist()),
    "full": dict(_BASE, batches=32, per_batch=20000, sigmas=np.logspace(-1, 1, 21).tolist()),
}


MC_SE = 3  # an empirical probability above its bound by more than MC_SE standard errors fails


def compute(config, checkpoint=None):
    ckpt = checkpoint or C.Checkpoint()
    dims, nb, npb = config["dims"], config["batches"], config["per_batch"]
    kP, kS = jax.random.split(jax.random.PRNGKey(config["seed"]))

    def run():
        # One random problem per batch; its aligned head a* = U v* (init_head 'aligned').
        P = C.make_problems(kP, nb, dims=dims, chunk=config["chunk"], a=config["a"])
        a_star = jax.vmap(lambda q: lf.init_head(q, "aligned"))(P)
        sig_all = np.asarray(config["sigmas_cdf"] + config["sigmas"])
        keys = jax.random.split(kS, nb * sig_all.size).reshape(nb, sig_all.size, -1)

        def batch(key_row, a_s):
            return jax.vmap(lambda k, s: T.r6_phi_cdf_mc(k, a_s, s, npb))(
                key_row, jnp.asarray(sig_all)
            )

        phis = jax.jit(jax.vmap(batch))(keys, a_star)  # (nb, num_sigma, npb)
        phis = np.asarray(phis)
        ncdf = len(config["sigmas_cdf"])
        a = config["a"]
        grid = np.logspace(-4, 1, 120)
        cdf = (phis[:, :ncdf, :, None] <= grid).mean(axis=2)  # (nb, ncdf, G)
        p_small = (phis[:, ncdf:, :] < a**2 / np.sqrt(2)).mean(axis=2)  # (nb, num_sigmas)
        return {
            "grid": grid,
            "cdf": cdf,
            "p_small": p_small,
            "phi_median": np.median(phis[:, :ncdf], axis=(0, 2)),
        }

    out = dict(ckpt.run("mc", run))
    a = config["a"]
    sig_cdf = np.asarray(config["sigmas_cdf"])
    bound_cdf = np.minimum(2 * out["grid"][None, :] / (np.sqrt(np.pi) * a * sig_cdf[:, None]), 1.0)
    out["bound_cdf"] = bound_cdf
    sig = np.asarray(config["sigmas"])
    out["bound_p_small"] = np.minimum(2 * np.exp(-(a**2) / (4 * sig**2)), 1.0)
    # Checks: the pooled empirical CDF never exceeds the bound (allowing MC noise of MC_SE SE).
    pooled = out["cdf"].mean(axis=0)
    n = config["batches"] * config["per_batch"]
    se = np.sqrt(np.maximum(pooled * (1 - pooled), 1.0 / n) / n)
    out["cdf_violations"] = np.array(int(np.sum(pooled > bound_cdf + MC_SE * se)))
    pooled_p = out["p_small"].mean(axis=0)
    se_p = np.sqrt(np.maximum(pooled_p * (1 - pooled_p), 1.0 / n) / n)
    bad = pooled_p > out["bound_p_small"] + MC_SE * se_p
    out["p_small_violations"] = np.array(int(np.sum(bad)))
    out["min_phi_positive"] = np.array(bool(np.all(out["cdf"][..., 0] < 1)))
    out["nonconverged"] = np.array(0)  # no flows here
    return out


def facts(results, config) -> dict:
    """The numbers quoted in the figure and in README (one computation for both)."""
    r = results
    problems, num_sigmas = r["p_small"].shape
    return {
        "problems": int(problems),
        "per_problem": int(config["per_batch"]),
        "heads_per_sigma": int(problems * config["per_batch"]),
        "mc_se": MC_SE,
        "num_sigmas": int(num_sigmas),
        "num_sigmas_cdf": int(r["cdf"].shape[1]),
        "cdf_violations": int(r["cdf_violations"]),
        "p_small_violations": int(r["p_small_violations"]),
    }


def readme(results, config) -> str:
    """README's paragraph; every number comes from `facts` (the results and the config)."""
    f = facts(results, config)
    n = f | C.counts(f, "heads_per_sigma", "per_problem")
    n["verdict"] = (
        "{cdf_violations} + {p_small_violations} violations".format(**f)
        if f["cdf_violations"] + f["p_small_violations"]
        else "no violation"
    )
    text = """the head alignment error φ of Gaussian heads against the R6 anti-concentration
        bound and the small-σ bound P[φ < a²/√2] ≤ 2exp(−a²/4σ²): {verdict} (beyond {mc_se}
        Monte Carlo standard errors) in {heads_per_sigma} heads per σ ({problems} random problems
        × {per_problem} heads; {num_sigmas_cdf} values of σ for the CDF, {num_sigmas} for the
        small-σ bound)."""
    return C.readme_paragraph("random_head", text.format(**n))


def plot(results, config, outdir):
    plt = C.pyplot()
    r, f = results, facts(results, config)
    grid = r["grid"]
    a = config["a"]
    fig, axes = C.figure(1, 2, figsize=(10.5, 4.0))
    ax = axes[0]
    cmap = plt.get_cmap("plasma")
    sig_cdf = config["sigmas_cdf"]
    for j, s in enumerate(sig_cdf):
        col = cmap(j / max(len(sig_cdf), 1))
        C.band(
            ax,
            grid,
            np.maximum(r["cdf"][:, j, :], 1e-7),
            color=col,
            label=f"empirical CDF, $\\sigma = {s:g}$",
        )
        ax.plot(grid, r["bound_cdf"][j], color=col, ls="--", lw=1)
    ax.plot([], [], "k--", lw=1, label="R6 bound $2x / (\\sqrt{\\pi} a \\sigma)$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-5, 1.5)
    ax.set_xlabel("$x$")
    ax.set_ylabel("$P[\\varphi \\leq x]$")
    ax.set_title(
        f"(a) R6 anti-concentration ($a = {a:g}$, k = {config['dims']['k']}); "
        f"violations {f['cdf_violations']}"
    )
    ax.legend(fontsize=6.5, loc="lower right")
    ax = axes[1]
    sig = np.asarray(config["sigmas"])
    C.band(
        ax,
        sig,
        np.maximum(r["p_small"], 1e-7),
        color=C.COLORS["FT"],
        marker="o",
        label="measured $P[\\varphi < a^2/\\sqrt{2}]$",
    )
    ax.plot(
        sig,
        r["bound_p_small"],
        color=C.COLORS["bound"],
        ls="--",
        label="R6 bound $2 e^{-a^2/(4\\sigma^2)}$",
    )
    ax.axvline(
        float(T.r6_sigma_max(a, 0.05)),
        color="0.5",
        ls=":",
        lw=1,
        label="$\\sigma_{\\max}(\\delta = 0.05)$",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-5, 2)
    ax.set_xlabel("head scale $\\sigma$")
    ax.set_ylabel("probability")
    ax.set_title(
        f"(b) R6: small heads give $\\varphi \\geq a^2/\\sqrt{{2}}$; "
        f"violations {f['p_small_violations']}"
    )
    ax.legend(fontsize=6.5, loc="lower right")
    title = (
        f"random_head: {f['problems']} random problems x {f['per_problem']} Gaussian heads "
        f"per $\\sigma$ ({f['heads_per_sigma']} in all; median and 5-95% band over problems)"
    )
    return C.finish(fig, outdir, "random_head", title)
