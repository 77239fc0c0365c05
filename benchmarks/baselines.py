"""What a researcher would otherwise write, on the same instances, heads and stopping rule.

- `scipy_full`: SciPy `solve_ivp` (DOP853 by default) on the full state (v, B) in R^(k + kd)
  with a plain NumPy field: no reduction, explicit.
- `scipy_reduced`: SciPy BDF, Radau or LSODA on linfeat's exact reduced state (v, A = BQ) in
  R^(k + kr), with the analytic Jacobian written in NumPy (`reduced_jacobian`, from the
  formulas in the docstring of `linfeat._flows.FineTune.factor`; checked against
  finite differences in `check_jacobian`). The reduction comes from `lf.reduce` (untimed).
- `kvaerno5_vmap`: diffrax `Kvaerno5` (ESDIRK, order 5, implicit) on the reduced state,
  `jax.jit(jax.vmap(diffeqsolve))` with linfeat's `FineTune` field, a `PIDController` and a
  gradient-norm event; Newton solves use diffrax's default (VeryChord + a dense LU of
  `jax.jacfwd`).

Every solver stops when the gradient norm (the norm of the field) falls below the same
`grad_tol` as linfeat, or at `t_max` (the benchmark passes linfeat's own stop time on the
instance, so each baseline integrates the same trajectory). Each returns the final
w = B^T v in R^d, the stop time, and the number of steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os

import numpy as np
from scipy.integrate import solve_ivp

_BLAS_PREFIXES = ("scipy_openblas_", "openblas_")
_BLAS_SUFFIXES = ("", "64_")


def _openblas_libs():
    """(get, set) thread-count functions of every OpenBLAS loaded in this process."""
    paths = sorted({ln.split()[-1] for ln in open("/proc/self/maps") if "openblas" in ln.lower()})
    out = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pre in _BLAS_PREFIXES:
            for suf in _BLAS_SUFFIXES:
                get, put = f"{pre}get_num_threads{suf}", f"{pre}set_num_threads{suf}"
                if hasattr(lib, get) and hasattr(lib, put):
                    out.append((getattr(lib, get), getattr(lib, put)))
    return out


@contextlib.contextmanager
def blas_threads(n: int):
    """Runs the block with n OpenBLAS threads in NumPy's and SciPy's BLAS (what threadpoolctl
    does): the SciPy baselines factor (k + kr)^2 matrices, for which one thread is fastest
    (BDF on one `small` instance: 0.17 s with one thread, 1.0 s with two on a busy machine)."""
    libs = _openblas_libs() if os.path.exists("/proc/self/maps") else []
    before = [get() for get, _ in libs]
    for _, put in libs:
        put(n)
    try:
        yield len(libs)
    finally:
        for (_, put), k in zip(libs, before, strict=True):
            put(k)


def _event(field, grad_tol):
    def converged(t, y):
        return np.linalg.norm(field(t, y)) - grad_tol

    converged.terminal = True
    converged.direction = -1
    return converged


def _final(sol):
    if sol.t_events is not None and sol.t_events[0].size:
        return sol.y_events[0][0], float(sol.t_events[0][0])
    return sol.y[:, -1], float(sol.t[-1])


def scipy_full(X, Y, B0, v0, *, t_max, grad_tol, rtol, atol, method="DOP853"):
    """`solve_ivp` on (v, B) in R^(k + kd) with the paper's field; returns (w, t_stop, nfev)."""
    X, Y, B0, v0 = (np.asarray(a, np.float64) for a in (X, Y, B0, v0))
    k, d = B0.shape

    def field(t, y):
        v, B = y[:k], y[k:].reshape(k, d)
        Xr = X.T @ (X @ (B.T @ v) - Y)
        return np.concatenate([-2.0 * (B @ Xr), (-2.0 * np.outer(v, Xr)).ravel()])

    y0 = np.concatenate([v0, B0.ravel()])
    sol = solve_ivp(
        field, (0.0, float(t_max)), y0, method=method, rtol=rtol, atol=atol,
        events=_event(field, grad_tol), t_eval=[float(t_max)],
    )  # fmt: skip
    y, t_stop = _final(sol)
    v, B = y[:k], y[k:].reshape(k, d)
    return B.T @ v, t_stop, int(sol.nfev)


def reduced_field(sigma2, g, k):
    """The FT field on y = [v, vec(A)] (A row-major, k x r) in NumPy."""
    r = sigma2.shape[0]

    def field(t, y):
        v, A = y[:k], y[k:].reshape(k, r)
        rho = sigma2 * (A.T @ v) - g
        return np.concatenate([-2.0 * (A @ rho), (-2.0 * np.outer(v, rho)).ravel()])

    return field


