r"""Closed-form oracles: the width-one ($k = 1$) flow, the 2-D toy of Figure 2 and R12(b).

docs/theory.md, section 5 (closed forms useful as oracles) and R12(b). Every function is written
for one instance, is pure JAX (jit, vmap and float32/float64 friendly) and broadcasts its
numeric arguments elementwise; batch with `jax.vmap` at the edge.

Time convention (docs/theory.md sections 1–2): the training loss is unnormalised,
$\hat L = \|X B^T v - Y\|^2$, and the flow is $\dot v = -\nabla_v \hat L$,
$\dot B = -\nabla_B \hat L$. For $k = 1$, $B = b^T$, whitened ID data $X^T X = s \Pi_S$ and
$\Pi_S b_0 \parallel \omega = \Pi_S w^*$, the flow reduces to two scalars $(v, \alpha)$ in
the scaled time $\tau = 2 s t$:
$v' = -\alpha (v\alpha - y)$, $\alpha' = -v (v\alpha - y)$.

The root-find and the two limit functions are wrapped in `jax.jit` (compiled once per shape
and dtype, so eager calls do not dispatch the loop op by op; nesting inside a user's jit or
vmap is free).
Arguments are validated before anything is compiled: every numeric argument must be real and
finite (integer arrays are rejected: pass floats), times ($t$, $\tau$) must be $\ge 0$, the
data scale $s$ must be $> 0$, and the shapes must broadcast; a `ValueError` names the argument.
Under `jit`/`vmap` the values are tracers and only dtypes and shapes are checked.
The root-find in `k1_trajectory` has a fixed iteration count, so results are not
meaningfully differentiable with respect to the inputs; use the flow solvers for gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from . import _validate as V
from ._bounds import r12_ft_wins  # one decision rule for both modules (R12b)

# Every oracle argument broadcasts against the others: one entry per instance, any batch shape.
Batched = Float[ArrayLike, "*batch"]

# Safeguarded Newton: every rejected Newton step halves the bracket and every accepted one is
# at most half the previous step. Pure bisection needs log2(s_max / (s_min eps)) steps to reach
# rounding level (s = sqrt(p^2 + b^2) along the path; s_max / s_min ~ 1e10 for a flow passing
# 1e-10 from the saddle needs ~86), so 128 leaves a margin. A fixed count keeps it vmappable;
# the count costs run time only (a few microseconds), not compile time.
_ROOT_ITERATIONS = 128
_LN2 = 0.6931471805599453


class K1Trajectory(NamedTuple):
    r"""The width-one state $(v, \alpha)$ at the requested times."""

    v: Float[Array, "*batch"]
    alpha: Float[Array, "*batch"]


class Toy2DLimit(NamedTuple):
    r"""Limits of FT and LP in the 2-D toy of Figure 2 (docs/theory.md, section 5).

    Attributes:
        v_inf: FT limit head $v_\infty$ (signed).
        b_inf: FT limit feature $b_\infty = (\alpha_\infty, \sin\beta_0)$, shape (..., 2).
        w_ft: FT limit predictor $v_\infty b_\infty$, shape (..., 2).
        w_lp: LP limit predictor $(y / \cos\beta_0)\, b_0$, shape (..., 2).
        ft_ood_error: $\|w_{ft} - w^*\|^2$ (OOD loss with $\Sigma = I$).
        lp_ood_error: $\|w_{lp} - w^*\|^2$.
    """

    v_inf: Float[Array, "*batch"]
    b_inf: Float[Array, "*batch 2"]
    w_ft: Float[Array, "*batch 2"]
    w_lp: Float[Array, "*batch 2"]
    ft_ood_error: Float[Array, "*batch"]
    lp_ood_error: Float[Array, "*batch"]


class Toy2DTrajectory(NamedTuple):
    r"""The FT state of the 2-D toy at times t: head v (...,) and feature b (..., 2)."""

    v: Float[Array, "*batch"]
    b: Float[Array, "*batch 2"]


class R12Toy(NamedTuple):
    r"""R12(b): squared OOD errors ($\Sigma = I$) of converged LP and FT, and who wins.

    Attributes:
        lp_error: $\|w_{lp} - w^*\|^2 = a^2 + v_0^2$.
        ft_error: $\|w_{ft}^\infty - w^*\|^2 = v_\infty^2$ (0-limit cases: see `r12_toy`).
        ft_wins: whether FT strictly wins, `linfeat.theory.r12_ft_wins` (the single source).
        v_inf: FT limit head.
    """

    lp_error: Float[Array, "*batch"]
    ft_error: Float[Array, "*batch"]
    ft_wins: Bool[Array, "*batch"]
    v_inf: Float[Array, "*batch"]


def _check_args(times: dict | None = None, positive: dict | None = None, **finite) -> None:
    """Validates the oracles' arguments before anything is compiled.

    `times` (flow or scaled times) must be finite and >= 0, `positive` finite and > 0, the
    rest finite; all real (integer arrays rejected, scalars of any real type fine) and
    broadcast-compatible. Values are checked entrywise when concrete and skipped when traced
    (a traced negative time gives a meaningless state, not an error).
    """
    times, positive = times or {}, positive or {}
    for name, x in times.items():
        V.check_nonneg(name, x, fix="the flow starts at t = 0; closed forms are for t >= 0.")
    for name, x in positive.items():
        V.check_positive(name, x)
    for name, x in finite.items():
        V.check_finite(name, x)
    named = {**times, **positive, **finite}
    try:
        np.broadcast_shapes(*(np.shape(x) for x in named.values()))
    except ValueError:
        shapes = ", ".join(f"`{k}` {np.shape(x)}" for k, x in named.items())
        raise ValueError(
            f"the arguments must broadcast against each other, got shapes {shapes}; add unit "
            f"axes (x[:, None]) or pass equal shapes."
        ) from None


def _float_dtype(*xs):
    """Floating dtype of the inputs (Python scalars are weak, so float32 stays float32)."""
    dtype = jnp.result_type(*xs)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _magnitudes(p, c):
    r"""$(|v|, |\alpha|)$ from $p = v\alpha$ and $c = v^2 - \alpha^2$, without cancellation."""
    q = 2.0 * jnp.hypot(0.5 * c, p)  # q = sqrt(c^2 + 4p^2) = v^2 + alpha^2, overflow-safe
    # (q - c)/2 cancels when c >> |p| > 0; use the equal 2p^2 / (q + c) there (and vice versa).
    safe_qpc = jnp.where(q + c > 0, q + c, 1.0)
    safe_qmc = jnp.where(q - c > 0, q - c, 1.0)
    v2 = jnp.where(c >= 0, 0.5 * (q + c), 2.0 * p * p / safe_qmc)
    a2 = jnp.where(c <= 0, 0.5 * (q - c), 2.0 * p * p / safe_qpc)
    return jnp.sqrt(v2), jnp.sqrt(a2)


def _signed_state(p, c, v0, alpha0):
    r"""$(v, \alpha)$ from $p$ and the conserved $c$, with the sign rules of section 4.

    $c > 0$: $v$ never vanishes, so $\mathrm{sgn}\, v = \mathrm{sgn}\, v_0$; $c < 0$: likewise
    $\mathrm{sgn}\,\alpha = \mathrm{sgn}\,\alpha_0$; $v\alpha = p$ fixes the other sign.
    For $c = 0$, $v^2 = \alpha^2 = |p|$ and $p$ never changes sign, so both signs are kept.
    """
    v_abs, a_abs = _magnitudes(p, c)
    sgn_p = jnp.sign(p)
    sgn_v = jnp.where(c >= 0, jnp.sign(v0), sgn_p * jnp.sign(alpha0))
    sgn_a = jnp.where(c <= 0, jnp.sign(alpha0), sgn_p * jnp.sign(v0))
    return sgn_v * v_abs, sgn_a * a_abs


def _log_N(p, y, b, R):
    r"""$\ln N(p)$, $N = R\sqrt{p^2+b^2} + y p + b^2$, the numerator of $G$ (section 4).

    For $yp < 0$ the sum cancels; there $N = b^2 (R + s)^2 / (R s + b^2 - y p)$ (multiply by
    the conjugate, using $R^2 = y^2 + b^2$), taken in logs so a tiny $b$ does not underflow.
    """
    s = jnp.hypot(p, b)
    yp = y * p
    same_sign = yp >= 0
    direct = jnp.log(jnp.where(same_sign, R * s + yp + b * b, 1.0))
    safe_b = jnp.where(same_sign, 1.0, jnp.abs(b))
    conj = (
        2.0 * jnp.log(safe_b)
        + 2.0 * jnp.log(R + s)
        - jnp.log(jnp.where(same_sign, 1.0, R * s + b * b - yp))
    )
    return jnp.where(same_sign, direct, conj)


def _p_general(tau, p0, y, b):
    r"""$p(\tau)$ when $b \ne 0$ or $p_0 y > 0$, by root-finding $\tau(p)$ (section 4).

    Unknown $\Delta = \ln(|y - p_0| / |y - p|) \ge 0$, so $p = y - (y - p_0) e^{-\Delta}$ stays
    between $p_0$ and $y$ and $p \to y$ (large $\tau$) is well conditioned. The equation is
    $h(\Delta) = \Delta + \ln N(p) - \ln N(p_0) - 2R\tau = 0$ with
    $h'(\Delta) = R / \sqrt{p^2 + b^2} \ge R / \max(s_0, R)$, so the root lies in
    $[0, 2\tau\max(s_0, R)]$ ($s_0 = \sqrt{p_0^2 + b^2}$; $s \le \max(s_0, R)$ on the path
    because $s$ is convex in $p$ and $s(y) = R$).
    """
    R = jnp.hypot(y, b)
    gap0 = y - p0
    lnN0 = _log_N(p0, y, b, R)
    target = 2.0 * R * tau

    def p_of(delta):
        # p = y - gap0 e^{-Delta} = p0 - gap0 expm1(-Delta). Rounding is eps (|y| + |y - p|) in
        # the first form and eps (|p0| + |p - p0|) in the second: take the second while
        # |p - p0| <= |y - p| (Delta <= ln 2), so p stays relatively accurate when it is
        # small, e.g. when the flow leaves the neighbourhood of the saddle (|p0| << |y|).
        near_start = delta <= _LN2
        return jnp.where(
            near_start,
            p0 - gap0 * jnp.expm1(-jnp.where(near_start, delta, 0.0)),
            y - gap0 * jnp.exp(-delta),
        )

    def h_and_slope(delta):
        p = p_of(delta)
        return delta + _log_N(p, y, b, R) - lnN0 - target, R / jnp.hypot(p, b)

    def body(_, carry):
        # Newton with a bisection fallback (Numerical Recipes' `rtsafe`): bisect when the
        # Newton point leaves the bracket or would not halve the previous step, so the
        # iterates converge even where $h'$ jumps (near the saddle, small $|\tilde b|$).
        lo, hi, x, hx, slope, step_old = carry
        newton = x - hx / slope
        use_newton = (newton >= lo) & (newton <= hi) & (2.0 * jnp.abs(hx) <= step_old * slope)
        x_new = jnp.where(use_newton, newton, 0.5 * (lo + hi))
        h_new, slope_new = h_and_slope(x_new)
        lo, hi = jnp.where(h_new < 0, x_new, lo), jnp.where(h_new < 0, hi, x_new)
        return lo, hi, x_new, h_new, slope_new, jnp.abs(x_new - x)

    hi0 = 2.0 * tau * jnp.maximum(jnp.hypot(p0, b), R)
    zero = jnp.zeros_like(hi0)
    # Start at Delta = 0, where h = -2 R tau and h' = R / s0; the first step is free to be Newton.
    init = (zero, hi0, zero, -target, R / jnp.hypot(p0, b), jnp.full_like(hi0, jnp.inf))
    delta = jax.lax.fori_loop(0, _ROOT_ITERATIONS, body, init)[2]
    return p_of(delta)


def _p_balanced(tau, p0, y):
    r"""$p(\tau)$ for $c = 0$ when $p_0 y \le 0$, where $\ln N(p_0) = -\infty$.

    Then $p' = -2|p|(p - y)$. For $y \ne 0$, $p$ tends to the saddle $p = 0$:
    $p = -y e^{-x} / (|y/p_0| - \mathrm{expm1}(-x))$, $x = 2|y|\tau$ ($p = 0$ if $p_0 = 0$).
    For $y = 0$: $p = p_0 / (1 + 2|p_0|\tau)$.
    """
    x = 2.0 * jnp.abs(y) * tau
    safe_p0 = jnp.where(p0 == 0, 1.0, p0)
    towards_saddle = -y * jnp.exp(-x) / (jnp.abs(y / safe_p0) - jnp.expm1(-x))
    towards_saddle = jnp.where(p0 == 0, jnp.zeros_like(x), towards_saddle)
    no_target = p0 / (1.0 + 2.0 * jnp.abs(p0) * tau)
    return jnp.where(y == 0, no_target, towards_saddle)


def _k1_scalar(tau, v0, alpha0, y):
    """One (tau, v0, alpha0, y) of `k1_trajectory`."""
    c = (v0 - alpha0) * (v0 + alpha0)  # = v0^2 - alpha0^2 without cancellation
    b = 0.5 * c
    p0 = v0 * alpha0
    general = (b != 0) | (p0 * y > 0)
    # Outside its branch, feed `_p_general` a harmless instance (b = 1) so no NaN is formed.
    p_gen = _p_general(tau, p0, y, jnp.where(general, b, 1.0))
    p = jnp.where(general, p_gen, _p_balanced(tau, p0, y))
    v, alpha = _signed_state(p, c, v0, alpha0)
    # Return the inputs bit for bit where nothing moves (tau = 0, a minimum, the saddle),
    # instead of the few-ulp round trip through (p, c).
    still = (tau == 0) | (p0 == y) | ((v0 == 0) & (alpha0 == 0))
    return jnp.where(still, v0, v), jnp.where(still, alpha0, alpha)


# Compiled once per shape and dtype (arguments arrive as strong-typed arrays, so Python and
# NumPy scalars share one executable); eager calls then do not dispatch the loop op by op.
_k1_compiled = jax.jit(jnp.vectorize(_k1_scalar))


def k1_trajectory(tau: Batched, *, v0: Batched, alpha0: Batched, y: Batched) -> K1Trajectory:
    r"""Exact width-one FT trajectory $(v(\tau), \alpha(\tau))$ in scaled time (section 4).

    Solves $v' = -\alpha(v\alpha - y)$, $\alpha' = -v(v\alpha - y)$ from $(v_0, \alpha_0)$.
    With $p = v\alpha$, the conserved $c = v_0^2 - \alpha_0^2$ (balancedness, R2),
    $\tilde b = c/2$ and $R = \sqrt{y^2 + \tilde b^2}$, $p' = -2\sqrt{p^2 + \tilde b^2}(p - y)$
    integrates to $\tau(p) = (G(p) - G(p_0)) / (2R)$,
    $G(p) = \ln|(R\sqrt{p^2 + \tilde b^2} + y p + \tilde b^2)/(y - p)|$. $p$ moves
    monotonically from $p_0$ to $y$ and is found by bracketed bisection + Newton in
    $\Delta = \ln|y - p_0| - \ln|y - p|$ (well conditioned up to $\tau \sim 10^3$ and beyond,
    where $p = y$ to rounding). Then $q = \sqrt{c^2 + 4p^2}$, $v^2 = (q + c)/2$,
    $\alpha^2 = (q - c)/2$ (cancellation-free forms), $\mathrm{sgn}\, v = \mathrm{sgn}\, v_0$
    if $c > 0$, $\mathrm{sgn}\,\alpha = \mathrm{sgn}\,\alpha_0$ if $c < 0$, $v\alpha = p$.

    Valid for any sign of $y$ and of $y - p_0$ (the formula for $G$ holds for both). Cases
    outside the formula, handled in closed form:

    - $p_0 = y$: stationary (a global minimum).
    - $v_0 = \alpha_0 = 0$: the saddle, stationary for every $y$.
    - $c = 0$, $p_0 y < 0$: $v = -\mathrm{sgn}(y)\,\alpha$ forever and the flow runs into the
      saddle, $p = -y e^{-x} / (|y/p_0| - \mathrm{expm1}(-x))$, $x = 2|y|\tau$ (so $p \to 0$,
      not $y$).
    - $c = 0$, $y = 0$: $p = p_0 / (1 + 2|p_0|\tau)$.

    In the paper's geometry $y = \|\Pi_S w^*\| \ge 0$ and $\alpha$ is the coordinate of
    $\Pi_S b$ along $\Pi_S w^* / y$; the ODE is invariant under $(\alpha, y) \to (-\alpha, -y)$,
    so a signed coordinate and signed $y$ along any fixed unit vector of $S$ work too.

    Args:
        tau: scaled times $\tau = 2 s t \ge 0$ (any shape).
        v0: initial head $v_0$.
        alpha0: initial feature coordinate $\alpha_0$.
        y: target coordinate $y$.

    Returns:
        `K1Trajectory(v, alpha)`, broadcast over all arguments, in their floating dtype.

    References:
        docs/theory.md, section 5 ("Exact k = 1 trajectory"); R2 for the conserved $c$.
    """
    _check_args(times=dict(tau=tau), v0=v0, alpha0=alpha0, y=y)
    dtype = _float_dtype(tau, v0, alpha0, y)
    args = [jnp.asarray(a, dtype) for a in (tau, v0, alpha0, y)]
    v, alpha = _k1_compiled(*args)
    return K1Trajectory(v, alpha)


def k1_trajectory_problem_time(
    t: Batched, *, s: Batched, v0: Batched, alpha0: Batched, y: Batched
) -> K1Trajectory:
    r"""`k1_trajectory` at the paper's flow time t, i.e. at $\tau = 2 s t$.

    With $\hat L = \|X b v - Y\|^2$ (no $1/n$, no $1/2$), $X^T X = s \Pi_S$ and
    $\Pi_S b = \alpha\, \omega / y$: $\nabla_v \hat L = 2 s\, \alpha (v\alpha - y)$ and the
    $\omega$-component of $\nabla_b \hat L$ is $2 s\, v (v\alpha - y)$, hence $\tau = 2 s t$.

    Args:
        t: flow times $t \ge 0$.
        s: scale of the whitened ID data, $X^T X = s \Pi_S$ ($s > 0$).
        v0, alpha0, y: as in `k1_trajectory`.

    Returns:
        `K1Trajectory(v, alpha)` at times t.

    References:
        docs/theory.md sections 2 and 4.
    """
    _check_args(times=dict(t=t), positive=dict(s=s), v0=v0, alpha0=alpha0, y=y)
    return k1_trajectory(2.0 * jnp.asarray(s) * jnp.asarray(t), v0=v0, alpha0=alpha0, y=y)


def _k1_limit(v0, alpha0, y):
    r"""$(v_\infty, \alpha_\infty)$ of the width-one flow (section 4, $p \to y$).

    $c \ne 0$ or $p_0 y > 0$: $p_\infty = y$. $c = 0$ with $p_0 y \le 0$: the flow ends at the
    saddle $(0, 0)$ (docs/theory.md's sign rule does not cover this measure-zero case).
    """
    c = (v0 - alpha0) * (v0 + alpha0)
    p_inf = jnp.where((c != 0) | (v0 * alpha0 * y > 0), y, jnp.zeros_like(y))
    return _signed_state(p_inf, c, v0, alpha0)


def _toy_vectors(beta0, beta_star, v_star):
    """b0 and w* of the 2-D toy, shape (..., 2)."""
    b0 = jnp.stack(jnp.broadcast_arrays(jnp.cos(beta0), jnp.sin(beta0)), axis=-1)
    w_star = v_star[..., None] * jnp.stack(
        jnp.broadcast_arrays(jnp.cos(beta_star), jnp.sin(beta_star)), axis=-1
    )
    return jnp.broadcast_arrays(b0, w_star)


def toy2d_limit(beta0: Batched, beta_star: Batched, v_star: Batched, v0: Batched) -> Toy2DLimit:
    r"""FT and LP limits in the 2-D toy of the paper's Figure 2 (docs/theory.md, section 5).

    $d = 2$, $k = 1$, one training input $x = e_1$ ($X = e_1^T$, $s = 1$),
    $b_0 = (\cos\beta_0, \sin\beta_0)$, $w^* = v^*(\cos\beta^*, \sin\beta^*)$, $y = w^*_1$.
    FT keeps $b_2 = \sin\beta_0$ (R1) and runs the width-one flow with $\alpha = b_1$,
    $c = v_0^2 - \cos^2\beta_0$: $v_\infty^2 = (c + \sqrt{c^2 + 4y^2})/2$ (computed as
    $2y^2 / (\sqrt{c^2 + 4y^2} - c)$ when $c < 0$), $b_{1\infty} = y / v_\infty$,
    $\mathrm{sgn}\, v_\infty = \mathrm{sgn}\, v_0$ if $c > 0$ else $\mathrm{sgn}(y\cos\beta_0)$,
    so $w_{ft} = (y, v_\infty\sin\beta_0)$. LP: $w_{lp} = (y/\cos\beta_0)\, b_0$ (section 2; if
    $\cos\beta_0 = 0$ the LP flow does not move and $w_{lp} = v_0 b_0$). With $\beta_0 = \beta^*$
    the features are perfect and LP is exact (R4).
    The OOD second moment is $I$, so errors are squared Euclidean distances to $w^*$.

    Degenerate cases beyond docs/theory.md's rule: $c = 0$ with $v_0 y \cos\beta_0 \le 0$ (e.g.
    $v_0 = -\cos\beta_0$, $y\cos\beta_0 > 0$) flows into the saddle, $v_\infty = b_{1\infty} = 0$
    and $w_{ft} = 0$; $y = 0$ with $c < 0$ has $v_\infty = 0$ and
    $b_{1\infty} = \mathrm{sgn}(\cos\beta_0)\sqrt{-c}$ (not $y / v_\infty$). $b_{1\infty}$ is
    always computed from $\alpha_\infty^2 = (\sqrt{c^2 + 4y^2} - c)/2$, never as $y/v_\infty$.

    Args:
        beta0: angle of the pretrained feature $b_0$.
        beta_star: angle of $w^*$.
        v_star: norm (signed scale) of $w^*$.
        v0: initial head.

    Returns:
        `Toy2DLimit`, broadcast over the arguments.

    References:
        Kumar et al., ICLR 2022, Figure 2; docs/theory.md, section 5, R1, R4.
    """
    _check_args(beta0=beta0, beta_star=beta_star, v_star=v_star, v0=v0)
    return _toy2d_limit(beta0, beta_star, v_star, v0)


@jax.jit
def _toy2d_limit(beta0, beta_star, v_star, v0) -> Toy2DLimit:
    dtype = _float_dtype(beta0, beta_star, v_star, v0)
    beta0, beta_star, v_star, v0 = (jnp.asarray(a, dtype) for a in (beta0, beta_star, v_star, v0))
    b0, w_star = _toy_vectors(beta0, beta_star, v_star)
    y = w_star[..., 0]
    v_inf, b1_inf = _k1_limit(v0, b0[..., 0], y)
    b_inf = jnp.stack(jnp.broadcast_arrays(b1_inf, b0[..., 1]), axis=-1)
    w_ft = v_inf[..., None] * b_inf
    cos0 = b0[..., 0]
    fits = cos0 != 0
    v_lp = jnp.where(fits, y / jnp.where(fits, cos0, 1.0), v0)
    w_lp = v_lp[..., None] * b0
    return Toy2DLimit(
        v_inf=v_inf,
        b_inf=b_inf,
        w_ft=w_ft,
        w_lp=w_lp,
        ft_ood_error=jnp.sum((w_ft - w_star) ** 2, axis=-1),
        lp_ood_error=jnp.sum((w_lp - w_star) ** 2, axis=-1),
    )


def toy2d_trajectory(
    t: Batched, beta0: Batched, beta_star: Batched, v_star: Batched, v0: Batched
) -> Toy2DTrajectory:
    r"""FT state $(v(t), b(t))$ of the 2-D toy at flow times t (docs/theory.md, section 5).

    Here $X = e_1^T$, so $s = 1$ and $\tau = 2t$; $\omega = \Pi_S w^* = (y, 0)$ with
    $y = w^*_1$. Section 4 takes $\alpha$ along $\omega/\|\omega\| = \mathrm{sgn}(y)\, e_1$ and
    target $\|\omega\| = |y|$; by the symmetry $(\alpha, y) \to (-\alpha, -y)$ of the ODE this
    is the same as $\alpha = b_1$ with the signed target $y$, which is what is used (it also
    covers $y = 0$). $b_2 = \sin\beta_0$ for all t (R1).

    Args:
        t: flow times $t \ge 0$ (any shape).
        beta0, beta_star, v_star, v0: as in `toy2d_limit`.

    Returns:
        `Toy2DTrajectory(v, b)` with v of the broadcast shape and b of that shape + (2,).

    References:
        docs/theory.md, section 5; R1.
    """
    _check_args(times=dict(t=t), beta0=beta0, beta_star=beta_star, v_star=v_star, v0=v0)
    dtype = _float_dtype(t, beta0, beta_star, v_star, v0)
    t, beta0, beta_star, v_star, v0 = (
        jnp.asarray(a, dtype) for a in (t, beta0, beta_star, v_star, v0)
    )
    b0, w_star = _toy_vectors(beta0, beta_star, v_star)
    v, b1 = k1_trajectory_problem_time(t, s=1.0, v0=v0, alpha0=b0[..., 0], y=w_star[..., 0])
    b = jnp.stack(jnp.broadcast_arrays(b1, b0[..., 1]), axis=-1)
    return Toy2DTrajectory(v=v, b=b)


def r12_toy(a: Batched, v0: Batched) -> R12Toy:
    r"""R12(b): bad features, where converged FT can beat LP out of distribution.

    $d = 2$, $k = 1$, $X = e_1^T$, $w^* = (a, 0)$, $B_0 = e_2^T$ (so $\alpha_0 = 0$,
    $c = v_0^2$, $y = a$). LP cannot move ($X B_0^T = 0$): $w_{lp} = (0, v_0)$, error$^2$
    $a^2 + v_0^2$. FT: $v_\infty^2 = (v_0^2 + \sqrt{v_0^4 + 4a^2})/2$,
    $w_{ft} = (a, v_\infty)$, error$^2$ $= v_\infty^2$. For $a \ne 0$,
    $v_\infty^2 < a^2 + v_0^2 \iff 4a^2 < 4a^4 + 4a^2 v_0^2 \iff a^2 + v_0^2 > 1$.
    Exceptions: $v_0 = 0$ is the saddle (stationary), so FT error$^2 = a^2$ = LP's, a tie;
    $a = 0$ gives a tie too. `ft_wins` is `linfeat.theory.r12_ft_wins` (decided from the
    inputs, not from the rounded errors, which may compare either way near the boundary).

    Args:
        a: target $w^*_1$.
        v0: initial head.

    Returns:
        `R12Toy(lp_error, ft_error, ft_wins, v_inf)`.

    References:
        docs/theory.md R12(b).
    """
    _check_args(a=a, v0=v0)
    return _r12_toy(a, v0)


@jax.jit
def _r12_toy(a, v0) -> R12Toy:
    dtype = _float_dtype(a, v0)
    a, v0 = (jnp.asarray(x, dtype) for x in (a, v0))
    a, v0 = jnp.broadcast_arrays(a, v0)
    v_inf, b1_inf = _k1_limit(v0, jnp.zeros_like(v0), a)
    lp_error = a * a + v0 * v0
    ft_error = (v_inf * b1_inf - a) ** 2 + v_inf * v_inf  # w_ft = (v b1, v * 1)
    return R12Toy(lp_error=lp_error, ft_error=ft_error, ft_wins=r12_ft_wins(a, v0), v_inf=v_inf)
