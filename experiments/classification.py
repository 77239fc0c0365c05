r"""Classification accuracy of LP, FT and LP-FT under the logistic loss (docs/theory.md, 11).

Binary labels $y = \mathrm{sign}(w^{*T}x)$ on the synthetic problems; the logistic flows
(`lf.classify`) run to their stop (training loss $10^{-2}n\log 2$, or the gradient test), and
the ID and OOD accuracies are the closed form of `lf.classify.accuracy` for Gaussian inputs.

(a) Accuracy against the shift size: training does not depend on the OOD distribution, so
each method's stopped predictor is evaluated in closed form on the whole family
$\Sigma(\rho) = (1-\rho)\Pi_S + \rho\Pi_\perp$: the curves are the closed-form accuracy of the
converged (stopped) predictor, no sampling over $\rho$. (b, c) OOD ($\Sigma = I$) and ID
accuracy against the feature error $\varepsilon$. Medians over seeds with 5-95% bands.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import linfeat as lf

from . import _common as C

# Small dimensions: the logistic flows use the dense Jacobian factor of the engine (a state
# of k(n + 1) numbers), so n stays small.
CLS_DIMS = dict(d=30, k=3, m=8, n=16)
_BASE = dict(
    seed=13,
    dims=CLS_DIMS,
    chunk=32,
    head_scale=0.5,
    shift_eps=0.1,
    rho_curve=[float(x) for x in np.linspace(0.0, 1.0, 41)],
    eps=[0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0],
)
CONFIGS = {"quick": dict(_BASE, seeds=16), "full": dict(_BASE, seeds=96)}
METHODS = (("lp", "LP"), ("ft", "FT"), ("lpft", "LP-FT"))
# LP-FT dashed: where the probe already meets the loss threshold its FT stage stops at once
# and LP-FT coincides with LP (docs/theory.md 11.2)
LINESTYLE = {"lp": "-", "ft": "-", "lpft": "--"}


@functools.cache
def _maker(d, k, m, n):
    def make(key, eps):
        return lf.classify.classification_problem(key, d=d, k=k, m=m, n=n, feature_error=eps)

    return jax.jit(jax.vmap(make))


def classification_problems(key, num, *, dims, eps):
    """`num` classification problems (labels sign(X w*), Sigma_ood = I) at feature error eps."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lf.TheoryConditionWarning)
        return _maker(dims["d"], dims["k"], dims["m"], dims["n"])(
            jax.random.split(key, num), jnp.full((num,), eps)
        )


def logistic_runs(problems, heads):
    """LP (from 0), FT (from `heads`) and LP-FT (FT from the probe's final head) under the
    logistic loss, vmapped over a batch, through the public `lf.classify` flows (one compiled
    program for all three). Returns {method: (v_final, B_final, status, num_steps)}."""

    def run(fn, p, v):
        tr = fn(p, v, num_save=2)
        return tr.v_final, tr.B_final, tr.status, tr.num_steps

    lp = jax.vmap(functools.partial(run, lf.classify.linear_probe_logistic))(
        problems, jnp.zeros_like(heads)
    )
    ft = jax.vmap(functools.partial(run, lf.classify.fine_tune_logistic))(problems, heads)
    lpft = jax.vmap(functools.partial(run, lf.classify.fine_tune_logistic))(problems, lp[0])
    return {"lp": lp, "ft": ft, "lpft": lpft}


@jax.jit
def _accuracies(problems, v, B):
    return jax.vmap(lf.classify.accuracy)(problems, v, B)


@jax.jit
def _ood_curve(problems, v, B, rho):
    """Closed-form OOD accuracy on Sigma(rho) = (1 - rho) Pi_S + rho Pi_perp (seeds, rho)."""
    d = problems.X.shape[-1]

    def one(p, v, B, r):
        cov = lf.subspace_cov(d, scale_S=1.0 - r, scale_perp=r, dtype=p.X.dtype)
        return lf.classify.accuracy(p._replace(ood_cov=cov), v, B).ood

    per_rho = jax.vmap(one, in_axes=(None, None, None, 0))
    return jax.vmap(per_rho, in_axes=(0, 0, 0, None))(problems, v, B, rho)


def accuracy_rows(problems, runs) -> dict:
    """ID and OOD accuracy (seeds,) of each method, plus statuses."""
    out = {}
    for tag, (v, B, status, steps) in runs.items():
        acc = _accuracies(problems, v, B)
        out[f"{tag}_id"] = np.asarray(acc.id)
        out[f"{tag}_ood"] = np.asarray(acc.ood)
        out[f"{tag}_status"] = np.asarray(status)
        out[f"{tag}_steps"] = np.asarray(steps)
    return out


