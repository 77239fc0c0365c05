r"""A batched adaptive solver for FT / LP-FT sweeps on the exact reduced state.

`linfeat.fine_tune` integrates one problem with diffrax; under `jax.vmap` its while_loop runs
every lane until the slowest lane stops, and on CPU the per-step overhead of a generic solver
dominates the tiny reduced field. This module integrates a whole batch with hand-written
steps on the reduced state of THEORY.md section 2,

$$\dot v = -2 A\rho,\quad \dot A = -2 v\rho^T,\quad \rho = \mathrm{diag}(s^2)A^Tv - g,$$

laid out as one (batch, k, r) array so that every stage of every lane is one batched kernel.

- **Stiffness.** With a square Gaussian X (n = m) the spread of $s^2$ grows like $m^2$ and
  explicit methods are stability-bound (1e4-1e5 steps). The default is Rodas5P, an L-stable
  Rosenbrock method of order 5 with the *exact* Jacobian; the Jacobian's structure reduces
  each step's linear algebra to one k x k SPD inverse (`_linearize`), so a step costs
  O(k^2 r) whatever the stiffness: ~100 steps per trajectory at rtol 1e-8 on the issue's
  `small` problems instead of ~30,000. The explicit pairs of diffrax's `Dopri8`, `Dopri5`
  and `Tsit5` tableaux remain available (`solver=`).
- each lane keeps its own step size, error test, save index and stopping test (same
  guarantees as the single solve: RMS error per step <= 1 in units of atol + rtol |y|);
- lanes stop independently (masked); a pool of lanes is refilled from the batch between
  short jitted segments, on the device, so the total work follows the sum, not the batch
  size times the maximum, of the per-lane step counts, the working set stays in cache and
  one shape compiles once;
- saves: Rodas5P fills save times from its 4th-order dense output (measured: save errors
  within 1.5x of landing exactly on them, ~20 fewer steps per trajectory); the explicit
  pairs clip steps to land exactly on `ts`;
- large sweeps are chunked (`batch_size`), moved to host memory chunk by chunk, shown with
  tqdm and optionally checkpointed per chunk (`sweep`, resumable).

Measured design choices are in BENCHMARKS.md.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._flow import Status, Trajectory, default_times, default_tolerances
from ._metrics import metrics
from ._problem import Problem
from ._reduce import reduce

RUNNING = -1


class _Tableau(NamedTuple):
    """An explicit FSAL Runge-Kutta pair: stage rows, error weights and the error order."""

    a: tuple[tuple[float, ...], ...]  # a[i-1] = weights of stages 0..i-1 for stage i
    e: tuple[float, ...]  # b_sol - b_embedded
    exponent: float  # step factor = safety * err ** exponent


def _tableau(name: str) -> _Tableau:
    """Tableaux of diffrax's Tsit5, Dopri5 and Dopri8 (FSAL: last stage row = b_sol)."""
    from diffrax._solver import dopri5, dopri8, tsit5

    tab, q = {
        "tsit5": (tsit5._tsit5_tableau, 4),
        "dopri5": (dopri5._dopri5_tableau, 4),
        "dopri8": (dopri8._dopri8_tableau, 7),
    }[name]
    a = tuple(tuple(float(x) for x in row) for row in tab.a_lower)
    assert tab.fsal and np.allclose(tab.a_lower[-1], tab.b_sol[:-1]) and tab.b_sol[-1] == 0
    return _Tableau(a, tuple(float(x) for x in tab.b_error), -1.0 / (q + 1))


SOLVERS = ("rodas5p", "dopri8", "dopri5", "tsit5")


class _Consts(NamedTuple):
    """Per-lane data of the reduced flow and the solve settings."""

    sigma2: Float[Array, "b r"]
    g: Float[Array, "b r"]
    ts: Float[Array, "b T"]
    t1: Float[Array, " b"]
    rtol: Float[Array, ""]
    atol: Float[Array, ""]
    grad_tol: Float[Array, ""]
    train_features: Float[Array, ""]


class _State(NamedTuple):
    """Solver state of every lane (saves apart); `status` is RUNNING (-1) until it stops."""

    t: Float[Array, " b"]
    h: Float[Array, " b"]
    v: Float[Array, "b k"]
    A: Float[Array, "b k r"]
    fv: Float[Array, "b k"]  # field at (t, v, A): FSAL, and the gradient test
    fA: Float[Array, "b k r"]
    j: Int[Array, " b"]  # index of the next save time
    num_steps: Int[Array, " b"]
    status: Int[Array, " b"]


class _Saves(NamedTuple):
    """The saved states of every lane of a batch (kept apart from the small pool state)."""

    v: Float[Array, "b T k"]
    A: Float[Array, "b T k r"]


_NO_LANE = 2**30  # lane index of an idle pool slot: gathers clip it, scatters drop it


def _field(v, A, c: _Consts):
    """The reduced FT field for a batch (batched matvecs: 2.5x faster than sum-reductions)."""
    rho = c.sigma2 * jnp.einsum("bkr,bk->br", A, v) - c.g
    fv = -2.0 * jnp.einsum("bkr,br->bk", A, rho)
    fA = (-2.0 * c.train_features) * (v[:, :, None] * rho[:, None, :])
    return fv, fA


def _rms(xv, xA):
    n = xv.shape[1] + xA.shape[1] * xA.shape[2]
    return jnp.sqrt((jnp.sum(xv**2, axis=1) + jnp.sum(xA**2, axis=(1, 2))) / n)


