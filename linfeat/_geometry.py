r"""Geometry of features and inputs: Procrustes alignment, feature distances, S, kappa.

The quantities of docs/theory.md, section 1 that everything else is built on: the
Procrustes rotation $U$ and distance $d(B, B^*) = \|B - UB^*\|_2$, the largest principal
angle, the projector on $S = \operatorname{rowspace}(X)$, the constants $c_S, c_\perp$, the
condition number $\kappa(X)$, the numerical rank $m$, and the head alignment error
$\varphi$. Pure `jax.numpy`, one instance per call, jit/vmap friendly; no LAPACK routine is
called directly (singular values and polar factors come from `linfeat._linalg` and
`linfeat._eigh`). This module depends on no other part of linfeat's model, so `_problem`,
`_metrics` and the theory modules can all import it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _theory_args as A
from . import _validate as V
from ._eigh import polar
from ._linalg import row_space_basis, singular_values
from ._theory_args import Features, Head, Inputs, Rotation, ScalarOut


def _S_basis(X: Float[Array, "n d"]) -> Float[Array, "d r"]:
    """Orthonormal basis of rowspace(X), with zero columns for null singular values."""
    return row_space_basis(X)[0]


@jax.jit
def project_S(problem, M: Float[Array, "... d"]) -> Float[Array, "... d"]:
    r"""$M \Pi_S$: projects the last axis of M onto S = rowspace(X)."""
    Q = _S_basis(problem.X)
    return (M @ Q) @ Q.T


@jax.jit
def principal_constants(problem) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""$(c_S, c_\perp) = (\sigma_k(\Pi_S B_0^T), \sigma_k(\Pi_{S^\perp} B_0^T))$.

    docs/theory.md, section 1.5.
    """
    BS = project_S(problem, problem.B0)
    sS = singular_values(BS)
    sP = singular_values(problem.B0 - BS)
    return sS[-1], sP[-1]


@jax.jit
def _procrustes(B, B_star):
    U = polar(B @ B_star.T)
    return singular_values(B - U @ B_star)[0], U


def procrustes(B0: Features, B_star: Features) -> tuple[ScalarOut, Rotation]:
    r"""Procrustes alignment of the true features to the pretrained ones: `(dist, U)`.

    $U = P Q^T$ where $B_0 B^{*T} = P \Lambda Q^T$ (SVD), and
    $\mathrm{dist} = \|B_0 - U B^*\|_2$ (spectral norm). For orthonormal rows $U$ minimises
    $\|B_0 - U B^*\|_2$ over orthogonal $U$ and the minimum is $2\sin(\theta_{\max}/2)$
    [derived, docs/theory.md, section 1]. The aligned head is $a^* = U v^*$.

    Args:
        B0: pretrained features, orthonormal rows.
        B_star: true features, orthonormal rows.

    Returns:
        `(dist, U)`: $\|B_0 - U B^*\|_2$ and the orthogonal (k, k) factor.
    """
    A.check_matrix("procrustes", "B0", B0, 2)
    A.check_matrix("procrustes", "B_star", B_star, 2)
    return _procrustes(jnp.asarray(B0), jnp.asarray(B_star))


@jax.jit
def feature_distance(B: Float[Array, "k d"], B_star: Float[Array, "k d"]) -> Float[Array, ""]:
    r"""Feature error $d(B, B^*) = \min_U \|B - U B^*\|_2$ over orthogonal U (docs/theory.md, 1).

    Evaluated with the Procrustes rotation (`linfeat.theory.procrustes`): for orthonormal
    rows this is the minimum, $2\sin(\theta_{max}/2)$ [derived]; for other B it is an upper
    bound on the minimum, which is all the bounds need.

    Args:
        B: features (k, d).
        B_star: true features (k, d), orthonormal rows.

    Returns:
        $\|B - UB^*\|_2 \ge 0$.
    """
    return _procrustes(B, B_star)[0]


def principal_angle_distance(B0: Features, B_star: Features) -> ScalarOut:
    r"""Feature distance from the largest principal angle: $2\sin(\theta_{\max}/2)$.

    [derived, docs/theory.md, section 1] For orthonormal rows,
    $d(B_0, B^*) = 2\sin(\theta_{\max}/2)$
    with $\theta_{\max}$ the largest principal angle between the row spaces. The cosines are
    the singular values of $B_0 B^{*T}$ and the sines those of $B_0 (I - B^{*T} B^*)$; taking
    $\theta_{\max} = \operatorname{atan2}(\sin_{\max}, \cos_{\min})$ is accurate at both ends,
    where `arccos` of the cosine alone returns 0 for angles below about 1e-8
    (Björck & Golub, 1973).

    Args:
        B0: pretrained features, orthonormal rows.
        B_star: true features, orthonormal rows.

    Returns:
        $2\sin(\theta_{\max}/2) \in [0, \sqrt 2]$.
    """
    A.check_matrix("principal_angle_distance", "B0", B0, 2)
    A.check_matrix("principal_angle_distance", "B_star", B_star, 2)
    return _principal_angle_distance(jnp.asarray(B0), jnp.asarray(B_star))


