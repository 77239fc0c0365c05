r"""Classification accuracy of a linear predictor under Gaussian inputs, in closed form.

docs/theory.md, section 11.3. For $x \sim N(0, \Sigma)$, labels $y = \mathrm{sign}(w^{*T}x)$ and
the prediction $\mathrm{sign}(w^Tx)$, the pair $(w^Tx, w^{*T}x)$ is a centred Gaussian, and the
0-1 error is the probability that the two have opposite signs: the angle between $w$ and $w^*$
in the $\Sigma$ inner product over $\pi$ (Sheppard's formula),
$$\mathrm{err}(w) = \frac{1}{\pi}
\arccos\frac{w^T\Sigma w^*}{\sqrt{w^T\Sigma w\; w^{*T}\Sigma w^*}}.$$
It is evaluated as
$\theta = 2\,\mathrm{atan2}(\|\hat w - \hat w^*\|_\Sigma, \|\hat w + \hat w^*\|_\Sigma)$
with $\hat w = w/\|w\|_\Sigma$: the arccos of a cosine near 1 loses half the digits, the two
norms do not. Degenerate cases (a predictor or a target invisible under $\Sigma$,
$u^T\Sigma u = 0$): the prediction or the label is then 0 almost surely, a tie broken by a
fair coin, and the error is exactly 1/2.

`Accuracies` holds ID and OOD accuracy; it is a separate record rather than new fields of
`Metrics` because `Metrics` is the squared-loss record of every sweep, checkpoint and check:
accuracies are computed from any trajectory's states (`trajectory_accuracy`), squared-loss
runs included.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _validate as V
from ._cov import quad_form
from ._geometry import project_S
from ._metrics import _check_point
from ._reduce import Reduced, reduce


class Accuracies(NamedTuple):
    """ID and OOD 0-1 accuracy of a predictor (scalars; a time axis for a trajectory)."""

    id: Float[Array, "*T"]
    ood: Float[Array, "*T"]


def _safe_sqrt(q):
    """sqrt with a zero (not NaN) derivative at 0."""
    pos = q > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, q, 1.0)), 0.0)


def _angle_error(qf, w, w_star):
    r"""$\theta/\pi$ for a quadratic form `qf` (the $\Sigma$ norm squared), 1/2 if degenerate."""
    nw, ns = _safe_sqrt(qf(w)), _safe_sqrt(qf(w_star))
    ok = (nw > 0) & (ns > 0)
    hw = w / jnp.where(ok, nw, 1.0)
    hs = w_star / jnp.where(ok, ns, 1.0)
    # clamp: a PSD form can round to a tiny negative value where its argument is ~0
    diff = _safe_sqrt(jnp.maximum(qf(hw - hs), 0.0))
    summ = _safe_sqrt(jnp.maximum(qf(hw + hs), 0.0))
    # atan2(0, 0) has no derivative: keep it away from the degenerate branch
    theta = 2.0 * jnp.arctan2(diff, jnp.where(ok, summ, 1.0))
    return jnp.where(ok, theta / jnp.pi, 0.5)


@jax.jit
def _zero_one_error(w, w_star, Sigma):
    return _angle_error(lambda u: u @ Sigma @ u, w, w_star)


def zero_one_error(
    w: Float[Array, " d"], w_star: Float[Array, " d"], Sigma: Float[Array, "d d"]
) -> Float[Array, ""]:
    r"""0-1 error of $\mathrm{sign}(w^Tx)$ against $\mathrm{sign}(w^{*T}x)$, $x \sim N(0, \Sigma)$.

    $$\mathrm{err} = \frac{1}{\pi}
    \arccos\frac{w^T\Sigma w^*}{\sqrt{w^T\Sigma w\,w^{*T}\Sigma w^*}}$$
    (Sheppard's formula; docs/theory.md, section 11.3), evaluated as
    $2\,\mathrm{atan2}(\|\hat w - \hat w^*\|_\Sigma, \|\hat w + \hat w^*\|_\Sigma)/\pi$ for accuracy
    near 0 and 1. If $w^T\Sigma w = 0$ or $w^{*T}\Sigma w^* = 0$ (exactly) the prediction or
    the label is 0 almost surely; ties are broken by a fair coin, so the error is 1/2. The
    formula depends only on the $\Sigma$-directions: it is invariant to positive rescaling
    of w (the norm of a diverging logistic predictor does not matter). Written for one
    instance; vmap for batches; differentiable (a zero gradient in the degenerate case).

    Args:
        w: predictor (d,).
        w_star: ground-truth predictor (d,).
        Sigma: (d, d) symmetric PSD second moment of the centred Gaussian inputs.

    Returns:
        The error in [0, 1] (accuracy = 1 - error).

    Raises:
        ValueError: for concrete inputs with mismatched shapes or non-finite values.

    References:
        Sheppard (1899); Kumar et al. (2022), arXiv:2202.10054 (the model); docs/theory.md 11.3.
    """
    if V.is_concrete(w, w_star, Sigma):
        for name, x in (("w", w), ("w_star", w_star), ("Sigma", Sigma)):
            V.check_real_float(name, x, allow_int=True)
        d = V.as_array("w", w, ndim=1).shape[0]
        V.as_array("w_star", w_star, ndim=1, shape=(d,))
        V.as_array("Sigma", Sigma, ndim=2, shape=(d, d))
    w, w_star, Sigma = (jnp.asarray(x) for x in (w, w_star, Sigma))
    dtype = jnp.result_type(w, w_star, Sigma, float)
    return _zero_one_error(
        jnp.asarray(w, dtype), jnp.asarray(w_star, dtype), jnp.asarray(Sigma, dtype)
    )


@jax.jit
def _accuracy(problem, v, B) -> Accuracies:
    w = B.T @ v

    def err(cov):
        return _angle_error(lambda u: quad_form(cov, u, project_S(problem, u)), w, problem.w_star)

    return Accuracies(id=1.0 - err(problem.id_cov), ood=1.0 - err(problem.ood_cov))


def accuracy(problem, v: Float[Array, " k"], B: Float[Array, "k d"]) -> Accuracies:
    r"""ID and OOD accuracy of the predictor $w = B^Tv$ of a `Problem` (Gaussian inputs).

    $1 - \mathrm{err}$ of `zero_one_error` with $\Sigma_{id}$ and $\Sigma_{ood}$ of the
    problem (dense or `SubspaceCov`), against $w^*$: the labels $\mathrm{sign}(w^{*T}x)$ of
    a `classification_problem`. Meaningful for squared-loss runs too (their predictor is
    thresholded at 0). One instance; vmap for batches; differentiable.

    Args:
        problem: the `Problem`.
        v: head (k,).
        B: features (k, d).

    Returns:
        `Accuracies(id, ood)`.

    References:
        docs/theory.md, section 11.3.
    """
    _check_point(problem, v, B)
    return _accuracy(problem, v, B)


def reduced_accuracies(red: Reduced, v, A) -> Accuracies:
    r"""`Accuracies` at the reduced point $(v, A = BQ)$, from the frame (cost independent of d).

    $w = B^Tv = G c_w$ with $c_w = ((A - A_0)^Tv, v, 0, 0)$ and $w^* = G c_*$ with
    $c_* = (0, B_0w^*, 1, 0)$ (docs/theory.md 2.4), so every $\Sigma$ norm is a quadratic
    form in the Gram matrices $G^T\Sigma G$.
    """
    k, r = red.k, red.r
    extra = red.gram.shape[-1] - r - k - 1
    zeros = jnp.zeros((1 + extra,), v.dtype)
    c_w = jnp.concatenate([(A - red.A0).T @ v, v, zeros])
    c_s = jnp.concatenate(
        [jnp.zeros((r,), v.dtype), red.b, jnp.ones((1,), v.dtype), jnp.zeros((extra,), v.dtype)]
    )

    def acc(M):
        return 1.0 - _angle_error(lambda c: c @ M @ c, c_w, c_s)

    return Accuracies(id=acc(red.id_gram), ood=acc(red.ood_gram))


@jax.jit
def _trajectory_accuracy(red, v, A, v_final, A_final):
    at = functools.partial(reduced_accuracies, red)
    final = at(v_final, A_final)
    if A is None:
        return None, final
    return jax.vmap(at)(v, A), final


def trajectory_accuracy(problem, trajectory) -> tuple[Accuracies | None, Accuracies]:
    r"""ID and OOD accuracy along a trajectory of any flow (FT, LP, LP-FT; squared or logistic).

    Evaluated from the trajectory's reduced states $(v, A = BQ)$ through the frame
    (`reduced_accuracies`), so a squared-loss `fine_tune` run gets accuracies without
    new `Metrics` fields. One instance; vmap for batches.

    Args:
        problem: the `Problem` the trajectory was run on.
        trajectory: a `Trajectory` (from `fine_tune`, `lp_ft`, `linear_probe_flow`,
            `fine_tune_logistic`, ...). With `outputs="metrics"` (no `A`) only the final
            accuracies are available.

    Returns:
        (accuracies at the save times or None, accuracies at the stop time).
    """
    red = reduce(problem)
    return _trajectory_accuracy(
        red, trajectory.v, trajectory.A, trajectory.v_final, trajectory.A_final
    )
