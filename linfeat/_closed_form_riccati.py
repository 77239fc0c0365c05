r"""The lambda-balanced width-k trajectory: a matrix-Riccati closed form (docs/theory.md, 5.5).

Setting (the paper's time, $\hat L = \|XB^Tv - Y\|^2$, $Y = Xw^*$): whitened ID data
$X^TX = s^2\Pi_S$, $Q_S$ an orthonormal basis of S, $A = BQ_S$ ($k\times m$),
$\beta = Q_S^Tw^*$. In the scaled time $\tau = 2s^2t$ the stacked state
$Q = [A^T; v^T]$ ($(m+1)\times k$) satisfies $Q' = FQ - \tfrac12 QQ^TQ$ whenever the initial
state is $\lambda$-balanced, $v_0v_0^T - A_0A_0^T = \lambda I_k$, with the symmetric
$$F = \begin{pmatrix} -\tfrac\lambda2 I_m & \beta \\ \beta^T & \tfrac\lambda2\end{pmatrix},$$
so $P = QQ^T$ solves the Riccati equation $P' = FP + PF - P^2$ and
$$P(\tau) = e^{F\tau}Q_0\big[I_k + Q_0^TK(\tau)Q_0\big]^{-1}Q_0^Te^{F\tau},\qquad
K(\tau) = \int_0^\tau e^{2F\sigma}\,d\sigma = \tfrac12(e^{2F\tau} - I)F^{-1}.$$

Evaluation. F is diagonalised in closed form (eigenvalues $\pm\mu$,
$\mu = \sqrt{\lambda^2/4 + |\beta|^2}$, on span$\{(\hat\beta, 0), e_{m+1}\}$, and
$-\lambda/2$ on $\beta^\perp\times\{0\}$, $m - 1$ times), with no eigensolver, and $K$ is
applied as $\tau\,\varphi_1(2f\tau)$, $\varphi_1(x) = (e^x - 1)/x$, exact also where F is
singular ($\lambda = 0$). The exponentials of $f\tau$ span many orders of magnitude, so the
inverse is never formed: with $C = e^{-2\mu\tau}(I + Z^TKZ) = R^TR$ from a Householder QR
(row sorting and column pivoting, pure JAX) of the graded stack
$[\,e^{-\mu\tau}K^{1/2}Z;\ e^{-\mu\tau}I_k\,]$, $Z = U^TQ_0$, the factor
$e^{F\tau}Q_0(I + Q_0^TKQ_0)^{-1/2}$ is $U\,\mathrm{diag}(e^{f\tau}K^{-1/2})\,Q_1$ ($Q_1$ the
top rows of the orthonormal factor), all of whose ingredients are bounded. Long times are
reached by composing the exact flow map over segments of $\mu\tau \le 100$ (float64; the
semigroup property of the flow, no integrator), which keeps every scale above $e^{-200}$;
once a segment changes P only at rounding level the state is a numerical fixed point and
later times repeat it.

Pure `jax.numpy`/`lax` (no LAPACK call: batched LAPACK kernels can deadlock on a 2-core CPU);
written for one instance, vmappable.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from . import _validate as V

# mu * tau per closed-form segment: every row scale of the graded QR stays above
# e^{-2 * segment} (e^{-200} ~ 1e-87 in float64, whose squares are still normal numbers).
_SEGMENT = {8: 100.0, 4: 15.0}
# balance residual ||v0 v0^T - A0 A0^T - lam I||_F / (|v0|^2 + ||A0||_F^2) above which a
# concrete instance is rejected: a balanced instance built in floating point sits at a few eps
# (~1e-16 in float64, ~1e-7 in float32); the rule is max(1e-10, 1e3 eps).
BALANCE_TOL = 1e-10


def balance_tol(dtype) -> float:
    """The largest accepted balance residual in `dtype`: max(1e-10, 1e3 eps)."""
    return max(BALANCE_TOL, 1e3 * float(jnp.finfo(dtype).eps))


class BalancedTrajectory(NamedTuple):
    r"""The closed form of a $\lambda$-balanced FT flow at the times `ts` (docs/theory.md, 5.5).

    Attributes:
        ts: the paper's times t.
        P: $P(t) = QQ^T$, $Q = [A^T; v^T]$, shape (T, m+1, m+1): the part of the state that
            the closed form determines for every k.
        factor: (T, m+1, k), a factor of P ($\text{factor}\,\text{factor}^T = P$): the state
            $[A^T; v^T]$ itself for k = 1, and up to a time-dependent orthogonal $k\times k$
            matrix (a hidden-unit rotation) for $k \ge 2$.
        lam: the balance $\lambda$, $v_0v_0^T - A_0A_0^T = \lambda I_k$.
        balance_residual: $\|v_0v_0^T - A_0A_0^T - \lambda I\|_F/(\|v_0\|^2 + \|A_0\|_F^2)$;
            the closed form holds only where it is at rounding level (under vmap this is the
            per-instance flag: a concrete call raises instead).
    """

    ts: Float[Array, " T"]
    P: Float[Array, "T m1 m1"]
    factor: Float[Array, "T m1 k"]
    lam: Float[Array, ""]
    balance_residual: Float[Array, ""]

    @property
    def predictor_S(self) -> Float[Array, "T m"]:
        r"""$A^Tv = Q_S^T B^Tv$: the predictor on S in the basis $Q_S$."""
        return self.P[..., :-1, -1]

    @property
    def feature_gram(self) -> Float[Array, "T m m"]:
        r"""$A^TA = Q_S^TB^TBQ_S$: the features' Gram matrix on S."""
        return self.P[..., :-1, :-1]

    @property
    def head_norm2(self) -> Float[Array, " T"]:
        r"""$\|v\|^2$."""
        return self.P[..., -1, -1]

    def _state(self):
        if self.factor.shape[-1] != 1:
            raise ValueError(
                f"the closed form determines (v, A) only up to a k x k rotation for k = "
                f"{self.factor.shape[-1]} >= 2; use the rotation-invariant fields P, "
                f"predictor_S, feature_gram, head_norm2 (docs/theory.md, section 5.5)."
            )
        return self.factor

    @property
    def v(self) -> Float[Array, "T 1"]:
        """The head v(t) (k = 1 only)."""
        return self._state()[..., -1, :]

    @property
    def A(self) -> Float[Array, "T 1 m"]:
        r"""The features on S, $A(t) = B(t)Q_S$ (k = 1 only)."""
        return jnp.swapaxes(self._state()[..., :-1, :], -1, -2)