@jax.jit
def _principal_angle_distance(B0, B_star):
    overlap = B0 @ B_star.T
    cosines = singular_values(overlap)  # k x k; no direct LAPACK call here (see _linalg)
    # Rows of B0 minus their projection on rowspace(B*): singular values are sin(theta_i).
    sines = singular_values(B0 - overlap @ B_star)
    # atan2 needs no clipping: a cosine rounded above 1 only moves theta by O(eps).
    theta_max = jnp.arctan2(jnp.max(sines), jnp.min(cosines))
    return 2.0 * jnp.sin(theta_max / 2.0)


@jax.jit
def _input_spectrum(X: Float[Array, "n d"]) -> tuple[Float[Array, " r"], Float[Array, " r"]]:
    r"""Singular values of X (descending) and the mask of those above the rank cut-off.

    The cut-off is LAPACK's numerical-rank rule $\max(n, d)\,\epsilon\,\sigma_{\max}$; the
    values come from the wide side of X (`singular_values`, no d x d workspace).
    """
    s = singular_values(X) if X.shape[0] <= X.shape[1] else singular_values(X.T)
    cut = max(X.shape) * jnp.finfo(s.dtype).eps * jnp.max(s)
    return s, s > cut


def _kappa_from_spectrum(s, keep) -> tuple[ScalarOut, ScalarOut]:
    """(kappa, smallest kept singular value), both NaN when nothing is kept (X = 0)."""
    s_min_pos = jnp.min(jnp.where(keep, s, jnp.inf))
    ok = jnp.isfinite(s_min_pos)
    nan = jnp.full((), jnp.nan, s.dtype)
    return jnp.where(ok, jnp.max(s) / s_min_pos, nan), jnp.where(ok, s_min_pos, nan)


def numerical_rank(X: Inputs) -> Float[Array, ""]:
    r"""$m = \dim S = \operatorname{rank}(X)$, counted as the singular values above the cut-off.

    The cut-off is $\max(n, d)\,\epsilon\,\sigma_{\max}$ (as in `kappa`). Returns an integer
    array, so it jits and vmaps (use `jnp.where` on it, not a Python `if`); 0 for X = 0.

    Args:
        X: training inputs, rows are examples.

    Returns:
        The numerical rank, an int32 scalar array.
    """
    A.check_matrix("numerical_rank", "X", X, 2)
    return _numerical_rank(jnp.asarray(X))


@jax.jit
def _numerical_rank(X):
    return jnp.sum(_input_spectrum(X)[1], dtype=jnp.int32)


def kappa(X: Inputs) -> ScalarOut:
    r"""Condition number of the training inputs on their row space: $\sigma_{\max}/\sigma^+_{\min}$.

    $\kappa(X) = \sigma_{\max}(X) / \sigma^+_{\min}(X)$, $\sigma^+_{\min}$ the smallest singular
    value above the LAPACK-style numerical-rank cut-off $\max(n, d)\,\epsilon\,\sigma_{\max}$
    (R7) [derived]. NaN when X is zero. jit friendly (a mask, no data-dependent shapes).

    Args:
        X: training inputs, rows are examples.

    Returns:
        $\kappa(X) \ge 1$.
    """
    A.check_matrix("kappa", "X", X, 2)
    return _kappa(jnp.asarray(X))


@jax.jit
def _kappa(X):
    return _kappa_from_spectrum(*_input_spectrum(X))[0]


def head_alignment_error(v0: Head, a_star: Head) -> ScalarOut:
    r"""Head alignment error $\varphi = \sqrt{|(v_0^T a^*)^2 - \|a^*\|^4|}$ (R5, R6) [paper].

    Evaluated as $\sqrt{|v_0^T a^* - \|a^*\|^2| \, |v_0^T a^* + \|a^*\|^2|}$: near the zeros
    $v_0^T a^* = \pm\|a^*\|^2$ this avoids subtracting the two nearly equal squares (the error
    is then that of $v_0^T a^*$ itself). vmap over heads for batches.
    `problem_constants(problem, v0).phi` is this formula with $a^*$ from the problem.

    Args:
        v0: initial head (k,).
        a_star: aligned true head $a^* = U v^*$ (k,) (see `procrustes`).

    Returns:
        $\varphi \ge 0$.

    Raises:
        ValueError: for concrete inputs that are not finite 1-D arrays of the same length.
    """
    fn = "head_alignment_error"
    A.check_matrix(fn, "v0", v0, 1)
    A.check_matrix(fn, "a_star", a_star, 1)
    if V.is_concrete(v0, a_star) and np.shape(v0) != np.shape(a_star):
        raise ValueError(
            f"{fn}: `v0` has shape {np.shape(v0)} but `a_star` has {np.shape(a_star)}; pass a "
            "head and an aligned true head of the same length k (vmap for batches)."
        )
    v0 = jnp.asarray(v0)
    a_star = jnp.asarray(a_star)
    z = jnp.dot(v0, a_star)
    a2 = jnp.dot(a_star, a_star)
    return jnp.sqrt(jnp.abs(z - a2) * jnp.abs(z + a2))
