r"""Gradient flows: fine-tuning (FT), linear probing (LP) and LP-FT (THEORY.md section 2).

The paper's time convention: $\hat L(v, B) = \|X B^T v - Y\|^2$ and
$\dot v = -\nabla_v \hat L = -2 B X^T r$, $\dot B = -\nabla_B \hat L = -2 v (X^T r)^T$,
$r = X B^T v - Y$.

The default `mode="reduced"` integrates the exact reduction of THEORY.md section 2: with Q the
right singular vectors of X, $B(t) = B_0 + C(t) Q^T$ and in coordinates $A = B Q$
$$\dot v = -2 A\,\rho,\quad \dot A = -2 v \rho^T,\quad \rho = \mathrm{diag}(s^2) A^T v - g,$$
$g = Q^T X^T Y$: $O(k \min(n, d))$ work per step, independent of d. `mode="full"` integrates
$(v, B)$ in $R^d$ and is kept as a reference.
"""

from __future__ import annotations

import enum
import functools
import warnings
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from . import _validate as V
from ._metrics import Metrics, metrics
from ._problem import Problem
from ._reduce import reduce


class Status(enum.IntEnum):
    """Per-trajectory outcome of a flow solve."""

    CONVERGED = 0  # gradient norm fell below `grad_tol`
    MAX_TIME = 1  # reached `t_max` before the gradient test passed
    STEP_LIMIT = 2  # `max_steps` solver steps were not enough
    NONFINITE = 3  # NaN or inf in the state
    SOLVER_ERROR = 4  # any other diffrax failure (e.g. step size underflow)


class SolverError(RuntimeError):
    """A flow solve failed (raised for unbatched calls; batched calls report `status`)."""


class Trajectory(NamedTuple):
    """A gradient-flow trajectory saved at times `ts`, with metrics and a solver status.

    `B_coords` are the features in the orthonormal basis `basis` (d, p): `B = B_coords @
    basis.T`. For `mode="full"`, `basis` is None and `B_coords` is B itself. For large d keep
    to `B_coords`; `B` materialises (T, k, d). After convergence (time `t_final`) the state
    is held at its limit, so saves at later times repeat the final state.
    """

    ts: Float[Array, " T"]
    v: Float[Array, "T k"]
    B_coords: Float[Array, "T k p"]
    basis: Float[Array, "d p"] | None
    metrics: Metrics
    v0: Float[Array, " k"]
    v_final: Float[Array, " k"]
    B_coords_final: Float[Array, "k p"]
    t_final: Float[Array, ""]
    num_steps: Int[Array, ""]
    status: Int[Array, ""]

    @property
    def B(self) -> Float[Array, "T k d"]:
        if self.basis is None:
            return self.B_coords
        return jnp.einsum("...tkp,...dp->...tkd", self.B_coords, self.basis)

    @property
    def B_final(self) -> Float[Array, "k d"]:
        if self.basis is None:
            return self.B_coords_final
        return jnp.einsum("...kp,...dp->...kd", self.B_coords_final, self.basis)

    @property
    def converged(self):
        return self.status == Status.CONVERGED


def default_tolerances(dtype) -> tuple[float, float, float]:
    r"""(rtol, atol, grad_scale) for a dtype; see `default_grad_tol` for grad_scale.

    The gradient test must sit above the floor the solver's own error leaves in the gradient,
    which grows like $\lambda_{max}(X^TX)$ times the cube of the state's size times rtol (the
    fast modes keep re-injecting local error): at rtol = 1e-10 that floor was ~5e-8 on d=200,
    k=10, m=20 problems and the test never passed, while rtol = 1e-12 converged in fewer steps.
    """
    if jnp.finfo(dtype).bits >= 64:
        return 1e-12, 1e-14, 1e-10
    return 1e-6, 1e-8, 1e-4


