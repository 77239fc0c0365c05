r"""Analytic side of the paper's statements: the bounds and closed forms of THEORY.md.

The scalar formulas take plain scalars and arrays (no `Problem`); the problem-level wrappers
at the end (`problem_constants`, `r5_bounds`, `r5_perp_bound`, `r7_bounds`, `r8_threshold`)
take a `Problem` and a head and call them. Every function is written for one instance and is
pure `jax.numpy`, so it jits, vmaps over any argument and keeps the floating dtype of its
inputs (float64 when x64 is on). Result ids (R5 ... R12) refer to THEORY.md section 3;
labels [paper] / [derived] / [unsure] are THEORY.md's.

Symbols: $a = \|v^*\| = \|w^*\|$, $\varepsilon = d(B_0, B^*)$, $\varphi$ the head alignment
error, $c_S = \sigma_k(\Pi_S B_0^T)$, $c_\perp = \sigma_k(\Pi_{S^\perp} B_0^T)$,
$\kappa = \kappa(X)$, $\lambda_{\min}, \lambda_{\max}$ the extreme eigenvalues of the OOD
second moment $\Sigma$.

References:
    A. Kumar, A. Raghunathan, R. Jones, T. Ma, P. Liang, "Fine-Tuning can Distort
    Pretrained Features and Underperform Out-of-Distribution", ICLR 2022, arXiv:2202.10054.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._linalg import singular_values

# Shape-annotated aliases (jaxtyping), defined once so the annotations stay short.
Scalar = Float[ArrayLike, ""]
Head = Float[ArrayLike, " k"]
Features = Float[ArrayLike, "k d"]
Inputs = Float[ArrayLike, "n d"]
ScalarOut = Float[Array, ""]
Rotation = Float[Array, "k k"]
Samples = Float[Array, " num"]

# ---------------------------------------------------------------------------------------
# Feature distance (THEORY.md section 1)
# ---------------------------------------------------------------------------------------


def procrustes(B0: Features, B_star: Features) -> tuple[Rotation, ScalarOut]:
    r"""Procrustes alignment of the true features to the pretrained ones, and its distance.

    $U = P Q^T$ where $B_0 B^{*T} = P \Lambda Q^T$ (SVD), and
    $\mathrm{dist} = \|B_0 - U B^*\|_2$ (spectral norm). For orthonormal rows $U$ minimises
    $\|B_0 - U B^*\|_2$ over orthogonal $U$ and the minimum is $2\sin(\theta_{\max}/2)$
    [derived, THEORY.md section 1]. The aligned head is $a^* = U v^*$.

    Args:
        B0: pretrained features, orthonormal rows.
        B_star: true features, orthonormal rows.

    Returns:
        `(U, dist)`: the orthogonal (k, k) factor and $\|B_0 - U B^*\|_2$.
    """
    B0 = jnp.asarray(B0)
    B_star = jnp.asarray(B_star)
    P, _, Qt = jnp.linalg.svd(B0 @ B_star.T)
    U = P @ Qt
    dist = singular_values(B0 - U @ B_star)[0]  # no d x d workspace (see _linalg)
    return U, dist


def principal_angle_distance(B0: Features, B_star: Features) -> ScalarOut:
    r"""Feature distance from the largest principal angle: $2\sin(\theta_{\max}/2)$.

    [derived, THEORY.md section 1] For orthonormal rows, $d(B_0, B^*) = 2\sin(\theta_{\max}/2)$
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
    B0 = jnp.asarray(B0)
    B_star = jnp.asarray(B_star)
    overlap = B0 @ B_star.T
    cosines = jnp.linalg.svd(overlap, compute_uv=False)
    # Rows of B0 minus their projection on rowspace(B*): singular values are sin(theta_i).
    sines = singular_values(B0 - overlap @ B_star)
    # atan2 needs no clipping: a cosine rounded above 1 only moves theta by O(eps).
    theta_max = jnp.arctan2(jnp.max(sines), jnp.min(cosines))
    return 2.0 * jnp.sin(theta_max / 2.0)


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
    X = jnp.asarray(X)
    s = singular_values(X) if X.shape[0] <= X.shape[1] else singular_values(X.T)
    s_max = jnp.max(s)
    cut = max(X.shape) * jnp.finfo(s.dtype).eps * s_max
    s_min_pos = jnp.min(jnp.where(s > cut, s, jnp.inf))
    # All singular values below the cut-off (X = 0): no row space, kappa undefined.
    return jnp.where(jnp.isfinite(s_min_pos), s_max / s_min_pos, jnp.nan)