def _log_phi1(x):
    r"""$\log\varphi_1(x) = \log((e^x - 1)/x)$ for any real x, without overflow ($\log 1$ at 0)."""
    u = -jnp.abs(x)  # log phi1(x) = max(x, 0) + log phi1(-|x|), and phi1(u) in (0, 1] for u <= 0
    us = jnp.where(u < 0, u, -1.0)  # double where: no 0/0 in the value or its derivative
    small = jnp.log1p(u / 2.0)  # |u| < 1e-8: error u^2/24 < 1e-17 (and the right slope at 0)
    big = jnp.log(jnp.expm1(us) / us)  # expm1(u)/u is accurate to an ulp for every u < 0
    return jnp.maximum(x, 0.0) + jnp.where(u > -1e-8, small, big)


def _safe_norm(x, mask=None):
    """Euclidean norm of x (entries where `mask`), scaled so that tiny entries do not underflow."""
    if mask is not None:
        x = jnp.where(mask, x, 0.0)
    m = jnp.max(jnp.abs(x))
    ms = jnp.where(m > 0, m, 1.0)
    r = jnp.sum((x / ms) ** 2)
    return jnp.where(m > 0, ms * jnp.sqrt(jnp.where(m > 0, r, 1.0)), 0.0)


def _thin_q(Y: Float[Array, "N k"]) -> Float[Array, "N k"]:
    r"""Orthonormal factor $Q$ of a thin QR $Y\Pi = QR$ with $R_{jj} \ge 0$ (pure JAX).

    Householder with row sorting (largest rows first) and column pivoting: row-wise backward
    stable for graded rows (Cox and Higham, BIT 1998), which the Riccati stack is. k is small
    and static, so the loop unrolls.
    """
    N, k = Y.shape
    order = jnp.argsort(-jnp.max(jnp.abs(Y), axis=1))
    Ys = Y[order]
    rows = jnp.arange(N)
    cols = jnp.arange(k)
    vs, signs = [], []
    for j in range(k):
        below = rows >= j
        norms = jax.vmap(lambda c: _safe_norm(c, below), in_axes=1)(Ys)
        p = jnp.argmax(jnp.where(cols >= j, norms, -1.0))
        swap = jnp.where(cols == j, p, jnp.where(cols == p, j, cols))
        Ys = Ys[:, swap]
        x = jnp.where(below, Ys[:, j], 0.0)
        nx = _safe_norm(x)
        s = jnp.where(x[j] >= 0, 1.0, -1.0)
        v = x.at[j].add(s * nx)  # x - alpha e_j with alpha = -s |x|: no cancellation
        nv = _safe_norm(v)
        v = jnp.where(nv > 0, v / jnp.where(nv > 0, nv, 1.0), 0.0)
        Ys = Ys - 2.0 * jnp.outer(v, v @ Ys)
        vs.append(v)
        signs.append(-s)  # sign of R_jj = alpha
    Q = jnp.eye(N, k, dtype=Y.dtype)
    for j in reversed(range(k)):
        Q = Q - 2.0 * jnp.outer(vs[j], vs[j] @ Q)
    Q = Q * jnp.stack(signs)
    return jnp.zeros_like(Q).at[order].set(Q)


