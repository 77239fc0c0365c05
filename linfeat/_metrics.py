r"""Errors, feature distortion and the theory's constants (THEORY.md section 1).

Every function takes a `Problem` (dense, in $R^d$) or a `Reduced` problem (coordinates of an
orthonormal basis, see `linfeat._reduce`) with parameters in the same space: the formulas are
the same, only the projector onto S differs. All are jit/vmap friendly; write for one
instance and vmap for batches.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._cov import quad_form
from ._linalg import row_space_basis, singular_values
from ._problem import Problem
from ._reduce import Reduced


def _S_basis(X: Float[Array, "n d"]) -> Float[Array, "d r"]:
    """Orthonormal basis of rowspace(X), with zero columns for null singular values."""
    return row_space_basis(X)[0]


def project_S(problem: Problem | Reduced, M: Float[Array, "... d"]) -> Float[Array, "... d"]:
    r"""$M \Pi_S$: projects the last axis of M onto S = rowspace(X)."""
    if isinstance(problem, Reduced):
        return M * problem.mask_S
    Q = _S_basis(problem.X)
    return (M @ Q) @ Q.T


def prediction_error(problem, v: Float[Array, " k"], B: Float[Array, "k d"]) -> Float[Array, " d"]:
    r"""$e = B^T v - w^*$, the error of the effective linear predictor."""
    return B.T @ v - problem.w_star


def train_loss(problem, v, B) -> Float[Array, ""]:
    r"""$\hat L(v, B) = \|X B^T v - Y\|^2$ (the paper's unnormalised loss)."""
    r = problem.X @ (B.T @ v) - problem.Y
    return jnp.sum(r**2)


def ood_error(problem, v, B) -> Float[Array, ""]:
    r"""$L_{ood} = e^T \Sigma e$ (R3), $\Sigma$ the OOD second moment."""
    e = prediction_error(problem, v, B)
    return quad_form(problem.ood_cov, e, project_S(problem, e))


def id_error(problem, v, B) -> Float[Array, ""]:
    r"""$L_{id} = e^T \Sigma_{id} e$ for the ID second moment."""
    e = prediction_error(problem, v, B)
    return quad_form(problem.id_cov, e, project_S(problem, e))


def id_subspace_error(problem, v, B) -> Float[Array, ""]:
    r"""$\|\Pi_S e\|^2$, the worst-case ID error over unit inputs in S (R9)."""
    return jnp.sum(project_S(problem, prediction_error(problem, v, B)) ** 2)


def feature_alignment(
    B: Float[Array, "k d"], B_star: Float[Array, "k d"]
) -> tuple[Float[Array, ""], Float[Array, "k k"]]:
    r"""Procrustes alignment: $(\|B - U B^*\|_2, U)$ with $U = P Q^T$, $B B^{*T} = P\Lambda Q^T$.

    For orthonormal rows this is the feature error $d(B, B^*) = \min_U \|B - U B^*\|_2
    = 2\sin(\theta_{max}/2)$ [derived, THEORY.md section 1]; for other B it is an upper bound on
    the minimum, which is all the bounds need.
    """
    P, _, Qt = jnp.linalg.svd(B @ B_star.T)
    U = P @ Qt
    return singular_values(B - U @ B_star)[0], U


def feature_distance(B: Float[Array, "k d"], B_star: Float[Array, "k d"]) -> Float[Array, ""]:
    r"""$d(B, B^*)$ via the Procrustes rotation (see `feature_alignment`)."""
    return feature_alignment(B, B_star)[0]


def feature_change(problem, B) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""$(\|(B - B_0)\Pi_S\|_F, \|(B - B_0)\Pi_{S^\perp}\|_F)$; the second is 0 under FT (R1)."""
    D = B - problem.B0
    DS = project_S(problem, D)
    return jnp.linalg.norm(DS), jnp.linalg.norm(D - DS)


def balancedness_drift(v, B, v0, B0) -> Float[Array, ""]:
    r"""$\|v v^T - B B^T - (v_0 v_0^T - B_0 B_0^T)\|_F$, conserved by the FT flow (R2)."""
    return jnp.linalg.norm(jnp.outer(v, v) - B @ B.T - jnp.outer(v0, v0) + B0 @ B0.T)


def gradient_norm(problem, v, B, *, train_features: bool = True) -> Float[Array, ""]:
    r"""$\|\nabla \hat L\|$ over the trained parameters.

    $\nabla_v = 2BX^Tr$, $\nabla_B = 2v(X^Tr)^T$ (the second only when features train).
    """
    r = problem.X @ (B.T @ v) - problem.Y
    Xr = problem.X.T @ r
    gv2 = jnp.sum((2 * B @ Xr) ** 2)
    if not train_features:
        return jnp.sqrt(gv2)
    return jnp.sqrt(gv2 + 4 * jnp.sum(v**2) * jnp.sum(Xr**2))


def principal_constants(problem) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""$(c_S, c_\perp) = (\sigma_k(\Pi_S B_0^T), \sigma_k(\Pi_{S^\perp} B_0^T))$ (THEORY.md §1)."""
    BS = project_S(problem, problem.B0)
    sS = singular_values(BS)
    sP = singular_values(problem.B0 - BS)
    return sS[-1], sP[-1]


def aligned_head(problem) -> Float[Array, " k"]:
    r"""$a^* = U v^*$, the true head in the frame of $B_0$ ($B_0 \approx U B^*$)."""
    _require_truth(problem)
    _, U = feature_alignment(problem.B0, problem.B_star)
    return U @ problem.v_star


def head_alignment_error(problem, v0: Float[Array, " k"]) -> Float[Array, ""]:
    r"""$\varphi = |(v_0^T a^*)^2 - \|a^*\|^4|^{1/2}$ [paper, R5]; blind to the sign of $v_0$."""
    a = aligned_head(problem)
    return jnp.sqrt(jnp.abs((v0 @ a) ** 2 - jnp.sum(a**2) ** 2))


def pretrained_feature_error(problem) -> Float[Array, ""]:
    r"""$\varepsilon = d(B_0, B^*)$."""
    _require_truth(problem)
    return feature_distance(problem.B0, problem.B_star)


def _require_truth(problem) -> None:
    if problem.B_star is None or problem.v_star is None:
        raise ValueError(
            "this quantity needs the true features: build the problem with `B_star` and "
            "`v_star` (w_star alone does not fix them)."
        )


class Metrics(NamedTuple):
    """Metrics of one parameter point (each a scalar; a time axis under a trajectory).

    `feature_distance` is NaN when the problem has no `B_star`.
    """

    train_loss: Float[Array, "*T"]
    id_error: Float[Array, "*T"]
    id_subspace_error: Float[Array, "*T"]
    ood_error: Float[Array, "*T"]
    feature_distance: Float[Array, "*T"]
    feature_change_S: Float[Array, "*T"]
    feature_change_perp: Float[Array, "*T"]
    balancedness_drift: Float[Array, "*T"]
    grad_norm: Float[Array, "*T"]


def metrics(problem, v, B, v0, B0, *, train_features: bool = True) -> Metrics:
    """All `Metrics` at one point (v, B) of a flow started at (v0, B0)."""
    fS, fP = feature_change(problem, B)
    if problem.B_star is None:
        dist = jnp.full((), jnp.nan, B.dtype)
    else:
        dist = feature_distance(B, problem.B_star)
    return Metrics(
        train_loss=train_loss(problem, v, B),
        id_error=id_error(problem, v, B),
        id_subspace_error=id_subspace_error(problem, v, B),
        ood_error=ood_error(problem, v, B),
        feature_distance=dist,
        feature_change_S=fS,
        feature_change_perp=fP,
        balancedness_drift=balancedness_drift(v, B, v0, B0),
        grad_norm=gradient_norm(problem, v, B, train_features=train_features),
    )
