r"""Sampling and the batched flows whose records every check of R1-R13 reads.

One instance is written per function (`_prepare`: constants, bounds and the linear probe;
`_flow_record`: FT or LP-FT; `_lp_flow_record`: the LP flow), vmapped and jitted once per
shape (`_jitted`) and run in fixed-size chunks (`_run_chunked_fn`). `collect` samples every
shape group of a `Config` over the knob grid and returns numpy records; the `_extra_*`
producers add the runs that single checks need (the LP flow for R4, the 2-D toy for R12; the
full-space flow of R1, R2 and T2 is in `_oracles`) and `_dense_ood` the dense e^T Sigma e of R3
(docs/theory.md). All are pure functions of the configuration and the seed.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from .. import theory as T
from .._chunking import chunks, pad_rows
from .._closed_form import linear_probe
from .._cov import SubspaceCov, to_dense
from .._eigh import eigvalsh
from .._flow import default_grad_tol, default_tolerances, fine_tune, linear_probe_flow, lp_ft
from .._flows import FineTune
from .._generate import make_problem
from .._geometry import project_S
from .._linalg import polar
from .._metrics import ood_error
from .._problem import Problem, problem_from_arrays
from .._reduce import error_coefficients, reduce
from ._config import COARSE, SAVES, SOLVER, SUBDIV, TOL, Config, Group, _max
from ._extremum import hermite_extremum

# ---------------------------------------------------------------------------------------
# Batched evaluation (one instance written, vmapped at the edge, run in fixed-size chunks)
# ---------------------------------------------------------------------------------------


def _grad_tol(problem: Problem, v0):
    r"""The flows' default convergence threshold (`linfeat._flow.default_grad_tol`), made
    explicit so that the report can record it."""
    X = problem.X  # lambda_max of X X^T from the smaller Gram (pure JAX: `linfeat._eigh`)
    lam_max = eigvalsh(X @ X.T if X.shape[0] <= X.shape[1] else X.T @ X)[-1]
    return default_grad_tol(lam_max, problem.Y, v0, default_tolerances(problem.X.dtype)[2])


def _prepare(problem: Problem, v0):
    """Constants, bounds and the linear probe of one instance (no flow)."""
    c = T.problem_constants(problem, v0)
    k = problem.B0.shape[-2]
    v_lp = linear_probe(problem, v0)
    v_lp0 = linear_probe(problem)
    e_lp = problem.B0.T @ v_lp - problem.w_star
    e_lp_S = project_S(problem, e_lp)
    r7_err, r7_ood = T.r7_bounds(problem)
    return dict(
        a=c.a,
        eps=c.eps,
        c_S=c.c_S,
        c_perp=c.c_perp,
        phi=c.phi,
        kappa=c.kappa,
        sigma2_min=c.sigma2_min,
        lam_min=c.lam_min,
        lam_max=c.lam_max,
        lam_perp=c.lam_perp,
        delta0=T.r5_delta0(c.a, c.phi),
        printed=T.r5_printed_bound(c.c_perp, k, c.phi, c.a, c.eps),
        rig_err=T.r5_rigorous_error_bound(c.c_perp, c.phi, c.a, c.eps),
        rig=T.r5_rigorous_bound(c.c_perp, c.phi, c.a, c.eps, c.lam_min),
        r7_err=r7_err,
        r7_ood=r7_ood,
        r8_eps=T.r8_eps_threshold(c.c_perp, c.phi, c.a, c.kappa, c.c_S, c.lam_min, c.lam_max),
        lp_err=jnp.linalg.norm(e_lp),
        lp_err_S=jnp.linalg.norm(e_lp_S),
        lp_ood=ood_error(problem, v_lp, problem.B0),
        lp_to_astar=jnp.linalg.norm(v_lp - c.a_star),
        a_star=c.a_star,
        v_lp0=v_lp0,
        grad_tol=_grad_tol(problem, v0),
        grad_tol_lp=_grad_tol(problem, v_lp0),  # LP-FT's FT stage starts from v_lp0
    )


def _rates(problem: Problem, v, A):
    r"""Exact time derivatives of $\|e\|^2$ and $L_{ood} = e^T\Sigma e$ at the saved FT states.

    With $e = G c_e$ (`linfeat._reduce.error_coefficients`) and the FT field $(\dot v, \dot A)$,
    $\dot c_e = (\dot A^Tv + (A - A_0)^T\dot v,\ \dot v,\ 0, 0)$, so
    $d\|e\|^2/dt = 2c_e^TG^TG\dot c_e$ and $dL_{ood}/dt = 2c_e^TG^T\Sigma G\dot c_e$: with the
    values they give the cubic Hermite interpolant of each curve between saves
    (`linfeat.checks._extremum`), whose extrema are the continuous-time ones.
    """
    red = reduce(problem)
    flow = FineTune()

    def one(v, A):
        dv, dA = flow.field((v, A), red.flow_data)
        c = error_coefficients(red, v, A)
        tail = jnp.zeros(c.size - red.r - red.k, v.dtype)  # the r_w and D blocks are constant
        dc = jnp.concatenate([dA.T @ v + (A - red.A0).T @ dv, dv, tail])
        return 2.0 * c @ red.gram @ dc, 2.0 * c @ red.ood_gram @ dc

    return jax.vmap(one)(v, A)


def _flow_record(problem: Problem, v0, grad_tol, lpft: bool = False, ts=None):
    """FT from `v0` (LP-FT through `lp_ft`, the probe started from `v0`, with `lpft`): status
    and the error curves at the saved times (reduced coordinates), with their time
    derivatives (`_rates`). Saves at `ts` if given, else at the SAVES dense default times."""
    kw = dict(check=False, grad_tol=grad_tol, num_save=SAVES, ts=ts, **SOLVER)  # "for all t"
    tr = lp_ft(problem, v0=v0, **kw) if lpft else fine_tune(problem, v0, **kw)
    e = jnp.einsum("tkd,tk->td", tr.B, tr.v) - problem.w_star
    e_S = project_S(problem, e)
    err2_rate, ood_rate = _rates(problem, tr.v, tr.A)
    return dict(
        err2_rate=err2_rate,
        ood_rate=ood_rate,
        status=tr.status,
        steps=tr.num_steps,
        t_final=tr.t_final,
        ts=tr.ts,
        err=jnp.linalg.norm(e, axis=-1),
        err_S=jnp.linalg.norm(e_S, axis=-1),
        ood=tr.metrics.ood_error,
        train=tr.metrics.train_loss,
        drift=tr.metrics.balancedness_drift,
        feat_perp=tr.metrics.feature_change_perp,
        e_final=e[-1],
    )


def _lp_flow_record(problem: Problem, v0, grad_tol):
    """The LP flow (B frozen) from `v0`: its limit, to compare with a* (R4)."""
    tr = linear_probe_flow(problem, v0, check=False, grad_tol=grad_tol, **SOLVER)
    return dict(status=tr.status, v_final=tr.v_final, ood_final=tr.metrics.ood_error[-1])


def _refined_record(problem: Problem, v0, grad_tol, ts, lpft: bool):
    return _flow_record(problem, v0, grad_tol, lpft=lpft, ts=ts)


_RECORDS = {
    "prepare": _prepare,
    "flow": _flow_record,
    "lpft": functools.partial(_flow_record, lpft=True),
    "refine_ft": functools.partial(_refined_record, lpft=False),
    "refine_lpft": functools.partial(_refined_record, lpft=True),
    "lp_flow": _lp_flow_record,
}


@functools.cache
def _jitted(fn):
    return jax.jit(jax.vmap(fn))


def _run_chunked(name: str, chunk: int, *args):
    """`_run_chunked_fn` of the record function `name` (`_RECORDS`)."""
    return _run_chunked_fn(_RECORDS[name], chunk, *args)


def _run_ordered(name: str, chunk: int, order, *args):
    """`_run_chunked` with the lanes in `order` (a permutation), the records back in the
    given order: every lane is the same computation (a vmapped solve freezes a finished
    lane), and a chunk runs to the largest step count of its lanes, so ordering lanes by
    what drives their step counts wastes fewer steps (`collect`)."""
    order = np.asarray(order)
    out = _run_chunked(name, chunk, *jax.tree.map(lambda x: x[order], args))
    back = np.argsort(order)
    return {k: v[back] for k, v in out.items()}


def _run_chunked_fn(fn, chunk: int, *args):
    """Applies `jit(vmap(fn))` in fixed-size chunks (one compile per shape), padding the tail."""
    n = jax.tree.leaves(args)[0].shape[0]
    spans, _ = chunks(n, chunk)
    size = chunk  # every chunk at the configured size, small groups too: one compile per shape
    out = []
    for lo, hi in spans:
        res = _jitted(fn)(*pad_rows(jax.tree.map(lambda x: x[lo:hi], args), size))
        out.append(jax.tree.map(lambda x: np.asarray(x[: hi - lo]), res))
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------


def _sample_group(key, g: Group, cfg: Config):
    """Problems and Gaussian heads over the knob grid; OOD kinds cycle so each knob meets each."""
    eps_grid = (0.0,) * (cfg.eps_zero_weight - 1) + tuple(cfg.eps_grid)
    combos = np.array(list(itertools.product(eps_grid, cfg.a_grid, cfg.sigma_grid)))
    n = len(combos) * g.reps
    eps, a, sigma = np.tile(combos, (g.reps, 1)).T
    idx = np.arange(n)
    kind = np.full(n, 4) if g.spd else (idx + idx // len(combos)) % 4
    k_prob, k_head, k_rho, k_rot = jax.random.split(key, 4)
    make = functools.partial(
        make_problem, d=g.d, k=g.k, m=g.m, ood="random_spd" if g.spd else "isotropic"
    )
    problems = jax.vmap(lambda kk, e, aa: make(kk, feature_error=e, v_star_norm=aa))(
        jax.random.split(k_prob, n), jnp.asarray(eps), jnp.asarray(a)
    )
    # B0 -> R B0 with a Haar-random k x k rotation R: the generator aligns B0's rows with B*'s
    # (Procrustes factor U = I); the theory allows any U (a* = U v*), so the checks use one
    rot = jax.vmap(polar)(jax.random.normal(k_rot, (n, g.k, g.k)))
    problems = problems._replace(B0=jnp.einsum("nij,njd->nid", rot, problems.B0))
    rho = np.asarray(jax.random.uniform(k_rho, (n,), minval=0.2, maxval=0.8))
    rho = np.where(kind == 2, rho, np.nan)
    if not g.spd:
        # Sigma = s_S Pi_S + s_perp Pi_perp: isotropic (1, 1), perp (0, 1), mixture
        # (1 - rho, rho), inside (1, 0). One pytree structure, hence one compile.
        s_S = np.choose(kind, [1.0, 0.0, 0.0, 1.0]) + np.where(kind == 2, 1 - rho, 0.0)
        s_P = np.choose(kind, [1.0, 1.0, 0.0, 0.0]) + np.where(kind == 2, rho, 0.0)
        problems = problems._replace(
            ood_cov=SubspaceCov(jnp.asarray(s_S), jnp.asarray(s_P), problems.ood_cov.factor)
        )
    v0 = jnp.asarray(sigma)[:, None] * jax.random.normal(k_head, (n, g.k))
    meta = dict(
        eps_knob=eps,
        a_knob=a,
        sigma=sigma,
        kind=kind,
        rho=rho,
        d=np.full(n, g.d),
        k=np.full(n, g.k),
        m=np.full(n, g.m),
    )
    return problems, v0, meta


def _lane_orders(meta):
    """Lane orders of FT and LP-FT (`_run_ordered`): knob-major, so that a chunk holds
    instances of similar step counts. LP-FT's FT stage is 0 steps at eps = 0 (the probe fits
    already) and grows with eps (mean 94, 150, 252 steps at eps = 1e-3, 1e-2, 0.1 in a
    (24, 3, 8) group): eps-major ordering doubled the ratio of mean to chunk-maximum steps,
    0.32 -> 0.66. FT's steps fall with the head's scale sigma (mean 575, 505, 430 at sigma =
    0.1, 1, 3): sigma-major ordering, 0.66 -> 0.72. (benchmarks/profiling/check_lane_order.py)"""
    ft = np.lexsort((meta["eps_knob"], meta["a_knob"], meta["sigma"]))
    lpft = np.lexsort((meta["sigma"], meta["a_knob"], meta["eps_knob"]))
    return ft, lpft


def collect(cfg: Config, seed: int, progress=None) -> dict:
    """Runs the flows of every group: FT from Gaussian heads and LP-FT; returns numpy records."""
    keys = jax.random.split(jax.random.PRNGKey(seed), len(cfg.groups))
    parts = []
    first = None
    for key, g in zip(keys, cfg.groups):
        problems, v0, meta = _sample_group(key, g, cfg)
        prep = _run_chunked("prepare", cfg.chunk, problems, v0)
        ft_order, lpft_order = _lane_orders(meta)
        ft = _run_ordered("flow", cfg.chunk, ft_order, problems, v0, jnp.asarray(prep["grad_tol"]))
        # per-instance vectors (k-sized: v_lp0, a_star) differ between groups: kept per group
        vectors = {name: prep.pop(name) for name in [n for n, x in prep.items() if x.ndim > 1]}
        gt_lpft = jnp.asarray(prep.pop("grad_tol_lp"))
        # LP-FT through the public `lp_ft` (probe from 0, the minimum-norm v_lp0, then FT)
        lpft = _run_ordered("lpft", cfg.chunk, lpft_order, problems, jnp.zeros_like(v0), gt_lpft)
        e_final = ft.pop("e_final")
        lpft.pop("e_final")
        _continuous_extrema(ft, lpft)
        _refine_extrema(problems, v0, prep["grad_tol"], ft, prep["a"], False, cfg.chunk)
        _refine_extrema(problems, jnp.zeros_like(v0), gt_lpft, lpft, prep["a"], True, cfg.chunk)
        meta["v0_norm2"] = np.sum(np.asarray(v0) ** 2, axis=1)
        start = sum(len(p["meta"]["d"]) for p in parts)
        parts.append(dict(meta=meta, prep=prep, ft=ft, lpft=lpft))
        if first is None:
            first = (problems, v0, prep, e_final, vectors)
        parts[-1]["mc"] = {**_mc_inputs(problems, e_final, cfg.mc_instances), "start": start}
        if progress is not None:
            progress.update(1)
    out = {
        sec: {k: np.concatenate([p[sec][k] for p in parts]) for k in parts[0][sec]}
        for sec in ("meta", "prep", "ft", "lpft")
    }
    out["mc"] = [p["mc"] for p in parts]
    out["first_group"] = first
    return out


def _continuous_extrema(ft: dict, lpft: dict) -> None:
    """Adds the continuous-time extrema over t (`linfeat.checks._extremum`) to the records:
    min_t ||e||, min_t L_ood of FT and LP-FT, max_t L_ood of LP-FT (clipped at 0: a curve that
    touches 0, e.g. LP-FT with perfect features, may interpolate to -1e-30)."""
    for rec in (ft, lpft):
        rec["ood_min"] = np.maximum(hermite_extremum(rec["ts"], rec["ood"], rec["ood_rate"]), 0)
        rec["ood_max"] = hermite_extremum(rec["ts"], rec["ood"], rec["ood_rate"], "max")
        err2 = hermite_extremum(rec["ts"], rec["err"] ** 2, rec["err2_rate"])
        rec["err_min"] = np.sqrt(np.maximum(err2, 0))


#: An instance whose continuous extremum is uncertain by more than this, relative to the
#: curve's size, is re-solved with REFINE_POINTS more saves where the extremum lies: the
#: bounds' own slack (TOL["bound"]), so that no unresolved interpolation can decide a verdict.
REFINE_ERR = TOL["bound"]
REFINE_POINTS = 510


def _curves(rec):
    """(name, values, rates, mode) of the curves whose extrema the checks use."""
    return (
        ("ood_min", rec["ood"], rec["ood_rate"], "min"),
        ("ood_max", rec["ood"], rec["ood_rate"], "max"),
        ("err_min", rec["err"] ** 2, rec["err2_rate"], "min"),
    )


def _extremum_interval(ts, f, df, mode):
    """Index j of the save interval [t_j, t_j+1] holding the Hermite extremum, per row."""
    per = np.stack(
        [hermite_extremum(ts[:, j : j + 2], f[:, j : j + 2], df[:, j : j + 2], mode)
         for j in range(f.shape[1] - 1)], axis=1,
    )  # fmt: skip
    return np.argmin(per, axis=1) if mode == "min" else np.argmax(per, axis=1)


def _scale(f, a):
    """A curve's size: max over t of |f|, at least (1 + a)^2 (curves that stay near 0)."""
    return np.maximum(np.max(np.abs(f), axis=1), (1.0 + np.asarray(a)) ** 2)


