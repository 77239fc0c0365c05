r"""The theory's constants of a `Problem` and the bounds they give (docs/theory.md, section 1).

`problem_constants` gathers $a, a^*, \varepsilon, c_S, c_\perp, \varphi, \kappa,
\sigma^+_{\min}(X)^2, \lambda_{\min}, \lambda_{\max}$ of one problem and head in one compiled
program; `r5_bounds`, `r5_perp_bound`, `r7_bounds` and `r8_threshold` evaluate the scalar
formulas of `linfeat._bounds` on them. jit/vmap friendly (vmap over problems and heads).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _theory_args as A
from . import _validate as V
from ._bounds import (
    r5_printed_bound,
    r5_rigorous_bound,
    r5_rigorous_error_bound,
    r7_lp_error_bound,
    r7_lp_ood_bound,
    r8_eps_threshold,
)
from ._cov import SubspaceCov, eig_range
from ._geometry import (
    _input_spectrum,
    _kappa_from_spectrum,
    _procrustes,
    head_alignment_error,
    principal_constants,
)
from ._theory_args import Head, Scalar, ScalarOut


class ProblemConstants(NamedTuple):
    r"""The theory's constants of one problem and head (docs/theory.md, section 1).

    Attributes:
        a: $\|v^*\| = \|w^*\|$.
        a_star: aligned true head $a^* = U v^*$.
        eps: $\varepsilon = \|B_0 - U B^*\|_2$ for the Procrustes U (the U of $a^*$).
        c_S, c_perp: $\sigma_k(\Pi_S B_0^T)$, $\sigma_k(\Pi_{S^\perp} B_0^T)$.
        phi: head alignment error of `v0`.
        kappa: $\kappa(X)$.
        sigma2_min: $\sigma^+_{\min}(X)^2$, smallest non-zero eigenvalue of $X^T X$.
        lam_min, lam_max: bounds on the extreme eigenvalues of the OOD second moment $\Sigma$
            (exact for dense $\Sigma$, see `linfeat._cov.eig_range`).
        lam_perp: a lower bound on $\Sigma$ restricted to $S^\perp$ in the sense
            $e^T\Sigma e \ge$ `lam_perp` $\|\Pi_{S^\perp} e\|^2$: the weight $b$ of a structured
            $\Sigma = a\Pi_S + b\Pi_{S^\perp} + LL^T$, or $\lambda_{\min}$ for a dense one.
    """

    a: ScalarOut
    a_star: Float[Array, " k"]
    eps: ScalarOut
    c_S: ScalarOut
    c_perp: ScalarOut
    phi: ScalarOut
    kappa: ScalarOut
    sigma2_min: ScalarOut
    lam_min: ScalarOut
    lam_max: ScalarOut
    lam_perp: ScalarOut


def problem_constants(problem, v0: Head) -> ProblemConstants:
    r"""All constants of docs/theory.md (section 1) of one `Problem` with truth and head `v0`.

    Uses the geometry of `linfeat._geometry` (Procrustes, $c_S$, $c_\perp$, $\kappa$) and
    the scalar formulas of `linfeat._bounds`; jit/vmap friendly (vmap over problems and heads
    for batches).

    The eigenvalue range of a structured $\Sigma = a\Pi_S + b\Pi_{S^\perp} + LL^T$ depends on
    whether $S^\perp = \{0\}$, i.e. on $m = \dim S = \operatorname{rank}(X)$ (`numerical_rank`),
    not on the number of examples n: with $n \ge d$ and $m < d$ (e.g. $\Sigma = \Pi_S$),
    $\lambda_{\min} = \min(a, b)$. The rank is an array, so the choice is a `jnp.where` between
    the two cases of `linfeat._cov.eig_range` and works on concrete and traced inputs alike.
    A dense $\Sigma$'s $\lambda_{\min}$ is clipped at 0 (it is PSD; eigvalsh may return -1e-17).

    Args:
        problem: a `linfeat.Problem` with `B_star` and `v_star` set.
        v0: initial head (k,).

    Returns:
        A `ProblemConstants`.
    """
    A.check_matrix("problem_constants", "v0", v0, 1)
    if V.is_concrete(v0) and hasattr(problem, "B0") and np.shape(v0) != problem.B0.shape[-2:-1]:
        raise ValueError(
            f"problem_constants: `v0` has shape {np.shape(v0)}, the problem's head has k = "
            f"{problem.B0.shape[-2]}; pass a head of length k (vmap for batches)."
        )
    return _problem_constants(problem, jnp.asarray(v0))


@jax.jit  # compiled once per shape for eager calls (r5_bounds, r7_bounds, ... reuse it)
def _problem_constants(problem, v0) -> ProblemConstants:
    eps, U = _procrustes(problem.B0, problem.B_star)
    a_star = U @ problem.v_star
    c_S, c_perp = principal_constants(problem)
    X = problem.X
    s, keep = _input_spectrum(X)
    kap, s_min_pos = _kappa_from_spectrum(s, keep)
    rank = jnp.sum(keep)  # m = dim S, traced under jit/vmap
    d = X.shape[1]
    cov = problem.ood_cov
    if isinstance(cov, SubspaceCov):
        # eig_range branches on a Python `m < d`: evaluate both cases, select with the array.
        lam_min_split, lam_max = eig_range(cov, d, d - 1)  # S^perp != {0}: min(a, b)
        lam_min_full, _ = eig_range(cov, d, d)  # S = R^d: a
        lam_min = jnp.where(rank < d, lam_min_split, lam_min_full)
        lam_perp = cov.scale_perp
    else:
        lam_min, lam_max = eig_range(cov, d, d)  # dense: exact eigenvalues, m not used
        lam_min = jnp.maximum(lam_min, 0.0)
        lam_perp = lam_min
    return ProblemConstants(
        a=jnp.sqrt(jnp.sum(problem.v_star**2)),
        a_star=a_star,
        eps=eps,
        c_S=c_S,
        c_perp=c_perp,
        phi=head_alignment_error(v0, a_star),
        kappa=kap,
        sigma2_min=s_min_pos**2,
        lam_min=jnp.asarray(lam_min, X.dtype),
        lam_max=jnp.asarray(lam_max, X.dtype),
        lam_perp=jnp.asarray(lam_perp, X.dtype),
    )


class R5Bounds(NamedTuple):
    """The R5 bounds of one problem and head (see `r5_bounds`)."""

    printed: ScalarOut
    rigorous_error: ScalarOut
    rigorous: ScalarOut


def r5_bounds(problem, v0: Head) -> R5Bounds:
    r"""R5's lower bounds for FT from $(v_0, B_0)$ on `problem`, valid at every t.

    - `printed` [paper, unsure; false as stated, docs/theory.md R5]: lower bound on $\|e(t)\|$
      ($= \sqrt{L_{ood}}$ for $\Sigma = I$), `r5_printed_bound`.
    - `rigorous_error` [derived]: $\|e(t)\| \ge c_\perp\delta_0 - \varepsilon a$.
    - `rigorous` [derived]: $\sqrt{L_{ood}(t)} \ge \sqrt{\lambda_{\min}(\Sigma)}
      (c_\perp\delta_0 - \varepsilon a)$.

    Args:
        problem: a `Problem` with ground truth.
        v0: initial head.

    Returns:
        An `R5Bounds` (negative entries are vacuous).
    """
    c = problem_constants(problem, v0)
    k = problem.B0.shape[-2]
    return R5Bounds(
        printed=r5_printed_bound(c.c_perp, k, c.phi, c.a, c.eps),
        rigorous_error=r5_rigorous_error_bound(c.c_perp, c.phi, c.a, c.eps),
        rigorous=r5_rigorous_bound(c.c_perp, c.phi, c.a, c.eps, c.lam_min),
    )


def r5_perp_bound(
    rigorous_error: Scalar,
    train_loss: Scalar,
    sigma2_min: Scalar,
    lam_perp: Scalar,
) -> ScalarOut:
    r"""R5 for OOD mass on $S^\perp$ only: a bound that stays informative when $\lambda_{\min} = 0$.

    [derived, R5 refinement] With $r = (c_\perp\delta_0 - \varepsilon a)_+$ (R5 rigorous),
    $\|\Pi_S e\|^2 \le \hat L / \sigma^+_{\min}(X)^2$ (as $\hat L = \|X e\|^2$) and
    $e^T\Sigma e \ge b\,\|\Pi_{S^\perp} e\|^2$ for $\Sigma = a\Pi_S + b\Pi_{S^\perp} + LL^T$:
    $\sqrt{L_{ood}(t)} \ge \sqrt{b}\,\sqrt{(r^2 - \hat L(t)/\sigma^+_{\min}(X)^2)_+}$ at every t.
    It depends on the training loss along the trajectory, so it bites late in training, when
    FT has fit S (at convergence $\hat L = 0$ and it equals $\sqrt b\, r$).

    Args:
        rigorous_error: `r5_rigorous_error_bound` of the problem and head.
        train_loss: $\hat L(t)$ at the time considered.
        sigma2_min: $\sigma^+_{\min}(X)^2$.
        lam_perp: $b$, the weight of $\Pi_{S^\perp}$ in $\Sigma$.

    Returns:
        The bound (0 when vacuous; NaN where `train_loss` is NaN, e.g. a diverged run).

    Raises:
        ValueError: for concrete arguments out of range (skipped under jit/vmap).
    """
    fn = "r5_perp_bound"
    A.check(
        fn,
        "train_loss",
        train_loss,
        lo=0.0,
        finite=False,
        what=">= 0 (the training loss along the trajectory)",
        fix="pass `trajectory.metrics.train_loss`",
    )
    A.check(
        fn,
        "sigma2_min",
        sigma2_min,
        lo=0.0,
        lo_open=True,
        what="a finite number > 0 (the smallest non-zero eigenvalue of X^T X)",
        fix="take it from `problem_constants(problem, v0).sigma2_min`",
    )
    A.check_args(fn, lam_perp=lam_perp)
    r = jnp.maximum(jnp.asarray(rigorous_error), 0.0)
    gap = r**2 - jnp.asarray(train_loss) / jnp.asarray(sigma2_min)
    return jnp.sqrt(jnp.asarray(lam_perp)) * jnp.sqrt(jnp.maximum(gap, 0.0))


def r7_bounds(problem) -> tuple[ScalarOut, ScalarOut]:
    r"""R7's upper bounds for the converged linear probe on `problem` [derived].

    Returns:
        `(error_bound, ood_bound)`: $\varepsilon a(1 + \kappa/c_S)$ on $\|e_{lp}\|$ and
        $\lambda_{\max}\varepsilon^2a^2(1 + \kappa/c_S)^2$ on $L_{ood}(v_{lp}^\infty, B_0)$.
    """
    c = problem_constants(problem, jnp.zeros(problem.B0.shape[-2], problem.B0.dtype))
    return (
        r7_lp_error_bound(c.eps, c.a, c.kappa, c.c_S),
        r7_lp_ood_bound(c.eps, c.a, c.kappa, c.c_S, c.lam_max),
    )


def r8_threshold(problem, v0: Head) -> ScalarOut:
    r"""R8's explicit threshold on $\varepsilon$ for `problem` and head `v0` [derived].

    LP's converged OOD loss is strictly below FT's at every t when $\varepsilon$ is below it
    (`r8_eps_threshold`).
    """
    c = problem_constants(problem, v0)
    return r8_eps_threshold(c.c_perp, c.phi, c.a, c.kappa, c.c_S, c.lam_min, c.lam_max)
