r"""Orthonormal bases from small Gram matrices (eigh), never a QR or SVD of a tall matrix.

Why: on CPU, `jnp.linalg.qr` of a 200 x 51 matrix took 98 ms and `svd` of 1e5 x 71 took 2.5 s
(jax 0.10.2), while the Gram route (a c x c `eigh` plus matmuls, $O(d c^2)$) took 0.4 ms and
0.19 s. Accuracy is restored by a second pass (the "CholeskyQR2" idea with eigh): after one
pass the columns are orthonormal to $O(\kappa^2 \epsilon)$, after two to $O(\epsilon)$ for
$\kappa < 10^{7}$. Columns of numerical rank zero come back as exact zero columns.

Every decomposition here is `linfeat._eigh` (pure-JAX Jacobi, no LAPACK custom call: batched
LAPACK kernels can deadlock on a 2-core CPU inside one jitted program), whose derivative is
finite at repeated eigenvalues (Gram matrices of rank-deficient data have many zeros); masked
reciprocals use a double `where`, so no NaN reaches a gradient either.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._eigh import eigh, svdvals


def _rank_cut(lam: Float[Array, " c"], rows: int) -> Float[Array, ""]:
    """Eigenvalue cut-off of a Gram matrix: (max(rows, c) * eps)^2-relative in singular values,
    loosened to sqrt(eps)-level since Gram eigenvalues carry absolute error ~ eps * lam_max."""
    eps = jnp.finfo(lam.dtype).eps
    return max(rows, lam.shape[0]) * eps * jnp.max(lam, initial=0.0)


def _one_pass(M: Float[Array, "d c"]) -> tuple[Float[Array, "d c"], Float[Array, " c"]]:
    lam, V = eigh(M.T @ M)
    keep = lam > _rank_cut(lam, M.shape[0])
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    # Columns of M V diag(lam^-1/2) are orthonormal, or exactly zero where lam is cut.
    return (M @ V) * inv_sqrt, keep.astype(M.dtype)


def orthonormalize(M: Float[Array, "d c"]) -> Float[Array, "d c"]:
    r"""Columns spanning span(M), each orthonormal or exactly zero (two eigh passes).

    A deterministic function of $M$ that commutes with left-orthogonal maps ($M \to OM$ leaves
    $M^TM$ unchanged), so for Gaussian M the result is Haar-distributed on the Stiefel manifold.
    """
    W, _ = _one_pass(M)
    W, _ = _one_pass(W)
    return W


def polar(M: Float[Array, "d c"]) -> Float[Array, "d c"]:
    r"""The polar factor $M (M^TM)^{-1/2}$: the closest matrix to M with orthonormal columns.

    M must have full column rank. A final Newton-Schulz step $P(3I - P^TP)/2$ changes the
    value only by rounding but makes the derivative exactly tangent to the Stiefel manifold,
    also where $M^TM$ has repeated eigenvalues (e.g. M already orthonormal), at which the
    eigenvector derivative alone drops the coupling inside the degenerate eigenspace.
    """
    lam, V = eigh(M.T @ M)
    P = (M @ V) / jnp.sqrt(lam) @ V.T
    lam, V = eigh(P.T @ P)  # second pass: orthonormal to rounding
    P = (P @ V) / jnp.sqrt(lam) @ V.T
    return P @ (1.5 * jnp.eye(P.shape[1], dtype=P.dtype) - 0.5 * (P.T @ P))


def complete_basis(Q: Float[Array, "d r"], E: Float[Array, "d q"]) -> Float[Array, "d q"]:
    r"""Orthonormal columns spanning $(I - QQ^T)\,\mathrm{span}(E)$ (block Gram-Schmidt, twice).

    Q must have orthonormal (or zero) columns. Directions of E inside span(Q) become zero
    columns, so `[Q, complete_basis(Q, E)]` has orthonormal or zero columns.
    """
    for _ in range(2):  # classical block Gram-Schmidt needs a second pass for orthogonality
        E = E - Q @ (Q.T @ E)
        E = orthonormalize(E)
    return E


def row_space_basis(
    X: Float[Array, "n d"],
) -> tuple[Float[Array, "d n"], Float[Array, " n"], Float[Array, " n"]]:
    r"""$(Q, s^2, \text{mask})$: right singular vectors of X, squared singular values, rank mask.

    From the n x n Gram matrix $X X^T = U \mathrm{diag}(s^2) U^T$: $Q = X^T U \mathrm{diag}(1/s)$,
    then a second pass in the r x r Gram $(XQ)^T(XQ)$, which makes Q orthonormal to rounding
    and $Q^T X^T X Q$ diagonal. Columns of zero singular value are zero.
    """
    lam, U = eigh(X @ X.T)
    lam, U = lam[::-1], U[:, ::-1]  # descending, like an SVD
    keep = lam > _rank_cut(lam, X.shape[1])
    inv_s = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    Q = (X.T @ U) * inv_s
    Q = orthonormalize(Q)
    XQ = X @ Q
    lam2, V = eigh(XQ.T @ XQ)
    lam2, V = lam2[::-1], V[:, ::-1]
    Q = Q @ V
    keep2 = (lam2 > _rank_cut(lam2, X.shape[1])) & (jnp.sum(Q**2, axis=0) > 0.5)
    mask = keep2.astype(X.dtype)
    return Q * mask, jnp.maximum(lam2, 0.0) * mask, mask


def singular_values(M: Float[Array, "k d"]) -> Float[Array, " k"]:
    r"""Singular values of a wide matrix without a d x d workspace (descending).

    `jnp.linalg.svd(M, compute_uv=False)` of a 10 x 10000 matrix allocated 800 MB on CPU
    (jax 0.10.2): it forms the full right factor. Here $M = (MQ)Q^T$ with Q an orthonormal
    basis of rowspace(M) (`orthonormalize`, relative accuracy), and the singular values are
    those of $MQ$ (k x k, `linfeat._eigh.svdvals`).
    """
    k, d = M.shape
    if d <= k:
        return svdvals(M)
    return svdvals(M @ orthonormalize(M.T))
