r"""The paper's bounds as scalar formulas: R5 (FT), R6 (random heads), R7, R8 (LP), R12 (toy).

Every function takes plain scalars (no `Problem`; `linfeat._constants` evaluates them on a
problem), is written for one instance, is pure `jax.numpy`, jits, vmaps over any argument
and keeps the floating dtype of its inputs. Result ids and the labels [paper] / [derived] /
[unsure] are those of docs/theory.md, section 4. Concrete arguments are range-checked by
`linfeat._theory_args` (a `ValueError` names the argument and the fix).

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

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from . import _theory_args as A
from ._geometry import head_alignment_error
from ._theory_args import Head, Samples, Scalar, ScalarOut


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
    A.check_args(fn, {"a": A.A_NONNEG}, a=a, sigma=sigma, delta=delta)
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
    A.check_args("r6_sigma_max", {"a": A.A_NONNEG}, a=a, delta=delta)
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
    A.check_matrix(fn, "a_star", a_star, 1)
    A.check_args(fn, sigma=sigma)
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
    A.check_args(fn, {"eps": A.EPS_PROCRUSTES}, c_perp=c_perp, k=k, phi=phi, w_norm=w_norm, eps=eps)
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
    A.check_args("r5_delta0", a=a, phi=phi)
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
    A.check_args(fn, c_perp=c_perp, phi=phi, a=a, eps=eps)
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
    A.check_args("r5_rigorous_bound", lam_min=lam_min)
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
    A.check_args(fn, {"a": A.A_NONNEG}, eps=eps, a=a, kappa=kappa, c_S=c_S)
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
    A.check_args("r7_lp_ood_bound", lam_max=lam_max)
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
    A.check_args(
        fn, c_perp=c_perp, phi=phi, a=a, kappa=kappa, c_S=c_S, lam_min=lam_min, lam_max=lam_max
    )
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
    A.check(fn, "a", a, what="finite", fix="pass the target coefficient w*_1 of the toy")
    A.check(fn, "v0", v0, what="finite", fix="pass the initial scalar head")
