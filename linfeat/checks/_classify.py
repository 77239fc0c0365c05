r"""Classification checks C1-C6 (docs/theory.md, section 11): the logistic flows.

Own instances (not `collect`): `classification_problem` with d = n = 12, k = 2, m = 4, the
feature error, the OOD second moment $s_S\Pi_S + s_\perp\Pi_\perp$ and the label-flip
probability on a grid, a Gaussian head ($\sigma = 0.5$). With n = d the reduced state
$(v, A = BQ)$ (Q is d x n) and the full-space state $(v, B)$ have the same shape, so one
compiled solver (the library's `LogisticFlow` in `linfeat._engine.solve`, $\tau$ as data) runs
LP, FT, the full-space FT and LP-FT's FT stage: compiling a solver takes seconds, running
these instances milliseconds.

- C1 (R1 for the logistic loss, rigorous): the full-space FT keeps $B\Pi_\perp = B_0\Pi_\perp$,
  and the reduced engine agrees with it in time (the reduction of section 11.1);
- C2 (R2, rigorous): $vv^T - BB^T$ conserved by FT, reduced and full, and by LP-FT's FT stage;
- C3 (the accuracy formula, rigorous within 5 standard errors): Monte Carlo against
  `accuracy` at the final FT predictors, ID and OOD;
- C4-C6 (observations, reported; `_classify_obs`): FT vs LP OOD accuracy for good features
  and a large shift (R5/R8 analogue), LP-FT vs LP OOD accuracy (R13 analogue), and the head
  norm after LP and the feature change of the following FT under logistic vs squared loss
  (Tomihari and Sato, arXiv:2405.16747).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .._accuracy import accuracy, reduced_accuracies
from .._classify import (
    LOSS_TOL_FRACTION,
    T_MAX_SCALE,
    LogisticData,
    LogisticFlow,
    classification_problem,
    default_logistic_times,
)
from .._closed_form import linear_probe
from .._cov import subspace_cov, to_dense
from .._engine import default_grad_tol, default_tolerances, solve
from .._flows import FineTune
from .._reduce import reduce
from .._validate import TheoryConditionWarning
from ._config import RIGOROUS, SOLVER, TOL, CheckResult, Sub, _max, threshold_row

CLS_IDS = tuple(f"C{i}" for i in range(1, 7))
D, K, M = 12, 2, 4  # n = d: reduced and full states share a shape (one compiled solver)
EPS_GRID = (0.05, 0.1, 0.3, 0.6)
# (s_S, s_perp): OOD off S (large shift), isotropic, close to ID (small shift)
SHIFTS = ((0.0, 1.0), (1.0, 1.0), (0.9, 0.1))
FLIPS = (0.0, 0.1)
HEAD_SCALE = 0.5
FIXED_T = 10.0  # C6's fixed FT horizon after LP, in units of 1 / lam_max(X^T X)


@dataclasses.dataclass(frozen=True)
class ClsConfig:
    """Sizes of the classification checks (quick and full)."""

    reps: int  # instances per (eps, shift, flip) cell
    saves: int = 64
    mc_instances: int = 6
    mc_samples: int = 20_000


CLS_QUICK = ClsConfig(reps=1)
CLS_FULL = ClsConfig(reps=6, mc_instances=24, mc_samples=100_000)


def _grid(cfg: ClsConfig):
    cells = [(e, s, f) for e in EPS_GRID for s in SHIFTS for f in FLIPS] * cfg.reps
    eps, shift, flip = zip(*cells)
    shift = np.asarray(shift)
    return np.asarray(eps), shift[:, 0], shift[:, 1], np.asarray(flip)


@jax.jit
def _make(keys, eps, s_S, s_perp, flip, head_keys):
    def one(key, e, a, b, f, kh):
        p = classification_problem(key, d=D, k=K, m=M, n=D, feature_error=e, flip_prob=f)
        p = p._replace(ood_cov=subspace_cov(D, scale_S=a, scale_perp=b, dtype=p.X.dtype))
        return p, HEAD_SCALE * jax.random.normal(kh, (K,), p.X.dtype)

    return jax.vmap(one)(keys, eps, s_S, s_perp, flip, head_keys)


@functools.partial(jax.jit, static_argnames="saves")
def _run(X, y, v0, A0, lam, tau, loss_tol, t1, *, saves):
    """The library's logistic flow (its default stop rule when `loss_tol`, `t1` are the
    defaults) for a batch of states."""

    def one(X, y, v0, A0, lam, tau, loss_tol, t1):
        gscale = default_tolerances(X.dtype)[2]
        return solve(
            LogisticFlow(),
            (v0, A0),
            LogisticData(X, y, loss_tol, tau),
            ts=default_logistic_times(lam, saves) * jnp.minimum(1.0, t1 * lam / T_MAX_SCALE),
            t1=t1,
            grad_tol=default_grad_tol(lam, y, v0, gscale),
            max_steps=100_000,
            **SOLVER,
        )

    return jax.vmap(one)(X, y, v0, A0, lam, tau, loss_tol, t1)


@jax.jit
def _run_squared(red, v0, lam, t1):
    """The library's squared-loss FT (`FineTune`, the engine) from v0 to its stop or t1."""

    def one(red, v0, lam, t1):
        gscale = default_tolerances(v0.dtype)[2]
        return solve(
            FineTune(),
            (v0, red.A0),
            red.flow_data,
            ts=jnp.stack([jnp.zeros_like(t1), t1]),
            t1=t1,
            grad_tol=default_grad_tol(lam, red.Y, v0, gscale),
            max_steps=100_000,
            **SOLVER,
        )

    return jax.vmap(one)(red, v0, lam, t1)