def default_grad_tol(lam_max, Y, v0, grad_scale) -> Float[Array, ""]:
    r"""Scale-aware gradient threshold $c\,\lambda_{max}(X^TX)(1 + \|Y\|)(1 + \|v_0\|)$.

    A fixed absolute threshold (1e-9) sat below the solver's gradient floor for heads or
    targets of norm ~3: 18 of 144 solves at d=24, k=3, m=8, sigma=3 hit the step limit. This
    scaling converged on all 1080 instances of `linfeat check` (c = 1e-10 in float64).
    """
    return grad_scale * lam_max * (1 + jnp.linalg.norm(Y)) * (1 + jnp.linalg.norm(v0))


def default_times(sigma2_max, num_save: int, dtype) -> Float[Array, " T"]:
    r"""0, then log-spaced times over $[10^{-2}, 10^{6}] / \lambda_{max}(X^TX)$."""
    tau = 1.0 / sigma2_max
    return jnp.concatenate(
        [jnp.zeros((1,), dtype), tau * jnp.logspace(-2, 6, num_save - 1, dtype=dtype)]
    )


def _status(sol, y_final) -> Int[Array, ""]:
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(y_final)]))
    res = sol.result
    code = jnp.where(
        res == diffrax.RESULTS.event_occurred,
        Status.CONVERGED,
        jnp.where(
            res == diffrax.RESULTS.successful,
            Status.MAX_TIME,
            jnp.where(
                res == diffrax.RESULTS.max_steps_reached, Status.STEP_LIMIT, Status.SOLVER_ERROR
            ),
        ),
    )
    return jnp.where(finite, code, Status.NONFINITE).astype(jnp.int32)


def _reduced_field(t, y, args):
    v, A = y
    sigma2, g, train_features = args
    rho = sigma2 * (A.T @ v) - g
    dv = -2.0 * (A @ rho)
    dA = -2.0 * jnp.outer(v, rho) * train_features
    return dv, dA


def _full_field(t, y, args):
    v, B = y
    X, Y, train_features = args
    Xr = X.T @ (X @ (B.T @ v) - Y)
    return -2.0 * (B @ Xr), -2.0 * jnp.outer(v, Xr) * train_features


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


@functools.partial(
    jax.jit, static_argnames=("num_save", "mode", "solver", "max_steps", "train_features")
)
def _solve(
    problem,
    v0,
    ts,
    t_max,
    rtol,
    atol,
    grad_tol,
    grad_scale,
    *,
    num_save,
    mode,
    solver,
    max_steps,
    train_features,
):
    dtype = problem.X.dtype
    red = reduce(problem)
    if ts is None:
        ts = default_times(jnp.max(red.sigma2), num_save, dtype)
    if t_max is None:
        t_max = 1e6 / jnp.max(red.sigma2)
    t1 = jnp.maximum(ts[-1], t_max)
    if grad_scale is not None:  # default: scale-aware threshold
        grad_tol = default_grad_tol(jnp.max(red.sigma2), problem.Y, v0, grad_scale)
    tf = jnp.asarray(1.0 if train_features else 0.0, dtype)
    if mode == "reduced":
        r = red.r
        field = _reduced_field
        args = (red.sigma2, red.g, tf)
        y0 = (v0, red.B0[:, :r])
    elif mode == "full":
        field = _full_field
        args = (problem.X, problem.Y, tf)
        y0 = (v0, problem.B0)
    else:
        raise ValueError(f"`mode` must be 'reduced' or 'full', got {mode!r}.")

    def converged(t, y, args, **kwargs):
        return _norm(field(t, y, args)) < grad_tol

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        t0=jnp.zeros((), dtype),
        t1=t1,
        dt0=None,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(t1=True)]),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=diffrax.Event(converged),
        max_steps=max_steps,
        throw=False,
    )
    ys, y_last = sol.ys
    y_final = jax.tree.map(lambda x: x[0], y_last)
    t_final = sol.ts[1][0]
    # Saves at or after the stop time are inf-filled by diffrax (even ts = 0 when the start is
    # already stationary): the state is at its limit there, which is y_final.
    after = ts >= t_final
    ys = jax.tree.map(
        lambda x, xf: jnp.where(after.reshape((-1,) + (1,) * xf.ndim), xf, x), ys, y_final
    )
    v_t, M_t = ys
    if mode == "reduced":

        def embed(A):  # B in coordinates: the S block moves, the rest stays at B0 (R1)
            rest = jnp.broadcast_to(red.B0[:, r:], A.shape[:-1] + (red.B0.shape[1] - r,))
            return jnp.concatenate([A, rest], axis=-1)

        B_t, B_final, basis, space = embed(M_t), embed(y_final[1]), red.basis, red
        B_start = red.B0
    else:
        B_t, B_final, basis, space = M_t, y_final[1], None, problem
        B_start = problem.B0
    mets = jax.vmap(lambda v, B: metrics(space, v, B, v0, B_start, train_features=train_features))(
        v_t, B_t
    )
    return Trajectory(
        ts=ts,
        v=v_t,
        B_coords=B_t,
        basis=basis,
        metrics=mets,
        v0=v0,
        v_final=y_final[0],
        B_coords_final=B_final,
        t_final=t_final,
        num_steps=sol.stats["num_steps"],
        status=_status(sol, y_final),
    )


