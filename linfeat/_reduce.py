r"""The exact reduction of a problem to a state and a frame of size independent of d.

docs/theory.md, section 2. FT moves B only inside S = rowspace(X) (R1), so with Q the right
singular vectors of X (`row_space_basis`: $Q^TX^TXQ = \mathrm{diag}(s^2)$) the flow is a flow
of $(v, A = BQ)$, and $B(t) = B_0 + (A(t) - A_0)Q^T$.

Every metric is a quadratic form in vectors of the *frame* $G = [Q, B_0^T, r_w, D^T]$ with
$r_w = w^* - B_0^T B_0 w^*$ (the part of $w^*$ that $B_0$ cannot express) and
$D = B^* - B_0$ (when $B^*$ is known): the prediction error is
$e = B^Tv - w^* = G\,c_e$ with $c_e = ((A - A_0)^Tv,\ v - B_0w^*,\ -1,\ 0)$, and
$e^T\Sigma e = c_e^T (G^T\Sigma G) c_e$. Only Gram matrices of G enter, never an orthonormal
basis of it, for two reasons:

- **derivatives**: G is a smooth function of the problem's arrays, also where its columns
  are dependent ($\varepsilon = 0$ makes $D = 0$ and $r_w = 0$); an orthonormal basis of
  span(G) jumps in dimension there and has no derivative;
- **accuracy**: the blocks of $c_e$ and of G are small exactly when e is small (for LP,
  $v - B_0w^* = O(\varepsilon)$ and $\|r_w\|, \|D\| = O(\varepsilon)$), so the quadratic forms
  keep their relative accuracy as $\varepsilon \to 0$, with no cancellation of O(1) terms.

The set-up is $O(d\,p^2)$, $p = r + 2k + 1$, with no LAPACK call (`linfeat._linalg`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._cov import SubspaceCov
from ._flows import FlowData
from ._linalg import row_space_basis
from ._problem import Problem


class Reduced(NamedTuple):
    r"""A problem in the exact small coordinates (see the module docstring).

    Attributes:
        basis: Q (d, r), right singular vectors of X (zero columns where $s = 0$).
        mask_S: (r,) 1 where the column of Q is in S, 0 for a zero singular value.
        sigma2, g: the flow's data: $s^2$ and $Q^TX^TY$ (`linfeat._flows.FlowData`).
        XQ: $XQ$ (n, r), for the training loss; Y: the labels.
        A0: $B_0Q$ (k, r), the initial state of the features.
        b: $B_0 w^*$ (k,), the best head for the pretrained features on the whole space.
        gram, id_gram, ood_gram: $G^TG$, $G^T\Sigma_{id}G$, $G^T\Sigma_{ood}G$ (p, p).
        v_star: $v^*$ or None (then G has no D block).
    """

    # Typed field declarations (jaxtyping shapes); Problem, Reduced and Trajectory each declare
    # their own, so `duplicates` pairs these same-shape lines: declarations, not logic.
    basis: Float[Array, "d r"]
    mask_S: Float[Array, " r"]
    sigma2: Float[Array, " r"]
    g: Float[Array, " r"]
    XQ: Float[Array, "n r"]
    Y: Float[Array, " n"]
    A0: Float[Array, "k r"]
    b: Float[Array, " k"]
    gram: Float[Array, "p p"]
    id_gram: Float[Array, "p p"]
    ood_gram: Float[Array, "p p"]
    v_star: Float[Array, " k"] | None

    @property
    def r(self) -> int:
        return self.sigma2.shape[-1]

    @property
    def k(self) -> int:
        return self.A0.shape[-2]

    @property
    def flow_data(self) -> FlowData:
        return FlowData(self.sigma2, self.g)


def _frame_cov(cov, G, QtG) -> Float[Array, "p p"]:
    r"""$G^T\Sigma G$; for $\Sigma = a\Pi_S + b\Pi_\perp + LL^T$ from $Q^TG$ and $L^TG$."""
    if isinstance(cov, SubspaceCov):
        GS = QtG.T @ QtG  # G^T Pi_S G
        LG = cov.factor.T @ G
        return cov.scale_S * GS + cov.scale_perp * (G.T @ G - GS) + LG.T @ LG
    return G.T @ (cov @ G)


@jax.jit  # one compiled program per shape for eager calls; inlines under a caller's jit
def reduce(problem: Problem) -> Reduced:
    """The exact small coordinates of `problem` (one instance; vmap for batches)."""
    X, Y, B0, w = problem.X, problem.Y, problem.B0, problem.w_star
    Q, _, mask = row_space_basis(X)
    XQ = X @ Q
    A0 = B0 @ Q
    b = B0 @ w
    r_w = w - B0.T @ b
    cols = [Q, B0.T, r_w[:, None]]
    if problem.B_star is not None:
        cols.append((problem.B_star - B0).T)
    G = jnp.concatenate(cols, axis=1)
    gram = G.T @ G
    QtG = gram[: Q.shape[1]]
    return Reduced(
        basis=Q,
        mask_S=mask,
        sigma2=jnp.sum(XQ**2, axis=0),
        g=XQ.T @ Y,
        XQ=XQ,
        Y=Y,
        A0=A0,
        b=b,
        gram=gram,
        id_gram=_frame_cov(problem.id_cov, G, QtG),
        ood_gram=_frame_cov(problem.ood_cov, G, QtG),
        v_star=problem.v_star if problem.B_star is not None else None,
    )


def error_coefficients(red: Reduced, v, A) -> Float[Array, " p"]:
    r"""$c_e$ with $e = B^Tv - w^* = G c_e$ at the point (v, A = BQ)."""
    k = red.k
    extra = red.gram.shape[-1] - red.r - k - 1
    return jnp.concatenate(
        [(A - red.A0).T @ v, v - red.b, -jnp.ones((1,), v.dtype), jnp.zeros((extra,), v.dtype)]
    )


def feature_rows(red: Reduced, A) -> Float[Array, "k p"]:
    r"""Rows of B in the frame: $B = H G^T$ with $H = [A - A_0, I, 0, 0]$."""
    k = red.k
    extra = red.gram.shape[-1] - red.r - k - 1
    return jnp.concatenate(
        [A - red.A0, jnp.eye(k, dtype=A.dtype), jnp.zeros((k, 1 + extra), A.dtype)], axis=1
    )