def _refine_extrema(problems, v0, grad_tol, rec, a, lpft: bool, chunk: int) -> None:
    r"""Re-solves the instances whose continuous extrema the 498 saves do not resolve.

    The Hermite interpolant between two saves is exact to $h^4\max|f^{(4)}|/384$; a transient
    much faster than the save spacing (large heads) breaks that, and its cubic can overshoot by
    orders of magnitude (seen once in 20,250 full-run instances: a dip of 4e5 x the curve's
    size, which a rigorous bound then counted as a violation). Each curve's error is estimated
    as in `extremum_report` (the 64-save grid's Hermite extremum against the 498-save one,
    / 8^4; in the full run above 1e-9 of the curve's size on 506 of 20,250 FT instances).
    Those instances are solved again with `REFINE_POINTS` more saves, log-spaced in the
    intervals holding their extrema, and their extrema come from the refined grid.
    `rec["refined"]` marks them; `rec["unresolved"]` those whose refined extremum still has
    an estimated error above `REFINE_ERR` (the checks report both counts). A refined extremum
    is moved by its estimated error towards the bounds (minima down, maxima up): a verdict
    never rests on an interpolation the grid does not resolve."""
    ts = np.asarray(rec["ts"], float)
    n = ts.shape[0]
    flag = np.zeros(n, bool)
    where = []
    for _, f, df, mode in _curves(rec):
        f, df = np.asarray(f, float), np.asarray(df, float)
        fine = hermite_extremum(ts, f, df, mode)
        crude = hermite_extremum(ts[:, COARSE], f[:, COARSE], df[:, COARSE], mode)
        flag |= np.abs(crude - fine) / SUBDIV**4 > REFINE_ERR * _scale(f, a)
        where.append(_extremum_interval(ts, f, df, mode))
    rec["refined"], rec["unresolved"] = flag.copy(), np.zeros(n, bool)
    rec["refine_err"] = np.zeros(n)
    idx = np.flatnonzero(flag)
    if idx.size == 0:
        return
    grids = []
    for i in idx:
        js = sorted({int(w[i]) for w in where})
        per = REFINE_POINTS // len(js)
        lo = ts[i, 1] * 1e-3  # the first interval starts at t = 0: log-space from above 0
        extra = [np.geomspace(max(ts[i, j], lo), ts[i, j + 1], per + 2)[1:-1] for j in js]
        new = np.concatenate([ts[i], *extra])
        # one length for all (one compile): pad with the final time; zero-length intervals
        # have no interior extremum and repeat the last save's values
        grids.append(np.sort(np.r_[new, np.full(SAVES + REFINE_POINTS - new.size, new[-1])]))
    grids = np.stack(grids)
    take = lambda x: jnp.asarray(np.asarray(x)[idx])  # noqa: E731
    sub = _run_chunked(
        "refine_lpft" if lpft else "refine_ft", chunk,
        jax.tree.map(take, problems), take(v0), take(grad_tol), jnp.asarray(grids),
    )  # fmt: skip
    for name, f, df, mode in _curves(sub):
        f, df = np.asarray(f, float), np.asarray(df, float)
        val = hermite_extremum(grids, f, df, mode)
        # the same estimate on the refined grid: every other save dropped doubles h (error
        # x 2^4), so |halved - full| / 15 estimates the error of the full-grid value
        sel = np.unique(np.r_[0, 1 : grids.shape[1] : 2, grids.shape[1] - 1])
        halved = hermite_extremum(grids[:, sel], f[:, sel], df[:, sel], mode)
        err = np.abs(halved - val) / 15
        rel = err / _scale(f, a[idx])
        rec["refine_err"][idx] = np.maximum(rec["refine_err"][idx], rel)
        rec["unresolved"][idx] |= rel > REFINE_ERR
        # conservative: the extremum moved by its estimated error towards the bound it is
        # compared with (a minimum down, a maximum up), so that a still unresolved extremum
        # can make a rigorous row fail but never pass
        val = val - err if mode == "min" else val + err
        if name == "ood_min":
            val = np.maximum(val, 0.0)
        elif name == "err_min":
            val = np.sqrt(np.maximum(val, 0.0))
        rec[name][idx] = val