# ---------------------------------------------------------------------------------------
# Head alignment (R5, R6)
# ---------------------------------------------------------------------------------------


def head_alignment_error(v0: Head, a_star: Head) -> ScalarOut:
    r"""Head alignment error $\varphi = \sqrt{|(v_0^T a^*)^2 - \|a^*\|^4|}$ (R5, R6) [paper].

    Evaluated as $\sqrt{|v_0^T a^* - \|a^*\|^2| \, |v_0^T a^* + \|a^*\|^2|}$: near the zeros
    $v_0^T a^* = \pm\|a^*\|^2$ this avoids subtracting the two nearly equal squares (the error
    is then that of $v_0^T a^*$ itself). vmap over heads for batches.

    Args:
        v0: initial head.
        a_star: aligned true head $a^* = U v^*$ (see `procrustes`).

    Returns:
        $\varphi \ge 0$.
    """
    v0 = jnp.asarray(v0)
    a_star = jnp.asarray(a_star)
    z = jnp.dot(v0, a_star)
    a2 = jnp.dot(a_star, a_star)
    return jnp.sqrt(jnp.abs(z - a2) * jnp.abs(z + a2))


def r6_anticoncentration(a: Scalar, sigma: Scalar, delta: Scalar) -> ScalarOut:
    r"""Level below which a Gaussian head's $\varphi$ falls with probability at most $\delta$.

    [derived, R6] For $v_0 \sim N(0, \sigma^2 I)$ and $\delta \in (0, 1)$:
    $P[\varphi \le \tfrac{\sqrt\pi}{2}\, a\, \delta\, \sigma] \le \delta$.
    Proof: $z = v_0^T a^* \sim N(0, \sigma^2 a^2)$ and $\varphi \le t$ puts $|z|$ in an interval
    of length $\sqrt{a^4 + t^2} - \sqrt{(a^4 - t^2)_+} \le \sqrt 2\, t$, i.e. z in two intervals
    of total length $2\sqrt2\, t$ under a density at most $1/(\sqrt{2\pi}\sigma a)$.

    Args:
        a: $\|a^*\| = \|v^*\|$.
        sigma: standard deviation of each head coordinate.
        delta: failure probability in (0, 1).

    Returns:
        The threshold $\tfrac{\sqrt\pi}{2} a \delta \sigma$.
    """
    return (math.sqrt(math.pi) / 2.0) * jnp.asarray(a) * jnp.asarray(delta) * jnp.asarray(sigma)


def r6_sigma_max(a: Scalar, delta: Scalar) -> ScalarOut:
    r"""Largest head scale for which $\varphi \ge a^2/\sqrt2$ with probability at least $1-\delta$.

    [derived, R6] $\sigma_{\max} = a / (2\sqrt{\ln(2/\delta)})$: if $\sigma \le \sigma_{\max}$
    then $P[|v_0^T a^*| > a^2/\sqrt2] \le 2 e^{-a^2/(4\sigma^2)} \le \delta$, and
    $|v_0^T a^*| \le a^2/\sqrt2$ implies $\varphi^2 \ge a^4/2$.

    Args:
        a: $\|a^*\| = \|v^*\|$.
        delta: failure probability in (0, 1).

    Returns:
        $a / (2\sqrt{\ln(2/\delta)})$.
    """
    delta = jnp.asarray(delta)
    return jnp.asarray(a) / (2.0 * jnp.sqrt(jnp.log(2.0 / delta)))


def r6_phi_cdf_mc(key: PRNGKeyArray, a_star: Head, sigma: Scalar, num: int) -> Samples:
    r"""Monte-Carlo samples of $\varphi$ for Gaussian heads $v_0 \sim N(0, \sigma^2 I_k)$ (R6).

    Sort the samples for an empirical CDF. `num` fixes a shape: mark it static under `jit`.

    Args:
        key: PRNG key (used once).
        a_star: aligned true head.
        sigma: head scale.
        num: number of heads.

    Returns:
        `num` samples of $\varphi$, in the dtype of `a_star`.
    """
    a_star = jnp.asarray(a_star)
    dtype = a_star.dtype if jnp.issubdtype(a_star.dtype, jnp.floating) else None
    v0 = jnp.asarray(sigma) * jax.random.normal(key, (num, a_star.shape[-1]), dtype=dtype)
    return jax.vmap(head_alignment_error, in_axes=(0, None))(v0, a_star)