def _grad_norm(fv, fA):
    return jnp.sqrt(jnp.sum(fv**2, axis=1) + jnp.sum(fA**2, axis=(1, 2)))


def _bcast(x, y):
    return x.reshape(x.shape + (1,) * (y.ndim - x.ndim))


def _init(v0, A0, c: _Consts) -> tuple[_State, _Saves]:
    """Saves the states at ts == 0, picks a first step (Hairer's rule) and sets the statuses."""
    b = A0.shape[0]
    fv, fA = _field(v0, A0, c)
    scale_v = c.atol + c.rtol * jnp.abs(v0)
    scale_A = c.atol + c.rtol * jnp.abs(A0)
    d0 = _rms(v0 / scale_v, A0 / scale_A)
    d1 = _rms(fv / scale_v, fA / scale_A)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.maximum(d1, 1e-300))
    h0 = jnp.minimum(h0, c.t1)
    at0 = c.ts <= 0.0
    j0 = jnp.sum(at0, axis=1).astype(jnp.int32)
    ys_v = jnp.where(at0[:, :, None], v0[:, None, :], 0.0)
    ys_A = jnp.where(at0[:, :, None, None], A0[:, None], 0.0)
    done = _grad_norm(fv, fA) < c.grad_tol
    finite = jnp.isfinite(d0) & jnp.isfinite(d1)
    status = jnp.where(done, Status.CONVERGED, RUNNING)
    status = jnp.where(finite, status, Status.NONFINITE).astype(jnp.int32)
    zero = jnp.zeros((b,), v0.dtype)
    state = _State(zero, h0, v0, A0, fv, fA, j0, jnp.zeros((b,), jnp.int32), status)
    return state, _Saves(ys_v, ys_A)


def _combine(y, h, ws, ks):
    return y + h * sum(w * x for w, x in zip(ws, ks, strict=False) if w)


def _explicit_attempt(s: _State, c: _Consts, h, tab: _Tableau):
    """One explicit FSAL Runge-Kutta attempt: (v1, A1, f(v1, A1), error vector, None)."""
    hv, hA = h[:, None], h[:, None, None]
    kv, kA = [s.fv], [s.fA]
    for row in tab.a:  # the last row gives y1 (FSAL), whose field starts the next step
        v1, A1 = _combine(s.v, hv, row, kv), _combine(s.A, hA, row, kA)
        fv1, fA1 = _field(v1, A1, c)
        kv.append(fv1)
        kA.append(fA1)
    ev = hv * sum(e * x for e, x in zip(tab.e, kv, strict=True) if e)
    eA = hA * sum(e * x for e, x in zip(tab.e, kA, strict=True) if e)
    return v1, A1, fv1, fA1, ev, eA, None


class _Rosenbrock(NamedTuple):
    """A stiffly accurate Rosenbrock pair in the Rodas layout (Hairer-Wanner, section IV.7).

    Stage i solves (I - h gamma J) u_i = h gamma f(Y_i) + gamma sum_j C_ij u_j, with
    Y_1 = y0, Y_i = y0 + sum_j a_ij u_j for i <= len(a) + 1, then Y_{i+1} = Y_i + u_i;
    y1 = Y_s + u_s, and u_s is the error estimate.
    """

    gamma: float
    a: tuple[tuple[float, ...], ...]
    C: tuple[tuple[float, ...], ...]
    exponent: float
    H: tuple[tuple[float, ...], ...] | None  # dense output: d_m = sum_j H_mj u_j, or None

    def dense(self, y0, y1, d, theta):
        """y(t0 + theta h) = (1-theta) y0 + theta (y1 + (1-theta)(d1 + theta(d2 + theta d3)))."""
        th = _bcast(theta, y0)
        return (1 - th) * y0 + th * (y1 + (1 - th) * (d[0] + th * (d[1] + th * d[2])))


# Rodas5P (Steinebach 2023, order 5 with a 4th-order embedded error u_8; L-stable and
# stiffly accurate): the coefficients of OrdinaryDiffEq.jl's `Rodas5PTableau`.
_RODAS5P = _Rosenbrock(
    gamma=0.21193756319429014,
    a=(
        (3.0,),
        (2.849394379747939, 0.45842242204463923),
        (-6.954028509809101, 2.489845061869568, -10.358996098473584),
        (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641),
        (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
         0.030198172008377946),
    ),
    C=(
        (-14.155112264123755,),
        (-17.97296035885952, -2.859693295451294),
        (147.12150275711716, -1.41221402718213, 71.68940251302358),
        (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306),
        (24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125,
         -0.6610691825249471),
        (30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783,
         -19.097331116725623, -28.087943162872662),
        (37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
         -40.06618937091002, -54.66780262877968, -9.48861652309627),
    ),
    exponent=-1.0 / 5.0,
    H=(
        (25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204,
         0.524948541321073, 1.1241088310450404, 0.4272876194431874, -0.17202221070155493),
        (-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796,
         20.176138334709044, 15.98066361424651, -6.789040303419874, -6.710236069923372),
        (11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643,
         -52.072871366152654, -59.78993625266729, -0.15582684282751913, 4.883087185713722),
    ),
)  # fmt: skip