def _mc_inputs(problems, e_final, num):
    """Dense Sigma and the final FT error of the first `num` instances of a group (R3)."""
    take = jax.tree.map(lambda x: x[:num], problems)

    def dense(p):
        return to_dense(p.ood_cov, reduce(p).basis)

    return dict(sigma=np.asarray(jax.vmap(dense)(take)), e=np.asarray(e_final[:num]))


# ---------------------------------------------------------------------------------------
# Extra runs: LP flow, toy; dense OOD loss of the Monte-Carlo instances
# ---------------------------------------------------------------------------------------


def _extra_lp_flow(cfg: Config, data):
    problems, v0, prep, _, vectors = data["first_group"]
    meta = data["meta"]
    n0 = len(prep["a"])
    zero = np.flatnonzero(meta["eps_knob"][:n0] == 0.0)
    p = jax.tree.map(lambda x: x[zero], problems)
    v = v0[zero]
    # a* and the threshold come from the group's `_prepare` (same problems and heads)
    rec = _run_chunked("lp_flow", cfg.chunk, p, v, jnp.asarray(prep["grad_tol"][zero]))
    a_star = vectors["a_star"][zero]
    dist = np.linalg.norm(rec["v_final"] - a_star, axis=1) / (1.0 + prep["a"][zero])
    return dict(dist=dist, nonconverged=int(np.sum(rec["status"] != 0)))


