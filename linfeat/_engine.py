r"""The one solver core: a flow, Rodas5P, diffrax's `diffeqsolve`, a stop test and a status.

Every gradient flow in linfeat (FT, LP, LP-FT, in `fine_tune`, `fine_tune_batch`, `sweep`,
`linfeat check`, the experiments and the benchmarks) is integrated by `solve`, written for
one instance: batches are `jax.vmap` of it. It stops when the gradient norm falls below
`grad_tol` (a diffrax event) or at `t1`, saves at `ts` from the solver's dense output, and
reports a per-trajectory `Status` instead of raising, so it also works under `vmap`.
Derivatives: reverse mode through diffrax's `RecursiveCheckpointAdjoint` (default) and
forward mode (`jax.jvp`) with `adjoint=diffrax.ForwardMode()`.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._flows import AbstractFlow
from ._rodas5p import Rodas5P


class Status(enum.IntEnum):
    """Per-trajectory outcome of a flow solve."""

    CONVERGED = 0  # gradient norm fell below `grad_tol`
    MAX_TIME = 1  # reached `t_max` before the gradient test passed
    STEP_LIMIT = 2  # `max_steps` solver steps were not enough
    NONFINITE = 3  # NaN or inf in the state
    SOLVER_ERROR = 4  # any other solver failure (e.g. step size underflow)
    DIVERGED = 5  # the state's norm passed `DIVERGENCE` (1 + |y0|): the flow blows up


# The divergence stop: a solve ends with status DIVERGED once |y|^2 > DIVERGENCE^2 (1 + |y0|^2).
# No flow of linfeat leaves that ball on a sanely scaled problem: FT's state settles where
# |v|^2 ~ |B|^2 ~ |w*| (so |w*| would have to reach ~1e12 (1 + |y0|^2)); the escaping L2-SP
# runs grow as t^(1/3) (a factor ~500 by t = 1e8); logistic flows grow as log t. A flow that
# does leave it (gradient ascent, a wrong sign in a custom flow) blows up in finite time, and
# the adaptive step would chase the blow-up for ever: the norm grows only polynomially in the
# step count near it (FT ascent: 4.7e5 x its start after 1,000 steps, 6.4e6 after 5,000),
# so a higher threshold costs steps without telling more.
DIVERGENCE = 1e6


class SolverError(RuntimeError):
    """A flow solve failed (raised for unbatched calls; batched calls report `status`)."""


def default_tolerances(dtype) -> tuple[float, float, float]:
    r"""(rtol, atol, grad_scale) of a dtype; see `default_grad_tol` for grad_scale.

    float64: at rtol 1e-9 Rodas5P keeps the final state within ~1e-10 of a tight reference
    (its global error was ~0.03 x rtol on the benchmark problems) in ~150 steps on square X
    (rtol 1e-10 took up to 335); the gradient test (grad_scale 1e-10) sits above the error
    floor an L-stable method leaves at that tolerance (docs/solvers.md has the numbers).
    """
    if jnp.finfo(dtype).bits >= 64:
        return 1e-9, 1e-11, 1e-10
    return 1e-5, 1e-7, 1e-4


def default_grad_tol(lam_max, Y, v0, grad_scale) -> Float[Array, ""]:
    r"""Scale-aware gradient threshold $c\,\lambda_{max}(X^TX)(1 + \|Y\|)(1 + \|v_0\|)$.

    The gradient scales like $\lambda_{max}$ times the sizes of the residual and of the head,
    and so does the error floor the solver leaves in it: a fixed absolute threshold sat
    below that floor for heads of norm ~3 (18 of 144 solves hit the step limit).
    """
    return grad_scale * lam_max * (1 + jnp.linalg.norm(Y)) * (1 + jnp.linalg.norm(v0))


def default_times(lam_max, num_save: int, dtype) -> Float[Array, " T"]:
    r"""0, then log-spaced times over $[10^{-2}, 10^{6}] / \lambda_{max}(X^TX)$."""
    tau = 1.0 / lam_max
    return jnp.concatenate(
        [jnp.zeros((1,), dtype), tau * jnp.logspace(-2, 6, num_save - 1, dtype=dtype)]
    )


class Solution(NamedTuple):
    """What `solve` returns for one trajectory (leading batch axes under vmap)."""

    ts: Float[Array, " T"]
    ys: Any  # the state at every save time (after the stop: the final state)
    y_final: Any
    t_final: Float[Array, ""]
    num_steps: Int[Array, ""]
    status: Int[Array, ""]


def _sq(y) -> Float[Array, ""]:
    return sum(jnp.sum(x**2) for x in jax.tree.leaves(y))


def stop_event(converged, y0) -> diffrax.Event:
    """The solve's stop: `converged(t, y, args)` (the method's test) or divergence
    (`DIVERGENCE`); `solution` tells them apart through diffrax's `event_mask`."""
    bound = DIVERGENCE**2 * (1.0 + _sq(y0))

    def diverged(t, y, args, **kwargs):
        return _sq(y) > bound

    return diffrax.Event((converged, diverged))


