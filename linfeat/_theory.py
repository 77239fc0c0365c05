r"""Analytic side of the paper's statements: the bounds and closed forms of docs/theory.md.

The scalar formulas take plain scalars and arrays (no `Problem`); the problem-level wrappers
at the end (`problem_constants`, `r5_bounds`, `r5_perp_bound`, `r7_bounds`, `r8_threshold`)
take a `Problem` and a head and call them. Every function is written for one instance and is
pure `jax.numpy`, so it jits, vmaps over any argument and keeps the floating dtype of its
inputs (float64 when x64 is on). Result ids (R5 ... R12) refer to docs/theory.md, section 4;
labels [paper] / [derived] / [unsure] are docs/theory.md's.

Concrete arguments are checked (finite, $a \ge 0$ or $> 0$ where the formula divides by it,
$\sigma > 0$, $\delta \in (0, 1)$, $\varphi \ge 0$, $\varepsilon \in [0, \sqrt2]$, or
$[0, 2]$ where any fixed rotation U is allowed, $c_S, c_\perp \in [0, 1]$, $\kappa \ge 1$,
$\lambda \ge 0$) and a `ValueError` names the argument and the fix; under `jit`/`vmap` the
arguments are tracers and the checks are skipped (validate once, then batch).
No LAPACK routine is called directly here: singular values come from
`linfeat._linalg.singular_values` and the Procrustes factor from `linfeat.feature_alignment`.

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
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from . import _validate as V
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
# Input checks (concrete inputs only; skipped for JAX tracers under jit/vmap)
# ---------------------------------------------------------------------------------------

# Rounding slack of the upper limits c <= 1 and eps <= sqrt(2) (eps <= 2): `Problem`s accept
# rows orthonormal to `ORTHONORMAL_TOL` (1e-6 on B B^T - I), which moves singular values and
# the Procrustes distance by O(1e-6); float32 rounding is far below that.
_RANGE_SLACK = 10 * V.ORTHONORMAL_TOL
_SQRT2 = math.sqrt(2.0)


def _check(
    fn: str,
    name: str,
    x,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    finite: bool = True,
    what: str,
    fix: str,
) -> None:
    """Raises a ValueError naming `fn`, `name` and the fix unless every entry of x is in range.

    `what` completes "`name` must be ..."; NaN fails only through `finite`. No-op for tracers.
    """
    if not V.is_concrete(x):
        return
    try:
        if np.iscomplexobj(x):
            raise TypeError
        v = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{fn}: `{name}` must be a real number or array of them, got {x!r}; {fix}."
        ) from None
    bad = ~np.isfinite(v) if finite else np.zeros(v.shape, bool)
    if lo is not None:
        bad |= (v <= lo) if lo_open else (v < lo)
    if hi is not None:
        bad |= (v >= hi) if hi_open else (v > hi)
    if np.any(bad):
        if v.ndim == 0:
            got = f"got {float(v)!r}"
        else:
            got = f"got {float(v[bad].flat[0])!r} ({int(bad.sum())} of {v.size} entries bad)"
        raise ValueError(f"{fn}: `{name}` must be {what}, {got}; {fix}.")


def _check_a(fn: str, a, *, name: str = "a", positive: bool = True) -> None:
    _check(
        fn,
        name,
        a,
        lo=0.0,
        lo_open=positive,
        what=("a finite number > 0" if positive else "a finite number >= 0")
        + " (the norm ||v*|| = ||w*|| of the true head)",
        fix="pass the norm of the true head (docs/theory.md, section 1 needs v* != 0)"
        if positive
        else "pass a norm, e.g. `jnp.linalg.norm(v_star)`",
    )


def _check_phi(fn: str, phi) -> None:
    _check(
        fn,
        "phi",
        phi,
        lo=0.0,
        what="a finite number >= 0 (the head alignment error)",
        fix="compute it with `head_alignment_error(v0, a_star)`",
    )


def _check_eps(fn: str, eps, *, any_rotation: bool) -> None:
    # d(B0, B*) (the Procrustes minimum) is at most sqrt(2) for orthonormal rows; the bounds
    # that also accept ||B0 - U B*||_2 for any fixed orthogonal U allow up to ||B0|| + ||B*|| = 2.
    top, top_s = (2.0, "2") if any_rotation else (_SQRT2, "sqrt(2)")
    _check(
        fn,
        "eps",
        eps,
        lo=0.0,
        hi=top * (1.0 + _RANGE_SLACK),
        what=f"a finite number in [0, {top_s}] (a feature distance ||B0 - U B*||_2 between "
        "orthonormal rows)",
        fix="compute it with `procrustes(B0, B_star)[0]` (rows of B0 and B* orthonormal)",
    )


def _check_c(fn: str, name: str, c) -> None:
    _check(
        fn,
        name,
        c,
        lo=0.0,
        hi=1.0 + _RANGE_SLACK,
        what="a finite number in [0, 1] (a singular value of a projection of B0^T)",
        fix="compute it with `linfeat.principal_constants(problem)`",
    )


def _check_c_S(fn: str, c_S) -> None:
    _check(
        fn,
        "c_S",
        c_S,
        lo=0.0,
        hi=1.0 + _RANGE_SLACK,
        lo_open=True,
        what="a finite number in (0, 1] (R7 needs c_S = sigma_k(Pi_S B0^T) > 0: X B0^T of full "
        "column rank, a unique linear probe)",
        fix="compute it with `linfeat.principal_constants(problem)`; "
        "with c_S = 0 R7 gives no bound",
    )


def _check_lam(fn: str, name: str, lam) -> None:
    _check(
        fn,
        name,
        lam,
        lo=0.0,
        what="a finite number >= 0 (an eigenvalue of the PSD second moment Sigma)",
        fix="clip a rounding-level negative eigenvalue at 0",
    )


def _check_kappa(fn: str, kap) -> None:
    _check(
        fn,
        "kappa",
        kap,
        lo=1.0 - _RANGE_SLACK,
        what="a finite number >= 1 (the condition number of X on its row space)",
        fix="compute it with `kappa(X)` (X must not be zero)",
    )


def _check_delta(fn: str, delta) -> None:
    _check(
        fn,
        "delta",
        delta,
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
        what="in the open interval (0, 1) (a failure probability)",
        fix="pass a probability strictly between 0 and 1",
    )


def _check_sigma(fn: str, sigma) -> None:
    _check(
        fn,
        "sigma",
        sigma,
        lo=0.0,
        lo_open=True,
        what="a finite number > 0 (the standard deviation of each head coordinate)",
        fix="pass a positive head scale",
    )


def _check_matrix(fn: str, name: str, M, ndim: int) -> None:
    if V.is_concrete(M):
        try:
            V.as_array(name, M, ndim=ndim)
        except ValueError as err:
            raise ValueError(f"{fn}: {err}") from None


# ---------------------------------------------------------------------------------------
# Feature distance (docs/theory.md, section 1)
# ---------------------------------------------------------------------------------------


def procrustes(B0: Features, B_star: Features) -> tuple[ScalarOut, Rotation]:
    r"""Procrustes alignment of the true features to the pretrained ones: `(dist, U)`.

    A thin alias of `linfeat.feature_alignment` (one implementation, same return order):
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
    # Imported here, not at module level, so that `_metrics` may import this module.
    from ._metrics import feature_alignment

    return feature_alignment(jnp.asarray(B0), jnp.asarray(B_star))


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
    _check_matrix("principal_angle_distance", "B0", B0, 2)
    _check_matrix("principal_angle_distance", "B_star", B_star, 2)
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
    _check_matrix("numerical_rank", "X", X, 2)
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
    _check_matrix("kappa", "X", X, 2)
    return _kappa(jnp.asarray(X))