# Steps of the Rosenbrock solver are capped so that 4 (h gamma)^2 |rho|^2 <= 1/2; then the
# k x k system below is symmetric positive definite with eigenvalues >= 1/2. The cap is the
# time scale of the field's non-stiff saddle part (eigenvalues +-2|rho|), which accuracy
# resolves anyway: removing it changed no step count on 1024 `small` problems with n = m and
# 1024 with n = 2m, at rtol 1e-8 and 1e-12 (benchmarks/profiling/step_cap.py).
_CAP = 0.5**1.5


def _residual(v, A, c: _Consts):
    return c.sigma2 * jnp.einsum("bkr,bk->br", A, v) - c.g


def _rosenbrock_cap(s: _State, c: _Consts, tab: _Rosenbrock):
    rho = jnp.sqrt(jnp.sum(_residual(s.v, s.A, c) ** 2, axis=1)) * c.train_features
    return _CAP / (tab.gamma * jnp.maximum(rho, 1e-300))


def _spd_inverse(K):
    """Gauss-Jordan inverse of a batch of SPD k x k matrices, unrolled (no LAPACK calls).

    Pivots are diagonal (no pivoting is needed for SPD matrices); written with plain array
    ops so that it also runs inside `shard_map` on a CPU mesh, where LAPACK custom calls hung.
    The batch axis is moved last so that every operation is vectorised along it: measured on
    (256, 10, 10), 0.58 us per matrix against 3.1 us batch-major and 2.8 us for LAPACK `inv`.
    """
    k = K.shape[-1]
    M = jnp.moveaxis(K, 0, -1)  # (k, k, b)
    for i in range(k):
        e = jnp.arange(k) == i
        row = jnp.where(e[:, None], 1.0, M[i]) / M[i, i]
        col = jnp.where(e[:, None], 0.0, M[:, i])
        M = jnp.where(e[None, :, None], 0.0, M) - col[:, None, :] * row[None, :, :]
        M = M.at[i].set(row)
    return jnp.moveaxis(M, -1, 0)


class _Linear(NamedTuple):
    """(I - alpha J) of the reduced FT field at one state, reduced to a k x k system."""

    v: Float[Array, "b k"]
    rho: Float[Array, "b r"]
    At: Float[Array, "b k r"]  # A - beta' v rho^T
    m: Float[Array, "b r"]  # H / (1 + beta' |v|^2 H)
    dd: Float[Array, "b r"]  # 1 + beta' |v|^2 H
    Kinv: Float[Array, "b k k"]
    beta: Float[Array, " b"]
    beta_f: Float[Array, " b"]
    sigma2: Float[Array, "b r"]


def _linearize(v, A, c: _Consts, alpha) -> _Linear:
    r"""Factor $I - \alpha J$ for the field $f_v = -2A\rho$, $f_A = -2\tau v\rho^T$.

    With $\delta w = A^T\delta v + \delta A^T v$ and $H = \mathrm{diag}(s^2)$ the Jacobian is
    $J(\delta v, \delta A) = (-2\delta A\rho - 2AH\delta w,
    -2\tau(\delta v\rho^T + v(H\delta w)^T))$. Eliminating $\delta A$ and then $\delta w$
    (a diagonal solve) leaves one k x k SPD system per step: $O(k^2 r)$ work, whatever the
    stiffness.
    """
    beta = 2.0 * alpha
    beta_f = beta * c.train_features
    rho = _residual(v, A, c)
    s = jnp.sum(v**2, axis=1)
    dd = 1.0 + (beta_f * s)[:, None] * c.sigma2
    m = c.sigma2 / dd
    At = A - beta_f[:, None, None] * v[:, :, None] * rho[:, None, :]
    cc = 1.0 - beta * beta_f * jnp.sum(rho**2, axis=1)
    K = jnp.einsum("bkr,blr->bkl", At * m[:, None, :], At) * beta[:, None, None]
    K = K + cc[:, None, None] * jnp.eye(v.shape[1], dtype=v.dtype)
    return _Linear(v, rho, At, m, dd, _spd_inverse(K), beta, beta_f, c.sigma2)


def _linear_solve(L: _Linear, rv, rA):
    """(dv, dA) with (I - alpha J)(dv, dA) = (rv, rA) (see `_linearize`)."""
    q = jnp.einsum("bkr,bk->br", rA, L.v)
    rhs = rv - L.beta[:, None] * (
        jnp.einsum("bkr,br->bk", rA, L.rho) + jnp.einsum("bkr,br->bk", L.At, L.m * q)
    )
    dv = jnp.einsum("bkl,bl->bk", L.Kinv, rhs)
    dw = (jnp.einsum("bkr,bk->br", L.At, dv) + q) / L.dd
    dA = rA - L.beta_f[:, None, None] * (
        dv[:, :, None] * L.rho[:, None, :] + L.v[:, :, None] * (L.sigma2 * dw)[:, None, :]
    )
    return dv, dA


