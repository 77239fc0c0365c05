r"""A batched adaptive solver for FT / LP-FT sweeps on the exact reduced state.

`linfeat.fine_tune` integrates one problem with diffrax; under `jax.vmap` its while_loop runs
every lane until the slowest lane stops, and on CPU the per-step overhead of a generic solver
dominates the tiny reduced field. This module integrates a whole batch with one hand-written
Dormand-Prince 5(4) pair (the same order, error norm and step controller as diffrax's
`Tsit5` + `PIDController` defaults) on the reduced state of THEORY.md section 2,

$$\dot v = -2 A\rho,\quad \dot A = -2 v\rho^T,\quad \rho = \mathrm{diag}(s^2)A^Tv - g,$$

laid out as one (batch, k, r) array so that every stage of every lane is one fused kernel:

- each lane keeps its own step size, error test, save index and stopping test (same
  guarantees as the single solve: RMS error per step <= 1 in units of atol + rtol |y|);
- lanes stop independently (masked); a fixed pool of lanes is refilled from the batch between
  short jitted segments, so the total work follows the sum, not the batch size times the
  maximum, of the per-lane step counts (this matters when a few lanes are stiff, e.g. square
  X), the working set stays in cache and one shape compiles once;
- saves land exactly on `ts` (steps are clipped to the next save time), so no interpolation
  error enters the saved states;
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


SOLVERS = ("tsit5", "dopri5", "dopri8")


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
    """Solver state of every lane; `status` is RUNNING (-1) until the lane stops."""

    t: Float[Array, " b"]
    h: Float[Array, " b"]
    v: Float[Array, "b k"]
    A: Float[Array, "b k r"]
    fv: Float[Array, "b k"]  # field at (t, v, A): FSAL, and the gradient test
    fA: Float[Array, "b k r"]
    j: Int[Array, " b"]  # index of the next save time
    ys_v: Float[Array, "b T k"]
    ys_A: Float[Array, "b T k r"]
    num_steps: Int[Array, " b"]
    status: Int[Array, " b"]


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


def _init(v0, A0, c: _Consts) -> _State:
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
    return _State(zero, h0, v0, A0, fv, fA, j0, ys_v, ys_A, jnp.zeros((b,), jnp.int32), status)


def _combine(y, h, ws, ks):
    return y + h * sum(w * x for w, x in zip(ws, ks, strict=False) if w)


def _step(s: _State, c: _Consts, max_steps, tab: _Tableau) -> _State:
    """One Runge-Kutta attempt in every running lane; other lanes are left unchanged."""
    T = c.ts.shape[1]
    active = s.status == RUNNING
    j_safe = jnp.minimum(s.j, T - 1)
    t_save = jnp.take_along_axis(c.ts, j_safe[:, None], axis=1)[:, 0]
    stop = jnp.where(s.j < T, t_save, c.t1)
    gap = stop - s.t
    hits = s.h >= gap
    h = jnp.where(hits, gap, s.h)
    h = jnp.where(active, h, 0.0)
    hv, hA = h[:, None], h[:, None, None]
    kv, kA = [s.fv], [s.fA]
    for row in tab.a:  # the last row gives y1 (FSAL), whose field starts the next step
        v1, A1 = _combine(s.v, hv, row, kv), _combine(s.A, hA, row, kA)
        fv1, fA1 = _field(v1, A1, c)
        kv.append(fv1)
        kA.append(fA1)
    ev = hv * sum(e * x for e, x in zip(tab.e, kv, strict=True) if e)
    eA = hA * sum(e * x for e, x in zip(tab.e, kA, strict=True) if e)
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
    h_next = jnp.where(accept & hits, jnp.maximum(h_next, s.h), h_next)
    t_new = jnp.where(hits, stop, s.t + h)
    saved = accept & hits & (s.j < T)
    b_idx = jnp.arange(s.v.shape[0])
    old_v = s.ys_v[b_idx, j_safe]
    old_A = s.ys_A[b_idx, j_safe]
    ys_v = s.ys_v.at[b_idx, j_safe].set(jnp.where(saved[:, None], v1, old_v))
    ys_A = s.ys_A.at[b_idx, j_safe].set(jnp.where(saved[:, None, None], A1, old_A))
    sel = lambda new, old: jnp.where(_bcast(accept, new), new, old)  # noqa: E731
    num_steps = s.num_steps + active.astype(jnp.int32)
    status = s.status
    converged = accept & (_grad_norm(fv1, fA1) < c.grad_tol)
    reached_end = accept & hits & (s.j >= T - 1) & (stop >= c.t1)
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
        j=s.j + saved.astype(jnp.int32),
        ys_v=ys_v,
        ys_A=ys_A,
        num_steps=num_steps,
        status=status.astype(jnp.int32),
    )


def _advance_impl(s: _State, c: _Consts, max_steps, *, segment: int, solver: str) -> _State:
    """Up to `segment` step attempts, leaving early when every lane has stopped."""
    tab = _tableau(solver)

    def cond(carry):
        i, st = carry
        return (i < segment) & jnp.any(st.status == RUNNING)

    def body(carry):
        i, st = carry
        return i + 1, _step(st, c, max_steps, tab)

    return jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), s))[1]


def _take(tree, idx):
    return jax.tree.map(lambda x: x[idx] if x.ndim else x, tree)


def _finish(s: _State) -> _State:
    """Saves after the stop time repeat the final state (like `fine_tune`)."""
    T = s.ys_v.shape[1]
    after = jnp.arange(T)[None, :] >= s.j[:, None]
    ys_v = jnp.where(after[:, :, None], s.v[:, None], s.ys_v)
    ys_A = jnp.where(after[:, :, None, None], s.A[:, None], s.ys_A)
    return s._replace(ys_v=ys_v, ys_A=ys_A)


class _Setup(NamedTuple):
    red: Any  # Reduced, batched
    consts: _Consts
    v0: Float[Array, "b k"]
    A0: Float[Array, "b k r"]


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
    return _Setup(red, c, v0s, red.B0[:, :, :r])


def _trajectory(setup: _Setup, s: _State, *, train_features, outputs, with_metrics):
    """Embeds the saved reduced states in the basis of each lane and evaluates the metrics."""
    red, c = setup.red, setup.consts
    r = red.sigma2.shape[-1]

    def embed(Ar, B0):
        return jnp.concatenate(
            [Ar, jnp.broadcast_to(B0[:, r:], Ar.shape[:-1] + (B0.shape[1] - r,))], -1
        )

    def one(red_i, v_t, A_t, v0, Af):
        B_t = embed(A_t, red_i.B0)
        mets = None
        if with_metrics:
            mets = jax.vmap(
                lambda v, B: metrics(red_i, v, B, v0, red_i.B0, train_features=train_features)
            )(v_t, B_t)
        return B_t, mets, embed(Af, red_i.B0)

    B_t, mets, B_final = jax.vmap(one)(red, s.ys_v, s.ys_A, setup.v0, s.A)
    full = outputs == "full"
    return Trajectory(
        ts=c.ts,
        v=s.ys_v,
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
    advance: Callable
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
        advance=functools.partial(_advance_impl, segment=segment, solver=solver),
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
        # and they are a small, one-off part of the cost.
        sharded = ("init", "advance", "finish")
        fns = {name: shard_lanes(f, mesh) if name in sharded else f for name, f in fns.items()}
        multiple, put = mesh.size, functools.partial(put_lanes, mesh=mesh)
    donate = {"advance": (0,)}
    fns = {name: jax.jit(f, donate_argnums=donate.get(name, ())) for name, f in fns.items()}
    return _Ops(**fns, put=put, lanes_multiple=multiple)


def integrate_reduced(ops: _Ops, v0, A0, c: _Consts, *, max_steps: int, lanes: int = 64) -> _State:
    """Runs every lane to its stop with a fixed pool of `lanes` lanes fed from a queue.

    Between segments of `segment` steps, lanes that stopped are written back on the host and
    their slots are refilled with the next pending lanes. So (i) the work follows the sum of
    the per-lane step counts, not the batch size times the slowest lane; (ii) the working set
    stays at `lanes` lanes (about 15 state-sized arrays each), which fits in cache, and
    (iii) one shape compiles once. Measured on 2 cores: 64 lanes ran 2-3x faster per lane-step
    than 1024 (see BENCHMARKS.md).
    """
    full = jax.tree.map(np.array, ops.init(v0, A0, c))
    c_host = jax.tree.map(np.asarray, c)
    b = full.v.shape[0]
    W = -(-min(lanes, b) // ops.lanes_multiple) * ops.lanes_multiple
    max_steps = jnp.asarray(max_steps, jnp.int32)
    pending = list(np.flatnonzero(full.status == RUNNING)[::-1])  # stack: pop() = next lane
    slots = np.full(W, -1)
    pool = None
    while True:
        fresh = []
        for w in range(W):
            if slots[w] < 0 and pending:
                slots[w] = pending.pop()
                fresh.append(w)
        if (slots < 0).all():
            break
        if pool is None or fresh:
            if pool is not None:  # keep the running slots' progress, load the fresh lanes
                host = jax.tree.map(np.array, pool)
                for name in _State._fields:
                    getattr(host, name)[fresh] = getattr(full, name)[slots[fresh]]
            else:
                host = _take(full, np.maximum(slots, 0))
            status = np.array(host.status)
            status[slots < 0] = Status.CONVERGED  # idle slots must not run
            pool = ops.put(host._replace(status=status))
            pool_c = ops.put(_take(c_host, np.maximum(slots, 0)))
        pool = ops.advance(pool, pool_c, max_steps)
        done = (np.asarray(pool.status) != RUNNING) & (slots >= 0)
        if done.any():
            host = jax.tree.map(np.asarray, pool)
            for name in _State._fields:
                getattr(full, name)[slots[done]] = getattr(host, name)[done]
            slots[done] = -1
    return ops.put(full)


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
    s = integrate_reduced(
        ops, ops.put(np.asarray(setup.v0)), ops.put(np.asarray(setup.A0)), setup.consts,
        max_steps=max_steps, lanes=lanes,
    )  # fmt: skip
    s = ops.finish(s)
    if mesh is not None:
        local = lambda tree: jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), tree)  # noqa: E731
        s, setup = local(s), setup._replace(consts=local(setup.consts))
    tr = ops.trajectory(setup, s)
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
    solver: str = "dopri8",
    mesh=None,
    segment: int = 64,
    lanes: int = 64,
) -> Trajectory:
    r"""FT (or LP-FT, LP) for a batch of problems with one batched adaptive solver.

    The flows, defaults and stopping rule are those of `linfeat.fine_tune` (Dormand-Prince
    5(4) with the same error norm and controller as its default Tsit5; saves land exactly on
    `ts`; stop when $\|\nabla\hat L\| <$ `grad_tol` or at `t_max`), so each lane agrees with
    `fine_tune` to solver tolerance. Failures are reported per lane in `status`, never raised.

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
        solver: "dopri8" (default; 8th order, ~3x fewer steps than 5th order at rtol 1e-12),
            "dopri5" or "tsit5" (the tableaux of the diffrax solvers of the same names).
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
    a tuple of keys and knobs) to `(problem, v0)`; it is vmapped and jitted with the solver
    per chunk, so only `batch_size` problems ever exist at once. Results move to host memory
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
    build = jax.jit(jax.vmap(instance))
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