def compute(config, checkpoint=None):
    ckpt = checkpoint or C.Checkpoint()
    dims, S = config["dims"], config["seeds"]
    kP, kH = jax.random.split(jax.random.PRNGKey(config["seed"]))
    H = C.gaussian_heads(kH, S, dims["k"], config["head_scale"])
    rho = jnp.asarray(config["rho_curve"])

    def shift_panel():
        P = classification_problems(kP, S, dims=dims, eps=config["shift_eps"])
        runs = logistic_runs(P, H)
        out = accuracy_rows(P, runs)
        for tag, (v, B, _, _) in runs.items():
            out[f"{tag}_curve"] = np.asarray(_ood_curve(P, v, B, rho))
        return out

    def eps_row(eps):
        # the same problem key at every eps (common random numbers: only B0 moves)
        P = classification_problems(kP, S, dims=dims, eps=eps)
        return accuracy_rows(P, logistic_runs(P, H))

    out = {f"shift_{k}": v for k, v in ckpt.run("shift", shift_panel).items()}
    sweep = C.stacked(ckpt, "eps{:02d}", config["eps"], eps_row)  # (eps, seeds)
    out.update({f"eps_{k}": v for k, v in sweep.items()})
    statuses = [v for k, v in out.items() if k.endswith("_status")]
    out["nonconverged"] = np.array(int(sum(np.sum(s != 0) for s in statuses)))
    out["lpft_stopped_at_once"] = np.array(
        int(np.sum(out["shift_lpft_steps"] == 0) + np.sum(out["eps_lpft_steps"] == 0))
    )
    return out


def facts(results, config) -> dict:
    """The numbers quoted in the figure and in README."""
    r = results
    rho = np.asarray(config["rho_curve"])
    far = int(np.argmin(np.abs(rho - 1.0)))
    med = {tag: float(np.median(r[f"shift_{tag}_curve"][:, far])) for tag, _ in METHODS}
    return {
        "seeds": int(r["shift_lp_id"].shape[0]),
        "eps": config["shift_eps"],
        "lp_ood_perp": 100 * med["lp"],
        "ft_ood_perp": 100 * med["ft"],
        "lpft_ood_perp": 100 * med["lpft"],
        "ft_below_lp": float(np.mean(r["shift_ft_curve"][:, far] < r["shift_lp_curve"][:, far])),
        "nonconverged": int(r["nonconverged"]),
        "lpft_at_once": int(r["lpft_stopped_at_once"]),
    }


def readme(results, config) -> str:
    f = facts(results, config)
    n = f | C.nums(f, "lp_ood_perp", "ft_ood_perp", "lpft_ood_perp") | C.counts(f, "seeds")
    n["percent"] = C.num(100 * f["ft_below_lp"])
    text = """logistic loss, labels sign(w*ᵀx): with good features (ε = {eps:g}) and all the
        OOD mass off S, the median closed-form OOD accuracy is {lp_ood_perp}% for LP,
        {ft_ood_perp}% for FT and {lpft_ood_perp}% for LP-FT over {seeds} seeds (FT below LP
        in {percent}% of them); docs/theory.md, section 11."""
    return C.readme_paragraph("classification", text.format(**n))


def plot(results, config, outdir):
    r, f = results, facts(results, config)
    fig, axes = C.figure(1, 3, figsize=(14.0, 4.0))
    rho = np.asarray(config["rho_curve"])
    eps = np.asarray(config["eps"])
    ax = axes[0]
    for tag, name in METHODS:
        C.band(ax, rho, 100 * r[f"shift_{tag}_curve"], color=C.COLORS[name], label=name,
               ls=LINESTYLE[tag])  # fmt: skip
    ax.set_xlabel(r"shift size $\rho$: $\Sigma_{ood} = (1-\rho)\Pi_S + \rho\Pi_\perp$")
    ax.set_ylabel("OOD accuracy (%), closed form")
    ax.set_title(
        f"(a) stopped predictors, $\\varepsilon = {f['eps']:g}$ (LP-FT dashed: = LP where "
        "the probe met the loss threshold)",
        fontsize=8,
    )
    for ax, kind, label in (
        (axes[1], "ood", r"OOD accuracy (%), $\Sigma_{ood} = I$"),
        (axes[2], "id", "ID accuracy (%)"),
    ):
        for tag, name in METHODS:
            C.band(ax, eps, 100 * r[f"eps_{tag}_{kind}"].T, color=C.COLORS[name], label=name,
                   marker="o", ls=LINESTYLE[tag])  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(r"feature error $\varepsilon = d(B_0, B^*)$")
        ax.set_ylabel(label)
    axes[1].set_title("(b) OOD accuracy vs feature quality", fontsize=9)
    axes[2].set_title("(c) ID accuracy vs feature quality", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
    title = (
        f"classification: logistic LP, FT, LP-FT ({f['seeds']} seeds, median and 5-95% band); "
        f"LP-FT runs whose FT stage stopped at once: {f['lpft_at_once']}; "
        f"non-converged {f['nonconverged']}"
    )
    return C.finish(fig, outdir, "classification", title)