def _check_call(problem: Problem, v0, ts) -> None:
    if not V.is_concrete(problem, v0, ts):
        return
    k = problem.B0.shape[-2]
    batch = problem.B0.shape[:-2]
    V.as_array("v0", v0, shape=batch + (k,))
    if ts is not None:
        t = V.as_array("ts", ts, ndim=1)
        if t.size == 0:
            raise ValueError("`ts` must hold at least one save time.")
        if np.any(t < 0):
            raise ValueError(f"`ts` must be >= 0 (flows start at t = 0), got min {t.min():g}.")
        if np.any(np.diff(t) <= 0):
            raise ValueError("`ts` must be strictly increasing; pass np.sort(np.unique(ts)).")


def _raise_on_failure(traj: Trajectory, what: str) -> None:
    if not V.is_concrete(traj.status) or np.ndim(traj.status) != 0:
        return  # batched or traced: the caller reads `status` per trajectory
    st = Status(int(traj.status))
    if st in (Status.STEP_LIMIT, Status.NONFINITE, Status.SOLVER_ERROR):
        hint = {
            Status.STEP_LIMIT: "raise `max_steps`, loosen `rtol`/`atol`, or shorten `t_max`",
            Status.NONFINITE: "the state became NaN/inf: check the scale of X, Y and v0",
            Status.SOLVER_ERROR: "the adaptive step collapsed: loosen `rtol`/`atol`",
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


def _flow(
    problem,
    v0,
    *,
    ts,
    t_max,
    num_save,
    rtol,
    atol,
    grad_tol,
    max_steps,
    solver,
    mode,
    train_features,
    check,
    what,
):
    _check_call(problem, v0, ts)
    dtype = problem.X.dtype
    d_rtol, d_atol, d_gscale = default_tolerances(dtype)
    v0 = jnp.asarray(v0, dtype)
    if V.is_concrete(v0) and train_features and np.ndim(v0) == 1 and not np.any(np.asarray(v0)):
        warnings.warn(
            "v0 = 0: B receives no gradient at t = 0 (dB/dt = -2 v (X^T r)^T = 0), so FT "
            "starts by moving the head alone; the theorems assume a non-zero or random head.",
            V.TheoryConditionWarning,
            stacklevel=3,
        )
    traj = _solve(
        problem,
        v0,
        None if ts is None else jnp.asarray(ts, dtype),
        None if t_max is None else jnp.asarray(t_max, dtype),
        jnp.asarray(d_rtol if rtol is None else rtol, dtype),
        jnp.asarray(d_atol if atol is None else atol, dtype),
        None if grad_tol is None else jnp.asarray(grad_tol, dtype),
        jnp.asarray(d_gscale, dtype) if grad_tol is None else None,
        num_save=num_save,
        mode=mode,
        solver=solver if solver is not None else diffrax.Tsit5(),
        max_steps=max_steps,
        train_features=train_features,
    )
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
    solver: diffrax.AbstractSolver | None = None,
    mode: str = "reduced",
    check: bool = True,
) -> Trajectory:
    r"""Fine-tuning: gradient flow on the head v and the features B from $(v_0, B_0)$.

    Integrates $\dot v = -2 B X^T r$, $\dot B = -2 v (X^T r)^T$ (the paper's time) with an
    adaptive diffrax solver until $\|\nabla \hat L\| <$ `grad_tol` or `t_max`, saving at `ts`.
    Write the maths for one problem; `jax.vmap` over problems and heads for sweeps (the status
    is then reported per trajectory instead of raised).

    Args:
        problem: the `Problem`.
        v0: initial head (k,).
        ts: increasing save times >= 0; default 0 and `num_save - 1` log-spaced times in
            $[10^{-2}, 10^{6}]/\lambda_{max}(X^TX)$.
        t_max: stop time if the gradient test never passes; default $10^6/\lambda_{max}$.
        num_save: number of default save times (static).
        rtol, atol: solver tolerances; default 1e-12, 1e-14 in float64 (1e-6, 1e-8 in float32).
        grad_tol: absolute threshold on the gradient norm (paper units); default the
            scale-aware `default_grad_tol`: $10^{-10}\lambda_{max}(X^TX)(1+\|Y\|)(1+\|v_0\|)$
            ($10^{-4}$ instead of $10^{-10}$ in float32). Keep it above the solver's floor.
        max_steps: solver step limit (static).
        solver: a diffrax solver (static); default `diffrax.Tsit5()`.
        mode: "reduced" (exact reduction, cost independent of d) or "full" (reference).
        check: raise `SolverError` if an unbatched solve fails.

    Returns:
        A `Trajectory`.

    References:
        Kumar et al. (2022), section 4; THEORY.md section 2 and R1, R2.
    """
    return _flow(
        problem,
        v0,
        ts=ts,
        t_max=t_max,
        num_save=num_save,
        rtol=rtol,
        atol=atol,
        grad_tol=grad_tol,
        max_steps=max_steps,
        solver=solver,
        mode=mode,
        train_features=True,
        check=check,
        what="fine_tune",
    )


