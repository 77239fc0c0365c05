r"""Feature distortion over time: FT changes the features on S only, and keeps balancedness.

R1: $\|(B(t) - B_0)\Pi_{S^\perp}\|_F = 0$ for all t; R2: $v v^T - B B^T$ is conserved. FT from a
random head changes the features on S by O(1); LP-FT (FT from the linear-probe head) barely
changes them. Panel (c) compares the measured change on S with the exact width-one trajectory
of docs/theory.md, section 5 (`k1_trajectory`) on random $k = m = 1$ problems.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import linfeat as lf
from linfeat import theory as O

from . import _common as C

_BASE = C.base_config(
    seed=1, eps=0.1, head_scale=0.5, oracle_dims=dict(d=20, k=1, m=1, n=1), oracle_seeds=16
)
CONFIGS = {"quick": dict(_BASE, seeds=32), "full": dict(_BASE, seeds=256)}


def compute(config, checkpoint=None):
    ckpt = checkpoint or C.Checkpoint()
    dims, chunk, S = config["dims"], config["chunk"], config["seeds"]
    kP, kH, kO, kOH = jax.random.split(jax.random.PRNGKey(config["seed"]), 4)
    ts = C.save_times()

    def main():
        P = C.make_problems(kP, S, dims=dims, chunk=chunk, eps=config["eps"])
        H = C.gaussian_heads(kH, S, dims["k"], config["head_scale"])
        ft = C.solve(P, H, ts, chunk=chunk)
        lpft = C.solve(P, jax.vmap(lf.linear_probe)(P), ts, chunk=chunk)
        keep = (
            "metric_feature_change_S",
            "metric_feature_change_perp",
            "metric_balancedness_drift",
            "status",
        )
        out = {f"ft_{k}": ft[k] for k in keep}
        out.update({f"lpft_{k}": lpft[k] for k in keep})
        return out

    out = dict(ckpt.run("main", main))

    def oracle():
        od = config["oracle_dims"]
        n1 = config["oracle_seeds"]
        P = C.make_problems(kO, n1, dims=od, chunk=n1, eps=config["eps"])
        H = C.gaussian_heads(kOH, n1, 1, 1.0)
        tr = C.solve(P, H, ts, chunk=n1)
        q = P.X[:, 0, :] / jnp.linalg.norm(P.X[:, 0, :], axis=-1, keepdims=True)
        s = jnp.sum(P.X[:, 0, :] ** 2, axis=-1)  # X^T X = s q q^T
        alpha0 = jnp.einsum("bd,bd->b", P.B0[:, 0, :], q)
        y = jnp.einsum("bd,bd->b", P.w_star, q)
        tau = 2.0 * s[:, None] * ts[None, :]
        ex = O.k1_trajectory(tau, v0=H[:, :1], alpha0=alpha0[:, None], y=y[:, None])
        return {
            "oracle_tau": np.asarray(tau),
            "oracle_change_S_measured": tr["metric_feature_change_S"],
            "oracle_change_S_exact": np.abs(np.asarray(ex.alpha) - np.asarray(alpha0)[:, None]),
            "oracle_v_measured": tr["v"][:, :, 0],
            "oracle_v_exact": np.asarray(ex.v),
            "oracle_status": tr["status"],
        }

    out.update(ckpt.run("oracle", oracle))
    out["ts"] = ts
    out["nonconverged"] = np.array(
        int(
            np.sum(out["ft_status"] != 0)
            + np.sum(out["lpft_status"] != 0)
            + np.sum(out["oracle_status"] != 0)
        )
    )
    out["max_perp_change"] = np.array(
        max(
            out["ft_metric_feature_change_perp"].max(), out["lpft_metric_feature_change_perp"].max()
        )
    )
    out["max_drift"] = np.array(
        max(out["ft_metric_balancedness_drift"].max(), out["lpft_metric_balancedness_drift"].max())
    )
    out["oracle_max_dev"] = np.array(
        np.max(np.abs(out["oracle_change_S_measured"] - out["oracle_change_S_exact"]))
    )
    return out


def facts(results, config) -> dict:
    """The numbers quoted in the figure and in README (one computation for both)."""
    r = results
    return {
        "seeds": int(r["ft_metric_feature_change_S"].shape[0]),
        "eps": config["eps"],
        "t_end": float(r["ts"][-1]),
        # Median over seeds of ||(B(t) - B0) Pi_S||_F at the last save time.
        "median_change_S_ft": float(np.median(r["ft_metric_feature_change_S"][:, -1])),
        "median_change_S_lpft": float(np.median(r["lpft_metric_feature_change_S"][:, -1])),
        # The reduced solve's change on S-perp: 0 by construction (R1 is the premise of the
        # exact reduction), reported as returned.
        "max_perp_change": float(r["max_perp_change"]),
        "max_drift": float(r["max_drift"]),
        "oracle_seeds": int(r["oracle_tau"].shape[0]),
        "oracle_max_dev": float(r["oracle_max_dev"]),
        "nonconverged": int(r["nonconverged"]),
    }


def readme(results, config) -> str:
    """README's paragraph; every number comes from `facts` (the results and the config)."""
    f = facts(results, config)
    keys = ("median_change_S_ft", "median_change_S_lpft", "max_perp_change", "max_drift")
    n = f | C.nums(f, *keys, "oracle_max_dev") | C.counts(f, "seeds")
    n["perp"] = """zero by construction of the exact reduction (R1 is its premise; tests compare it
        with the full-space flow), not a measurement"""
    if f["max_perp_change"] != 0:
        n["perp"] += "; this run's reduced solve reports up to {max_perp_change}".format(**n)
    text = """FT changes the features on S by O(1) (median {median_change_S_ft} at t = {t_end:g}
        over {seeds} seeds, ε = {eps:g}) and LP-FT by O(ε) ({median_change_S_lpft}); their
        change on S⊥ is {perp}. Balancedness is conserved to {max_drift} (R2, max over seeds
        and times), and {oracle_seeds} k = 1 solves match the exact trajectory to
        {oracle_max_dev}."""
    return C.readme_paragraph("distortion", text.format(**n))