def _eigenbasis(beta: Float[Array, " m"], lam) -> tuple[Float[Array, "m1 m1"], Float[Array, " m1"]]:
    r"""$F = U\mathrm{diag}(f)U^T$ in closed form: $f = (\mu, -\mu, -\lambda/2, \dots)$."""
    m = beta.shape[0]
    dtype = beta.dtype
    b = _safe_norm(beta)
    e1 = jnp.zeros((m,), dtype).at[0].set(1.0)
    bhat = jnp.where(b > 0, beta / jnp.where(b > 0, b, 1.0), e1)  # beta = 0: any unit vector
    mu = jnp.hypot(lam / 2.0, b)
    phi = 0.5 * jnp.arctan2(b, lam / 2.0)  # 2x2 block mu [[-cos 2phi, sin 2phi], [sin, cos]]
    u_plus = jnp.concatenate([jnp.sin(phi) * bhat, jnp.cos(phi)[None]])
    u_minus = jnp.concatenate([jnp.cos(phi) * bhat, -jnp.sin(phi)[None]])
    # beta-perp: columns 2..m of the Householder reflector that maps bhat to -+e1
    sgn = jnp.where(bhat[0] >= 0, 1.0, -1.0)
    h = bhat + sgn * e1  # |h|^2 = 2 (1 + |bhat_1|) >= 2
    H = jnp.eye(m, dtype=dtype) - 2.0 * jnp.outer(h, h) / jnp.dot(h, h)
    U0 = jnp.concatenate([H[:, 1:], jnp.zeros((1, m - 1), dtype)], axis=0)
    U = jnp.concatenate([u_plus[:, None], u_minus[:, None], U0], axis=1)
    f = jnp.concatenate([jnp.stack([mu, -mu]), jnp.full((m - 1,), -lam / 2.0, dtype)])
    return U, f


def _segment(Q, tau, U, f, mu):
    r"""The exact flow map over scaled time $\tau \ge 0$ from the factor Q (any factor of P)."""
    k = Q.shape[1]
    Z = U.T @ Q
    pos = tau > 0
    ts = jnp.where(pos, tau, 1.0)
    log_k = jnp.log(ts) + _log_phi1(2.0 * f * ts)  # log K_jj, K = int_0^tau e^{2 f s} ds
    lv = 0.5 * log_k - mu * ts  # row scales of e^{-mu tau} K^{1/2} Z (<= O(1))
    lg = f * ts - 0.5 * log_k  # log(e^{f tau} K^{-1/2}), bounded for tau away from 0
    stack = jnp.concatenate(
        [jnp.exp(lv)[:, None] * Z, jnp.exp(-mu * ts) * jnp.eye(k, dtype=Q.dtype)], axis=0
    )
    Q1 = _thin_q(stack)[: Z.shape[0]]
    new = U @ (jnp.exp(lg)[:, None] * Q1)
    return jnp.where(pos, new, Q)


