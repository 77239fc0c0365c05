r"""Errors, feature distortion and the theory's constants (docs/theory.md, section 1).

Two families with the same formulas: the public functions take a `Problem` and parameters
(v, B) in $R^d$; `reduced_metrics` takes the exact small coordinates of `linfeat._reduce`
(v, A = BQ) and evaluates every quadratic form through the frame's Gram matrices, with cost
independent of d. All are jit/vmap friendly and make no LAPACK call (small symmetric
eigenproblems go through `linfeat._eigh`); write for one instance and vmap for batches.

The public functions are compiled (`jax.jit`) after their concrete arguments are validated:
an eager call then runs one compiled program instead of dozens of op-by-op dispatches, each
with its own small compile (measured: the first eager `theory.problem_constants` took 17 s
op by op, 8.5 s as one program). Inside a caller's `jit`/`vmap`/`grad` they inline as before.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _validate as V
from ._cov import quad_form
from ._eigh import _safe_sqrt, eigh
from ._geometry import _procrustes, feature_distance, project_S
from ._lambda_max import lambda_max
from ._polar import polar_factor
from ._reduce import Reduced, error_coefficients, feature_rows


def _check_point(problem, v, B, names=("v", "B")) -> None:
    """Validates a concrete parameter point (v, B) against the problem (skipped under jit)."""
    if not V.is_concrete(v, B) or not hasattr(problem, "B0"):
        return
    k, d = problem.B0.shape[-2:]
    V.check_real_float(names[0], v, allow_int=True)
    V.check_real_float(names[1], B, allow_int=True)
    V.as_array(names[0], v, shape=(k,))
    V.as_array(names[1], B, shape=(k, d))


def _at_point(fn):
    """`fn(problem, v, B)` compiled, with a concrete (v, B) validated before the call."""
    compiled = jax.jit(fn)

    @functools.wraps(fn)
    def checked(problem, v, B):
        _check_point(problem, v, B)
        return compiled(problem, v, B)

    return checked


@_at_point
def prediction_error(problem, v: Float[Array, " k"], B: Float[Array, "k d"]) -> Float[Array, " d"]:
    r"""$e = B^T v - w^*$, the error of the effective linear predictor."""
    return B.T @ v - problem.w_star


@_at_point
def train_loss(problem, v, B) -> Float[Array, ""]:
    r"""$\hat L(v, B) = \|X B^T v - Y\|^2$ (the paper's unnormalised loss)."""
    r = problem.X @ (B.T @ v) - problem.Y
    return jnp.sum(r**2)


@_at_point
def ood_error(problem, v, B) -> Float[Array, ""]:
    r"""$L_{ood} = e^T \Sigma e$ (R3), $\Sigma$ the OOD second moment."""
    e = prediction_error(problem, v, B)
    return quad_form(problem.ood_cov, e, project_S(problem, e))


@_at_point
def id_error(problem, v, B) -> Float[Array, ""]:
    r"""$L_{id} = e^T \Sigma_{id} e$ for the ID second moment."""
    e = prediction_error(problem, v, B)
    return quad_form(problem.id_cov, e, project_S(problem, e))


@_at_point
def id_subspace_error(problem, v, B) -> Float[Array, ""]:
    r"""$\|\Pi_S e\|^2$, the worst-case ID error over unit inputs in S (R9)."""
    return jnp.sum(project_S(problem, prediction_error(problem, v, B)) ** 2)


@jax.jit
def feature_change(problem, B) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""$(\|(B - B_0)\Pi_S\|_F, \|(B - B_0)\Pi_{S^\perp}\|_F)$; the second is 0 under FT (R1)."""
    D = B - problem.B0
    DS = project_S(problem, D)
    return jnp.linalg.norm(DS), jnp.linalg.norm(D - DS)


@jax.jit
def balancedness_drift(v, B, v0, B0) -> Float[Array, ""]:
    r"""$\|v v^T - B B^T - (v_0 v_0^T - B_0 B_0^T)\|_F$, conserved by the FT flow (R2)."""
    return jnp.linalg.norm(jnp.outer(v, v) - B @ B.T - jnp.outer(v0, v0) + B0 @ B0.T)


@functools.partial(jax.jit, static_argnames="train_features")
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


@jax.jit
def aligned_head(problem) -> Float[Array, " k"]:
    r"""$a^* = U v^*$, the true head in the frame of $B_0$ ($B_0 \approx U B^*$)."""
    _require_truth(problem)
    _, U = _procrustes(problem.B0, problem.B_star)
    return U @ problem.v_star


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
    _check_point(problem, v, B)
    _check_point(problem, v0, B0, names=("v0", "B0"))
    return _metrics(problem, v, B, v0, B0, train_features=train_features)


@functools.partial(jax.jit, static_argnames="train_features")
def _metrics(problem, v, B, v0, B0, *, train_features: bool = True) -> Metrics:
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


def _norm(x) -> Float[Array, ""]:
    """Frobenius norm with a finite derivative at 0 (where `jnp.linalg.norm`'s is NaN)."""
    sq = jnp.sum(x**2)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)


# Below this smallest singular value of M = B B*^T the feature distance is computed from the
# expansion of Delta G Delta^T (cancellation is harmless there: d^2 >= 1 - 2 s_min >= 1/2);
# above it, M is well conditioned (kappa <= 4 |B|_2) and Delta = H - U H* is formed directly.
_EXPANSION_BELOW = 0.25


def _polar_by_eigh(M):
    """U and s_min(M) from one Jacobi eigensolve of $M^TM$ (the differentiated route)."""
    k = M.shape[-1]
    lam, V = eigh(M.T @ M)
    s = _safe_sqrt(lam)  # rounds to <= 0 for a singular M: s = 0, finite derivative
    keep = s > k * jnp.finfo(M.dtype).eps * jnp.max(s)
    inv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
    U = ((M @ V) * inv) @ V.T
    return U @ (1.5 * jnp.eye(k, dtype=M.dtype) - 0.5 * (U.T @ U)), jnp.min(s)


def _polar_by_newton_schulz(M):
    r"""U and s_min(M) by Newton-Schulz (`linfeat._polar`, value only); s_min is
    $\lambda_{min}(U^TM)$ by bisection."""
    U = polar_factor(M)
    return U, -lambda_max(-(U.T @ M))


def _frame_distance(H, H_star, gram, polar) -> Float[Array, ""]:
    k = H.shape[-2]
    eye = jnp.eye(k, dtype=H.dtype)
    HG = H @ gram
    M = HG @ H_star.T
    U, s_min = polar(M)
    Delta = H - U @ H_star
    direct = Delta @ gram @ Delta.T
    C = H_star @ gram @ H_star.T
    MU = M @ U.T
    expanded = HG @ H.T - MU - MU.T + U @ (C - eye) @ U.T + eye
    S = jnp.where(s_min > _EXPANSION_BELOW, direct, expanded)
    top = lambda_max(S)  # Householder + bisection: no Jacobi sweeps (symmetrises S)
    return jnp.sqrt(jnp.maximum(top, 0.0))


@jax.custom_jvp
def frame_feature_distance(H, H_star, gram) -> Float[Array, ""]:
    r"""$\|B - UB^*\|_2$ with the Procrustes U, for $B = HG^T$, $B^* = H^*G^T$, gram $= G^TG$.

    With $M = BB^{*T}$, U is M's orthogonal polar factor, by Newton-Schulz iteration
    (`linfeat._polar`: matrix products only, 8-14 steps on well-conditioned M). Then
    $d^2 = \lambda_{max}(S)$, where $S = \Delta G\Delta^T$, $\Delta = H - UH^*$, if
    $s_{min}(M) > 1/4$ ($s_{min} = \lambda_{min}(U^TM)$), and otherwise the same matrix
    expanded, $S = BB^T - MU^T - UM^T + U(B^*B^{*T} - I)U^T + I$, which needs no completion of
    U where M is singular: for $B^*B^{*T} = I$ every U with $M = UP$ that is orthogonal on M's
    range (a partial isometry included) gives $MU^T + UM^T = 2(MM^T)^{1/2}$, so d does not
    depend on the choice, and the expansion's rounding ($\sim\epsilon(\|B\|^2 + 1)$) is small
    against $d^2 \ge 1 - 2s_{min} \ge 1/2$. The direct branch has no cancellation as
    $d \to 0$, where M is close to orthogonal. $\lambda_{max}$ and $\lambda_{min}$ come from
    `linfeat._lambda_max.lambda_max` (Householder tridiagonal form and bisection). See
    docs/theory.md, section 2.4.

    Derivative (custom JVP): the tangent of the same formula with U from one Jacobi
    eigensolve, $M^TM = V\Lambda V^T$, $U = MV\Lambda^{-1/2}V^T$ (directions with
    $s_i \le k\epsilon s_{max}$ dropped) and one Newton-Schulz step $U(3I - U^TU)/2$, which
    makes U orthogonal to rounding and its derivative exact at repeated singular values;
    only differentiated programs pay for the eigensolve. (The first implementation took five
    eigensolves: a two-pass SVD, a completion and a refinement for the polar factor, then
    the top eigenvalue; it is the full-space `linfeat.theory.procrustes`, kept as the
    reference.)
    """
    return _frame_distance(H, H_star, gram, _polar_by_newton_schulz)


@frame_feature_distance.defjvp
def _frame_feature_distance_jvp(primals, tangents):
    route = functools.partial(_frame_distance, polar=_polar_by_eigh)
    return jax.jvp(route, primals, tangents)


def reduced_feature_distance(red: Reduced, A) -> Float[Array, ""]:
    r"""$\|B - UB^*\|_2$ with the Procrustes U, from the frame: $B - UB^* = (H - UH^*)G^T$."""
    k = red.k
    H = feature_rows(red, A)
    H_star = jnp.zeros_like(H).at[:, red.r : red.r + k].set(jnp.eye(k, dtype=A.dtype))
    H_star = H_star.at[:, red.r + k + 1 :].set(jnp.eye(k, dtype=A.dtype))
    return frame_feature_distance(H, H_star, red.gram)


def reduced_metrics(
    red: Reduced, v, A, v0, *, train_features: bool = True, with_distance: bool = True
) -> Metrics:
    r"""All `Metrics` at the point (v, A = BQ) of a flow started at $(v_0, B_0)$ (reduced).

    Same quantities as `metrics` in $R^d$: quadratic forms in the frame (docs/theory.md,
    section 2). `feature_change_perp` is 0 by construction here (R1 is the reduction's
    premise; the full-space reference measures it).
    """
    c = error_coefficients(red, v, A)
    D = A - red.A0
    rho = red.sigma2 * (A.T @ v) - red.g
    grad2 = 4.0 * jnp.sum((A @ rho) ** 2)
    if train_features:
        grad2 = grad2 + 4.0 * jnp.sum(v**2) * jnp.sum(rho**2)
    # B B^T - B0 B0^T = D D^T + D A0^T + A0 D^T exactly (B - B0 = D Q^T has rows in S)
    drift = jnp.outer(v, v) - jnp.outer(v0, v0) - (D @ D.T + D @ red.A0.T + red.A0 @ D.T)
    if with_distance and red.v_star is not None:
        dist = reduced_feature_distance(red, A)
    else:
        dist = jnp.full((), jnp.nan, v.dtype)
    # c^T M c of a PSD M can round to a tiny negative number where e ~ 0 (e.g. FT with an
    # OOD shift inside S): clamp at the exact lower bound 0.
    return Metrics(
        train_loss=jnp.sum((red.XQ @ (A.T @ v) - red.Y) ** 2),
        id_error=jnp.maximum(c @ red.id_gram @ c, 0.0),
        id_subspace_error=jnp.sum((red.gram[: red.r] @ c) ** 2),
        ood_error=jnp.maximum(c @ red.ood_gram @ c, 0.0),
        feature_distance=dist,
        feature_change_S=_norm(D),
        feature_change_perp=jnp.zeros((), v.dtype),
        balancedness_drift=_norm(drift),
        grad_norm=jnp.sqrt(grad2),
    )