# ---------------------------------------------------------------------------------------
# R5: FT's OOD error is bounded below at all times
# ---------------------------------------------------------------------------------------


def r5_printed_bound(
    c_perp: Scalar,
    k: int | Scalar,
    phi: Scalar,
    w_norm: Scalar,
    eps: Scalar,
) -> ScalarOut:
    r"""R5's lower bound on $\sqrt{L_{ood}}$ with the constant printed in the ICLR submission.

    [paper, unsure] $\frac{c_\perp}{\sqrt k}\,
    \frac{\min(\varphi, \varphi^2/\|w^*\|)}{(1 + \|w^*\|)^2} - \varepsilon$, for $\Sigma = I$.
    THEORY.md (R5) shows this constant is false as stated (counterexample at t = 0); kept to
    document the discrepancy. Use `r5_rigorous_bound` in checks.

    Args:
        c_perp: $c_\perp = \sigma_k(\Pi_{S^\perp} B_0^T)$.
        k: number of features.
        phi: head alignment error.
        w_norm: $\|w^*\|$.
        eps: feature distance $d(B_0, B^*)$.

    Returns:
        The printed right-hand side (may be negative, i.e. vacuous).
    """
    phi = jnp.asarray(phi)
    w_norm = jnp.asarray(w_norm)
    head = jnp.minimum(phi, phi**2 / w_norm)
    return jnp.asarray(c_perp) / jnp.sqrt(jnp.asarray(k, dtype=phi.dtype)) * head / (
        1.0 + w_norm
    ) ** 2 - jnp.asarray(eps)


def r5_delta0(a: Scalar, phi: Scalar) -> ScalarOut:
    r"""Head radius $\delta_0$ of the rigorous R5 bound.

    [derived, R5] $\delta_0 = \min\{1, \frac{q'}{2(2+a)}, \frac{\varphi^2}{2a^2(2a+1)}\}$,
    $q' = \sqrt{a^2 + \varphi^2/2} - a$, evaluated as
    $(\varphi^2/2)/(\sqrt{a^2 + \varphi^2/2} + a)$ to avoid cancellation when $\varphi \ll a$.

    Args:
        a: $\|v^*\| > 0$.
        phi: head alignment error.

    Returns:
        $\delta_0 \in [0, 1]$.
    """
    a = jnp.asarray(a)
    phi2 = jnp.asarray(phi) ** 2
    q_prime = (phi2 / 2.0) / (jnp.sqrt(a**2 + phi2 / 2.0) + a)
    return jnp.minimum(
        jnp.minimum(1.0, q_prime / (2.0 * (2.0 + a))), phi2 / (2.0 * a**2 * (2.0 * a + 1.0))
    )


def r5_rigorous_error_bound(
    c_perp: Scalar,
    phi: Scalar,
    a: Scalar,
    eps: Scalar,
) -> ScalarOut:
    r"""Lower bound on FT's predictor error $\|B(t)^T v(t) - w^*\|$, valid at every t.

    [derived, R5] $\|e(t)\| \ge c_\perp \delta_0 - \varepsilon a$ with $\delta_0$ from
    `r5_delta0`. The proof uses only R1 (frozen $S^\perp$ features), R2 (balancedness with
    $B_0 B_0^T = I$) and $c_\perp \le 1$, so it holds on the whole invariant set of the flow.

    Args:
        c_perp: $c_\perp = \sigma_k(\Pi_{S^\perp} B_0^T)$.
        phi: head alignment error $\varphi$ of $v_0$ w.r.t. $a^*$.
        a: $\|v^*\|$.
        eps: any $\|B_0 - U B^*\|_2$ with the same U as in $a^* = U v^*$.

    Returns:
        The bound (negative means vacuous).
    """
    return jnp.asarray(c_perp) * r5_delta0(a, phi) - jnp.asarray(eps) * jnp.asarray(a)


