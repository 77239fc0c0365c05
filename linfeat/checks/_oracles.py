r"""The engine against exact trajectories in time: T1 and T2 of docs/theory.md, section 7.

R1-R13 compare end points, minima over t or invariants, which survive a common rescaling of
time and some sign errors; these two checks compare the whole trajectory at every save time,
so a flow that runs at the wrong speed or in the wrong direction fails them:

- T1: FT of width k = 1 with whitened ID data ($X^TX = s\Pi_S$, $\Pi_S b_0 \parallel \Pi_S w^*$)
  against its closed form (`linfeat.theory.k1_trajectory_problem_time`, docs/theory.md,
  section 5), on random instances;
- T2: the reduced engine (`mode="reduced"`, Rodas5P in the small basis) against the full-space
  reference (`mode="full"`, diffrax Tsit5 on $(v, B)$ in $R^d$) at the same save times.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import theory as T
from .._cov import SubspaceCov
from .._flow import fine_tune
from .._problem import Problem
from ._config import RIGOROUS, SOLVER, TOL, CheckResult, Config, Sub, _max
from ._sampling import _grad_tol, _run_chunked_fn, _sample_group

# ---------------------------------------------------------------------------------------
# T1: the exact k = 1 trajectory
# ---------------------------------------------------------------------------------------


def _k1_whitened(key, d: int, m: int):
    r"""One random k = 1 instance on which the closed form holds, and its oracle parameters.

    S is a Haar-random m-dimensional subspace, X = sqrt(s) Q_S^T (n = m, X^T X = s Pi_S),
    b0 = alpha0 u + sqrt(1 - alpha0^2) u_perp and w* = y u + c u_perp' with unit u in S and
    unit u_perp, u_perp' in S-perp, so Pi_S b0 = alpha0 u is parallel to Pi_S w* = y u.
    """
    ks = jax.random.split(key, 7)
    O = jnp.linalg.qr(jax.random.normal(ks[0], (d, d)))[0]
    S, perp = O[:, :m], O[:, m:]
    s = jnp.exp(jax.random.uniform(ks[1], minval=jnp.log(0.3), maxval=jnp.log(3.0)))
    alpha0 = jax.random.uniform(ks[2], minval=-0.95, maxval=0.95)
    y = jax.random.choice(ks[3], jnp.array([-1.0, 1.0])) * jax.random.uniform(
        ks[4], minval=0.2, maxval=3.0
    )
    v0 = jax.random.normal(ks[5])
    c = jax.random.normal(ks[6])
    u, u_perp = S[:, 0], perp[:, 0]
    b0 = alpha0 * u + jnp.sqrt(1.0 - alpha0**2) * u_perp
    w = y * u + c * perp[:, 1]
    X = jnp.sqrt(s) * S.T
    problem = Problem(
        X=X,
        Y=X @ w,
        B0=b0[None],
        w_star=w,
        B_star=None,
        v_star=None,
        id_cov=SubspaceCov(jnp.zeros(()), jnp.zeros(()), X.T / jnp.sqrt(m)),
        ood_cov=SubspaceCov(jnp.ones(()), jnp.ones(()), jnp.zeros((d, 0))),
    )
    return problem, dict(s=s, alpha0=alpha0, y=y, v0=v0, u=u, u_perp=u_perp)


def _k1_record(key, d: int, m: int):
    """FT on one whitened k = 1 instance and its distance to the closed form at every save."""
    problem, o = _k1_whitened(key, d, m)
    v0 = o["v0"][None]
    tr = fine_tune(problem, v0, check=False, grad_tol=_grad_tol(problem, v0), **SOLVER)
    ref = T.k1_trajectory_problem_time(tr.ts, s=o["s"], v0=o["v0"], alpha0=o["alpha0"], y=o["y"])
    b_ref = ref.alpha[:, None] * o["u"] + jnp.sqrt(1.0 - o["alpha0"] ** 2) * o["u_perp"]
    scale = 1.0 + jnp.abs(o["y"]) + jnp.abs(o["v0"])
    return dict(
        status=tr.status,
        err_v=jnp.max(jnp.abs(tr.v[:, 0] - ref.v)) / scale,
        err_b=jnp.max(jnp.linalg.norm(tr.B[:, 0, :] - b_ref, axis=-1)) / scale,
        # how far the trajectory moves: a check on a flow that barely moves proves little
        travel=jnp.max(jnp.abs(ref.v - o["v0"])) / scale,
        s=o["s"],
        y=o["y"],
    )


def _extra_k1(cfg: Config, seed: int):
    g = cfg.k1
    keys = jax.random.split(jax.random.PRNGKey(seed + 202), g.reps)
    fn = functools.partial(_k1_record, d=g.d, m=g.m)
    return dict(rec=_run_chunked_fn(fn, cfg.chunk, keys), shape=[g.d, 1, g.m])


def check_t1(data, extra) -> CheckResult:
    rec = extra["k1"]["rec"]
    tol = TOL["trajectory"]
    conv = rec["status"] == 0
    err = np.maximum(rec["err_v"], rec["err_b"])
    subs = [
        Sub(
            "max over save times of |v - v_exact|, ||b - b_exact|| / (1 + |y| + |v0|)",
            "[paper] flow; [derived] closed form",
            RIGOROUS,
            f"<= {tol:g} on every instance",
            len(err),
            int(np.sum(~(err <= tol))),
            int(np.sum(~conv)),
            "max",
            _max(err),
            strict_convergence=True,
        ),
    ]
    return CheckResult(
        "T1",
        "Exact k = 1 trajectory in time",
        "With k = 1, X^T X = s Pi_S and Pi_S b0 parallel to Pi_S w*, FT's (v(t), b(t)) equals "
        "the closed form of docs/theory.md section 5 at every time t (scaled time tau = 2 s t).",
        "[derived]",
        {
            "(d, k, m)": [extra["k1"]["shape"]],
            "s": [float(np.min(rec["s"])), float(np.max(rec["s"]))],
            "|y|": [float(np.min(np.abs(rec["y"]))), float(np.max(np.abs(rec["y"])))],
            "n": "m",
        },
        subs,
        numbers={
            "max |v - v_exact| / scale": _max(rec["err_v"]),
            "max ||b - b_exact|| / scale": _max(rec["err_b"]),
            "median travel max_t |v(t) - v0| / scale (how far the compared flow moves)": float(
                np.median(rec["travel"])
            ),
        },
        notes=[
            "Compared at every one of the 64 default save times (log-spaced, 0 and "
            "[1e-2, 1e6] / lam_max(X^T X)): a flow run at another speed or with a flipped "
            "gradient leaves the closed form long before convergence."
        ],
    )


# ---------------------------------------------------------------------------------------
# T2: reduced engine against the full-space reference
# ---------------------------------------------------------------------------------------


def _pair_record(problem: Problem, v0, grad_tol):
    """FT twice, reduced and in R^d, at the same save times: their largest gap in w = B^T v."""
    full = fine_tune(problem, v0, check=False, grad_tol=grad_tol, mode="full", **SOLVER)
    red = fine_tune(problem, v0, check=False, grad_tol=grad_tol, ts=full.ts, **SOLVER)
    w_full = jnp.einsum("tkd,tk->td", full.B, full.v)
    w_red = jnp.einsum("tkd,tk->td", red.B, red.v)
    return dict(
        status=jnp.maximum(jnp.abs(full.status), jnp.abs(red.status)),
        gap_w=jnp.max(jnp.linalg.norm(w_red - w_full, axis=-1)),
        gap_v=jnp.max(jnp.linalg.norm(red.v - full.v, axis=-1)),
        travel=jnp.max(jnp.linalg.norm(w_full - w_full[0], axis=-1)),
        feat_perp=full.metrics.feature_change_perp,
        drift=full.metrics.balancedness_drift,
    )


def _extra_pairs(cfg: Config, seed: int):
    g = cfg.full_mode
    problems, v0, meta = _sample_group(jax.random.PRNGKey(seed + 101), g, cfg)
    gt = jax.vmap(_grad_tol)(problems, v0)
    rec = _run_chunked_fn(_pair_record, cfg.chunk, problems, v0, gt)
    return dict(
        rec=rec,
        k=g.k,
        a=meta["a_knob"],
        v0_norm2=np.sum(np.asarray(v0) ** 2, axis=1),
        shape=[g.d, g.k, g.m],
    )


def check_t2(data, extra) -> CheckResult:
    full = extra["full"]
    rec = full["rec"]
    tol = TOL["engines"]
    scale = 1.0 + full["a"] + full["v0_norm2"]
    gap = np.maximum(rec["gap_w"], rec["gap_v"]) / scale
    subs = [
        Sub(
            "max over save times of ||w_red - w_full||, ||v_red - v_full|| / (1 + a + |v0|^2)",
            "[derived] (exact reduction, docs/theory.md section 2)",
            RIGOROUS,
            f"<= {tol:g} on every instance",
            len(gap),
            int(np.sum(~(gap <= tol))),
            int(np.sum(rec["status"] != 0)),
            "max",
            _max(gap),
            strict_convergence=True,
        ),
    ]
    return CheckResult(
        "T2",
        "Reduced engine = full-space flow in time",
        "The reduced flow (Rodas5P on the exact small state) and the full-space flow "
        "(Tsit5 on (v, B) in R^d) give the same w(t) = B(t)^T v(t) at every save time.",
        "[derived]",
        {"(d, k, m)": [full["shape"]], "eps, |v*|, sigma, Sigma": "the knob grid of R1-R13"},
        subs,
        numbers={
            "median travel max_t ||w(t) - w(0)|| (how far the compared flow moves)": float(
                np.median(rec["travel"])
            )
        },
    )
