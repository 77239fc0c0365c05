r"""Discrete optimisers (optax) against the gradient flow: GD, SGD, momentum and Adam.

`lf.train_discrete` (linfeat/_discrete.py) trains the dense $(v, B)$ on the paper's loss
$\|XB^Tv - Y\|^2$; GD with step $\eta$ is forward Euler for the flow, so at flow time
$t = \eta j$ it is $O(\eta)$ from `lf.fine_tune` (panel a, slope-1 guide). Minibatch SGD
(unbiased, batch $b$) adds noise whose effect shrinks like $\sqrt\eta$ (slope-1/2 guide).
R1 needs every update to be a combination of gradients, whose B-rows lie in S: GD, SGD and
momentum keep the $S^\perp$ features frozen (to rounding); Adam's coordinatewise scaling does
not (panel b).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import linfeat as lf

from . import _common as C

_OPTIMISERS = dict(batch_size=10, momentum=0.9, adam_lr=1e-3, opt_save_every=16)
_BASE = C.base_config(seed=7, head_scale=0.5, eps=0.1, t_end=0.5, **_OPTIMISERS)
CONFIGS = {
    "quick": dict(_BASE, problems=4, sgd_keys=4, save_every=[4, 16, 64]),
    "full": dict(_BASE, problems=8, sgd_keys=8, save_every=[4, 8, 16, 32, 64, 128]),
}
_SAVES = C.NUM_SAVE - 1  # optimiser saves per run: steps 0, se, ..., 63 se (64 saves)


@functools.cache
def _trainer(optimizer, se, batch_size, kw):
    """jit(vmap(`lf.train_discrete`)) over problems and keys, cached per static setting."""

    def one(p, h, key, lr):
        tr = lf.train_discrete(
            p,
            h,
            optimizer=optimizer,
            learning_rate=lr,
            num_steps=_SAVES * se,
            save_every=se,
            batch_size=batch_size,
            key=key,
            check=False,
            **dict(kw),
        )
        return {
            "v": tr.v,
            "ood": tr.metrics.ood_error,
            "perp": tr.metrics.feature_change_perp,
            "ts": tr.ts,
            "status": tr.status,
        }

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))


def _train(P, H, keys, *, optimizer, lr, se, batch_size=None, **kw):
    """vmapped `lf.train_discrete` over problems (and keys), 64 saves up to step 63*se.

    The step size is a traced argument, so runs that differ only in it share a compile.
    """
    f = _trainer(optimizer, se, batch_size, tuple(sorted(kw.items())))
    return {k: np.asarray(v) for k, v in f(P, H, keys, jnp.asarray(lr, float)).items()}


def compute(config, checkpoint=None):
    ckpt = checkpoint or C.Checkpoint()
    dims, chunk = config["dims"], config["chunk"]
    NP, NK = config["problems"], config["sgd_keys"]
    kP, kH, kK = jax.random.split(jax.random.PRNGKey(config["seed"]), 3)
    P = C.make_problems(kP, NP, dims=dims, chunk=chunk, eps=config["eps"])
    H = C.gaussian_heads(kH, NP, dims["k"], config["head_scale"])
    # SGD: every problem with NK keys (problem-major).
    Prep = jax.tree.map(lambda x: jnp.repeat(x, NK, axis=0), P)
    Hrep = jnp.repeat(H, NK, axis=0)
    sgd_keys = jax.random.split(kK, NP * NK)
    no_keys = jax.random.split(kK, NP)

    def one(se):
        eta = config["t_end"] / (_SAVES * se)
        ts = eta * se * np.arange(_SAVES + 1)
        flow = C.solve(P, H, ts, chunk=chunk)
        gd = _train(P, H, no_keys, optimizer="gd", lr=eta, se=se)
        sgd = _train(
            Prep,
            Hrep,
            sgd_keys,
            optimizer="sgd",
            lr=eta,
            se=se,
            batch_size=config["batch_size"],
        )
        fv = np.repeat(flow["v"], NK, axis=0)
        fo = np.repeat(flow["metric_ood_error"], NK, axis=0)
        return {
            "eta": np.array(eta),
            "gd_dv": np.max(np.linalg.norm(gd["v"] - flow["v"], axis=-1), axis=1),
            "gd_dood": np.max(np.abs(gd["ood"] - flow["metric_ood_error"]), axis=1),
            "sgd_dv": np.max(np.linalg.norm(sgd["v"] - fv, axis=-1), axis=1),
            "sgd_dood": np.max(np.abs(sgd["ood"] - fo), axis=1),
            "gd_perp": np.max(gd["perp"], axis=1),
            "sgd_perp": np.max(sgd["perp"], axis=1),
            "status": np.concatenate([flow["status"], gd["status"], sgd["status"]]),
        }

    out = C.stacked(ckpt, "eta{:02d}", config["save_every"], one)
    status = out.pop("status").ravel()  # the rows' statuses, one after the other

    def optimisers():
        se = config["opt_save_every"]
        eta = config["t_end"] / (_SAVES * se)
        ts = eta * se * np.arange(_SAVES + 1)
        flow = C.solve(P, H, ts, chunk=chunk)
        res = {
            "opt_steps": se * np.arange(_SAVES + 1),
            "opt_eta": np.array(eta),
            "flow_ood": flow["metric_ood_error"],
            "flow_perp": flow["metric_feature_change_perp"],
        }
        runs = {
            "gd": _train(P, H, no_keys, optimizer="gd", lr=eta, se=se),
            "sgd": _train(
                P, H, no_keys, optimizer="sgd", lr=eta, se=se, batch_size=config["batch_size"]
            ),
            "momentum": _train(
                P,
                H,
                no_keys,
                optimizer="momentum",
                lr=eta * (1 - config["momentum"]),
                se=se,
                momentum=config["momentum"],
            ),
            "adam": _train(P, H, no_keys, optimizer="adam", lr=config["adam_lr"], se=se),
        }
        for name, tr in runs.items():
            res[f"{name}_ood"] = tr["ood"]
            res[f"{name}_perp"] = tr["perp"]
            res[f"{name}_status"] = tr["status"]
        res["opt_status"] = np.concatenate(
            [flow["status"]] + [tr["status"] for tr in runs.values()]
        )
        return res

    out.update(ckpt.run("optimisers", optimisers))
    status = np.concatenate([status, out.pop("opt_status")])
    out["nonconverged"] = np.array(int(np.sum(status != 0)))
    # Observed orders: slope of log(median distance) against log(eta) (NaN for one eta).
    le = np.log(out["eta"])
    for name in ("gd", "sgd"):
        y = np.log(np.median(out[f"{name}_dv"], axis=1))
        out[f"order_{name}"] = np.array(np.polyfit(le, y, 1)[0] if le.size > 1 else np.nan)
    for name in ("gd", "sgd", "momentum", "adam"):
        out[f"max_perp_{name}"] = np.array(np.max(out[f"{name}_perp"]))
    return out


_FROZEN = ("gd", "sgd", "momentum")  # the optimisers whose updates are combinations of gradients


def facts(results, config) -> dict:
    """The numbers quoted in the figure and in README (one computation for both)."""
    r = results
    return {
        "order_gd": float(r["order_gd"]),
        "order_sgd": float(r["order_sgd"]),
        "eta_min": float(np.min(r["eta"])),
        "eta_max": float(np.max(r["eta"])),
        "max_perp": {name: float(r[f"max_perp_{name}"]) for name in (*_FROZEN, "adam")},
        "max_perp_frozen": float(max(r[f"max_perp_{name}"] for name in _FROZEN)),
        "problems": int(config["problems"]),
        "nonconverged": int(r["nonconverged"]),
    }


def readme(results, config) -> str:
    """README's paragraph; every number comes from `facts` (the results and the config)."""
    f = facts(results, config)
    n = C.nums(f, "order_gd", "order_sgd", digits=3) | C.nums(f, "eta_min", "eta_max")
    n |= C.nums(f, "max_perp_frozen") | C.nums(f["max_perp"], "adam")
    text = """GD (optax) converges to the flow at fitted order {order_gd} in η (forward Euler:
        first order; η from {eta_min} to {eta_max}), SGD more slowly (order {order_sgd}); GD,
        SGD and momentum keep S⊥ features frozen to {max_perp_frozen}, Adam moves them by
        {adam}."""
    return C.readme_paragraph("gd_vs_flow", text.format(**n))