_accuracies = jax.jit(jax.vmap(reduced_accuracies))


def collect_cls(cfg: ClsConfig, seed: int) -> dict:
    """Samples the instances and runs LP, FT (reduced and full) and LP-FT, logistic and
    squared; returns numpy records."""
    eps, s_S, s_perp, flip = _grid(cfg)
    N = len(eps)
    k_p, k_h = jax.random.split(jax.random.key(seed + 13))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TheoryConditionWarning)
        P, H = _make(
            jax.random.split(k_p, N), jnp.asarray(eps), jnp.asarray(s_S), jnp.asarray(s_perp),
            jnp.asarray(flip), jax.random.split(k_h, N),
        )  # fmt: skip
    red = jax.jit(jax.vmap(reduce))(P)
    lam = jnp.max(red.sigma2, axis=1)
    zero, one = jnp.zeros((N,)), jnp.ones((N,))
    loss_tol = LOSS_TOL_FRACTION * D * math.log(2.0) * one  # the library's defaults
    t_max = T_MAX_SCALE / lam
    cat = lambda *xs: jnp.concatenate(xs)  # noqa: E731
    # one batch: FT (reduced), LP (reduced, from 0), FT in R^d
    sol = _run(
        cat(red.XQ, red.XQ, P.X), cat(P.Y, P.Y, P.Y), cat(H, jnp.zeros_like(H), H),
        cat(red.A0, red.A0, P.B0), cat(lam, lam, lam), cat(one, zero, one),
        cat(loss_tol, loss_tol, loss_tol), cat(t_max, t_max, t_max), saves=cfg.saves,
    )  # fmt: skip
    ft, lp, full = (jax.tree.map(lambda x, i=i: x[i * N : (i + 1) * N], sol) for i in range(3))
    v_lp = lp.y_final[0]
    # LP-FT's FT stage: to its own stop, and for the fixed time FIXED_T / lam (no loss test)
    fixed_t = FIXED_T / lam
    stages = _run(
        cat(red.XQ, red.XQ), cat(P.Y, P.Y), cat(v_lp, v_lp), cat(red.A0, red.A0),
        cat(lam, lam), cat(one, one), cat(loss_tol, 0 * loss_tol), cat(t_max, fixed_t),
        saves=cfg.saves,
    )  # fmt: skip
    lpft, lpft_fixed = (jax.tree.map(lambda x, i=i: x[i * N : (i + 1) * N], stages) for i in (0, 1))
    acc = {
        name: _accuracies(red, s.y_final[0], s.y_final[1])
        for name, s in (("ft", ft), ("lp", lp), ("lpft", lpft))
    }
    # squared loss on the same +-1 labels: the closed-form LP, then FT (`FineTune`) to its
    # own stop (the library's default t_max, 1e6 / lam) and for the fixed time
    v_sq = jax.jit(jax.vmap(linear_probe))(P)
    sq = _run_squared(
        jax.tree.map(lambda x: cat(x, x), red), cat(v_sq, v_sq), cat(lam, lam),
        cat(1e6 / lam, fixed_t),
    )  # fmt: skip
    sq_stop, sq_fixed = (jax.tree.map(lambda x, i=i: x[i * N : (i + 1) * N], sq) for i in (0, 1))
    host = lambda t: jax.tree.map(np.asarray, t)  # noqa: E731
    return dict(
        knobs=dict(eps=eps, s_S=s_S, s_perp=s_perp, flip=flip),
        P=host(P),
        red=host(red),
        H=np.asarray(H),
        ft=host(ft),
        lp=host(lp),
        full=host(full),
        lpft=host(lpft),
        lpft_fixed=host(lpft_fixed),
        acc={k: host(v) for k, v in acc.items()},
        sq=dict(
            head_norm=np.linalg.norm(np.asarray(v_sq), axis=1),
            stop=host(sq_stop),
            fixed=host(sq_fixed),
        ),
        cfg=cfg,
        seed=seed,
    )


