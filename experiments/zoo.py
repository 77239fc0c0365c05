r"""The method zoo on the 10 synthetic scenarios of `synthetic_table`, and knobs tuned by gradient.

Every method of `METHODS` (name -> `callable(problem, v0, knobs)` returning a trajectory with
`final_metrics`) runs to convergence on the same random problems and Gaussian heads of each
scenario of `synthetic_table.SCENARIOS` (imported, not copied): ID and OOD error relative to
the zero predictor's, in %, means over seeds with 90% intervals, and the feature change on S
and on S-perp. All methods of `linfeat.methods` share one compiled program, so the registry is
one `jax.vmap` each. Default knobs (`DEFAULTS`): WiSE-FT alpha = 0.5, L2-SP lambda = lambda_v =
1, layer-wise eta_v = 1, eta_B = 0.1, partial LP tau = 0.05, weight decay mu = 0.01.

Hyperparameters by gradient: for each scalar knob (alpha; lambda = lambda_v; tau;
rho = eta_B/eta_v; mu) and scenario, the knob minimising the empirical OOD loss on a held-out
OOD sample ($x \sim N(0, \Sigma_{ood})$, `ood_samples` points per problem, averaged over
`tune_seeds` problems) is found by Adam (optax) on `jax.grad` through the engine, in an
unconstrained parameter (alpha itself; the log of the others), and compared with a grid search
of the same objective. The exact (population) OOD error is reported at both optima.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import linfeat as lf
from linfeat import methods as LM

from . import _common as C
from .synthetic_table import LEVEL, SCENARIOS, Z

DIMS = dict(d=24, k=3, m=8, n=16)
DEFAULTS = dict(alpha=0.5, lam=1.0, eta_B=0.1, tau=0.05, mu=0.01)


def _lp(p, v0):
    return lf.linear_probe(p, v0)


# name -> callable(problem, v0, knobs). LP is (v_lp, B0): WiSE-FT at alpha = 0 from the LP head
# (the same compiled program as every other entry); FT and LP-FT are WiSE-FT at alpha = 1.
METHODS = {
    "LP": lambda p, v0, kn: LM.wise_ft(p, _lp(p, v0), alpha=0.0),
    "FT": lambda p, v0, kn: LM.wise_ft(p, v0, alpha=1.0),
    "LP-FT": lambda p, v0, kn: LM.wise_ft(p, _lp(p, v0), alpha=1.0),
    "WiSE-FT": lambda p, v0, kn: LM.wise_ft(p, v0, alpha=kn["alpha"]),
    "L2-SP": lambda p, v0, kn: LM.l2_sp(p, v0, lam=kn["lam"], lam_v=kn["lam"]),
    "layer-wise": lambda p, v0, kn: LM.layerwise_ft(p, v0, eta_v=1.0, eta_B=kn["eta_B"]),
    "partial LP-FT": lambda p, v0, kn: LM.partial_lp_ft(p, v0, tau=kn["tau"]),
    "weight decay": lambda p, v0, kn: LM.weight_decay_ft(p, v0, mu=kn["mu"]),
}
# knob tuned -> (method, unconstrained -> knob value, range of the unconstrained parameter)
KNOBS = {  # the order is that of `_knobs`
    "alpha": ("WiSE-FT", lambda u: u, (-0.25, 1.25)),
    "lam": ("L2-SP", jnp.exp, (np.log(1e-3), np.log(1e2))),
    "tau": ("partial LP-FT", jnp.exp, (np.log(1e-3), np.log(1e1))),
    "eta_B": ("layer-wise", jnp.exp, (np.log(1e-3), np.log(1e1))),
    "mu": ("weight decay", jnp.exp, (np.log(1e-4), np.log(1.0))),
}
# The tuning objective runs at rtol 1e-7 (the library default is 1e-9): its gradient is used
# by Adam, not compared with a tolerance, and the steps (and the reverse pass) are ~2x fewer.
TUNE_SOLVER = dict(rtol=1e-7, atol=1e-9)
_BASE = dict(seed=12, dims=DIMS, scenarios=[list(s) for s in SCENARIOS], ood_samples=200)
CONFIGS = {
    # quick: every method on every scenario, the tuning on 3 scenarios (OOD off S, medium
    # features, OOD inside S)
    "quick": dict(_BASE, seeds=6, chunk=6, tune_scenarios=[0, 4, 7], tune_seeds=2,
                  tune_steps=4, grid_points=5),
    "full": dict(_BASE, seeds=32, chunk=32, tune_scenarios=list(range(10)), tune_seeds=2,
                 tune_steps=8, grid_points=7),
}  # fmt: skip


def _run_all(P, H, knobs):
    """Final metrics of every method on a batch (one vmap per registry entry)."""
    out = {}
    for name, fn in METHODS.items():
        tr = jax.vmap(lambda p, v, fn=fn: fn(p, v, knobs))(P, H)
        f = tr.final_metrics
        out[name] = dict(ood=f.ood_error, id=f.id_error, fS=f.feature_change_S,
                         fP=f.feature_change_perp, status=tr.status)  # fmt: skip
    return {n: {k: np.asarray(v) for k, v in d.items()} for n, d in out.items()}


def _ood_sample(key, P, num, sS, sP):
    """x ~ N(0, sS Pi_S + sP Pi_perp), `num` per problem: (seeds, num, d)."""
    Q = jax.vmap(lambda p: lf.reduce(p).basis)(P)
    z = jax.random.normal(key, (Q.shape[0], num, Q.shape[1]))
    zS = jnp.einsum("snd,sdr,ser->sne", z, Q, Q)
    return np.sqrt(sS) * zS + np.sqrt(sP) * (z - zS)


def _knobs(u, onehot):
    """`combined_ft` knobs: knob i = transform_i(u_i) where `onehot` selects it, else FT's."""
    exp = lambda i, off: jnp.where(onehot[i] > 0, jnp.exp(u[i]), off)  # noqa: E731
    lam = exp(1, 0.0)
    return dict(alpha=jnp.where(onehot[0] > 0, u[0], 1.0), lam=lam, lam_v=lam, tau=exp(2, 0.0),
                eta_B=exp(3, 1.0), mu=exp(4, 0.0))  # fmt: skip


