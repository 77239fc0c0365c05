r"""Gradient flows: fine-tuning (FT), linear probing (LP) and LP-FT (docs/theory.md, section 2).

The paper's time convention: $\hat L(v, B) = \|X B^T v - Y\|^2$ and
$\dot v = -\nabla_v \hat L = -2 B X^T r$, $\dot B = -\nabla_B \hat L = -2 v (X^T r)^T$,
$r = X B^T v - Y$.

`fine_tune` integrates the exact reduction (`linfeat._reduce`) with the one solver core
(`linfeat._engine.solve`: Rodas5P in diffrax), written for one problem. `jax.vmap` of it *is*
the batch path (`fine_tune_batch` only adds chunking, progress and sharding), and it is
differentiable with respect to the head and every array of the problem. `mode="full"`
integrates $(v, B)$ in $R^d$ with diffrax's explicit Tsit5: an independent reference for
the tests and checks, not a second engine.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jaxtyping import Array, Float

from . import _validate as V
from ._chunking import pad_rows
from ._closed_form import linear_probe
from ._engine import (
    SolverError,
    Status,
    at_saves_and_end,
    default_grad_tol,
    default_times,
    default_tolerances,
    solution,
    solve,
    stop_event,
)
from ._flows import FineTune
from ._metrics import metrics, reduced_metrics
from ._problem import Problem
from ._reduce import Reduced, reduce
from ._trajectory import Trajectory

__all__ = ["SolverError", "Status", "Trajectory", "fine_tune", "linear_probe_flow", "lp_ft"]


class _Settings(NamedTuple):
    ts: Float[Array, " T"] | None
    t_max: Float[Array, ""] | None
    rtol: Float[Array, ""]
    atol: Float[Array, ""]
    grad_tol: Float[Array, ""] | None
    grad_scale: Float[Array, ""]


def _settings(red: Reduced, Y, v0, s: _Settings, num_save: int):
    """Save times, stop time and gradient threshold of one problem (defaults filled in)."""
    lam = jnp.max(red.sigma2)
    dtype = red.sigma2.dtype
    ts = default_times(lam, num_save, dtype) if s.ts is None else s.ts
    t_max = 1e6 / lam if s.t_max is None else s.t_max
    grad_tol = default_grad_tol(lam, Y, v0, s.grad_scale) if s.grad_tol is None else s.grad_tol
    return ts, t_max, grad_tol


def solve_reduced(
    problem: Problem,
    v0,
    settings: _Settings,
    *,
    num_save: int,
    train_features: bool,
    lp_init: bool,
    max_steps: int,
    outputs: str,
    with_metrics: bool,
    adjoint,
    progress: bool = False,
    red: Reduced | None = None,
) -> Trajectory:
    """FT / LP / LP-FT for one problem through the engine (vmap this for batches).

    `red` is `reduce(problem)` when the caller has it already (`fine_tune` passes it, so that
    an eager call compiles the reduction once per problem shape for FT, LP and LP-FT)."""
    if red is None:
        red = reduce(problem)
    if lp_init:
        v0 = linear_probe(problem, v0)
    ts, t_max, grad_tol = _settings(red, problem.Y, v0, settings, num_save)
    sol = solve(
        FineTune(train_features=train_features),
        (v0, red.A0),
        red.flow_data,
        ts=ts,
        t1=t_max,
        rtol=settings.rtol,
        atol=settings.atol,
        grad_tol=grad_tol,
        max_steps=max_steps,
        adjoint=adjoint,
        progress=progress,
    )
    v_t, A_t = sol.ys
    mets = final = None
    if with_metrics:
        mets, final = trajectory_metrics(red, sol.ys, sol.y_final, v0, train_features)
    full = outputs == "full"
    return Trajectory(
        ts=ts,
        v=v_t,
        A=A_t if full else None,
        metrics=mets,
        final_metrics=final,
        v0=v0,
        v_final=sol.y_final[0],
        A_final=sol.y_final[1],
        t_final=sol.t_final,
        num_steps=sol.num_steps,
        status=sol.status,
        basis=red.basis if full else None,
        B0=problem.B0 if full else None,
    )


@functools.partial(jax.jit, static_argnames="train_features")
def trajectory_metrics(red: Reduced, ys, y_final, v0, train_features: bool):
    """`Metrics` at every save and at the stop, from the reduced states (one program per
    shape, shared by FT, LP-FT and, with `train_features=False`, LP)."""
    at = functools.partial(reduced_metrics, red, v0=v0, train_features=train_features)
    return at_saves_and_end(at, ys, y_final)


def _full_field(t, y, args):
    v, B = y
    X, Y, train_features = args
    Xr = X.T @ (X @ (B.T @ v) - Y)
    return -2.0 * (B @ Xr), -2.0 * jnp.outer(v, Xr) * train_features


def _solve_full(problem, v0, settings, *, num_save, train_features, max_steps) -> Trajectory:
    """The reference: (v, B) in R^d with diffrax Tsit5 (explicit; small d only)."""
    red = reduce(problem)
    ts, t_max, grad_tol = _settings(red, problem.Y, v0, settings, num_save)
    dtype = problem.X.dtype
    args = (problem.X, problem.Y, jnp.asarray(1.0 if train_features else 0.0, dtype))

    def converged(t, y, args, **kwargs):
        return jnp.sqrt(sum(jnp.sum(x**2) for x in _full_field(t, y, args))) < grad_tol

    # Tsit5 needs tight tolerances to match Rodas5P's accuracy; explicit steps are cheap here.
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_full_field),
        diffrax.Tsit5(),
        t0=jnp.zeros((), dtype),
        t1=jnp.maximum(ts[-1], t_max),
        dt0=None,
        y0=(v0, problem.B0),
        args=args,
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(t1=True)]),
        stepsize_controller=diffrax.PIDController(rtol=settings.rtol, atol=settings.atol),
        event=stop_event(converged, (v0, problem.B0)),
        max_steps=max_steps,
        throw=False,
    )
    sol = solution(sol, ts)
    v_t, B_t = sol.ys
    at = functools.partial(metrics, problem, v0=v0, B0=problem.B0, train_features=train_features)
    mets, final = at_saves_and_end(at, sol.ys, sol.y_final)
    Q = red.basis
    return Trajectory(
        ts=ts,
        v=v_t,
        A=B_t @ Q,
        metrics=mets,
        final_metrics=final,
        v0=v0,
        v_final=sol.y_final[0],
        A_final=sol.y_final[1] @ Q,
        t_final=sol.t_final,
        num_steps=sol.num_steps,
        status=sol.status,
        basis=Q,
        B0=problem.B0,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "num_save", "mode", "train_features", "lp_init", "max_steps", "outputs",
        "with_metrics", "adjoint", "progress",
    ),
)  # fmt: skip
def _solve_jit(problem, v0, settings, red=None, **kw):
    if kw.pop("mode") == "full":
        for name in ("lp_init", "outputs", "with_metrics", "adjoint", "progress"):
            kw.pop(name)
        return _solve_full(problem, v0, settings, **kw)
    return solve_reduced(problem, v0, settings, red=red, **kw)


# Lanes per chunk when a traced `fine_tune` is vmapped over more lanes than this.
VMAP_CHUNK = 128


@functools.lru_cache(maxsize=64)
def _chunked_pipeline(num_save: int, train_features: bool, lp_init: bool, max_steps: int):
    """`solve_reduced` for one problem, whose `jax.vmap` over more than `VMAP_CHUNK` lanes runs
    the whole per-lane pipeline (reduction, solve, metrics) in chunks of `VMAP_CHUNK` lanes,
    a `lax.map` inside the caller's program: a vmapped while loop runs every lane to the
    largest step count of its batch, and a small chunk's state stays in cache, as in
    `fine_tune_batch`. Every lane is the same computation as unbatched. Reverse mode
    differentiates the plain pipeline (unchunked)."""

    def plain(problem, v0, settings):
        return solve_reduced(
            problem, v0, settings, num_save=num_save, train_features=train_features,
            lp_init=lp_init, max_steps=max_steps, outputs="full", with_metrics=True,
            adjoint=None,
        )  # fmt: skip

    @custom_vmap
    def pipeline(problem, v0, settings):
        return plain(problem, v0, settings)

    @pipeline.def_vmap
    def _rule(axis_size, in_batched, *xs):
        xs = jax.tree.map(
            lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x)),
            xs,
            tuple(in_batched),
        )
        if axis_size <= VMAP_CHUNK:
            out = jax.vmap(plain)(*xs)
        else:
            num = -(-axis_size // VMAP_CHUNK)
            size = num * VMAP_CHUNK

            def split(x):  # (num, VMAP_CHUNK, ...) after padding with copies of the last lane
                return x.reshape((num, VMAP_CHUNK) + x.shape[1:])

            padded = pad_rows(xs, size)
            out = jax.lax.map(lambda c: jax.vmap(plain)(*c), jax.tree.map(split, padded))
            out = jax.tree.map(lambda x: x.reshape((size,) + x.shape[2:])[:axis_size], out)
        return out, jax.tree.map(lambda _: True, out)

    # `custom_vmap` has no reverse mode: differentiation goes through the plain pipeline
    # (its `jax.vjp`, whose residuals are the pytree `fwd` returns), unchunked.
    @jax.custom_vjp
    def run(problem, v0, settings):
        return pipeline(problem, v0, settings)

    def fwd(problem, v0, settings):
        return jax.vjp(plain, problem, v0, settings)

    def bwd(vjp_fn, ct):
        return vjp_fn(ct)

    run.defvjp(fwd, bwd)
    return run


def make_settings(dtype, *, ts, t_max, rtol, atol, grad_tol) -> _Settings:
    """Validated solver settings as arrays of `dtype` (defaults from `default_tolerances`)."""
    d_rtol, d_atol, d_gscale = default_tolerances(dtype)
    for name, x in (("rtol", rtol), ("atol", atol), ("grad_tol", grad_tol)):
        if x is not None:
            V.check_tolerance(name, x, scalar=True)
    if t_max is not None:
        V.check_positive("t_max", t_max, scalar=True, fix="t_max is the stop time, > 0.")
    if ts is not None:
        V.check_times("ts", ts)
    arr = lambda x: None if x is None else jnp.asarray(x, dtype)  # noqa: E731
    return _Settings(
        ts=arr(ts),
        t_max=arr(t_max),
        rtol=jnp.asarray(d_rtol if rtol is None else rtol, dtype),
        atol=jnp.asarray(d_atol if atol is None else atol, dtype),
        grad_tol=arr(grad_tol),
        grad_scale=jnp.asarray(d_gscale, dtype),
    )


def _raise_on_failure(traj: Trajectory, what: str) -> None:
    if not V.is_concrete(traj.status) or np.ndim(traj.status) != 0:
        return  # batched or traced: the caller reads `status` per trajectory
    st = Status(int(traj.status))
    if st in (Status.STEP_LIMIT, Status.NONFINITE, Status.SOLVER_ERROR, Status.DIVERGED):
        hint = {
            Status.STEP_LIMIT: "raise `max_steps`, loosen `rtol`/`atol`, or shorten `t_max`",
            Status.NONFINITE: "the state became NaN/inf: check the scale of X, Y and v0",
            Status.SOLVER_ERROR: "the adaptive step collapsed: loosen `rtol`/`atol`",
            Status.DIVERGED: "the state's norm grew past 1e6 (1 + |y0|): the flow is not a "
            "descent flow (check the sign of a custom flow's field and of its learning rates)",
        }[st]
        raise SolverError(
            f"{what} failed with status {st.name} at t = {float(traj.t_final):.6g} after "
            f"{int(traj.num_steps)} steps: {hint}. (Batched calls return the status instead.)"
        )
    if st is Status.MAX_TIME:
        warnings.warn(
            f"{what} reached t_max = {float(traj.t_final):.6g} before the gradient norm fell "
            f"below grad_tol; pass a larger `t_max` to run to convergence.",
            RuntimeWarning,
            stacklevel=3,
        )


def check_call(problem: Problem, v0, *, num_save: int, max_steps: int) -> None:
    """Validates what is concrete before any solver step runs."""
    V.check_int("num_save", num_save, min=1)
    V.check_int("max_steps", max_steps, min=1)
    if not V.is_concrete(problem, v0):
        return
    k = problem.B0.shape[-1 - 1]
    batch = problem.B0.shape[:-2]
    V.check_real_float("v0", v0)
    V.as_array("v0", v0, shape=batch + (k,))


def _flow(problem, v0, *, ts, t_max, num_save, rtol, atol, grad_tol, max_steps, mode,
          train_features, lp_init, adjoint, progress, check, what):  # fmt: skip
    if mode not in ("reduced", "full"):
        raise ValueError(f"`mode` must be 'reduced' or 'full', got {mode!r}.")
    check_call(problem, v0, num_save=num_save, max_steps=max_steps)
    dtype = problem.X.dtype
    v0 = jnp.asarray(v0, dtype)
    if (
        V.is_concrete(v0) and train_features and not lp_init and np.ndim(v0) == 1
        and not np.any(np.asarray(v0))
    ):  # fmt: skip
        warnings.warn(
            "v0 = 0: B receives no gradient at t = 0 (dB/dt = -2 v (X^T r)^T = 0), so FT "
            "starts by moving the head alone; the theorems assume a non-zero or random head.",
            V.TheoryConditionWarning,
            stacklevel=3,
        )
    settings = make_settings(dtype, ts=ts, t_max=t_max, rtol=rtol, atol=atol, grad_tol=grad_tol)
    num_save = num_save if ts is None else int(np.shape(ts)[-1])
    if mode == "full":
        traj = _solve_jit(
            problem, v0, settings, num_save=num_save, mode=mode, train_features=train_features,
            lp_init=lp_init, max_steps=max_steps, outputs="full", with_metrics=True,
            adjoint=adjoint, progress=progress,
        )  # fmt: skip
    elif not V.is_concrete(problem, v0) and adjoint is None and not progress:
        # Traced (under a caller's jit/vmap/grad): one per-lane pipeline whose vmap rule
        # solves large batches in chunks (`_chunked_pipeline`).
        traj = _chunked_pipeline(num_save, train_features, lp_init, max_steps)(
            problem, v0, settings
        )
    else:
        # Three programs (reduction, solve, metrics) instead of one: an eager call compiles
        # each once per shape and shares the reduction and the metrics between FT, LP-FT and
        # LP on the same problem (compiling them into every solve cost ~40% more). Traced
        # calls with `adjoint` or `progress` come here too and inline into one program.
        red = reduce(problem)
        traj = _solve_jit(
            problem, v0, settings, red, num_save=num_save, mode=mode,
            train_features=train_features, lp_init=lp_init, max_steps=max_steps,
            outputs="full", with_metrics=False, adjoint=adjoint, progress=progress,
        )  # fmt: skip
        mets, final = trajectory_metrics(
            red, (traj.v, traj.A), (traj.v_final, traj.A_final), traj.v0, train_features
        )
        traj = traj._replace(metrics=mets, final_metrics=final)
    if check:
        _raise_on_failure(traj, what)
    return traj


def fine_tune(
    problem: Problem,
    v0: Float[Array, " k"],
    *,
    ts: Float[Array, " T"] | None = None,
    t_max: float | None = None,
    num_save: int = 64,
    rtol: float | None = None,
    atol: float | None = None,
    grad_tol: float | None = None,
    max_steps: int = 100_000,
    mode: str = "reduced",
    adjoint: diffrax.AbstractAdjoint | None = None,
    progress: bool = False,
    check: bool = True,
) -> Trajectory:
    r"""Fine-tuning: gradient flow on the head v and the features B from $(v_0, B_0)$.

    Integrates $\dot v = -2 B X^T r$, $\dot B = -2 v (X^T r)^T$ (the paper's time) on the
    exact reduced state with Rodas5P (L-stable, so ill-conditioned X costs no extra steps)
    until $\|\nabla \hat L\| <$ `grad_tol` or `t_max`, saving at `ts` from the dense output.
    Written for one problem: `jax.vmap` over problems and heads gives the batch path (the
    status is then reported per trajectory instead of raised), and `jax.grad` / `jax.jvp`
    differentiate any scalar of the trajectory with respect to `v0` and the problem.

    Args:
        problem: the `Problem`.
        v0: initial head (k,).
        ts: increasing save times >= 0; default 0 and `num_save - 1` log-spaced times in
            $[10^{-2}, 10^{6}]/\lambda_{max}(X^TX)$.
        t_max: stop time if the gradient test never passes; default $10^6/\lambda_{max}$.
        num_save: number of default save times (static).
        rtol, atol: tolerances; default 1e-9, 1e-11 in float64 (1e-5, 1e-7 in float32).
        grad_tol: threshold on the gradient norm (paper units); default the scale-aware
            $10^{-10}\lambda_{max}(X^TX)(1+\|Y\|)(1+\|v_0\|)$ ($10^{-4}$ in float32).
        max_steps: solver step limit (static).
        mode: "reduced" (default: the engine) or "full" (reference: diffrax Tsit5 on
            $(v, B)$ in $R^d$, for small d; its metrics are measured in $R^d$).
        adjoint: a diffrax adjoint (static): default reverse mode
            (`diffrax.RecursiveCheckpointAdjoint`); `diffrax.ForwardMode()` for `jax.jvp`.
        progress: show a tqdm progress meter (unbatched calls).
        check: raise `SolverError` if an unbatched solve fails.

    Returns:
        A `Trajectory`.

    References:
        Kumar et al. (2022), section 4; docs/theory.md, section 2 and R1, R2.
    """
    return _flow(
        problem, v0, ts=ts, t_max=t_max, num_save=num_save, rtol=rtol, atol=atol,
        grad_tol=grad_tol, max_steps=max_steps, mode=mode, train_features=True, lp_init=False,
        adjoint=adjoint, progress=progress, check=check, what="fine_tune",
    )  # fmt: skip


def linear_probe_flow(problem: Problem, v0, **kwargs) -> Trajectory:
    r"""Linear probing as a flow: $\dot v = -2 B_0 X^T r$ with $B = B_0$ fixed.

    Same arguments as `fine_tune`; converges to `linear_probe(problem, v0)`.
    """
    return _flow(problem, v0, **_defaults(kwargs), train_features=False, lp_init=False,
                 what="linear_probe_flow")  # fmt: skip


def lp_ft(problem: Problem, *, v0=None, **kwargs) -> Trajectory:
    r"""LP-FT: fine-tuning started from the linear-probe head $(v_{lp}^\infty, B_0)$ (R10, R13).

    Args:
        problem: the `Problem`.
        v0: head the linear probe starts from (matters only when LP is not unique); default 0.
        **kwargs: as for `fine_tune`.
    """
    if v0 is None:
        v0 = jnp.zeros(problem.B0.shape[:-1], problem.X.dtype)
    return _flow(problem, v0, **_defaults(kwargs), train_features=True, lp_init=True,
                 what="lp_ft")  # fmt: skip


def _defaults(kwargs):
    out = dict(
        ts=None, t_max=None, num_save=64, rtol=None, atol=None, grad_tol=None,
        max_steps=100_000, mode="reduced", adjoint=None, progress=False, check=True,
    )  # fmt: skip
    unknown = set(kwargs) - set(out)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {sorted(unknown)}")
    out.update(kwargs)
    return out