def _rosenbrock_attempt(s: _State, c: _Consts, h, tab: _Rosenbrock):
    """One Rosenbrock attempt with the exact Jacobian at (v, A).

    Returns (v1, A1, f(v1, A1), the error estimate u_s, and the stage increments for the
    dense output), like `_explicit_attempt` (whose last item is None).
    """
    alpha = tab.gamma * h
    L = _linearize(s.v, s.A, c, alpha)
    av, aA = alpha[:, None], alpha[:, None, None]
    us_v, us_A = [], []
    fv, fA = s.fv, s.fA
    yv, yA = s.v, s.A
    n_a = len(tab.a)
    for i in range(len(tab.C) + 1):
        if i > 0:
            if i <= n_a:
                yv = s.v + sum(w * x for w, x in zip(tab.a[i - 1], us_v, strict=True))
                yA = s.A + sum(w * x for w, x in zip(tab.a[i - 1], us_A, strict=True))
            else:
                yv, yA = yv + us_v[-1], yA + us_A[-1]
            fv, fA = _field(yv, yA, c)
        rv, rA = av * fv, aA * fA
        if i > 0:
            rv = rv + tab.gamma * sum(w * x for w, x in zip(tab.C[i - 1], us_v, strict=True))
            rA = rA + tab.gamma * sum(w * x for w, x in zip(tab.C[i - 1], us_A, strict=True))
        uv, uA = _linear_solve(L, rv, rA)
        us_v.append(uv)
        us_A.append(uA)
    v1, A1 = yv + us_v[-1], yA + us_A[-1]
    fv1, fA1 = _field(v1, A1, c)
    return v1, A1, fv1, fA1, us_v[-1], us_A[-1], (us_v, us_A)


def _dense_saves(s: _State, c: _Consts, idx, saves, accept, h, t_new, v1, A1, dterms, tab):
    """Writes the interpolant at every save time in (t, t_new] of each accepted lane."""
    T = c.ts.shape[1]
    us_v, us_A = dterms  # the stage increments; the interpolant is built only when a save is due

    def pending(j):
        tj = jnp.take_along_axis(c.ts, jnp.minimum(j, T - 1)[:, None], axis=1)[:, 0]
        return accept & (j < T) & (tj <= t_new), tj

    def body(carry):
        j, ys_v, ys_A = carry
        due, tj = pending(j)
        theta = jnp.where(due, (tj - s.t) / jnp.where(h > 0, h, 1.0), 0.0)
        dv = [sum(w * x for w, x in zip(row, us_v, strict=True)) for row in tab.H]
        dA = [sum(w * x for w, x in zip(row, us_A, strict=True)) for row in tab.H]
        yv, yA = tab.dense(s.v, v1, dv, theta), tab.dense(s.A, A1, dA, theta)
        lane, js = jnp.where(due, idx, _NO_LANE), jnp.minimum(j, T - 1)
        ys_v = ys_v.at[lane, js].set(yv, mode="drop")
        ys_A = ys_A.at[lane, js].set(yA, mode="drop")
        return j + due.astype(jnp.int32), ys_v, ys_A

    j, ys_v, ys_A = jax.lax.while_loop(
        lambda carry: jnp.any(pending(carry[0])[0]), body, (s.j, saves.v, saves.A)
    )
    return j, _Saves(ys_v, ys_A)


def _step(s: _State, c: _Consts, idx, saves: _Saves, max_steps, tab) -> tuple[_State, _Saves]:
    """One attempt (explicit RK or Rosenbrock) in every running lane; others are unchanged.

    `idx` maps each lane of `s` (a pool slot) to its row of `saves`. A method with dense output
    fills every save time passed by an accepted step from its interpolant; otherwise steps
    are clipped to land exactly on the next save time.
    """
    T = c.ts.shape[1]
    active = s.status == RUNNING
    rosenbrock = isinstance(tab, _Rosenbrock)
    dense = rosenbrock and tab.H is not None
    j_safe = jnp.minimum(s.j, T - 1)
    if dense:
        stop = c.t1
    else:
        t_save = jnp.take_along_axis(c.ts, j_safe[:, None], axis=1)[:, 0]
        stop = jnp.where(s.j < T, t_save, c.t1)
    gap = stop - s.t
    h_prop = s.h
    if rosenbrock:
        h_prop = jnp.minimum(h_prop, _rosenbrock_cap(s, c, tab))
    hits = h_prop >= gap
    h = jnp.where(hits, gap, h_prop)
    h = jnp.where(active, h, 0.0)
    attempt = _rosenbrock_attempt if rosenbrock else _explicit_attempt
    v1, A1, fv1, fA1, ev, eA, dterms = attempt(s, c, h, tab)
    sv = c.atol + c.rtol * jnp.maximum(jnp.abs(s.v), jnp.abs(v1))
    sA = c.atol + c.rtol * jnp.maximum(jnp.abs(s.A), jnp.abs(A1))
    err = _rms(ev / sv, eA / sA)
    finite = jnp.isfinite(err)
    accept = active & finite & (err <= 1.0)
    # The I-controller of diffrax's PIDController defaults: safety 0.9, factor in [0.2, 10].
    factor = jnp.clip(0.9 * jnp.where(err > 0, err, 1e-10) ** tab.exponent, 0.2, 10.0)
    factor = jnp.where(finite, factor, 0.2)
    h_next = h * factor
    # A step shortened to land on a save time says nothing against the unclipped proposal.
    h_next = jnp.where(accept & hits, jnp.maximum(h_next, h_prop), h_next)
    t_new = jnp.where(hits, stop, s.t + h)
    if dense:
        j, saves = _dense_saves(s, c, idx, saves, accept, h, t_new, v1, A1, dterms, tab)
        reached_end = accept & hits
    else:
        saved = accept & hits & (s.j < T)
        lane = jnp.where(saved, idx, _NO_LANE)
        saves = _Saves(
            saves.v.at[lane, j_safe].set(v1, mode="drop"),
            saves.A.at[lane, j_safe].set(A1, mode="drop"),
        )
        j = s.j + saved.astype(jnp.int32)
        reached_end = accept & hits & (s.j >= T - 1) & (stop >= c.t1)
    sel = lambda new, old: jnp.where(_bcast(accept, new), new, old)  # noqa: E731
    num_steps = s.num_steps + active.astype(jnp.int32)
    status = s.status
    converged = accept & (_grad_norm(fv1, fA1) < c.grad_tol)
    underflow = active & (h_next <= 16 * jnp.finfo(h.dtype).eps * jnp.maximum(s.t, 1e-300))
    nonfinite = underflow & ~finite
    status = jnp.where(active & (num_steps >= max_steps), Status.STEP_LIMIT, status)
    status = jnp.where(underflow, Status.SOLVER_ERROR, status)
    status = jnp.where(nonfinite, Status.NONFINITE, status)
    status = jnp.where(reached_end, Status.MAX_TIME, status)
    status = jnp.where(converged, Status.CONVERGED, status)
    return _State(
        t=sel(t_new, s.t),
        h=jnp.where(active, h_next, s.h),
        v=sel(v1, s.v),
        A=sel(A1, s.A),
        fv=sel(fv1, s.fv),
        fA=sel(fA1, s.fA),
        j=j,
        num_steps=num_steps,
        status=status.astype(jnp.int32),
    ), saves


