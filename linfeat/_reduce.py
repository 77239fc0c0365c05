r"""Exact compression of a problem to a small orthonormal basis (THEORY.md section 2).

Every quantity linfeat tracks lives in $\mathrm{span}(W)$, $W = [Q, R]$, where the columns of
Q are the right singular vectors of X (so S = rowspace(X) is spanned by the first block and
$X^T X$ is diagonal there) and R completes $B_0^T$, $w^*$ and $B^{*T}$. Columns of W are
orthonormal or exactly zero (directions of numerical rank zero), so $W^T W$ is a 0/1 diagonal
and norms of vectors in the span are preserved. FT only moves B inside
S (R1), so $B(t) = B_0 + C(t) Q^T$ stays in the span, and the flow in coordinates
$B_c = B W$ is the same flow as in $R^d$: with $X = X W W^T$,
$\dot B_c = -2 v r^T X W$ and $\dot v = -2 B_c (X W)^T r$. The dimension is
$p \le \min(n, d) + 2k + 1$, independent of d; the set-up is one SVD and one QR, $O(d p^2)$.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._cov import compress_cov
from ._linalg import complete_basis, row_space_basis
from ._problem import Problem


class Reduced(NamedTuple):
    r"""A problem in the coordinates of an orthonormal basis W (d, p).

    The first `r = n` coordinates are the right singular vectors of X; `mask_S` marks
    those with non-zero singular value (S itself). Dense second moments are $W^T \Sigma W$.
    `sigma2` and `g` are the diagonal $X_S^T X_S$ and $X_S^T Y$ of the reduced flow.
    """

    basis: Float[Array, "d p"]
    mask_S: Float[Array, " p"]
    X: Float[Array, "n p"]
    Y: Float[Array, " n"]
    B0: Float[Array, "k p"]
    w_star: Float[Array, " p"]
    B_star: Float[Array, "k p"] | None
    v_star: Float[Array, " k"] | None
    id_cov: Float[Array, "p p"]
    ood_cov: Float[Array, "p p"]
    sigma2: Float[Array, " r"]
    g: Float[Array, " r"]

    @property
    def r(self) -> int:
        return self.sigma2.shape[-1]


def reduce(problem: Problem, extra: Float[Array, "d q"] | None = None) -> Reduced:
    """Compresses `problem` to the exact small basis; `extra` columns are added to the span.

    Write the maths for one problem; vmap for batches.
    """
    X = problem.X
    Q, _, mask_r = row_space_basis(X)
    r = Q.shape[1]
    cols = [problem.B0.T, problem.w_star[:, None]]
    if problem.B_star is not None:
        cols.append(problem.B_star.T)
    if extra is not None:
        cols.append(extra)
    W = jnp.concatenate([Q, complete_basis(Q, jnp.concatenate(cols, axis=1))], axis=1)
    p = W.shape[1]
    mask_S = jnp.zeros((p,), X.dtype).at[:r].set(mask_r)
    # X has rows in S: its coordinates outside the S block are rounding noise; drop them, and
    # the directions of zero singular value, so the reduced flow is exactly frozen there.
    Xc = (X @ W) * mask_S
    XS = Xc[:, :r]
    return Reduced(
        basis=W,
        mask_S=mask_S,
        X=Xc,
        Y=problem.Y,
        B0=problem.B0 @ W,
        w_star=W.T @ problem.w_star,
        B_star=None if problem.B_star is None else problem.B_star @ W,
        v_star=problem.v_star,
        id_cov=compress_cov(problem.id_cov, W, mask_S),
        ood_cov=compress_cov(problem.ood_cov, W, mask_S),
        sigma2=jnp.sum(XS**2, axis=0),
        g=XS.T @ problem.Y,
    )