@jax.jit
def _kappa(X):
    return _kappa_from_spectrum(*_input_spectrum(X))[0]


# ---------------------------------------------------------------------------------------
# Head alignment (R5, R6)
# ---------------------------------------------------------------------------------------


def head_alignment_error(v0: Head, a_star: Head) -> ScalarOut:
    r"""Head alignment error $\varphi = \sqrt{|(v_0^T a^*)^2 - \|a^*\|^4|}$ (R5, R6) [paper].

    Evaluated as $\sqrt{|v_0^T a^* - \|a^*\|^2| \, |v_0^T a^* + \|a^*\|^2|}$: near the zeros
    $v_0^T a^* = \pm\|a^*\|^2$ this avoids subtracting the two nearly equal squares (the error
    is then that of $v_0^T a^*$ itself). vmap over heads for batches.
    `linfeat.head_alignment_error(problem, v0)` is this formula with $a^*$ from the problem.

    Args:
        v0: initial head (k,).
        a_star: aligned true head $a^* = U v^*$ (k,) (see `procrustes`).

    Returns:
        $\varphi \ge 0$.

    Raises:
        ValueError: for concrete inputs that are not finite 1-D arrays of the same length.
    """
    fn = "head_alignment_error"
    _check_matrix(fn, "v0", v0, 1)
    _check_matrix(fn, "a_star", a_star, 1)
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

    Raises:
        ValueError: for concrete arguments out of range (skipped under jit/vmap).
    """
    fn = "r6_anticoncentration"
    _check_a(fn, a, positive=False)
    _check_sigma(fn, sigma)
    _check_delta(fn, delta)
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

    Raises:
        ValueError: for concrete arguments out of range (skipped under jit/vmap).
    """
    _check_a("r6_sigma_max", a, positive=False)
    _check_delta("r6_sigma_max", delta)
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

    Raises:
        ValueError: for concrete arguments out of range (skipped under jit/vmap).
    """
    fn = "r6_phi_cdf_mc"
    _check_matrix(fn, "a_star", a_star, 1)
    _check_sigma(fn, sigma)
    if isinstance(num, bool) or not isinstance(num, int | np.integer) or num < 1:
        raise ValueError(
            f"{fn}: `num` must be a positive Python int (a static sample count), got {num!r}; "
            "mark it static under jit (`static_argnums`)."
        )
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
    docs/theory.md (R5) shows this constant is false as stated (counterexample at t = 0); kept to
    document the discrepancy. Use `r5_rigorous_bound` in checks.

    Args:
        c_perp: $c_\perp = \sigma_k(\Pi_{S^\perp} B_0^T)$.
        k: number of features.
        phi: head alignment error.
        w_norm: $\|w^*\|$.
        eps: feature distance $d(B_0, B^*)$.

    Returns:
        The printed right-hand side (may be negative, i.e. vacuous).

    Raises:
        ValueError: for concrete arguments out of range (skipped under jit/vmap).
    """
    fn = "r5_printed_bound"
    _check_c(fn, "c_perp", c_perp)
    _check(
        fn,
        "k",
        k,
        lo=1.0,
        what="a number of features >= 1",
        fix="pass k = B0.shape[0]",
    )
    _check_phi(fn, phi)
    _check_a(fn, w_norm, name="w_norm")
    _check_eps(fn, eps, any_rotation=False)
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

    Raises:
        ValueError: for concrete arguments out of range (skipped under jit/vmap).
    """
    _check_a("r5_delta0", a)
    _check_phi("r5_delta0", phi)
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
        eps: any $\|B_0 - U B^*\|_2$ with the same U as in $a^* = U v^*$, in [0, 2].

    Returns:
        The bound (negative means vacuous).

    Raises:
        ValueError: for concrete arguments out of range (skipped under jit/vmap).
    """
    fn = "r5_rigorous_error_bound"
    _check_c(fn, "c_perp", c_perp)
    _check_phi(fn, phi)
    _check_a(fn, a)
    _check_eps(fn, eps, any_rotation=True)
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
        eps: feature distance (any $\|B_0 - U B^*\|_2$ as in `r5_rigorous_error_bound`).
        lam_min: $\lambda_{\min}(\Sigma) \ge 0$ (1 for $\Sigma = I$).

    Returns:
        The bound (negative means vacuous).

    Raises:
        ValueError: for concrete arguments out of range (skipped under jit/vmap).
    """
    _check_lam("r5_rigorous_bound", "lam_min", lam_min)
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
        eps: feature distance (any $\|B_0 - U B^*\|_2$ with the U of $a^* = U v^*$, in [0, 2]).
        a: $\|v^*\|$.
        kappa: $\kappa(X)$ (see `kappa`).
        c_S: $c_S = \sigma_k(\Pi_S B_0^T) > 0$.

    Returns:
        The bound.

    Raises:
        ValueError: for concrete arguments out of range (skipped under jit/vmap).
    """
    fn = "r7_lp_error_bound"
    _check_eps(fn, eps, any_rotation=True)
    _check_a(fn, a, positive=False)
    _check_kappa(fn, kappa)
    _check_c_S(fn, c_S)
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
        lam_max: $\lambda_{\max}(\Sigma) \ge 0$.

    Returns:
        The bound on $L_{ood}(v_{lp}^\infty, B_0)$.

    Raises:
        ValueError: for concrete arguments out of range (skipped under jit/vmap).
    """
    _check_lam("r7_lp_ood_bound", "lam_max", lam_max)
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

    Raises:
        ValueError: for concrete arguments out of range (skipped under jit/vmap).
    """
    fn = "r8_eps_threshold"
    _check_c(fn, "c_perp", c_perp)
    _check_phi(fn, phi)
    _check_a(fn, a)
    _check_kappa(fn, kappa)
    _check_c_S(fn, c_S)
    _check_lam(fn, "lam_min", lam_min)
    _check_lam(fn, "lam_max", lam_max)
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
    $w_{ft} = (a, v_\infty)$ with $v_\infty^2 = (v_0^2 + \sqrt{v_0^4 + 4a^2})/2$ for $v_0 \ne 0$.
    At $v_0 = 0$ the start $(v, b_1) = (0, 0)$ is a stationary saddle: FT does not move,
    $w_{ft} = 0$ and its error² is $a^2$, LP's value (a tie). At $a = 0$ both are $v_0^2$.
    Same values as `linfeat._closed_form_oracles.r12_toy`.

    Args:
        a: target coefficient on the ID direction $e_1$ (any sign).
        v0: initial (scalar) head.

    Returns:
        `(lp_error2, ft_error2)`.

    Raises:
        ValueError: for concrete non-finite arguments (skipped under jit/vmap).
    """
    _check_r12("r12_toy_errors", a, v0)
    a = jnp.asarray(a)
    v0 = jnp.asarray(v0)
    lp_error2 = a**2 + v0**2
    flow_limit = (v0**2 + jnp.sqrt(v0**4 + 4.0 * a**2)) / 2.0
    ft_error2 = jnp.where(v0 == 0, a**2, flow_limit)  # v0 = 0: the saddle, FT stays at B0
    return lp_error2, ft_error2


def r12_ft_wins(a: Scalar, v0: Scalar) -> Array:
    r"""Whether converged FT has strictly lower OOD error than LP in the R12(b) toy.

    [derived, R12b] $\mathrm{LP} - \mathrm{FT} = \frac{2a^2(a^2 + v_0^2 - 1)}
    {2a^2 + v_0^2 + \sqrt{v_0^4 + 4a^2}}$ for $v_0 \ne 0$, so FT wins iff $a \ne 0$,
    $v_0 \ne 0$ and $a^2 + v_0^2 > 1$. The two exceptions are ties (FT does not win): at
    $v_0 = 0$ FT starts at a saddle and does not move, at $a = 0$ both errors are $v_0^2$
    (see `r12_toy_errors`). The condition is evaluated as the comparison
    $v_0^2 > (1 - a)(1 + a)$ of two products rounded once each: no cancellation near
    $|a| = 1$ (e.g. $a = 1$, $v_0 = 10^{-10}$: FT wins by $v_0^2/2$, which the rounded errors
    of `r12_toy_errors` cannot resolve), correct whenever $|a^2 + v_0^2 - 1|$ exceeds a few
    ulps of $\max(v_0^2, |1 - a^2|)$, and the same bits with or without `jit` (a comparison
    leaves XLA no multiply-add to fuse). This is the single source of the decision:
    `linfeat._closed_form_oracles.r12_toy` returns it as `ft_wins`.

    Args:
        a: target coefficient.
        v0: initial head.

    Returns:
        Boolean array.

    Raises:
        ValueError: for concrete non-finite arguments (skipped under jit/vmap).
    """
    _check_r12("r12_ft_wins", a, v0)
    a = jnp.asarray(a)
    v0 = jnp.asarray(v0)
    outside = v0 * v0 > (1.0 - a) * (1.0 + a)  # a^2 + v0^2 > 1, see the docstring
    return (a != 0) & (v0 != 0) & outside


def _check_r12(fn: str, a, v0) -> None:
    _check(fn, "a", a, what="finite", fix="pass the target coefficient w*_1 of the toy")
    _check(fn, "v0", v0, what="finite", fix="pass the initial scalar head")


# ---------------------------------------------------------------------------------------
# Problem-level wrappers: the constants of a `Problem` and the bounds they give
# ---------------------------------------------------------------------------------------


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

    Uses linfeat's metrics (`principal_constants`, `feature_alignment`) and the scalar
    formulas of this module; jit/vmap friendly (vmap over problems and heads for batches).

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
    _check_matrix("problem_constants", "v0", v0, 1)
    if V.is_concrete(v0) and hasattr(problem, "B0") and np.shape(v0) != problem.B0.shape[-2:-1]:
        raise ValueError(
            f"problem_constants: `v0` has shape {np.shape(v0)}, the problem's head has k = "
            f"{problem.B0.shape[-2]}; pass a head of length k (vmap for batches)."
        )
    return _problem_constants(problem, jnp.asarray(v0))


@jax.jit  # compiled once per shape for eager calls (r5_bounds, r7_bounds, ... reuse it)
def _problem_constants(problem, v0) -> ProblemConstants:
    from ._cov import SubspaceCov, eig_range
    from ._metrics import feature_alignment, principal_constants

    eps, U = feature_alignment(problem.B0, problem.B_star)
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
    _check(
        fn,
        "train_loss",
        train_loss,
        lo=0.0,
        finite=False,
        what=">= 0 (the training loss along the trajectory)",
        fix="pass `trajectory.metrics.train_loss`",
    )
    _check(
        fn,
        "sigma2_min",
        sigma2_min,
        lo=0.0,
        lo_open=True,
        what="a finite number > 0 (the smallest non-zero eigenvalue of X^T X)",
        fix="take it from `problem_constants(problem, v0).sigma2_min`",
    )
    _check_lam(fn, "lam_perp", lam_perp)
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