def _advance_impl(
    pool: _State, c: _Consts, idx, saves: _Saves, max_steps, *, segment: int, solver: str
) -> tuple[_State, _Saves]:
    """Up to `segment` step attempts of a pool of lanes, leaving early when all have stopped."""
    tab = _RODAS5P if solver == "rodas5p" else _tableau(solver)

    def cond(carry):
        i, st, _ = carry
        return (i < segment) & jnp.any(st.status == RUNNING)

    def body(carry):
        i, st, sv = carry
        return (i + 1, *_step(st, c, idx, sv, max_steps, tab))

    _, pool, saves = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), pool, saves))
    return pool, saves


def _load_pool(lanes: _State, c: _Consts, idx) -> tuple[_State, _Consts]:
    """The pool: the lanes `idx` of the batch and their constants (idle slots do not run)."""
    get = lambda x: x.at[idx].get(mode="clip") if x.ndim else x  # noqa: E731
    pool = jax.tree.map(get, lanes)
    idle = idx >= lanes.t.shape[0]
    status = jnp.where(idle, Status.CONVERGED, pool.status).astype(jnp.int32)
    return pool._replace(status=status), jax.tree.map(get, c)


def _store_pool(lanes: _State, pool: _State, idx) -> _State:
    """Writes the pool back into the batch (idle slots are dropped)."""
    return jax.tree.map(lambda a, x: a.at[idx].set(x, mode="drop"), lanes, pool)


def _finish(lanes: _State, saves: _Saves) -> _Saves:
    """Saves after the stop time repeat the final state (like `fine_tune`)."""
    T = saves.v.shape[1]
    after = jnp.arange(T)[None, :] >= lanes.j[:, None]
    return _Saves(
        jnp.where(after[:, :, None], lanes.v[:, None], saves.v),
        jnp.where(after[:, :, None, None], lanes.A[:, None], saves.A),
    )


class _Setup(NamedTuple):
    red: Any  # Reduced, batched (None where only the solve's inputs travel)
    consts: _Consts
    v0: Float[Array, "b k"]
    A0: Float[Array, "b k r"]
    B0: Float[Array, "b k p"]  # B0 in the basis of each lane


def _setup(problems, v0s, ts, t_max, rtol, atol, grad_tol, *, num_save, train_features, lp_init):
    """Per-lane reduction (O(d p^2) each), save times and constants of a batch."""
    dtype = problems.X.dtype
    # lax.map, not vmap: jit(vmap) of the eigh-based set-up hung (0% CPU) on this CPU for
    # d = 1000, 8 lanes (jax 0.10.2); the set-up is a one-off O(d p^2) per lane.
    red = jax.lax.map(reduce, problems)
    r = red.sigma2.shape[-1]
    if lp_init:
        from ._closed_form import linear_probe

        v0s = jax.vmap(linear_probe)(problems, v0s)
    smax = jnp.max(red.sigma2, axis=-1)
    if ts is None:
        ts = jax.vmap(lambda s: default_times(s, num_save, dtype))(smax)
    t_max = 1e6 / smax if t_max is None else t_max
    t1 = jnp.maximum(ts[:, -1], t_max)
    tf = jnp.asarray(1.0 if train_features else 0.0, dtype)
    c = _Consts(red.sigma2, red.g, ts, t1, rtol, atol, grad_tol, tf)
    return _Setup(red, c, v0s, red.B0[:, :, :r], red.B0)


def _trajectory(setup: _Setup, s: _State, saves: _Saves, *, train_features, outputs, with_metrics):
    """Embeds the saved reduced states in the basis of each lane and evaluates the metrics."""
    red, c = setup.red, setup.consts
    r = c.sigma2.shape[-1]

    def embed(Ar, B0):
        return jnp.concatenate(
            [Ar, jnp.broadcast_to(B0[:, r:], Ar.shape[:-1] + (B0.shape[1] - r,))], -1
        )

    def one(B0, red_i, v_t, A_t, v0, Af):
        B_t = embed(A_t, B0)
        mets = None
        if with_metrics:
            mets = jax.vmap(
                lambda v, B: metrics(red_i, v, B, v0, B0, train_features=train_features)
            )(v_t, B_t)
        return B_t, mets, embed(Af, B0)

    red_in = red if with_metrics else None
    B_t, mets, B_final = jax.vmap(one)(setup.B0, red_in, saves.v, saves.A, setup.v0, s.A)
    full = outputs == "full"
    return Trajectory(
        ts=c.ts,
        v=saves.v,
        B_coords=B_t if full else None,
        basis=None,  # attached outside the jit: passing (d, p) through would copy it
        metrics=mets,
        v0=setup.v0,
        v_final=s.v,
        B_coords_final=B_final,
        t_final=s.t,
        num_steps=s.num_steps,
        status=s.status,
    )