def r5_rigorous_bound(
    c_perp: Scalar,
    phi: Scalar,
    a: Scalar,
    eps: Scalar,
    lam_min: Scalar = 1.0,
) -> ScalarOut:
    r"""Lower bound on FT's $\sqrt{L_{ood}(t)}$, valid at every t (replacement for R5's constant).

    [derived, R5] $\sqrt{L_{ood}(t)} \ge \sqrt{\lambda_{\min}(\Sigma)}\,
    (c_\perp \delta_0 - \varepsilon a)$, from `r5_rigorous_error_bound` and
    $L_{ood} = e^T \Sigma e \ge \lambda_{\min} \|e\|^2$ (R3).

    Args:
        c_perp: $c_\perp$.
        phi: head alignment error.
        a: $\|v^*\|$.
        eps: feature distance.
        lam_min: $\lambda_{\min}(\Sigma)$ (1 for $\Sigma = I$).

    Returns:
        The bound (negative means vacuous).
    """
    return jnp.sqrt(jnp.asarray(lam_min)) * r5_rigorous_error_bound(c_perp, phi, a, eps)


# ---------------------------------------------------------------------------------------
# R7, R8: LP's OOD error is O(eps); explicit threshold where LP beats FT
# ---------------------------------------------------------------------------------------


def r7_lp_error_bound(
    eps: Scalar,
    a: Scalar,
    kappa: Scalar,
    c_S: Scalar,
) -> ScalarOut:
    r"""Upper bound on LP's predictor error: $\|e_{lp}\| \le \varepsilon a (1 + \kappa/c_S)$.

    [derived, R7] With $A = X B_0^T$ and $B_0 = U B^* + E$: $e_{lp} = (I - B_0^T A^+ X) E^T a^*$
    and $\|A^+ X\|_2 \le \kappa(X)/c_S$ since $\sigma_{\min}(A) \ge \sigma^+_{\min}(X) c_S$.

    Args:
        eps: feature distance.
        a: $\|v^*\|$.
        kappa: $\kappa(X)$ (see `kappa`).
        c_S: $c_S = \sigma_k(\Pi_S B_0^T) > 0$.

    Returns:
        The bound.
    """
    return jnp.asarray(eps) * jnp.asarray(a) * (1.0 + jnp.asarray(kappa) / jnp.asarray(c_S))


def r7_lp_ood_bound(
    eps: Scalar,
    a: Scalar,
    kappa: Scalar,
    c_S: Scalar,
    lam_max: Scalar,
) -> ScalarOut:
    r"""Upper bound on LP's OOD loss at convergence (R7).

    [derived, R7] $L_{ood}(v_{lp}^\infty, B_0) \le \lambda_{\max}\varepsilon^2 a^2
    (1 + \kappa/c_S)^2$: `r7_lp_error_bound` squared, times $\lambda_{\max}(\Sigma)$.

    Args:
        eps: feature distance.
        a: $\|v^*\|$.
        kappa: $\kappa(X)$.
        c_S: $c_S > 0$.
        lam_max: $\lambda_{\max}(\Sigma)$.

    Returns:
        The bound on $L_{ood}(v_{lp}^\infty, B_0)$.
    """
    return jnp.asarray(lam_max) * r7_lp_error_bound(eps, a, kappa, c_S) ** 2


def r8_eps_threshold(
    c_perp: Scalar,
    phi: Scalar,
    a: Scalar,
    kappa: Scalar,
    c_S: Scalar,
    lam_min: Scalar = 1.0,
    lam_max: Scalar = 1.0,
) -> ScalarOut:
    r"""Feature distance below which LP's OOD loss is strictly below FT's at every time.

    [derived, R8] From R5 (rigorous) and R7: LP wins for all t when
    $\varepsilon < \frac{\sqrt{\lambda_{\min}}\, c_\perp \delta_0}
    {a(\sqrt{\lambda_{\max}}(1 + \kappa/c_S) + \sqrt{\lambda_{\min}})}$;
    at equality `sqrt(r7_lp_ood_bound)` equals `r5_rigorous_bound`.

    Args:
        c_perp: $c_\perp$.
        phi: head alignment error.
        a: $\|v^*\|$.
        kappa: $\kappa(X)$.
        c_S: $c_S$.
        lam_min: $\lambda_{\min}(\Sigma)$.
        lam_max: $\lambda_{\max}(\Sigma)$.

    Returns:
        The threshold on $\varepsilon$.
    """
    sq_min = jnp.sqrt(jnp.asarray(lam_min))
    sq_max = jnp.sqrt(jnp.asarray(lam_max))
    a = jnp.asarray(a)
    return (sq_min * jnp.asarray(c_perp) * r5_delta0(a, phi)) / (
        a * (sq_max * (1.0 + jnp.asarray(kappa) / jnp.asarray(c_S)) + sq_min)
    )