def _status(result, y_final, event_mask=None) -> Int[Array, ""]:
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(y_final)]))
    diverged = (
        event_mask[1] & ~event_mask[0]
        if isinstance(event_mask, (tuple, list))
        else jnp.zeros((), bool)
    )
    code = jnp.where(
        result == diffrax.RESULTS.event_occurred,
        jnp.where(diverged, Status.DIVERGED, Status.CONVERGED),
        jnp.where(
            result == diffrax.RESULTS.successful,
            Status.MAX_TIME,
            jnp.where(
                result == diffrax.RESULTS.max_steps_reached, Status.STEP_LIMIT, Status.SOLVER_ERROR
            ),
        ),
    )
    return jnp.where(finite, code, Status.NONFINITE).astype(jnp.int32)


def solve(
    flow: AbstractFlow,
    y0,
    args,
    *,
    ts: Float[Array, " T"],
    t1,
    rtol,
    atol,
    grad_tol,
    max_steps: int,
    adjoint: diffrax.AbstractAdjoint | None = None,
    progress: bool = False,
) -> Solution:
    """Integrates `flow` from `y0` with Rodas5P until the gradient test passes, the state
    diverges (`DIVERGENCE`) or `t1`.

    Args:
        flow: the method (`linfeat._flows.AbstractFlow`).
        y0: initial state (a pytree).
        args: the flow's data.
        ts: increasing save times in [0, t1].
        t1: final time if the gradient test never passes.
        rtol, atol: tolerances of the step-size controller (RMS norm over the state).
        grad_tol: stop when the norm of the field (= the loss gradient) falls below it.
        max_steps: step limit (static).
        adjoint: a diffrax adjoint; default `RecursiveCheckpointAdjoint` (reverse mode).
        progress: show diffrax's tqdm progress meter (unbatched calls).

    Returns:
        A `Solution`; saves at or after the stop time repeat the final state.
    """
    dtype = ts.dtype
    t1 = jnp.maximum(t1, ts[-1])  # diffrax needs every save time inside [0, t1]

    def converged(t, y, args, **kwargs):
        return flow.converged(y, args, grad_tol)

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, a: flow.field(y, a)),
        Rodas5P(flow),
        t0=jnp.zeros((), dtype),
        t1=t1,
        dt0=None,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(t1=True)]),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=stop_event(converged, y0),
        max_steps=max_steps,
        throw=False,
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
        progress_meter=diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter(),
    )
    return solution(sol, ts)


def solution(sol: diffrax.Solution, ts) -> Solution:
    """A `Solution` from a diffrax solve saved with `SaveAt(subs=[ts, t1])` and an event.

    diffrax fills the saves at or after the stop with inf (even ts = 0 when the start is
    already stationary): the state is at its limit there, which is the final state.
    """
    ys, y_last = sol.ys
    y_final = jax.tree.map(lambda x: x[0], y_last)
    t_final = sol.ts[1][0]
    after = ts >= t_final
    ys = jax.tree.map(
        lambda x, xf: jnp.where(after.reshape((-1,) + (1,) * xf.ndim), xf, x), ys, y_final
    )
    return Solution(
        ts=ts,
        ys=ys,
        y_final=y_final,
        t_final=t_final,
        num_steps=sol.stats["num_steps"],
        status=_status(sol.result, y_final, sol.event_mask),
    )


def at_saves_and_end(fn, ys, y_final):
    """`fn` (of one state) at every save and at the final state, as one vmap (one copy of
    `fn` in the compiled program): returns (values at the saves, value at the end)."""
    both = jax.tree.map(lambda x, xf: jnp.concatenate([x, xf[None]]), ys, y_final)
    out = jax.vmap(fn)(*both) if isinstance(both, tuple) else jax.vmap(fn)(both)
    return jax.tree.map(lambda x: x[:-1], out), jax.tree.map(lambda x: x[-1], out)
