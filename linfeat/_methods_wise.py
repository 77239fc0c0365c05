r"""WiSE-FT: weight-space and output-space interpolation with the FT end point (section 9.1).

`wise_ft` runs FT through the engine and returns the trajectory of the interpolated point
$\theta_\alpha(t) = (1 - \alpha)\theta_0 + \alpha\theta_{ft}(t)$; the post-processing
functions take any FT `Trajectory` and give exact metrics at every $\alpha$ (differentiable in
$\alpha$) and the OOD errors as polynomials in $\alpha$: quartic for the weights, a convex
quadratic for the output ensemble.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _validate as V
from ._methods_flows import effective_metrics, error_coefficients_at, ft_grad2
from ._methods_run import _knob, interpolate, run_method
from ._metrics import Metrics
from ._problem import Problem
from ._reduce import reduce
from ._trajectory import Trajectory


def wise_ft(problem: Problem, v0, *, alpha, ts=None, t_max=None, num_save: int = 64,
            rtol=None, atol=None, grad_tol=None, max_steps: int = 100_000,
            check: bool = True) -> Trajectory:  # fmt: skip
    r"""WiSE-FT: FT, then the weight-space interpolation with the start at every time.

    $v_\alpha = (1 - \alpha)v_0 + \alpha v_{ft}$, $B_\alpha = (1 - \alpha)B_0 + \alpha B_{ft}
    = B_0 + \alpha(A_{ft} - A_0)Q^T$, so $B_\alpha\Pi_\perp = B_0\Pi_\perp$ for every $\alpha$
    and the reduced state is $(v_\alpha, A_0 + \alpha(A_{ft} - A_0))$. The returned trajectory
    holds $\theta_\alpha(t)$ at the save times and at the FT stop (`v_final`, `A_final`).
    $\alpha = 1$ is FT, $\alpha = 0$ the pretrained point (docs/theory.md, section 9.1).

    Args:
        problem: the `Problem`.
        v0: initial head (k,) of FT (and the $\alpha = 0$ end of the interpolation).
        alpha: the mixing weight, any finite real ($[0, 1]$ interpolates).
        ts, t_max, num_save, rtol, atol, grad_tol, max_steps, check: as for
            `linfeat.fine_tune`.

    Returns:
        A `Trajectory` of $\theta_\alpha(t)$ (`v0` is the FT start).

    References:
        M. Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022,
        arXiv:2109.01903.
    """
    return run_method(
        problem, v0, {"alpha": (alpha, "finite")}, method="wise_ft", ts=ts, t_max=t_max,
        num_save=num_save, rtol=rtol, atol=atol, grad_tol=grad_tol, max_steps=max_steps,
        check=check, what="wise_ft",
    )  # fmt: skip


class EnsembleErrors(NamedTuple):
    """Errors of the output ensemble $f = (1 - \\alpha)f_0 + \\alpha f_{ft}$ (no single B)."""

    train_loss: Float[Array, ""]
    id_error: Float[Array, ""]
    id_subspace_error: Float[Array, ""]
    ood_error: Float[Array, ""]


class WiseFTPolynomials(NamedTuple):
    """OOD error as polynomials in alpha, coefficients in ascending powers."""

    weight: Float[Array, " 5"]  # weight-space interpolation: degree 4
    ensemble: Float[Array, " 3"]  # output ensemble: degree 2, leading coefficient >= 0


def _check_end_point(trajectory, alpha=None):
    for name in ("v0", "v_final", "A_final"):
        if getattr(trajectory, name, None) is None:
            raise ValueError(
                f"`trajectory.{name}` is missing: pass the Trajectory of `linfeat.fine_tune`."
            )
    if alpha is not None:
        V.check_finite("alpha", alpha, scalar=True)


@jax.jit
def _weight_metrics(problem, v0, v_ft, A_ft, alpha):
    red = reduce(problem)
    v, A = interpolate(red, v0, (v_ft, A_ft), alpha)
    return effective_metrics(red, v, A, 1.0, v0, ft_grad2(red, v, A))


def wise_ft_metrics(problem: Problem, trajectory: Trajectory, alpha) -> Metrics:
    r"""Exact `Metrics` of $\theta_\alpha = (1 - \alpha)(v_0, B_0) + \alpha(v_{ft}, B_{ft})$.

    $(v_{ft}, B_{ft})$ is the stop point of the FT `trajectory` (`lf.fine_tune`), $v_0$ its
    start. Post-processing only (no solve); differentiable in $\alpha$ and in the end point;
    vmap over `alpha` for a curve. `grad_norm` is FT's gradient at $\theta_\alpha$.

    Args:
        problem: the `Problem` of the trajectory.
        trajectory: an FT `Trajectory` (its `v0`, `v_final`, `A_final` are used).
        alpha: the mixing weight (finite).

    Returns:
        `Metrics` at $\theta_\alpha$.

    References:
        Wortsman et al. (2022), arXiv:2109.01903; docs/theory.md, section 9.1.
    """
    _check_end_point(trajectory, alpha)
    dtype = problem.X.dtype
    alpha = _knob("alpha", alpha, dtype, "finite")
    return _weight_metrics(problem, trajectory.v0, trajectory.v_final, trajectory.A_final, alpha)


@jax.jit
def _ensemble(problem, v0, v_ft, A_ft, alpha):
    red = reduce(problem)
    c = (1.0 - alpha) * error_coefficients_at(red, v0, red.A0) + alpha * error_coefficients_at(
        red, v_ft, A_ft
    )
    pred = (1.0 - alpha) * (red.XQ @ (red.A0.T @ v0)) + alpha * (red.XQ @ (A_ft.T @ v_ft))
    return EnsembleErrors(
        train_loss=jnp.sum((pred - red.Y) ** 2),
        id_error=jnp.maximum(c @ red.id_gram @ c, 0.0),
        id_subspace_error=jnp.sum((red.gram[: red.r] @ c) ** 2),
        ood_error=jnp.maximum(c @ red.ood_gram @ c, 0.0),
    )


def output_ensemble(problem: Problem, trajectory: Trajectory, alpha) -> EnsembleErrors:
    r"""Errors of the output-space ensemble $f = (1 - \alpha)f_0 + \alpha f_{ft}$.

    Its linear predictor is $w = (1 - \alpha)B_0^Tv_0 + \alpha B_{ft}^Tv_{ft}$, so
    $e_\alpha = (1 - \alpha)e_0 + \alpha e_{ft}$ and every error is a quadratic in $\alpha$
    with leading coefficient $(e_{ft} - e_0)^T\Sigma(e_{ft} - e_0) \ge 0$: convex. The
    contrast to `wise_ft_metrics`, whose OOD error is quartic (docs/theory.md, section 9.1).

    Args:
        problem: the `Problem` of the trajectory.
        trajectory: an FT `Trajectory`.
        alpha: the mixing weight (finite).

    Returns:
        `EnsembleErrors` (train, ID, ID-subspace and OOD error of the ensemble).

    References:
        Wortsman et al. (2022), arXiv:2109.01903 (output-space ensembling, their section 3).
    """
    _check_end_point(trajectory, alpha)
    alpha = _knob("alpha", alpha, problem.X.dtype, "finite")
    return _ensemble(problem, trajectory.v0, trajectory.v_final, trajectory.A_final, alpha)


@functools.partial(jax.jit)
def _polynomials(problem, v0, v_ft, A_ft):
    red = reduce(problem)
    D, dv = A_ft - red.A0, v_ft - v0
    z = jnp.zeros(red.gram.shape[-1] - red.r, v0.dtype)
    c0 = error_coefficients_at(red, v0, red.A0)  # e_0
    c1 = jnp.concatenate([D.T @ v0, dv, z[red.k :]])  # B0^T dv + Q D^T v0
    c2 = jnp.concatenate([D.T @ dv, z])  # Q D^T dv
    M = red.ood_gram
    q = lambda a, b: a @ M @ b  # noqa: E731
    weight = jnp.stack(
        [q(c0, c0), 2 * q(c0, c1), q(c1, c1) + 2 * q(c0, c2), 2 * q(c1, c2), q(c2, c2)]
    )
    de = error_coefficients_at(red, v_ft, A_ft) - c0
    ensemble = jnp.stack([q(c0, c0), 2 * q(c0, de), q(de, de)])
    return WiseFTPolynomials(weight=weight, ensemble=ensemble)


def wise_ft_ood_polynomials(problem: Problem, trajectory: Trajectory) -> WiseFTPolynomials:
    r"""The OOD errors of WiSE-FT and of the output ensemble as polynomials in $\alpha$.

    With $\Delta v = v_{ft} - v_0$ and $\Delta A = A_{ft} - A_0$ the weight-space error is
    $e_\alpha = e_0 + \alpha(B_0^T\Delta v + Q\Delta A^Tv_0) + \alpha^2 Q\Delta A^T\Delta v$,
    so $L_{ood}(\alpha) = e_\alpha^T\Sigma e_\alpha$ has degree 4 with leading coefficient
    $\|\Sigma^{1/2}Q\Delta A^T\Delta v\|^2$; the ensemble's is
    $e_0^T\Sigma e_0 + 2\alpha e_0^T\Sigma\Delta e + \alpha^2\Delta e^T\Sigma\Delta e$
    (docs/theory.md, section 9.1, proved).

    Args:
        problem: the `Problem` of the trajectory.
        trajectory: an FT `Trajectory`.

    Returns:
        `WiseFTPolynomials` (coefficients in ascending powers of $\alpha$).
    """
    _check_end_point(trajectory)
    return _polynomials(problem, trajectory.v0, trajectory.v_final, trajectory.A_final)
