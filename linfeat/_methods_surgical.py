r"""Surgical fine-tuning with the head frozen, and its closed form (docs/theory.md, 10.1).

The flow runs through the one solver core on the reduced state $(v_0, A = BQ)$
(`linfeat._arch_flows.SurgicalFineTune`); `surgical_exact` is its closed form, a matrix
function of $X^TX$, used as the oracle of check M5 and the tests.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _validate as V
from ._arch_flows import (
    SurgicalFineTune,
    base_rows,
    error_coeffs,
    extended_frame,
    field_norm,
    frame_metrics,
    row_basis,
)
from ._engine import at_saves_and_end, solve
from ._flow import _raise_on_failure, _settings, check_call
from ._methods_arch import _STATIC, _prepare, _warn_zero_head
from ._problem import Problem
from ._reduce import reduce
from ._trajectory import Trajectory

# ---------------------------------------------------------------------------------------
# Surgical fine-tuning (head frozen)
# ---------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=_STATIC)
def _surgical_run(problem, v0, settings, *, num_save, max_steps) -> Trajectory:
    red = reduce(problem)
    ts, t_max, grad_tol = _settings(red, problem.Y, v0, settings, num_save)
    flow = SurgicalFineTune()
    sol = solve(flow, (v0, red.A0), red.flow_data, ts=ts, t1=t_max, rtol=settings.rtol,
                atol=settings.atol, grad_tol=grad_tol, max_steps=max_steps)  # fmt: skip
    fr = extended_frame(problem, red, jnp.zeros((problem.d, 0), v0.dtype))
    H0 = base_rows(fr, red.k, v0.dtype)

    def at(v, A):
        D = A - red.A0
        dH = jnp.zeros_like(H0).at[:, : red.r].set(D)
        c = error_coeffs(fr, D.T @ v, v, jnp.zeros((0,), v.dtype))
        return frame_metrics(
            fr, c=c, AQ=A, u=v, dH=dH, H0=H0, dS=D, perp2=jnp.zeros((), v.dtype), head=v,
            head0=v0, grad_norm=field_norm(flow, (v, A), red.flow_data),
        )  # fmt: skip

    mets, final = at_saves_and_end(at, sol.ys, sol.y_final)
    return Trajectory(
        ts=ts, v=sol.ys[0], A=sol.ys[1], metrics=mets, final_metrics=final, v0=v0,
        v_final=sol.y_final[0], A_final=sol.y_final[1], t_final=sol.t_final,
        num_steps=sol.num_steps, status=sol.status, basis=red.basis, B0=problem.B0,
    )  # fmt: skip


def surgical_fine_tune(
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
    check: bool = True,
) -> Trajectory:
    r"""Surgical fine-tuning of the features with the head frozen at $v_0$.

    Update rule (gradient flow in the paper's time, $\hat L = \|XB^Tv_0 - Y\|^2$):
    $\dot v = 0$, $\dot B = -2v_0(X^Tr)^T$, $r = XB^Tv_0 - Y$. Hence
    $B(t) = B_0 + v_0a(t)^T$ with $a(t) \in S$: the change is rank one, $B\Pi_\perp = B_0\Pi_\perp$
    for all t, and $w = B^Tv_0$ solves the linear ODE $\dot w = -2|v_0|^2X^T(Xw - Y)$, whose
    closed form is `surgical_exact` (docs/theory.md, section 10.1). Training the head with B
    frozen is LP (`linfeat.linear_probe_flow`). Integrated on the reduced state $(v_0, A = BQ)$
    by the engine (Rodas5P, a closed-form linear solve); one instance, vmappable,
    differentiable.

    Args:
        problem: the `Problem`.
        v0: the frozen head (k,). v0 = 0 makes the flow stationary (warned).
        ts, t_max, num_save, rtol, atol, grad_tol, max_steps, check: as for
            `linfeat.fine_tune`.

    Returns:
        A `linfeat.Trajectory` (`v` is $v_0$ at every save; `B`, `B_final` the features).

    References:
        Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts",
        ICLR 2023, arXiv:2210.11466 (tune one block, freeze the rest).
    """
    v0, settings, num_save = _prepare(problem, v0, ts=ts, t_max=t_max, num_save=num_save,
                                      rtol=rtol, atol=atol, grad_tol=grad_tol,
                                      max_steps=max_steps)  # fmt: skip
    _warn_zero_head(v0, "surgical_fine_tune", "so B receives no gradient and nothing moves.")
    traj = _surgical_run(problem, v0, settings, num_save=num_save, max_steps=max_steps)
    if check:
        _raise_on_failure(traj, "surgical_fine_tune")
    return traj


class SurgicalExact(NamedTuple):
    r"""The closed form of surgical FT: $B(t) = B_0 + v_0a(t)^T$, $w(t) = B(t)^Tv_0$."""

    ts: Float[Array, " T"]
    a: Float[Array, "T d"]
    w: Float[Array, "T d"]


@jax.jit
def _surgical_exact(problem, v0, ts) -> SurgicalExact:
    Q, mask = row_basis(problem.X)
    XQ = problem.X @ Q
    s2 = jnp.sum(XQ**2, axis=0)
    c = jnp.sum(v0**2)
    rho0 = s2 * (Q.T @ (problem.B0.T @ v0)) - XQ.T @ problem.Y  # X^T r(0) = Q rho0
    x = 2.0 * c * s2[None, :] * ts[:, None]
    safe = jnp.where(x > 0, x, 1.0)
    phi1 = jnp.where(x > 0, -jnp.expm1(-safe) / safe, 1.0)  # (1 - e^{-x}) / x, 1 at x = 0
    a = -2.0 * ts[:, None, None] * Q[None] * (phi1 * rho0 * mask)[:, None, :]
    a = jnp.sum(a, axis=-1)
    return SurgicalExact(ts, a, problem.B0.T @ v0 + c * a)


def surgical_exact(problem: Problem, v0: Float[Array, " k"], ts: Float[Array, " T"]):
    r"""Closed form of `surgical_fine_tune` at the times `ts` (an oracle for the engine).

    With $c = |v_0|^2$, $M = X^TX$ and $h_0 = X^Tr(0)$ the flow $\dot a = -2X^T(Xw - Y)$,
    $w = B_0^Tv_0 + c\,a$ is linear, so
    $$a(t) = -2t\,\varphi_1(2ct\,M)\,h_0,\qquad \varphi_1(z) = (1 - e^{-z})/z,$$
    a matrix function of M (the integral of the matrix exponential $e^{-2csM}$ over
    $[0, t]$), evaluated in the eigenbasis of M (Q and $s^2$, via `expm1`). As
    $t \to \infty$, $w \to B_0^Tv_0 + \Pi_S$-least-squares fix: $\Pi_S w_\infty$ fits the
    labels and $\Pi_\perp w = \Pi_\perp B_0^Tv_0$ never moves. [derived] docs/theory.md,
    section 10.1; arXiv:2210.11466 for the method.

    Args:
        problem: the `Problem`.
        v0: the frozen head (k,).
        ts: 1-D increasing times $\ge 0$.

    Returns:
        `SurgicalExact(ts, a, w)`, $a(t), w(t)$ of shape (T, d).
    """
    check_call(problem, v0, num_save=1, max_steps=1)
    V.check_times("ts", ts, allow_int=True)
    dtype = problem.X.dtype
    return _surgical_exact(problem, jnp.asarray(v0, dtype), jnp.asarray(ts, dtype))
