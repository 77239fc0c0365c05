r"""Second moments of the ID and OOD input distributions, dense or structured.

A second moment $\Sigma = E[x x^T]$ enters linfeat only through quadratic forms
$e^T \Sigma e$ (docs/theory.md R3). For large d it is never formed: `SubspaceCov` stores
$\Sigma = a\,\Pi_S + b\,\Pi_{S^\perp} + L L^T$, where S = rowspace(X) of the problem it
belongs to, and $L \in R^{d \times r}$ is a low-rank factor.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _validate as V
from ._eigh import eigvalsh
from ._linalg import singular_values


class SubspaceCov(NamedTuple):
    r"""Structured second moment $\Sigma = a\,\Pi_S + b\,\Pi_{S^\perp} + L L^T$.

    S is the ID subspace (rowspace of the training inputs) of the problem that holds this
    second moment, so the same `SubspaceCov` means "scaled projectors of *that* problem's S".
    Never builds a d x d matrix.

    Attributes:
        scale_S: $a \ge 0$, variance per direction of S.
        scale_perp: $b \ge 0$, variance per direction of $S^\perp$.
        factor: $L$, shape (d, r) (r may be 0): an extra low-rank term $L L^T$.
    """

    scale_S: Float[Array, ""]
    scale_perp: Float[Array, ""]
    factor: Float[Array, "d r"]


Cov = Float[Array, "d d"] | SubspaceCov


def subspace_cov(d: int, *, scale_S=0.0, scale_perp=0.0, factor=None, dtype=None) -> SubspaceCov:
    r"""Builds $\Sigma = a\,\Pi_S + b\,\Pi_{S^\perp} + L L^T$ (see `SubspaceCov`).

    Args:
        d: input dimension (a positive int).
        scale_S, scale_perp: $a, b \ge 0$, finite (scalars, or arrays for a batch of second
            moments: every entry is checked).
        factor: $L$, a real (d, r) matrix (integer entries are converted), default r = 0.
        dtype: floating dtype; default the JAX default float.

    Raises:
        ValueError: naming the argument, for a non-int `d`, negative/NaN/inf or complex
            scales, a factor that is not a finite real 2-D array with d rows, or a
            non-floating `dtype`. Values are checked when concrete (skipped under jit/vmap,
            where shapes and dtypes are still checked).
    """
    d = V.check_int("d", d, min=1)
    dtype = jnp.result_type(float) if dtype is None else V.check_float_dtype("dtype", dtype)
    fix = "a second moment a Pi_S + b Pi_perp + L L^T needs variances a, b >= 0."
    V.check_nonneg("scale_S", scale_S, fix=fix)
    V.check_nonneg("scale_perp", scale_perp, fix=fix)
    if factor is None:
        factor = jnp.zeros((d, 0), dtype)
    else:
        V.check_real_float("factor", factor, allow_int=True)
        if np.ndim(factor) != 2 or np.shape(factor)[0] != d:
            raise ValueError(
                f"`factor` must be a (d, r) = ({d}, r) matrix (L in L L^T), got shape "
                f"{np.shape(factor)}; pass L with one row per input dimension."
            )
        V.check_finite("factor", factor, allow_int=True)
    return SubspaceCov(
        jnp.asarray(scale_S, dtype), jnp.asarray(scale_perp, dtype), jnp.asarray(factor, dtype)
    )


def quad_form(cov: Cov, e: Float[Array, " d"], proj_S: Float[Array, " d"]) -> Float[Array, ""]:
    r"""$e^T \Sigma e$, where `proj_S` is $\Pi_S e$ (needed by the structured form only)."""
    if isinstance(cov, SubspaceCov):
        e_S2 = jnp.sum(proj_S**2)
        e_perp2 = jnp.sum((e - proj_S) ** 2)
        return cov.scale_S * e_S2 + cov.scale_perp * e_perp2 + jnp.sum((cov.factor.T @ e) ** 2)
    return e @ cov @ e


def to_dense(cov: Cov, Q_S: Float[Array, "d m"]) -> Float[Array, "d d"]:
    """The dense (d, d) matrix of a second moment, given an orthonormal basis `Q_S` of S."""
    if isinstance(cov, SubspaceCov):
        d = cov.factor.shape[0]
        P = Q_S @ Q_S.T
        return (
            cov.scale_S * P
            + cov.scale_perp * (jnp.eye(d, dtype=P.dtype) - P)
            + cov.factor @ cov.factor.T
        )
    return cov


def eig_range(cov: Cov, d: int, m: int) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""Bounds $(\lambda_{\min}, \lambda_{\max})$ of $\Sigma$ (exact for dense input).

    For the structured form, $\min(a, b) \le \lambda_{\min}$ (exact when the low-rank term
    misses a direction of both S and $S^\perp$, as for every generated problem with
    $r < \min(m, d - m)$) and $\lambda_{\max} \le \max(a, b) + \|L\|_2^2$.
    """
    if isinstance(cov, SubspaceCov):
        lo = jnp.minimum(cov.scale_S, cov.scale_perp) if m < d else cov.scale_S
        top = singular_values(cov.factor.T)[0] ** 2 if cov.factor.shape[1] else 0.0
        return lo, jnp.maximum(cov.scale_S, cov.scale_perp) + top
    # Symmetrise so that eigvalsh sees exactly the matrix whose quadratic form we use (pure-JAX
    # Jacobi, `linfeat._eigh`: batched LAPACK kernels can deadlock in jitted vmaps on CPU).
    w = eigvalsh(0.5 * (cov + cov.T))
    return w[0], w[-1]