def _ranges(data, mask=None) -> dict:
    kn = data["knobs"]
    mask = np.ones(len(kn["eps"]), bool) if mask is None else mask

    def uniq(x):
        return sorted({float(v) for v in np.asarray(x)[mask]})

    shifts = sorted({(float(a), float(b)) for a, b in zip(kn["s_S"][mask], kn["s_perp"][mask])})
    return {
        "eps": uniq(kn["eps"]),
        "Sigma_ood (s_S, s_perp)": [list(s) for s in shifts],
        "flip probability": uniq(kn["flip"]),
        "(d, k, m, n)": [D, K, M, D],
        "head sigma": HEAD_SCALE,
        "instances": int(mask.sum()),
    }


def _nonconv(*sols) -> int:
    return int(sum(np.sum(np.asarray(s.status) != 0) for s in sols))


def _perp_projector(data):
    """Pi_perp (N, d, d) from the basis of S of each instance (numpy)."""
    Q = data["red"].basis * data["red"].mask_S[:, None, :]
    return np.eye(D)[None] - Q @ np.transpose(Q, (0, 2, 1))


def _B_reduced(data, sol):
    """B(t) = B0 + (A(t) - A0) Q^T at every save (N, T, k, d)."""
    red = data["red"]
    dA = sol.ys[1] - red.A0[:, None]
    return data["P"].B0[:, None] + np.einsum("ntkr,ndr->ntkd", dA, red.basis)


def _drift(v, B, v0, B0):
    """max over saves of ||v v^T - B B^T - (v0 v0^T - B0 B0^T)||_F (numpy, per instance)."""
    inv = np.einsum("ntk,ntl->ntkl", v, v) - np.einsum("ntkd,ntld->ntkl", B, B)
    inv0 = np.einsum("nk,nl->nkl", v0, v0) - np.einsum("nkd,nld->nkl", B0, B0)
    return np.max(np.linalg.norm(inv - inv0[:, None], axis=(2, 3)), axis=1)


def check_c1(data, extra) -> CheckResult:
    full, ft = data["full"], data["ft"]
    B_full = full.ys[1]
    leak = B_full - data["P"].B0[:, None]
    perp = np.einsum("ntkd,nde->ntke", leak, _perp_projector(data))
    r1 = np.max(np.linalg.norm(perp, axis=(2, 3)), axis=1) / math.sqrt(K)
    # reduced vs full in time, at the saves strictly before both stops (later saves repeat
    # each run's own final state, and the two stop at different steps)
    w_red = np.einsum("ntkd,ntk->ntd", _B_reduced(data, ft), ft.ys[0])
    w_full = np.einsum("ntkd,ntk->ntd", B_full, full.ys[0])
    ts = ft.ts
    before = ts < np.minimum(ft.t_final, full.t_final)[:, None]
    gap = np.linalg.norm(w_red - w_full, axis=2)
    scale = 1.0 + np.linalg.norm(w_full, axis=2)
    engines = np.max(np.where(before, gap / scale, 0.0), axis=1)
    subs = [
        threshold_row(
            "full-space logistic FT: max_t ||(B(t) - B0) Pi_perp||_F / ||B0||_F",
            "[derived]",
            r1,
            TOL["frozen"],
            nonconverged=_nonconv(full),
        ),
        threshold_row(
            "reduced engine vs full-space flow: max_t ||w_red(t) - w_full(t)|| / (1 + ||w||), "
            "saves before both stops",
            "[derived]",
            engines,
            TOL["engines"],
            nonconverged=_nonconv(ft, full),
        ),
    ]
    return CheckResult(
        "C1",
        "Logistic FT: features frozen on S-perp (R1)",
        "For any loss of X B^T v, dB/dt = -v (X^T grad l)^T has rows in S, so B(t) Pi_perp = "
        "B0 Pi_perp, and the reduced flow of (v, A = BQ) is exact (docs/theory.md 11.1).",
        "[derived]",
        _ranges(data),
        subs,
        numbers={"saves compared per instance (median)": float(np.median(before.sum(axis=1)))},
    )