# ---------------------------------------------------------------------------------------
# R12(b): bad features, 2-D toy
# ---------------------------------------------------------------------------------------


def r12_toy_errors(a: Scalar, v0: Scalar) -> tuple[ScalarOut, ScalarOut]:
    r"""Squared OOD errors ($\Sigma = I$) of converged LP and FT in the R12(b) toy.

    [derived, R12b] $d = 2$, $k = 1$, $X = e_1^T$, $w^* = (a, 0)$, $B_0 = e_2^T$. LP cannot fit
    ($X B_0^T = 0$), so $w_{lp} = (0, v_0)$ and the error² is $a^2 + v_0^2$. FT keeps
    $b_2 = 1$ (R1), conserves $v^2 - b_1^2 = v_0^2$ (R2) and reaches $v b_1 = a$, so
    $w_{ft} = (a, v_\infty)$ with $v_\infty^2 = (v_0^2 + \sqrt{v_0^4 + 4a^2})/2$.
    The FT value is the limit of the flow for $v_0 \ne 0$; at $v_0 = 0$ the start
    $(v, b_1) = (0, 0)$ is a stationary saddle and the flow stays at error² $a^2$.

    Args:
        a: target coefficient on the ID direction $e_1$.
        v0: initial (scalar) head.

    Returns:
        `(lp_error2, ft_error2)`.
    """
    a = jnp.asarray(a)
    v0 = jnp.asarray(v0)
    lp_error2 = a**2 + v0**2
    ft_error2 = (v0**2 + jnp.sqrt(v0**4 + 4.0 * a**2)) / 2.0
    return lp_error2, ft_error2


def r12_ft_wins(a: Scalar, v0: Scalar) -> Array:
    r"""Whether converged FT has strictly lower OOD error than LP in the R12(b) toy.

    [derived, R12b] Compares the two errors of `r12_toy_errors` through the cancellation-free
    difference $\mathrm{LP} - \mathrm{FT} = \frac{2a^2(a^2 + v_0^2 - 1)}
    {2a^2 + v_0^2 + \sqrt{v_0^4 + 4a^2}}$, so FT wins iff $a \ne 0$ and $a^2 + v_0^2 > 1$
    (for $v_0 \ne 0$; see `r12_toy_errors`).

    Args:
        a: target coefficient.
        v0: initial head.

    Returns:
        Boolean array.
    """
    a = jnp.asarray(a)
    v0 = jnp.asarray(v0)
    gap = (2.0 * a**2 * (a**2 + v0**2 - 1.0)) / (2.0 * a**2 + v0**2 + jnp.sqrt(v0**4 + 4.0 * a**2))
    return gap > 0


# ---------------------------------------------------------------------------------------
# Problem-level wrappers: the constants of a `Problem` and the bounds they give
# ---------------------------------------------------------------------------------------


class ProblemConstants(NamedTuple):
    r"""The theory's constants of one problem and head (THEORY.md section 1).

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
    r"""All constants of THEORY.md section 1 for one `Problem` with ground truth and head `v0`.

    Uses linfeat's metrics (`principal_constants`, `feature_alignment`) and the scalar
    formulas of this module; jit/vmap friendly (vmap over problems and heads for batches).

    Args:
        problem: a `linfeat.Problem` with `B_star` and `v_star` set.
        v0: initial head (k,).

    Returns:
        A `ProblemConstants`.
    """
    from ._cov import SubspaceCov, eig_range
    from ._metrics import feature_alignment, principal_constants

    eps, U = feature_alignment(problem.B0, problem.B_star)
    a_star = U @ problem.v_star
    c_S, c_perp = principal_constants(problem)
    X = problem.X
    kap = kappa(X)
    sigma2_min = (singular_values(X)[0] / kap) ** 2
    n, d = X.shape
    lam_min, lam_max = eig_range(problem.ood_cov, d, min(n, d))
    if isinstance(problem.ood_cov, SubspaceCov):
        lam_perp = problem.ood_cov.scale_perp
    else:
        lam_perp = lam_min
    return ProblemConstants(
        a=jnp.linalg.norm(problem.v_star),
        a_star=a_star,
        eps=eps,
        c_S=c_S,
        c_perp=c_perp,
        phi=head_alignment_error(v0, a_star),
        kappa=kap,
        sigma2_min=sigma2_min,
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

    - `printed` [paper, unsure; false as stated, THEORY.md R5]: lower bound on $\|e(t)\|$
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
        The bound (0 when vacuous).
    """
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