def plot(results, config, outdir):
    r, f = results, facts(results, config)
    ts = r["ts"]
    x = ts[1:]
    fig, axes = C.figure(1, 3, figsize=(12.5, 3.8))
    ax = axes[0]
    for tag, name in (("ft", "FT"), ("lpft", "LP-FT")):
        C.band(
            ax,
            x,
            r[f"{tag}_metric_feature_change_S"][:, 1:],
            color=C.COLORS[name],
            label=f"{name}: $\\|(B(t) - B_0)\\Pi_S\\|_F$",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-6)
    ax.set_xlabel("flow time $t$")
    ax.set_ylabel("feature change on $S$")
    ax.set_title(
        f"(a) change on S (ID), $\\varepsilon = {config['eps']}$; median at t = {f['t_end']:g}: "
        f"FT {C.num(f['median_change_S_ft'])}, LP-FT {C.num(f['median_change_S_lpft'])}"
    )
    ax.legend(loc="lower right")

    ax = axes[1]
    floor = 1e-17  # exact zeros (R1 in the reduced solve) drawn at this floor
    for tag, name in (("ft", "FT"), ("lpft", "LP-FT")):
        C.band(
            ax,
            x,
            np.maximum(r[f"{tag}_metric_feature_change_perp"][:, 1:], floor),
            color=C.COLORS[name],
            label=f"{name}: $\\|(B - B_0)\\Pi_{{S^\\perp}}\\|_F$ (R1: 0 by construction; "
            "drawn at 1e-17)",
        )
        C.band(
            ax,
            x,
            np.maximum(r[f"{tag}_metric_balancedness_drift"][:, 1:], floor),
            color=C.COLORS[name],
            ls="--",
            label=f"{name}: $\\|vv^T - BB^T - (v_0v_0^T - B_0B_0^T)\\|_F$ (R2)",
        )
    ax.axhline(
        1e-12,
        color=C.COLORS["bound"],
        lw=1,
        ls=":",
        label="theory: exactly 0 (1e-12 drawn for scale)",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-18, 1e-6)
    ax.set_xlabel("flow time $t$")
    ax.set_ylabel("change on $S^\\perp$ / balancedness drift")
    ax.set_title(
        f"(b) R1 (0 by construction), R2: max {C.num(f['max_perp_change'])} / "
        f"{C.num(f['max_drift'])}"
    )
    ax.legend(loc="upper left", fontsize=6.2)

    ax = axes[2]
    tau = r["oracle_tau"]
    meas, exact = r["oracle_change_S_measured"], r["oracle_change_S_exact"]
    for j in range(tau.shape[0]):
        ax.plot(
            tau[j, 1:],
            exact[j, 1:],
            color="0.35",
            lw=0.8,
            alpha=0.8,
            label="closed form (sec. 4)" if j == 0 else None,
        )
        ax.plot(
            tau[j, 1::4],
            meas[j, 1::4],
            "o",
            mfc="none",
            ms=3,
            color=C.COLORS["FT"],
            alpha=0.8,
            label="FT, ODE solve" if j == 0 else None,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-5)
    ax.set_xlabel("scaled time $\\tau = 2 s t$")
    ax.set_ylabel("$\\|(B(t) - B_0)\\Pi_S\\|$")
    ax.set_title(f"(c) $k = m = 1$: solver vs exact, max dev {C.num(f['oracle_max_dev'])}")
    ax.legend(loc="lower right")
    title = (
        f"distortion: FT distorts features on S only (R1) and conserves balancedness (R2); "
        f"{f['seeds']} seeds, median and 5-95% band; non-converged: {f['nonconverged']}"
    )
    return C.finish(fig, outdir, "distortion", title)