def linear_probe_flow(problem: Problem, v0, **kwargs) -> Trajectory:
    r"""Linear probing as a flow: $\dot v = -2 B_0 X^T r$ with $B = B_0$ fixed.

    Same arguments as `fine_tune`; converges to `linear_probe(problem, v0)`.
    """
    return _flow(problem, v0, **_defaults(kwargs), train_features=False, what="linear_probe_flow")


def lp_ft(problem: Problem, *, v0=None, **kwargs) -> Trajectory:
    r"""LP-FT: fine-tuning started from the linear-probe head $(v_{lp}^\infty, B_0)$ (R10, R13).

    Args:
        problem: the `Problem`.
        v0: head the linear probe starts from (matters only when LP is not unique); default 0.
        **kwargs: as for `fine_tune`.
    """
    from ._closed_form import linear_probe

    return _flow(
        problem, linear_probe(problem, v0), **_defaults(kwargs), train_features=True, what="lp_ft"
    )


def _defaults(kwargs):
    out = dict(
        ts=None,
        t_max=None,
        num_save=64,
        rtol=None,
        atol=None,
        grad_tol=None,
        max_steps=100_000,
        solver=None,
        mode="reduced",
        check=True,
    )
    unknown = set(kwargs) - set(out)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {sorted(unknown)}")
    out.update(kwargs)
    return out
