r"""Closed-form linear probing (docs/theory.md, section 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._eigh import lstsq
from ._problem import Problem


@jax.jit  # one compiled program per shape for eager calls; inlines under a caller's jit
def linear_probe(problem: Problem, v0: Float[Array, " k"] | None = None) -> Float[Array, " k"]:
    r"""The limit of the LP flow: $v_{lp}^\infty = v_0 + A^+ (Y - A v_0)$, $A = X B_0^T$.

    The LP flow $\dot v = -2A^T(Av - Y)$ moves v only inside rowspace(A), so its limit is the
    least-squares solution closest to $v_0$; with $v_0 = 0$ (default) the minimum-norm one.
    If $c_S > 0$ it is the unique $(B_0 X^T X B_0^T)^{-1} B_0 X^T Y$ [derived; R4, R7].
    Write for one problem; vmap for batches.
    """
    A = problem.X @ problem.B0.T
    if v0 is None:
        v0 = jnp.zeros(A.shape[1], A.dtype)
    # lstsq (SVD with LAPACK's relative cut-off, from k x k Gram matrices: `linfeat._eigh`,
    # no LAPACK call) is the minimum-norm solution of A u = Y - A v0.
    return v0 + lstsq(A, problem.Y - A @ v0)