def _toy_problems(a):
    """The 2-D toy of R12 (docs/theory.md) for each a: one validated problem, batched along a.

    Only Y = (a), v* = (a) and w* = (a, 0) change with a (B0, B*, X and the second moments are
    shared), so the batch is the validated a = 1 problem with those leaves replaced."""
    a = np.asarray(a, float)
    base = problem_from_arrays(
        X=np.array([[1.0, 0.0]]),
        Y=np.array([1.0]),
        B0=np.array([[0.0, 1.0]]),
        B_star=np.array([[1.0, 0.0]]),
        v_star=np.array([1.0]),
        check_theory=False,
    )
    batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (a.size, *x.shape)), base)
    col = jnp.asarray(a)[:, None]
    return batch._replace(Y=col, v_star=col, w_star=col * base.w_star)


def _extra_toy(cfg: Config):
    g = cfg.toy_grid
    a_vals = np.linspace(0.1, 2.0, g)
    v_vals = np.concatenate([-np.linspace(0.1, 2.0, g // 2), np.linspace(0.1, 2.0, g // 2)])
    A, V0 = (x.ravel() for x in np.meshgrid(a_vals, v_vals, indexing="ij"))
    problems = _toy_problems(A)
    heads = jnp.asarray(V0)[:, None]
    prep = _run_chunked("prepare", cfg.chunk, problems, heads)
    rec = _run_chunked("flow", cfg.chunk, problems, heads, jnp.asarray(prep["grad_tol"]))
    lp2, ft2 = (np.asarray(x) for x in T.r12_toy_errors(A, V0))
    sim_ft2 = rec["err"][:, -1] ** 2
    sim_lp2 = prep["lp_err"] ** 2
    res_ft = np.abs(sim_ft2 - ft2) / ft2
    res_lp = np.abs(sim_lp2 - lp2) / lp2
    conv = rec["status"] == 0
    pred = np.asarray(T.r12_ft_wins(A, V0))
    sim = sim_ft2 < sim_lp2
    off_tie = np.abs(A**2 + V0**2 - 1) > 1e-6
    return dict(
        n=len(A),
        nonconverged=int(np.sum(~conv)),
        viol_ft=int(np.sum(conv & (res_ft > TOL["fit"]))),
        max_res_ft=_max(res_ft[conv]),
        viol_lp=int(np.sum(res_lp > TOL["exact"])),
        max_res_lp=_max(res_lp),
        viol_win=int(np.sum(conv & off_tie & (pred != sim))),
        a_range=[float(a_vals[0]), float(a_vals[-1])],
        v0_range=[float(v_vals.min()), float(v_vals.max())],
        plot=dict(a=A, v0=V0, sim_win=sim, gap=sim_lp2 - sim_ft2),
    )


def _dense_ood(data):
    """Dense e^T Sigma e at the final FT state of the Monte-Carlo instances (R3)."""
    idx, vals = [], []
    for part in data["mc"]:
        for j, (Sig, e) in enumerate(zip(part["sigma"], part["e"])):
            idx.append(part["start"] + j)
            vals.append(float(e @ Sig @ e))
    return np.asarray(idx, int), np.asarray(vals)