def plot(results, config, outdir):
    plt = C.pyplot()
    r, f = results, facts(results, config)
    eta = r["eta"]
    fig, axes = C.figure(1, 3, figsize=(13.5, 4.0))
    ax = axes[0]
    C.band(
        ax,
        eta,
        r["gd_dv"].T,
        color="#d62728",
        marker="o",
        label=f"GD: $\\max_t\\|v_{{gd}} - v_{{flow}}\\|$ (order {C.num(f['order_gd'], 3)})",
    )
    C.band(
        ax,
        eta,
        r["gd_dood"].T,
        color="#d62728",
        marker="s",
        ls="--",
        label="GD: $\\max_t |L_{ood}^{gd} - L_{ood}^{flow}|$",
    )
    C.band(
        ax,
        eta,
        r["sgd_dv"].T,
        color="#9467bd",
        marker="o",
        label=f"SGD (b = {config['batch_size']}): $\\max_t\\|v - v_{{flow}}\\|$ "
        f"(order {C.num(f['order_sgd'], 3)})",
    )
    e0 = eta[-1]
    g0 = np.median(r["gd_dv"][-1])
    s0 = np.median(r["sgd_dv"][-1])
    ax.plot(eta, g0 * eta / e0, "k:", lw=1, label="$O(\\eta)$ (forward Euler)")
    ax.plot(eta, s0 * np.sqrt(eta / e0), "k-.", lw=1, label="$O(\\sqrt{\\eta})$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step size $\\eta$ (flow time $t = \\eta j$)")
    ax.set_ylabel(f"distance to the flow on $t \\in [0, {config['t_end']}]$")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_title("(a) GD $\\to$ flow at first order in $\\eta$")
    ax.legend(fontsize=6.2, loc="lower right")

    ax = axes[1]
    steps = r["opt_steps"]
    floor = 1e-18
    names = (
        ("gd", "GD", "#d62728"),
        ("sgd", "SGD", "#9467bd"),
        ("momentum", f"momentum {config['momentum']}", "#ff7f0e"),
        ("adam", f"Adam (lr {config['adam_lr']:g})", "#17becf"),
    )
    for key, label, col in names:
        C.band(
            ax,
            steps[1:],
            np.maximum(r[f"{key}_perp"][:, 1:], floor),
            color=col,
            label=f"{label}: max {C.num(f['max_perp'][key])}",
        )
    ax.axhline(1e-12, color=C.COLORS["bound"], ls=":", lw=1, label="R1: 0 (1e-12 drawn)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, 10)
    ax.set_xlabel("optimiser step $j$")
    ax.set_ylabel("$\\|(B_j - B_0)\\Pi_{S^\\perp}\\|_F$")
    ax.set_title("(b) R1 under optimisers: only Adam moves $S^\\perp$ features")
    ax.legend(fontsize=6.2, loc="center left")

    ax = axes[2]
    t = steps * r["opt_eta"]
    C.band(ax, t[1:], r["flow_ood"][:, 1:], color="k", label="gradient flow (ODE; band 5-95%)")
    for key, label, col in names:
        C.band(ax, t[1:], r[f"{key}_ood"][:, 1:], color=col, label=label, ls="--", alpha=0.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"$t = \\eta j$ ($\\eta$ = {C.fmt(r['opt_eta'], 2)}; Adam: same j)")
    ax.set_ylabel("$L_{ood}$ ($\\Sigma = I$)")
    ax.set_title("(c) OOD error along training")
    ax.legend(fontsize=6.2, loc="lower left")
    title = (
        f"gd_vs_flow: {config['problems']} problems ({config['sgd_keys']} SGD keys each), "
        f"$\\varepsilon = {config['eps']}$; median and 5-95% band; non-finite/non-converged "
        f"{int(r['nonconverged'])}"
    )
    return C.finish(fig, outdir, "gd_vs_flow", title)