def check_c2(data, extra) -> CheckResult:
    P, ft, full, lpft, H = data["P"], data["ft"], data["full"], data["lpft"], data["H"]
    v_lp = data["lp"].y_final[0]
    rows = []
    for name, sol, B, v0 in (
        ("reduced logistic FT", ft, _B_reduced(data, ft), H),
        ("full-space logistic FT", full, full.ys[1], H),
        ("LP-FT's FT stage (reduced, from the probe's head)", lpft, _B_reduced(data, lpft), v_lp),
    ):
        # size of the conserved matrix v0 v0^T - I_k and of the trajectory
        scale = np.sum(v0**2, axis=1) + math.sqrt(K) + np.max(np.sum(sol.ys[0] ** 2, -1), 1)
        rel = _drift(sol.ys[0], B, v0, P.B0) / scale
        rows.append(
            threshold_row(
                f"{name}: max_t ||v v^T - B B^T - (v0 v0^T - I)||_F / scale",
                "[derived]",
                rel,
                TOL["invariant"],
                nonconverged=_nonconv(sol),
            )
        )
    return CheckResult(
        "C2",
        "Logistic FT: balancedness conserved (R2)",
        "v v^T - B B^T is constant along FT for any loss of X B^T v (docs/theory.md 3.1, 11.1).",
        "[derived]",
        _ranges(data),
        rows,
        notes=["scale = ||v0||^2 + sqrt(k) + max_t ||v(t)||^2 (the heads grow on separable data)."],
    )


def check_c3(data, extra) -> CheckResult:
    cfg = data["cfg"]
    rng = np.random.default_rng(data["seed"] + 31)
    P, red, ft = data["P"], data["red"], data["ft"]
    B = _B_reduced(data, ft)[:, -1]
    v = ft.y_final[0]
    idx = np.linspace(0, len(v) - 1, min(cfg.mc_instances, len(v))).astype(int)
    zs, lib_gap = [], []
    for i in idx:
        p = jax.tree.map(lambda x, i=i: x[i], P)
        Q = red.basis[i] * red.mask_S[i]
        w = B[i].T @ v[i]
        lib = accuracy(p, v[i], B[i])
        for cov, acc_lib, acc_red in (
            (p.id_cov, lib.id, data["acc"]["ft"].id[i]),
            (p.ood_cov, lib.ood, data["acc"]["ft"].ood[i]),
        ):
            Sig = np.asarray(to_dense(cov, Q))
            lam, U = np.linalg.eigh(0.5 * (Sig + Sig.T))
            lam = np.where(lam > 1e-12 * lam.max(), lam, 0.0)  # projector parts: exact zeros
            x = rng.standard_normal((cfg.mc_samples, D)) @ (U * np.sqrt(lam)).T
            wrong = np.sign(x @ w) != np.sign(x @ p.w_star)
            se = max(wrong.std(ddof=1) / math.sqrt(len(wrong)), 1.0 / len(wrong))
            zs.append(abs(wrong.mean() - (1.0 - float(acc_lib))) / se)
            lib_gap.append(abs(float(acc_lib) - float(acc_red)))
    s = TOL["mc_sigmas"]
    subs = [
        Sub(
            f"Monte Carlo ({cfg.mc_samples} Gaussian samples) vs accuracy(problem, v, B) at the "
            "final FT predictor, ID and OOD Sigma",
            "[derived]",
            RIGOROUS,
            f"|estimate - formula| <= {s:g} standard errors",
            len(zs),
            int(np.sum(np.asarray(zs) > s)),
            _nonconv(ft),
            "max |z|",
            _max(zs),
        ),
        threshold_row(
            "frame (reduced) accuracy = accuracy in R^d, same predictors",
            "[derived]",
            lib_gap,
            1e-10,
            worst_name="max |difference|",
            evidence=False,
        ),
    ]
    return CheckResult(
        "C3",
        "Closed-form 0-1 accuracy under Gaussian inputs",
        "err(w) = arccos(w^T S w* / sqrt(w^T S w w*^T S w*)) / pi for x ~ N(0, S) "
        "(docs/theory.md 11.3).",
        "[derived]",
        _ranges(data),
        subs,
        notes=[f"The {s:g}-sigma rule has a false-alarm probability of about 6e-7 per case."],
    )


CHECKS = {"C1": check_c1, "C2": check_c2, "C3": check_c3}  # C4-C6: `_classify_obs`