class _Ops(NamedTuple):
    setup: Callable
    init: Callable
    load: Callable
    advance: Callable
    store: Callable
    finish: Callable
    trajectory: Callable
    put: Callable  # host pytree -> device arrays laid out like the stages expect
    lanes_multiple: int


@functools.lru_cache(maxsize=64)
def _ops(mesh, *, num_save, train_features, lp_init, outputs, with_metrics, solver, segment):
    """Jitted per-lane stages of a solve, sharded over `mesh` if given (built once per key)."""
    fns = dict(
        setup=functools.partial(
            _setup, num_save=num_save, train_features=train_features, lp_init=lp_init
        ),
        init=_init,
        load=_load_pool,
        advance=functools.partial(_advance_impl, segment=segment, solver=solver),
        store=_store_pool,
        finish=_finish,
        trajectory=functools.partial(
            _trajectory, train_features=train_features, outputs=outputs, with_metrics=with_metrics
        ),
    )
    multiple, put = 1, lambda tree: jax.tree.map(jnp.asarray, tree)
    if mesh is not None:
        from ._sharding import put_lanes, shard_lanes

        # Only the integrator is sharded: LAPACK custom calls (eigh in `reduce`, SVD in the
        # metrics) inside shard_map deadlocked on a 4-device CPU mesh (thread-pool starvation),
        # and they are a small, one-off part of the cost. The integrator uses none.
        sharded = ("init", "load", "advance", "store", "finish")
        if not with_metrics:  # no LAPACK call left in the output assembly either
            sharded += ("trajectory",)
        fns = {name: shard_lanes(f, mesh) if name in sharded else f for name, f in fns.items()}
        multiple, put = mesh.size, functools.partial(put_lanes, mesh=mesh)
    donate = {"advance": (0, 3), "store": (0,), "finish": (1,)}
    fns = {name: jax.jit(f, donate_argnums=donate.get(name, ())) for name, f in fns.items()}
    return _Ops(**fns, put=put, lanes_multiple=multiple)


def integrate_reduced(
    ops: _Ops, v0, A0, c: _Consts, *, max_steps: int, lanes: int = 128
) -> tuple[_State, _Saves]:
    """Runs every lane to its stop with a pool of `lanes` slots fed from a queue.

    The batch's lane states and saves stay on the device(s); the pool holds `lanes` of them
    (split evenly over the devices of a mesh, each device serving its own lanes). After each
    segment of `segment` steps the host reads the pool's statuses only; lanes that stopped
    are written back into the batch and their slots refilled with pending lanes (a jitted
    gather / scatter), while saves are written straight into the batch's buffers. So the
    work follows the sum of the per-lane step counts, not the batch size times the slowest
    lane, the working set stays in cache, and one shape compiles once.
    """
    state, saves = ops.init(v0, A0, c)
    D = ops.lanes_multiple
    status = np.asarray(state.status)
    b = status.shape[0]
    per = b // D  # lanes owned by each device (b is a multiple of D)
    w = max(1, -(-min(lanes, b) // D))  # pool slots per device
    max_steps = jnp.asarray(max_steps, jnp.int32)
    # per device, a stack of its pending local lane indices: pop() = next lane
    pending = [
        list(np.flatnonzero(status[d * per : (d + 1) * per] == RUNNING)[::-1]) for d in range(D)
    ]
    slots = np.full((D, w), _NO_LANE, dtype=np.int32)
    pool = idx = None
    while True:
        fresh = False
        for d in range(D):
            for q in range(w):
                if slots[d, q] == _NO_LANE and pending[d]:
                    slots[d, q] = pending[d].pop()
                    fresh = True
        if (slots == _NO_LANE).all():
            break
        if fresh:
            # a copy: the host-to-device transfer may read its buffer after `put` returns
            # (seen with sharded arrays), and `slots` is updated in place below
            idx = ops.put(slots.reshape(-1).copy())
            pool, pool_c = ops.load(state, c, idx)
        pool, saves = ops.advance(pool, pool_c, idx, saves, max_steps)
        done = (np.asarray(pool.status).reshape(D, w) != RUNNING) & (slots != _NO_LANE)
        if done.any():
            state = ops.store(state, pool, idx)
            slots[done] = _NO_LANE
    return state, saves


def assemble(ops: _Ops, setup: _Setup, s: _State, saves: _Saves, *, mesh, with_metrics):
    """The `Trajectory` of a finished batch (metrics too if the ops compute them)."""
    if mesh is not None and not with_metrics:  # assembled on the devices, outputs sharded
        put = lambda x: ops.put(np.asarray(x))  # noqa: E731
        light = setup._replace(red=None, B0=put(setup.B0), v0=put(setup.v0), A0=put(setup.A0))
        return ops.trajectory(light, s, saves)
    if mesh is not None:  # the metrics' SVDs run unsharded (see `_ops`): a host round trip
        local = lambda tree: jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), tree)  # noqa: E731
        s, saves = local(s), local(saves)
        setup = setup._replace(consts=local(setup.consts))
    return ops.trajectory(setup, s, saves)


