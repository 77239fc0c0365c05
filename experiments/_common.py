"""Shared helpers of the experiments: batched solves, result files, checkpoints, figure style.

Every experiment is `compute(config, checkpoint) -> dict of arrays` plus
`plot(results, config, outdir)`; `linfeat reproduce` (linfeat/_reproduce.py) caches the
results (`.npz` + a JSON with the config, seed and package versions) and draws the figures
(compute, then draw). Matplotlib is imported only inside the plotting helpers.

Batched flows: `solve` calls the library's batch path, `lf.fine_tune_batch` (FT, or the LP
flow), with its default tolerances, in fixed chunks of problems and with the save times an
argument, so every experiment of a run that uses the same dimensions and chunk size shares one
compilation.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import linfeat as lf
from linfeat._io import atomic_path, atomic_savez, atomic_write_text  # noqa: F401 (re-exported)

# Colours and labels shared by every figure (one look for the whole set).
COLORS = {
    "LP": "#1f77b4",
    "FT": "#d62728",
    "LP-FT": "#2ca02c",
    "bound": "#444444",
    "printed": "#9467bd",
    "rigorous": "#444444",
    "oracle": "#000000",
}
METHODS = ("LP", "FT", "LP-FT")
BAND = (5.0, 95.0)  # percentile band over seeds drawn in every figure (90%)


# ---------------------------------------------------------------------------------------
# Problems and batched flows
# ---------------------------------------------------------------------------------------


@functools.cache
def _maker(d: int, k: int, m: int, n: int):
    """Jitted, vmapped problem generator for one set of static dimensions."""

    def make(key, eps, a, scale_S, scale_perp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lf.TheoryConditionWarning)
            p = lf.make_problem(key, d=d, k=k, m=m, n=n, feature_error=eps, v_star_norm=a)
        # OOD second moment a Pi_S + b Pi_perp: "isotropic" is (1, 1), "inside" (1, 0),
        # "perp" (0, 1), the mixture (1 - rho, rho); one generator (one compile) for all.
        dtype = p.X.dtype
        cov = lf.subspace_cov(d, scale_S=scale_S, scale_perp=scale_perp, dtype=dtype)
        return p._replace(ood_cov=cov)

    return jax.jit(jax.vmap(make))


def _pad(x, size):
    """Pads the leading axis to `size` by repeating the last entry (a padded lane is wasted)."""
    x = jnp.asarray(x)
    extra = size - x.shape[0]
    if extra == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)], axis=0)


def _chunks(num: int, chunk: int):
    for start in range(0, num, chunk):
        yield start, min(start + chunk, num)


def make_problems(key, num, *, dims, chunk, eps=0.0, a=1.0, scale_S=1.0, scale_perp=1.0):
    """`num` random problems (a batched `lf.Problem`), one key each; knobs broadcast to (num,).

    Dimensions `dims = dict(d=, k=, m=, n=)`; the OOD second moment is
    `scale_S Pi_S + scale_perp Pi_perp` (isotropic by default).
    """
    make = _maker(dims["d"], dims["k"], dims["m"], dims["n"])
    keys = jax.random.split(key, num)
    knobs = [jnp.broadcast_to(jnp.asarray(x, float), (num,)) for x in (eps, a, scale_S, scale_perp)]
    parts = []
    for s, e in _chunks(num, chunk):
        args = [_pad(x[s:e], chunk) for x in (keys, *knobs)]
        parts.append(jax.tree.map(lambda x, e=e, s=s: x[: e - s], make(*args)))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)


def solve(problems, heads, ts, *, chunk, method="ft", grad_tol=None, progress=None):
    r"""FT (`method="ft"`) or the LP flow ("lp") on a batch through `lf.fine_tune_batch`.

    Returns a dict of NumPy arrays: `metric_<name>` (num, T) at the save times,
    `final_<error>` (num,) at the converged state, `v` (num, T, k), `v_final`, `t_final`,
    `status` (0 = converged), `num_steps`. LP-FT is `method="ft"` with the LP heads. The
    library's defaults (tolerances, scale-aware `grad_tol`) apply unless `grad_tol` is given.
    """
    tr = lf.fine_tune_batch(
        problems, heads, method=method, ts=jnp.asarray(ts, float), grad_tol=grad_tol,
        batch_size=chunk, outputs="metrics",
    )  # fmt: skip
    out = {f"metric_{name}": val for name, val in tr.metrics._asdict().items()}
    for name in ("ood_error", "id_error", "id_subspace_error"):
        out[f"final_{name}"] = getattr(tr.final_metrics, name)
    out.update(v=tr.v, v_final=tr.v_final, t_final=tr.t_final, status=tr.status,
               num_steps=tr.num_steps)  # fmt: skip
    if progress is not None:
        progress.update(heads.shape[0])
    return out


def batch_constants(problems):
    """Per-problem constants of the bounds: c_S, c_perp, kappa(X), eps, a*, ||v*||."""
    zeros = jnp.zeros(problems.B0.shape[:-1], problems.B0.dtype)  # phi is not used here
    c = jax.vmap(lf.theory.problem_constants)(problems, zeros)
    return {
        "c_S": np.asarray(c.c_S),
        "c_perp": np.asarray(c.c_perp),
        "kappa": np.asarray(c.kappa),
        "eps": np.asarray(c.eps),
        "a_star": np.asarray(c.a_star),
        "a": np.asarray(jnp.linalg.norm(problems.v_star, axis=-1)),
    }


def ood_error_batch(problems, heads):
    """OOD error of (head, B0) for each problem (LP and the t = 0 point)."""
    return np.asarray(jax.vmap(lambda p, v: lf.ood_error(p, v, p.B0))(problems, heads))


def id_error_batch(problems, heads):
    """ID error of (head, B0) for each problem."""
    return np.asarray(jax.vmap(lambda p, v: lf.id_error(p, v, p.B0))(problems, heads))


def stacked(ckpt, label: str, items, fn, join=np.stack) -> dict:
    """`fn(item)` for each item, checkpointed as `label.format(index)`, joined key by key.

    `join=np.stack` gives each array a leading axis over the items; `np.concatenate` joins
    per-chunk rows of seeds.
    """
    rows = [ckpt.run(label.format(i), functools.partial(fn, item)) for i, item in enumerate(items)]
    return {key: join([row[key] for row in rows]) for key in rows[0]}


def eps_sweep(config, ckpt, row, **problem_kw) -> dict:
    """LP, FT and LP-FT on `config["seeds"]` random problems at each feature error `config["eps"]`.

    The same problem key at every eps (common random numbers: the same S, B*, v*, X; only B0
    moves) and the same Gaussian heads (`head_scale`). `row(P, H, v_lp, ft, lpft)` returns the
    arrays kept of one eps (`ft`, `lpft`: `solve`'s output); they are stacked to (eps, ...).
    `problem_kw` goes to `make_problems` (the OOD second moment, `a`).
    """
    dims, chunk, S = config["dims"], config["chunk"], config["seeds"]
    kP, kH = jax.random.split(jax.random.PRNGKey(config["seed"]))
    ts = save_times()
    H = gaussian_heads(kH, S, dims["k"], config["head_scale"])

    def one(eps):
        P = make_problems(kP, S, dims=dims, chunk=chunk, eps=eps, **problem_kw)
        v_lp = jax.vmap(lf.linear_probe)(P)
        return row(P, H, v_lp, solve(P, H, ts, chunk=chunk), solve(P, v_lp, ts, chunk=chunk))

    return stacked(ckpt, "eps{:02d}", config["eps"], one)


def nonconverged(*results) -> int:
    """Number of trajectories whose solver status is not CONVERGED (0)."""
    return int(sum(int(np.sum(np.asarray(r["status"]) != 0)) for r in results))


# ---------------------------------------------------------------------------------------
# Files: atomic writes and per-chunk checkpoints
# ---------------------------------------------------------------------------------------


def load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def json_default(x):
    """JSON encoder for NumPy scalars and arrays in configs and metadata."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


class Checkpoint:
    """Per-chunk checkpoints: `run(label, fn)` loads `<dir>/<label>.npz` or computes and saves it.

    With `directory=None` it only computes (smoke tests). A run killed halfway resumes from the
    chunks already on disk; the directory is keyed by the experiment's cache key, so a changed
    config or script never reuses stale chunks.
    """

    def __init__(self, directory: Path | None = None):
        self.directory = None if directory is None else Path(directory)
        self.loaded = 0
        self.computed = 0

    def run(self, label: str, fn) -> dict:
        if self.directory is None:
            self.computed += 1
            return {k: np.asarray(v) for k, v in fn().items()}
        path = self.directory / f"{label}.npz"
        if path.exists():
            self.loaded += 1
            return load_npz(path)
        out = {k: np.asarray(v) for k, v in fn().items()}
        atomic_savez(path, out)
        self.computed += 1
        return out


# ---------------------------------------------------------------------------------------
# Figures: one style for all
# ---------------------------------------------------------------------------------------


def pyplot():
    """Matplotlib's pyplot with the Agg backend and the house style (imported lazily)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "font.size": 9,
            "axes.titlesize": 9.5,
            "axes.labelsize": 9,
            "legend.fontsize": 7.5,
            "legend.frameon": False,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.25,
            "lines.linewidth": 1.5,
            "lines.markersize": 4,
            "pdf.fonttype": 42,
        }
    )
    return plt


def band(ax, x, Y, *, color, label=None, q=BAND, ls="-", marker=None, alpha=0.18, center="median"):
    """Median (or mean) over seeds as a line, and the 5-95% percentile band over seeds.

    `Y` has seeds on axis 0 and x on axis 1.
    """
    Y = np.asarray(Y, float)
    mid = np.nanmedian(Y, axis=0) if center == "median" else np.nanmean(Y, axis=0)
    lo, hi = np.nanpercentile(Y, q, axis=0)
    ax.plot(x, mid, color=color, ls=ls, marker=marker, label=label)
    if Y.shape[0] > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=alpha, lw=0)
    return mid


def figure(nrows: int, ncols: int, **kw):
    """A new figure in the house style: `(fig, axes)` of `plt.subplots(nrows, ncols, **kw)`."""
    return pyplot().subplots(nrows, ncols, **kw)


def finish(fig, outdir: Path, name: str, title: str | None = None) -> list[Path]:
    """The figure's title (`suptitle`, size 9) if given, tight layout, then `savefig`."""
    if title is not None:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return savefig(fig, outdir, name)


def savefig(fig, outdir: Path, name: str) -> list[Path]:
    """Writes `<outdir>/<name>.png` and `.pdf` (atomically) and closes the figure."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    import matplotlib.ticker as mticker

    for ax in fig.axes:  # minor tick labels of short log axes overlap: keep the major ones
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                axis.set_minor_formatter(mticker.NullFormatter())
    paths = []
    for ext in ("png", "pdf"):
        path = outdir / f"{name}.{ext}"
        # Fixed metadata keeps the PDF bytes reproducible across runs.
        meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        with atomic_path(path, f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight", metadata=meta)
        paths.append(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def fmt(x, digits=3) -> str:
    """Short number for legends and tables."""
    x = float(x)
    if x == 0 or not np.isfinite(x):
        return f"{x:g}"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


def num(x, digits=2) -> str:
    """A measured number to `digits` significant digits, trailing zeros kept.

    The one format of the numbers that appear both in a figure and in README (each
    experiment's `readme`): a fitted slope 2.0000059 is "2.00" with digits=3 in both places,
    never "2" in one and "2.00" in the other. Fixed point for exponents -3 to digits - 1
    (0.0071, 0.156, 231), otherwise mantissa and exponent (1.3e-9, 9.7e3).
    """
    x = float(x)
    if x == 0 or not np.isfinite(x):
        return f"{x:g}"
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    e = int(exponent)  # the exponent after rounding (0.0999 -> 1.0e-1)
    if -3 <= e < digits:
        return f"{x:.{max(digits - 1 - e, 0)}f}"
    return f"{mantissa}e{e}"


def count(n) -> str:
    """An integer count with thousands separators (640,000)."""
    return f"{int(n):,}"


def nums(f: dict, *keys, digits=2) -> dict:
    """`num(f[key], digits)` for each key: the numbers of a README template, by name."""
    return {key: num(f[key], digits) for key in keys}


def counts(f: dict, *keys) -> dict:
    """`count(f[key])` for each key: the counts of a README template, by name."""
    return {key: count(f[key]) for key in keys}


def readme_paragraph(name: str, text: str) -> str:
    """README's paragraph for experiment `name`: the bold name, the text, then the figure.

    Runs of whitespace in `text` (the line breaks of a triple-quoted template) become one
    space: a generated paragraph is one line, so no wrapped line can start a Markdown list.
    """
    text = " ".join(text.split())
    return f"**{name}** — {text}\n![{name}](figures/{name}.png)\n"


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=json_default)


# ---------------------------------------------------------------------------------------
# Shared sizes: every experiment uses these unless its config says otherwise, so the batched
# solver compiles once per run (shapes are static under jit).
# ---------------------------------------------------------------------------------------

DIMS = dict(d=100, k=5, m=20, n=40)
TINY_DIMS = dict(d=12, k=2, m=4, n=8)
CHUNK = 32
NUM_SAVE = 64


def base_config(seed: int, **kw) -> dict:
    """An experiment's config on the shared sizes: `seed`, `dims=DIMS`, `chunk=CHUNK`, then `kw`."""
    return dict(seed=seed, dims=DIMS, chunk=CHUNK, **kw)


def save_times(num_save: int = NUM_SAVE, lo: float = -4.0, hi: float = 3.0) -> np.ndarray:
    """0, then log-spaced flow times in [10^lo, 10^hi] (lambda_max(X^T X) is about 100 here)."""
    return np.concatenate([[0.0], np.logspace(lo, hi, num_save - 1)])


def gaussian_heads(key, num, k, scale):
    """`num` heads v0 ~ N(0, scale^2 I_k) (the paper's random head)."""
    return scale * jax.random.normal(key, (num, k))


def tiny(config: dict, **overrides) -> dict:
    """A smoke-test version of a config: tiny dimensions and chunks, few seeds."""
    out = dict(config)
    out.update(dims=TINY_DIMS, chunk=8)
    out.update(overrides)
    return out