def _trajectory(tau, Q0, beta, lam):
    """Factors at the scaled times `tau` (non-decreasing), composing segments of mu tau <= cap."""
    U, f = _eigenbasis(beta, lam)
    mu = f[0]
    dtype = Q0.dtype
    cap = _SEGMENT[jnp.finfo(dtype).bits // 8] / jnp.where(mu > 0, mu, 1.0)
    cap = jnp.where(mu > 0, cap, jnp.inf)
    eps = jnp.finfo(dtype).eps

    def advance(carry, tau_i):
        t_prev, Q, frozen = carry

        def cond(s):
            rem, _, frz = s
            return (rem > 0) & ~frz

        def body(s):
            rem, Qc, _ = s
            step = jnp.minimum(rem, cap)
            Qn = _segment(Qc, step, U, f, mu)
            Pn, Pc = Qn @ Qn.T, Qc @ Qc.T
            # a full segment that moves P only at rounding level: a numerical fixed point
            still = (step >= cap) & (
                jnp.sqrt(jnp.sum((Pn - Pc) ** 2)) <= 16 * eps * jnp.sqrt(jnp.sum(Pn**2))
            )
            return rem - step, Qn, still

        rem = jnp.maximum(tau_i - t_prev, 0.0)
        _, Qn, frz = lax.while_loop(cond, body, (rem, Q, frozen))
        return (tau_i, Qn, frz), Qn

    init = (jnp.zeros((), dtype), Q0, jnp.zeros((), bool))
    _, Qs = lax.scan(advance, init, tau)
    return Qs


@jax.jit
def _balanced(ts, sigma2, beta, A0, v0):
    k = v0.shape[0]
    lam = (jnp.sum(v0**2) - jnp.sum(A0**2)) / k
    gap = jnp.outer(v0, v0) - A0 @ A0.T - lam * jnp.eye(k, dtype=v0.dtype)
    size = jnp.sum(v0**2) + jnp.sum(A0**2)
    resid = jnp.sqrt(jnp.sum(gap**2)) / jnp.where(size > 0, size, 1.0)
    Q0 = jnp.concatenate([A0.T, v0[None, :]], axis=0)
    factor = _trajectory(2.0 * sigma2 * ts, Q0, beta, lam)
    P = jnp.einsum("tik,tjk->tij", factor, factor)
    return BalancedTrajectory(ts, P, factor, lam, resid)


def balanced_trajectory(ts, *, sigma2, beta, A0, v0) -> BalancedTrajectory:
    r"""Closed-form FT trajectory of a $\lambda$-balanced width-k network with whitened ID data.

    The flow is the paper's $\dot v = -2BX^Tr$, $\dot B = -2v(X^Tr)^T$, $r = XB^Tv - Y$,
    $Y = Xw^*$, with $X^TX = s^2\Pi_S$ ($s^2$ = `sigma2`). In S-coordinates $A = BQ_S$,
    $\beta = Q_S^Tw^*$ and the scaled time $\tau = 2s^2t$, $Q = [A^T; v^T]$ obeys
    $Q' = FQ - \tfrac12QQ^TQ$ and $P = QQ^T$ the Riccati equation $P' = FP + PF - P^2$, with
    $F = \begin{pmatrix}-\tfrac\lambda2 I & \beta\\ \beta^T & \tfrac\lambda2\end{pmatrix}$,
    **if and only if the start is $\lambda$-balanced**: $v_0v_0^T - A_0A_0^T = \lambda I_k$
    (then so is every later state: $vv^T - AA^T$ is conserved, R2). The solution is
    $P(\tau) = e^{F\tau}Q_0[I + \tfrac12Q_0^T(e^{2F\tau} - I)F^{-1}Q_0]^{-1}Q_0^Te^{F\tau}$,
    evaluated without forming $F^{-1}$ (exact at $\lambda = 0$) and without overflow at any
    $t$ (module docstring). For $k \ge 2$ balance forces $\lambda \le 0$ (and $m \ge k$ when
    $\lambda < 0$); for $k = 1$ every start is balanced. Off S the features are frozen (R1),
    $B(t) = B_0 + (A(t) - A_0)Q_S^T$.

    What it determines: P, i.e. $A^TA$, $A^Tv$ (the predictor on S) and $\|v\|^2$, for every
    k; the state (v, A) itself for k = 1 (`v`, `A`). For $k \ge 2$ the state is fixed only up
    to a time-dependent $k\times k$ rotation, so the predictor's $S^\perp$ part
    $\Pi_\perp B_0^Tv(t)$ is not (docs/theory.md, section 5.5; $\lambda = 0$ reduces to k = 1).

    Args:
        ts: times t >= 0 of the paper's flow, strictly increasing (T,).
        sigma2: $s^2 > 0$, the common squared singular value of X on S.
        beta: $Q_S^Tw^*$ (m,).
        A0: $B_0Q_S$ (k, m).
        v0: initial head (k,).

    Returns:
        A `BalancedTrajectory`; its `balance_residual` is the per-instance validity flag.
        Differentiable in forward mode (`jax.jvp`, `jax.jacfwd`; the state is small); the
        segment loop has a data-dependent trip count, so reverse mode (`jax.grad`) is not
        supported.

    Raises:
        ValueError: for concrete inputs that are non-finite, of the wrong shapes, with
            non-increasing or negative times, `sigma2 <= 0`, or not $\lambda$-balanced
            (`balance_residual` above max(1e-10, 1e3 eps) of the dtype).

    References:
        K. Fukumizu, "Effect of batch learning in multilayer neural networks", ICONIP 1998;
        L. Braun, C. Dominé, J. Fitzgerald, A. Saxe, "Exact learning dynamics of deep linear
        networks with prior knowledge", NeurIPS 2022; C. Dominé, N. Anguita, A. Proca,
        L. Braun, D. Kunin, P. Mediano, A. Saxe, "From lazy to rich: exact learning dynamics
        in deep linear networks", ICLR 2025 (arXiv:2409.14623). Kumar et al. (2022,
        arXiv:2202.10054) for the model and its time convention.
    """
    V.check_times("ts", ts)
    V.check_real_float("beta", beta)
    V.check_real_float("A0", A0)
    V.check_real_float("v0", v0)
    for name, x, nd in (("beta", beta, 1), ("A0", A0, 2), ("v0", v0, 1)):
        if np.ndim(x) != nd:
            raise ValueError(f"`{name}` must have {nd} dimension(s), got shape {np.shape(x)}.")
    k, m = np.shape(A0)
    if np.shape(beta) != (m,) or np.shape(v0) != (k,):
        raise ValueError(
            f"shapes must be `A0` (k, m), `beta` (m,), `v0` (k,); got {np.shape(A0)}, "
            f"{np.shape(beta)}, {np.shape(v0)}."
        )
    if m < 1 or k < 1:
        raise ValueError(f"need m >= 1 and k >= 1, got A0 of shape {(k, m)}.")
    if V.is_concrete(sigma2):
        V.check_positive("sigma2", sigma2, scalar=True, fix="s^2 is X^T X = s^2 Pi_S's scale.")
    for name, x in (("beta", beta), ("A0", A0), ("v0", v0)):
        V.check_finite(name, x)
    dtype = jnp.result_type(ts, sigma2, beta, A0, v0)
    out = _balanced(*(jnp.asarray(x, dtype) for x in (ts, sigma2, beta, A0, v0)))
    if V.is_concrete(out.balance_residual) and float(out.balance_residual) > balance_tol(dtype):
        raise ValueError(
            f"the start is not lambda-balanced: ||v0 v0^T - A0 A0^T - lam I||_F / (|v0|^2 + "
            f"||A0||_F^2) = {float(out.balance_residual):.3g} (lam = {float(out.lam):.6g}); "
            f"the closed form needs v0 v0^T - A0 A0^T = lam I_k (for k >= 2: lam <= 0 and "
            f"A0 A0^T = v0 v0^T - lam I). Build A0 from v0 and lam, or integrate the flow."
        )
    return out