def reduced_jacobian(sigma2, g, k):
    r"""Analytic Jacobian of `reduced_field` (dense, (k + kr)^2) in NumPy.

    With $\rho = \mathrm{diag}(s^2) A^T v - g$ and $\delta w = A^T\delta v + \delta A^T v$
    (`FineTune.factor`): $J(\delta v, \delta A) = (-2\delta A\rho - 2A\,\mathrm{diag}(s^2)
    \delta w,\ -2(\delta v\rho^T + v(\mathrm{diag}(s^2)\delta w)^T))$, i.e.
    dv/dv = -2 A S A^T, dv_i/dA_ab = -2(δ_ia ρ_b + A_ib s²_b v_a),
    dA_ij/dv_l = -2(δ_il ρ_j + v_i s²_j A_lj), dA_ij/dA_ab = -2 v_i v_a s²_j δ_jb.
    """
    r = sigma2.shape[0]
    eye_k, eye_r = np.eye(k), np.eye(r)

    def jac(t, y):
        v, A = y[:k], y[k:].reshape(k, r)
        rho = sigma2 * (A.T @ v) - g
        AS = A * sigma2  # A diag(s^2)
        J = np.empty((k + k * r, k + k * r))
        J[:k, :k] = -2.0 * AS @ A.T
        # dv_i / dA_ab, column index a * r + b
        J[:k, k:] = -2.0 * (
            np.einsum("ia,b->iab", eye_k, rho) + np.einsum("ib,a->iab", AS, v)
        ).reshape(k, k * r)
        # dA_ij / dv_l, row index i * r + j
        J[k:, :k] = -2.0 * (
            np.einsum("il,j->ijl", eye_k, rho) + np.einsum("i,lj->ijl", v, AS)
        ).reshape(k * r, k)
        J[k:, k:] = -2.0 * np.einsum("i,a,j,jb->ijab", v, v, sigma2, eye_r).reshape(k * r, k * r)
        return J

    return jac


def check_jacobian(sigma2, g, k, y, eps=1e-6) -> float:
    """Largest relative difference between `reduced_jacobian` and central differences."""
    f, jac = reduced_field(sigma2, g, k), reduced_jacobian(sigma2, g, k)
    J = jac(0.0, y)
    fd = np.empty_like(J)
    for j in range(y.size):
        e = np.zeros_like(y)
        e[j] = eps
        fd[:, j] = (f(0.0, y + e) - f(0.0, y - e)) / (2 * eps)
    return float(np.abs(J - fd).max() / np.abs(J).max())


def scipy_reduced(red, B0, v0, *, t_max, grad_tol, rtol, atol, method):
    """`solve_ivp` (BDF, Radau, LSODA) on the reduced (v, A) with the analytic Jacobian.

    `red` is `lf.reduce(problem)` (NumPy arrays suffice), `B0` the problem's features (to
    embed the final A = BQ in R^d). Returns (w, t_stop, nfev, njev).
    """
    sigma2, g, A0, Q, B0 = (np.asarray(x, np.float64) for x in
                            (red.sigma2, red.g, red.A0, red.basis, B0))  # fmt: skip
    k, r = A0.shape
    field, jac = reduced_field(sigma2, g, k), reduced_jacobian(sigma2, g, k)
    y0 = np.concatenate([np.asarray(v0, np.float64), A0.ravel()])
    sol = solve_ivp(
        field, (0.0, float(t_max)), y0, method=method, rtol=rtol, atol=atol, jac=jac,
        events=_event(field, grad_tol), t_eval=[float(t_max)],
    )  # fmt: skip
    y, t_stop = _final(sol)
    v, A = y[:k], y[k:].reshape(k, r)
    B = B0 + (A - A0) @ Q.T
    return B.T @ v, t_stop, int(sol.nfev), int(sol.njev)


@functools.cache
def kvaerno5_vmap():
    """jit(vmap) of diffrax Kvaerno5 on the reduced state: f(sigma2, g, v0, A0, t_max,
    grad_tol, rtol, atol) -> (v_final, A_final, t_stop, num_steps, converged, failed),
    batched over everything but the tolerances (traced: one compilation for every rtol)."""
    import diffrax
    import jax
    import jax.numpy as jnp

    from linfeat._flows import FineTune, FlowData, gradient_norm

    flow = FineTune()

    def one(sigma2, g, v0, A0, t_max, grad_tol, rtol, atol):
        def converged(t, y, args, **kw):
            return gradient_norm(flow.field(y, args)) < grad_tol

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: flow.field(y, a)),
            diffrax.Kvaerno5(),
            t0=jnp.zeros((), t_max.dtype),
            t1=t_max,
            dt0=None,
            y0=(v0, A0),
            args=FlowData(sigma2, g),
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            event=diffrax.Event(converged),
            max_steps=100_000,
            throw=False,
        )
        v, A = (x[0] for x in sol.ys)
        conv = sol.result == diffrax.RESULTS.event_occurred
        ok = conv | (sol.result == diffrax.RESULTS.successful)
        return v, A, sol.ts[0], sol.stats["num_steps"], conv, ~ok

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, None, None)))
