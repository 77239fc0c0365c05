"""What a researcher would otherwise write: (a) SciPy DOP853 on the full (v, B) state in a
Python loop, (b) diffrax on the full state (no exact reduction), vmapped and looped, (c) optax
gradient descent in `lax.scan`. Each is given the same problem, head and tolerances as linfeat.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.integrate import solve_ivp

import linfeat as lf


def scipy_dop853(p, v0, *, rtol=1e-12, atol=1e-14, grad_tol=1e-9, t_max=None):
    """(a) `solve_ivp(method="DOP853")` on the full state with a terminal gradient event.

    Returns (final w, stop time, number of field evaluations).
    """
    X, Y, B0 = (np.asarray(a) for a in (p.X, p.Y, p.B0))
    k, d = B0.shape

    def field(t, y):
        v, B = y[:k], y[k:].reshape(k, d)
        Xr = X.T @ (X @ (B.T @ v) - Y)
        return np.concatenate([-2.0 * (B @ Xr), (-2.0 * np.outer(v, Xr)).ravel()])

    def converged(t, y):
        return np.linalg.norm(field(t, y)) - grad_tol

    converged.terminal = True
    lam = np.linalg.eigvalsh(X @ X.T).max()
    ts = np.concatenate([[0.0], np.logspace(-2, 6, 63) / lam])
    t_end = 1e6 / lam if t_max is None else t_max
    ts = ts[ts <= t_end]
    y0 = np.concatenate([np.asarray(v0), B0.ravel()])
    sol = solve_ivp(
        field, (0.0, t_end), y0, method="DOP853", rtol=rtol, atol=atol, t_eval=ts, events=converged
    )
    y = sol.y[:, -1] if sol.t_events[0].size == 0 else sol.y_events[0][0]
    t_stop = sol.t[-1] if sol.t_events[0].size == 0 else sol.t_events[0][0]
    v, B = y[:k], y[k:].reshape(k, d)
    return B.T @ v, float(t_stop), sol.nfev


def diffrax_full(p, v0, t_max=None, **kw):
    """(b) diffrax Tsit5 on the full (v, B) state: linfeat's own `mode="full"` reference path.

    With `t_max`, the 64 save times are log-spaced up to it (the default grid ends at
    1e6 / lambda_max, which would override a shorter horizon).
    """
    if t_max is not None:
        grid = jnp.concatenate([jnp.zeros(1), jnp.logspace(-4, 0, 63)])
        kw.update(ts=t_max * grid, t_max=t_max)
    return lf.fine_tune(p, v0, mode="full", check=False, **kw)


def w_final(tr):
    return jnp.einsum("...kd,...k->...d", tr.B_final, tr.v_final)


def gd_error_and_cost(p, v0, w_ref, etas, *, horizon_factor=3.0, t_final=1.0):
    """(c) optax SGD (full batch) in `lax.scan` for step sizes `etas`, run to the flow's
    convergence time: returns final-w error vs the flow limit and seconds per step.

    GD with step eta follows the flow only to O(eta), so the step needed for 1e-8 is found by
    extrapolating the measured error linearly in eta.
    """
    X, Y = p.X, p.Y
    rows = []
    for eta in etas:
        n_steps = int(np.ceil(horizon_factor * t_final / eta))
        opt = optax.sgd(eta)

        def loss(params):
            v, B = params
            return jnp.sum((X @ (B.T @ v) - Y) ** 2)

        @jax.jit
        def run(params):
            state = opt.init(params)

            def body(carry, _):
                params, state = carry
                g = jax.grad(loss)(params)
                upd, state = opt.update(g, state)
                return (optax.apply_updates(params, upd), state), None

            (params, _), _ = jax.lax.scan(body, (params, state), None, length=n_steps)
            return params

        params = (v0, p.B0)
        t = time.perf_counter()
        jax.block_until_ready(run(params))
        t_c = time.perf_counter() - t
        t = time.perf_counter()
        v, B = jax.block_until_ready(run(params))
        t_r = time.perf_counter() - t
        err = float(jnp.linalg.norm(B.T @ v - w_ref) / jnp.linalg.norm(w_ref))
        rows.append(
            dict(
                eta=eta,
                steps=n_steps,
                rel_err_w=err,
                run_s=t_r,
                compile_s=t_c - t_r,
                s_per_step=t_r / n_steps,
            )
        )
    return rows


def diffrax_full_raw(p, v0, t_max, *, rtol=1e-12, atol=1e-14, grad_tol=1e-9, num_save=64):
    """(b) diffrax Tsit5 on the full (v, B) state, written directly (no metrics).

    Returns (final w, number of steps, stop time).

    `lf.fine_tune(mode="full")` also evaluates the metrics in R^d, which ran out of memory at
    d = 1e4; this is the plain solve a researcher would write.
    """
    X, Y = p.X, p.Y

    def field(t, y, args):
        v, B = y
        Xr = X.T @ (X @ (B.T @ v) - Y)
        return -2.0 * (B @ Xr), -2.0 * jnp.outer(v, Xr)

    def converged(t, y, args, **kw):
        fv, fB = field(t, y, args)
        return jnp.sqrt(jnp.sum(fv**2) + jnp.sum(fB**2)) < grad_tol

    import diffrax

    ts = t_max * jnp.concatenate([jnp.zeros(1), jnp.logspace(-4, 0, num_save - 1)])
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Tsit5(), t0=0.0, t1=t_max, dt0=None, y0=(v0, p.B0),
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(t1=True)]),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=diffrax.Event(converged), max_steps=100_000, throw=False,
    )  # fmt: skip
    v, B = (x[0] for x in sol.ys[1])
    return B.T @ v, sol.stats["num_steps"], sol.ts[1][0]