def _solve_batch(
    problems,
    v0s,
    *,
    ts,
    t_max,
    num_save,
    rtol,
    atol,
    grad_tol,
    max_steps,
    train_features,
    lp_init,
    outputs,
    with_metrics,
    solver,
    segment,
    lanes,
    mesh,
):
    dtype = problems.X.dtype
    b = problems.X.shape[0]
    d_rtol, d_atol, d_gtol = default_tolerances(dtype)
    arr = lambda x, dflt: jnp.asarray(dflt if x is None else x, dtype)  # noqa: E731
    ops = _ops(
        mesh,
        num_save=num_save,
        train_features=train_features,
        lp_init=lp_init,
        outputs=outputs,
        with_metrics=with_metrics,
        solver=solver,
        segment=segment,
    )
    if ts is not None:
        ts = jnp.broadcast_to(jnp.asarray(ts, dtype), (b, np.shape(ts)[-1]))
    if t_max is not None:
        t_max = jnp.broadcast_to(jnp.asarray(t_max, dtype), (b,))
    setup = ops.setup(
        problems,
        jnp.asarray(v0s, dtype),
        ts,
        t_max,
        arr(rtol, d_rtol),
        arr(atol, d_atol),
        arr(grad_tol, d_gtol),
    )
    if mesh is not None:  # host round trip: no cross-device collective (see `_ops`)
        setup = setup._replace(consts=ops.put(jax.tree.map(np.asarray, setup.consts)))
    s, saves = integrate_reduced(
        ops, ops.put(np.asarray(setup.v0)), ops.put(np.asarray(setup.A0)), setup.consts,
        max_steps=max_steps, lanes=lanes,
    )  # fmt: skip
    if np.any(np.asarray(s.status) == RUNNING):  # every lane must have stopped
        raise RuntimeError("internal error: the lane pool returned lanes that never stopped")
    saves = ops.finish(s, saves)
    tr = assemble(ops, setup, s, saves, mesh=mesh, with_metrics=with_metrics)
    return tr._replace(basis=setup.red.basis if outputs == "full" else None)


def _chunks(b: int, batch_size: int | None, multiple: int = 1):
    size = b if batch_size is None else max(1, min(batch_size, b))
    spans = [(i, min(i + size, b)) for i in range(0, b, size)]
    return spans, -(-size // multiple) * multiple  # chunks padded to a multiple of the devices


def _pad_to(tree, n):
    """Pads the leading axis to n by repeating the last row (keeps one compiled shape)."""

    def pad(x):
        if x.shape[0] == n:
            return x
        return jnp.concatenate([x, jnp.repeat(x[-1:], n - x.shape[0], axis=0)])

    return jax.tree.map(pad, tree)


def fine_tune_batch(
    problems: Problem,
    v0s: Float[Array, "b k"] | None = None,
    *,
    method: str = "ft",
    ts: Float[Array, " T"] | None = None,
    t_max=None,
    num_save: int = 64,
    rtol: float | None = None,
    atol: float | None = None,
    grad_tol: float | None = None,
    max_steps: int = 100_000,
    batch_size: int | None = 4096,
    outputs: str = "full",
    progress: bool = False,
    with_metrics: bool = True,
    solver: str = "rodas5p",
    mesh=None,
    segment: int = 128,
    lanes: int = 128,
) -> Trajectory:
    r"""FT (or LP-FT, LP) for a batch of problems with one batched adaptive solver.

    The flows, defaults and stopping rule are those of `linfeat.fine_tune` (same error norm
    and step controller as its diffrax solve; stop when $\|\nabla\hat L\| <$ `grad_tol` or
    at `t_max`), so each lane agrees with `fine_tune` to solver tolerance, and it stays fast
    where the flow is stiff (square X). Failures are reported per lane in `status`, never
    raised.

    Args:
        problems: a `Problem` whose leaves carry a leading batch axis b (equal shapes).
        v0s: initial heads (b, k); for `method="lp_ft"` the head LP starts from (default 0).
        method: "ft", "lp_ft" (FT from the linear-probe head, R10) or "lp" (flow on v only).
        ts, t_max, num_save, rtol, atol, grad_tol, max_steps: as for `fine_tune`; `ts` is
            shared, `t_max` scalar or (b,).
        batch_size: lanes per compiled chunk; larger batches run chunk by chunk (the last
            chunk padded to the same shape, so nothing recompiles). None: one chunk.
        outputs: "full" (everything `fine_tune` returns) or "metrics" (no per-time
            `B_coords` and no `basis`: O(T + kp) memory per lane, for huge sweeps).
        progress: show a tqdm bar over chunks.
        with_metrics: evaluate `Metrics` at the save times (False: `metrics` is None; the
            Procrustes SVDs of `feature_distance` cost more than the solve on CPU).
        solver: "rodas5p" (default: L-stable Rosenbrock, order 5, exact Jacobian; robust
            to stiffness), or the explicit "dopri8" (fewer steps than Rodas5P at rtol 1e-12
            on well-conditioned X, n >= 2m, but ~300x more on square X), "dopri5", "tsit5".
        mesh: a 1-D `jax.sharding.Mesh` (see `linfeat._sharding.batch_mesh`): the batch axis
            is split over its devices with `shard_map`; results equal one device.
        segment, lanes: driver settings: step attempts per jitted segment, and the number of
            lanes integrated at once (a pool refilled from the batch between segments).

    Returns:
        A `Trajectory` with a leading batch axis on every field (`basis` and `B_coords` are
        None when `outputs="metrics"`). Results of several chunks are NumPy arrays.
    """
    if method not in ("ft", "lp_ft", "lp"):
        raise ValueError(f"`method` must be 'ft', 'lp_ft' or 'lp', got {method!r}.")
    if solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {SOLVERS}, got {solver!r}.")
    if outputs not in ("full", "metrics"):
        raise ValueError(f"`outputs` must be 'full' or 'metrics', got {outputs!r}.")
    b = problems.X.shape[0]
    k = problems.B0.shape[-2]
    if v0s is None:
        if method == "ft":
            raise ValueError("`fine_tune_batch(method='ft')` needs the initial heads `v0s` (b, k).")
        v0s = jnp.zeros((b, k), problems.X.dtype)
    if np.shape(v0s) != (b, k):
        raise ValueError(f"`v0s` must have shape (b, k) = {(b, k)}, got {np.shape(v0s)}.")
    kw = dict(
        ts=ts, t_max=t_max, num_save=num_save, rtol=rtol, atol=atol, grad_tol=grad_tol,
        max_steps=max_steps, train_features=method != "lp", lp_init=method == "lp_ft",
        outputs=outputs, with_metrics=with_metrics, solver=solver, segment=segment,
        lanes=lanes, mesh=mesh,
    )  # fmt: skip
    spans, size = _chunks(b, batch_size, 1 if mesh is None else mesh.size)
    if len(spans) == 1 and size == b:
        return _solve_batch(problems, v0s, **kw)
    parts = []
    for lo, hi in _progress(spans, progress, "chunks"):
        sl = lambda x: x[lo:hi]  # noqa: E731
        tr = _solve_batch(
            _pad_to(jax.tree.map(sl, problems), size), _pad_to(v0s[lo:hi], size), **kw
        )
        parts.append(jax.tree.map(lambda x: np.asarray(x)[: hi - lo], tr))
    return _concat(parts)


def _concat(parts):
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *parts)