def _loss(u, onehot, P, H, Xo, ood0):
    """(empirical OOD loss on the held-out sample, exact OOD error / L(0)), means over problems.

    One function of all five knobs: one compiled gradient program tunes every knob."""

    def one(p, v, x):
        tr = LM.combined_ft(p, v, **_knobs(u, onehot), **TUNE_SOLVER)
        e = tr.B_final.T @ tr.v_final - p.w_star
        return jnp.mean((x @ e) ** 2), tr.final_metrics.ood_error

    emp, exact = jax.vmap(one)(P, H, Xo)
    return jnp.mean(emp), jnp.mean(exact / ood0)


_loss_grad = jax.jit(jax.value_and_grad(_loss, has_aux=True))
_loss_fwd = jax.jit(_loss)


def _tune(i, P, H, Xo, ood0, steps, points):
    """Knob i: Adam (optax) on jax.grad from mid-grid, and the grid search of the same loss.

    Returns the knob values (gradient, grid), objectives and exact OOD errors at both."""
    name = list(KNOBS)[i]
    _, transform, (lo, hi) = KNOBS[name]
    grid = np.linspace(lo, hi, points)
    onehot = jnp.eye(len(KNOBS))[i]
    at = lambda g: jnp.zeros(len(KNOBS)).at[i].set(g)  # noqa: E731
    grid_vals = [tuple(map(float, _loss_fwd(at(g), onehot, P, H, Xo, ood0))) for g in grid]
    u = at(grid[len(grid) // 2])  # start mid-grid, independent of the grid search's answer
    # Adam moves about `lr` per step early on: 0.2 for alpha, 1 (a factor e) for log-knobs
    opt = optax.adam(0.2 if name == "alpha" else 1.0)
    state = opt.init(u)
    best = (np.inf, np.nan, u)
    for _ in range(steps):
        (val, exact), g = _loss_grad(u, onehot, P, H, Xo, ood0)
        if float(val) < best[0]:
            best = (float(val), float(exact), u)
        g = jnp.where(jnp.isfinite(g), g, 0.0)  # a non-converged lane: skip its step
        upd, state = opt.update(g, state)
        u = optax.apply_updates(u, upd)
    j = int(np.argmin([v[0] for v in grid_vals]))
    knob = [float(transform(jnp.asarray(best[2][i]))), float(transform(jnp.asarray(grid[j])))]
    return (
        np.array(knob),
        np.array([best[0], grid_vals[j][0]]),
        np.array([best[1], grid_vals[j][1]]),
    )


def _scenario(config, i, num):
    """`num` problems and heads of scenario i (the same draws for the table and the tuning)."""
    _, _, eps, sS, sP, hs, a, _ = config["scenarios"][i]
    key = jax.random.fold_in(jax.random.PRNGKey(config["seed"]), i)
    kP, kH, kX = jax.random.split(key, 3)
    dims, chunk = config["dims"], config["chunk"]
    P = C.make_problems(kP, num, dims=dims, chunk=chunk, eps=eps, a=a, scale_S=sS, scale_perp=sP)
    H = C.gaussian_heads(kH, num, dims["k"], hs)
    ood0 = C.ood_error_batch(P, jnp.zeros_like(H))
    return P, H, ood0, kX, (sS, sP)


def compute(config, checkpoint=None):
    ckpt = checkpoint or C.Checkpoint()

    def table(item):
        i, _ = item
        P, H, ood0, _, _ = _scenario(config, i, config["seeds"])
        id0 = C.id_error_batch(P, jnp.zeros_like(H))
        res = _run_all(P, H, DEFAULTS)
        row = {}
        for j, name in enumerate(METHODS):
            r = res[name]
            row.update({f"ood_{j}": r["ood"] / ood0, f"id_{j}": r["id"] / id0,
                        f"fS_{j}": r["fS"], f"fP_{j}": r["fP"],
                        f"status_{j}": r["status"]})  # fmt: skip
        return row

    def tune(i):
        # the first `tune_seeds` problems of the scenario (same draws as the table's)
        P, H, ood0, kX, (sS, sP) = _scenario(config, i, config["tune_seeds"])
        Xo = _ood_sample(kX, P, config["ood_samples"], sS, sP)
        row = {}
        for j, name in enumerate(KNOBS):
            knob, obj, exact = _tune(j, P, H, Xo, ood0, config["tune_steps"],
                                     config["grid_points"])  # fmt: skip
            row[f"tuned_{name}"], row[f"tuned_obj_{name}"] = knob, obj
            row[f"tuned_exact_{name}"] = exact
        return row

    out = C.stacked(ckpt, "scenario{:02d}", enumerate(config["scenarios"]), table)
    out.update(C.stacked(ckpt, "tune{:02d}", config["tune_scenarios"], tune))
    out["tune_index"] = np.asarray(config["tune_scenarios"])
    out["nonconverged"] = np.array(
        int(sum(np.sum(out[f"status_{j}"] != 0) for j in range(len(METHODS))))
    )
    return out


def _mean_ci(x):
    x = np.asarray(x, float)
    m = x.mean(axis=-1)
    se = x.std(axis=-1, ddof=1) / np.sqrt(x.shape[-1])
    return m, m - Z * se, m + Z * se


def _cell(x):
    m, lo, hi = _mean_ci(100 * x)
    if max(abs(lo), abs(hi)) < 5e-4:
        return "0"
    return f"{C.fmt(m, 3)} [{C.fmt(lo, 2)}, {C.fmt(hi, 2)}]"


def markdown(results, config) -> str:
    r, names = results, list(METHODS)
    S = r["ood_0"].shape[1]
    head = "| # | scenario | " + " | ".join(names) + " |"
    sep = "|---|---|" + "---|" * len(names)
    lines = [
        f"Relative errors $L(w)/L(0)$ in %, mean over {S} seeds [{LEVEL}% interval], every "
        f"method at convergence with the default knobs {DEFAULTS}. Generated by "
        "`linfeat reproduce` (experiments/zoo.py).",
        "",
        "**OOD error**",
        "",
        head,
        sep,
    ]
    for kind, title in (("ood", None), ("id", "**ID error**")):
        if title:
            lines += ["", title, "", head, sep]
        for i, sc in enumerate(config["scenarios"]):
            cells = [_cell(r[f"{kind}_{j}"][i]) for j in range(len(names))]
            lines.append(f"| {i + 1} | {sc[0]} | " + " | ".join(cells) + " |")
    lines += ["", "**Feature change** (mean over scenarios and seeds)", "",
              "| method | ‖(B - B0) Π_S‖_F | ‖(B - B0) Π_⊥‖_F |", "|---|---|---|"]  # fmt: skip
    for j, n in enumerate(names):
        lines.append(f"| {n} | {C.fmt(r[f'fS_{j}'].mean(), 3)} | {C.fmt(r[f'fP_{j}'].mean(), 3)} |")
    lines += ["", "**Knobs tuned on a held-out OOD sample** (gradient descent through the "
              "engine vs grid search; exact OOD error in % of L(0) at each optimum)", "",
              "| # | scenario | " + " | ".join(f"{k}: grad / grid" for k in KNOBS) + " |",
              "|---|---|" + "---|" * len(KNOBS)]  # fmt: skip
    for row, i in enumerate(r["tune_index"]):
        sc = config["scenarios"][int(i)]
        cells = []
        for k in KNOBS:
            g, gr = r[f"tuned_{k}"][row]
            eg, egr = 100 * r[f"tuned_exact_{k}"][row]
            cells.append(f"{C.fmt(g, 2)} / {C.fmt(gr, 2)} ({C.fmt(eg, 2)} / {C.fmt(egr, 2)})")
        lines.append(f"| {i + 1} | {sc[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _summary(results):
    r, names = results, list(METHODS)
    ood = np.stack([r[f"ood_{j}"].mean(axis=1) for j in range(len(names))])  # (methods, scen)
    ranks = np.argsort(np.argsort(ood, axis=0), axis=0).mean(axis=1) + 1
    best = names[int(np.argmin(ranks))]
    gap = [r[f"tuned_obj_{k}"][:, 0] / r[f"tuned_obj_{k}"][:, 1] for k in KNOBS]
    return best, ranks, float(np.median(np.concatenate(gap)))


def readme(results, config) -> str:
    n, seeds = results["ood_0"].shape
    best, ranks, gap = _summary(results)
    text = """{m} fine-tuning methods (linfeat.methods: LP, FT, LP-FT, WiSE-FT, L2-SP, layer-wise
        rates, partial LP then FT, weight decay) on the {n} scenarios of synthetic_table ({seeds}
        seeds each, default knobs): the best mean OOD rank is {best} ({rank}). Knobs tuned by
        gradient descent through the engine on a held-out OOD sample reach a median {gap} times
        the grid search's best objective; full tables in
        [figures/zoo_table.md](figures/zoo_table.md), tuned recipes in figures/zoo_tuned.png."""
    return C.readme_paragraph("zoo", text.format(
        m=len(METHODS), n=n, seeds=C.count(seeds), best=best, rank=C.fmt(ranks.min(), 2),
        gap=C.fmt(gap, 3)))  # fmt: skip


def plot(results, config, outdir):
    r, names = results, list(METHODS)
    n = len(config["scenarios"])
    x = np.arange(n)
    cmap = C.pyplot().get_cmap("tab10")
    fig, axes = C.figure(2, 2, figsize=(13.0, 7.5))
    for ax, kind, label in ((axes[0, 0], "ood", "OOD"), (axes[1, 0], "id", "ID")):
        for j, name in enumerate(names):
            m, lo, hi = _mean_ci(100 * r[f"{kind}_{j}"])
            xx = x + (j - len(names) / 2) * 0.09
            mm = np.maximum(m, 1e-6)
            ax.errorbar(xx, mm, yerr=[mm - np.maximum(lo, 1e-6), np.maximum(hi, 1e-6) - mm],
                        fmt="o", ms=3, color=cmap(j), label=name, lw=0.8)  # fmt: skip
        ax.set_yscale("log")
        ax.set_ylabel(f"{label} error, % of L(0)")
        ax.set_xticks(x)
        ax.set_xticklabels([str(i + 1) for i in x])
        ax.set_xlabel("scenario (synthetic_table numbering)")
    axes[0, 0].legend(fontsize=7, ncol=4)
    for ax, key, title in ((axes[0, 1], "fS", "on S"), (axes[1, 1], "fP", "on S-perp")):
        vals = [r[f"{key}_{j}"].ravel() for j in range(len(names))]
        ax.boxplot(vals, showfliers=False)
        ax.set_xticks(np.arange(1, len(names) + 1))
        ax.set_xticklabels(names, rotation=25, fontsize=7)
        ax.set_ylabel(f"feature change {title}, ‖(B - B0) Π‖_F")
    title = (
        f"zoo: every method on the {n} scenarios (mean, {LEVEL}% intervals; "
        f"non-converged {int(r['nonconverged'])})"
    )
    paths = C.finish(fig, outdir, "zoo", title=title)
    fig, axes = C.figure(1, len(KNOBS), figsize=(15.0, 3.4))
    for ax, k in zip(axes, KNOBS):
        t, xi = r[f"tuned_{k}"], r["tune_index"] + 1
        ax.plot(xi, t[:, 0], "o", label="gradient (Adam)")
        ax.plot(xi, t[:, 1], "x", label="grid")
        if k != "alpha":
            ax.set_yscale("log")
        ax.set_title(f"{k} ({KNOBS[k][0]})", fontsize=8)
        ax.set_xlabel("scenario")
    axes[0].legend(fontsize=7)
    paths += C.finish(fig, outdir, "zoo_tuned", title="zoo: knob minimising the held-out OOD "
                      "loss per scenario")  # fmt: skip
    C.atomic_write_text(outdir / "zoo_table.md", markdown(results, config))
    return paths
