r"""The runner of the method zoo: one jitted program per method on the one solver core.

`run_method` validates the knobs (concrete ones), runs `_run` (reduction, the method's flow
through `linfeat._engine.solve`, exact metrics at every save) and raises on an unbatched
failure, like `fine_tune`. `lp_stage` is the closed-form LP flow of partial LP-FT.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from . import _validate as V
from ._eigh import eigh
from ._engine import at_saves_and_end, solve
from ._flow import _raise_on_failure, _settings, check_call, make_settings
from ._flows import gradient_norm
from ._methods_flows import (
    FT_KNOBS,
    Knobs,
    MethodData,
    PenalisedFlow,
    effective_metrics,
    perp_norm,
)
from ._metrics import Metrics
from ._problem import Problem
from ._reduce import Reduced, reduce
from ._trajectory import Trajectory


class WeightDecayTrajectory(NamedTuple):
    r"""A `Trajectory` (same fields) plus the factor c(t) of $B(t)\Pi_\perp = c(t)B_0\Pi_\perp$.

    Weight decay shrinks the pretrained features off S ($c = e^{-2\mu t}$; with L2-SP too,
    $\dot c = -2\eta_B(\lambda(c - 1) + \mu c)$): $B(t) = (A(t) - cA_0)Q^T + cB_0$ with
    $A = BQ$; `B` and `B_final` include it. `perp_scale` is c at the save times (from
    the solver's state, as every other field), `perp_scale_final` at the stop.
    """

    ts: Float[Array, " T"]
    v: Float[Array, "T k"]
    A: Float[Array, "T k r"]
    metrics: Metrics
    final_metrics: Metrics
    v0: Float[Array, " k"]
    v_final: Float[Array, " k"]
    A_final: Float[Array, "k r"]
    t_final: Float[Array, ""]
    num_steps: Int[Array, ""]
    status: Int[Array, ""]
    basis: Float[Array, "d r"]
    B0: Float[Array, "k d"]
    perp_scale: Float[Array, " T"]
    perp_scale_final: Float[Array, ""]

    def _embed(self, A, c):
        A0 = jnp.einsum("...kd,...dr->...kr", self.B0, self.basis)
        B0, Q = self.B0, self.basis
        if A.ndim > A0.ndim:  # a time axis
            A0, B0, Q = A0[..., None, :, :], B0[..., None, :, :], Q[..., None, :, :]
        c = c[..., None, None]
        return jnp.einsum("...kr,...dr->...kd", A - c * A0, Q) + c * B0

    @property
    def B(self) -> Float[Array, "T k d"]:
        """B(t) in $R^d$ at every save time."""
        return self._embed(self.A, self.perp_scale)

    @property
    def B_final(self) -> Float[Array, "k d"]:
        """B at the stop time in $R^d$."""
        return self._embed(self.A_final, self.perp_scale_final)

    @property
    def converged(self):
        """Whether the solve stopped on the gradient test."""
        return self.status == 0


# ------------------------------------------------------------------------- the LP stage


def lp_stage(red: Reduced, v0, tau) -> Float[Array, " k"]:
    r"""The LP flow's head at time $\tau$ in closed form (reduced coordinates).

    $\dot v = -2(Kv - A_0g)$ with $K = \Phi^T\Phi = A_0\mathrm{diag}(s^2)A_0^T = U\,
    \mathrm{diag}(\kappa)U^T$ and $A_0g = \Phi^TY \in \mathrm{range}(K)$, so
    $v(\tau) = v_0 + U\,\mathrm{diag}(\varphi_\tau(\kappa))U^T(A_0g - Kv_0)$ with
    $\varphi_\tau(\kappa) = (1 - e^{-2\kappa\tau})/\kappa$ ($= 2\tau$ at $\kappa = 0$, where
    the bracket has no component): the null-space part of $v_0$ never moves.
    """
    K = (red.A0 * red.sigma2) @ red.A0.T
    kap, U = eigh(K)
    # eigenvalues of a PSD Gram matrix can round below 0: clamp (docs/theory.md, section 9.4)
    kap = jnp.maximum(kap, 0.0)
    small = kap * tau < 1e-12
    safe = jnp.where(small, 1.0, kap)
    phi = jnp.where(small, 2.0 * tau * (1.0 - kap * tau), -jnp.expm1(-2.0 * safe * tau) / safe)
    rhs = red.A0 @ red.g - K @ v0
    return v0 + U @ (phi * (U.T @ rhs))


def interpolate(red: Reduced, v0, y, alpha):
    r"""WiSE-FT's weight-space point: $((1 - \alpha)v_0 + \alpha v,\ A_0 + \alpha(A - A_0))$
    (broadcasts over a leading time axis of y)."""
    v, A = y
    return (1.0 - alpha) * v0 + alpha * v, red.A0 + alpha * (A - red.A0)


# ------------------------------------------------------------------------- the runner


def _perp_scale(red: Reduced, gamma):
    """c = gamma / ||B0 Pi_perp||_F (1 where B0 has no part off S: then c multiplies 0)."""
    g0 = perp_norm(red)
    return jnp.where(g0 > 0, gamma / jnp.where(g0 > 0, g0, 1.0), 1.0)


@functools.partial(jax.jit, static_argnames=("num_save", "max_steps"))
def _run(problem, v0, knobs: Knobs, settings, *, num_save, max_steps) -> WeightDecayTrajectory:
    """Every method of the zoo for one instance: one compiled program per shape."""
    red = reduce(problem)
    v0 = lp_stage(red, v0, knobs.tau)  # partial LP (tau = 0: v0 exactly)
    data = MethodData(red.flow_data, v0, red.A0, perp_norm(red), knobs)
    flow = PenalisedFlow()
    ts, t_max, grad_tol = _settings(red, problem.Y, v0, settings, num_save)
    sol = solve(
        flow, (v0, red.A0, data.gamma0), data, ts=ts, t1=t_max, rtol=settings.rtol,
        atol=settings.atol, grad_tol=grad_tol, max_steps=max_steps,
    )  # fmt: skip
    # WiSE-FT: theta_alpha(t) = (1 - alpha) theta_0 + alpha theta(t) (alpha = 1: unchanged)
    ys, y_final = (
        interpolate(red, v0, y[:2], knobs.alpha) + (y[2],) for y in (sol.ys, sol.y_final)
    )

    def at(v, A, gamma):
        g2 = gradient_norm(flow.field((v, A, gamma), data)) ** 2
        return effective_metrics(red, v, A, _perp_scale(red, gamma), v0, g2)

    mets, final = at_saves_and_end(at, ys, y_final)
    return WeightDecayTrajectory(
        ts=ts, v=ys[0], A=ys[1], metrics=mets, final_metrics=final, v0=v0,
        v_final=y_final[0], A_final=y_final[1], t_final=sol.t_final,
        num_steps=sol.num_steps, status=sol.status, basis=red.basis, B0=problem.B0,
        perp_scale=_perp_scale(red, ys[2]), perp_scale_final=_perp_scale(red, y_final[2]),
    )  # fmt: skip


def _knob(name: str, x, dtype, kind: str):
    """A knob as a scalar array of `dtype`, validated when concrete (`kind`: finite,
    nonneg or positive)."""
    if isinstance(x, int) and not isinstance(x, bool):
        x = float(x)
    fix = {
        "finite": "pass a finite real number.",
        "nonneg": "it is a penalty weight or a time: pass a number >= 0.",
        "positive": "it is a learning rate: pass a number > 0.",
    }[kind]
    check = {"finite": V.check_finite, "nonneg": V.check_nonneg, "positive": V.check_positive}
    if kind == "finite":
        check[kind](name, x, scalar=True)
    else:
        check[kind](name, x, scalar=True, fix=fix)
    return jnp.asarray(x, dtype)


def run_method(problem: Problem, v0, knobs: dict, *, method: str, ts, t_max, num_save, rtol,
               atol, grad_tol, max_steps, check, what):  # fmt: skip
    """Validates, runs `_run` and raises on an unbatched failure (the public methods' body)."""
    check_call(problem, v0, num_save=num_save, max_steps=max_steps)
    dtype = problem.X.dtype
    v0 = jnp.asarray(v0, dtype)
    vals = {name: jnp.asarray(x, dtype) for name, x in FT_KNOBS.items()}
    vals.update({name: _knob(name, x, dtype, kind) for name, (x, kind) in knobs.items()})
    settings = make_settings(dtype, ts=ts, t_max=t_max, rtol=rtol, atol=atol, grad_tol=grad_tol)
    num_save = num_save if ts is None else int(np.shape(ts)[-1])
    traj = _run(problem, v0, Knobs(**vals), settings, num_save=num_save, max_steps=max_steps)
    if check:
        _raise_on_failure(traj, what)
    if method == "weight_decay":
        return traj
    return Trajectory(*traj[: len(Trajectory._fields)])