def _progress(it, show: bool, unit: str):
    if not show:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, unit=unit)


def sweep(
    instance: Callable[[Any], tuple[Problem, Float[Array, " k"]]],
    params: Any,
    *,
    batch_size: int = 4096,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    outputs: str = "metrics",
    **solver_kwargs,
) -> Trajectory:
    r"""Builds and solves a large sweep chunk by chunk in bounded memory.

    `instance(p)` maps one slice of `params` (a pytree with a leading axis, e.g. PRNG keys, or
    a tuple of keys and knobs) to `(problem, v0)`; it is mapped over a chunk (`lax.map`) and
    jitted, so only `batch_size` problems ever exist at once. Results move to host memory
    per chunk. With `checkpoint_dir`, every finished chunk is written there
    (`chunk_<start>.npz`) and a rerun skips the chunks already on disk.

    Args:
        instance: single-instance constructor, `(problem, v0) = instance(p)`.
        params: pytree of arrays with a leading axis of length N (the sweep size).
        batch_size: lanes per chunk (memory is O(batch_size)).
        checkpoint_dir: directory for resumable per-chunk results, or None.
        progress: tqdm bar over chunks.
        outputs: "metrics" (default; O(T + kp) per lane) or "full".
        **solver_kwargs: passed to `fine_tune_batch` (method, ts, rtol, ...).

    Returns:
        A `Trajectory` of NumPy arrays with leading axis N.
    """
    leaves = jax.tree.leaves(params)
    N = leaves[0].shape[0]
    mesh = solver_kwargs.get("mesh")
    spans, size = _chunks(N, batch_size, 1 if mesh is None else mesh.size)
    # lax.map, not vmap: jit(vmap(make_problem)) hangs on CPU (jax 0.10.2) for d >= 200 and
    # 8 or more keys (README, "Known problems"); the problems are built one after the other.
    build = jax.jit(lambda ps: jax.lax.map(instance, ps))
    parts = []
    for lo, hi in _progress(spans, progress, "chunks"):
        path = (
            None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"chunk_{lo:09d}.npz")
        )
        if path is not None and os.path.exists(path):
            parts.append(_load(path))
            continue
        chunk = _pad_to(jax.tree.map(lambda x: x[lo:hi], params), size)
        problems, v0s = build(chunk)
        tr = fine_tune_batch(problems, v0s, batch_size=None, outputs=outputs, **solver_kwargs)
        tr = jax.tree.map(lambda x: np.asarray(x)[: hi - lo], tr)
        if path is not None:
            _save(path, tr)
        parts.append(tr)
    return _concat(parts)


def _save(path, tr: Trajectory) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    flat = {}
    for name, x in tr._asdict().items():
        if name == "metrics" and x is not None:
            flat.update({f"metrics.{m}": y for m, y in x._asdict().items()})
        elif x is not None:
            flat[name] = x
    tmp = path + ".tmp.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written chunk


def _load(path) -> Trajectory:
    from ._metrics import Metrics

    with np.load(path) as z:
        mets = None
        if "metrics.train_loss" in z.files:
            mets = Metrics(**{m: z[f"metrics.{m}"] for m in Metrics._fields})
        fields = {n: (z[n] if n in z.files else None) for n in Trajectory._fields if n != "metrics"}
    return Trajectory(metrics=mets, **fields)
