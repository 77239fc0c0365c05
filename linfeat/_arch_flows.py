r"""Flows that change the parametrisation (surgical FT, LoRA, depth 3) and their frame metrics.

docs/theory.md, section 10. Each method is an `AbstractFlow` on an exact small state, run by
`linfeat._engine.solve`; B still moves only by rows in S (the gradient of every weight that
multiplies x first is an outer product with $X^Tr \in S$), so with Q the right singular
vectors of X and $\rho = \mathrm{diag}(s^2)\,Q^TB_{eff}^Tu - g$ ($u$ the effective head):

- surgical FT, state $(v, A = BQ)$ with $\dot v = 0$: $\dot A = -2v_0\rho^T$;
- LoRA, $B = B_0 + UA_\ell$, state $(v, U, C = A_\ell Q)$: $\dot v = -2(A_0 + UC)\rho$,
  $\dot U = -2v(C\rho)^T$, $\dot C = -2(U^Tv)\rho^T$ ($A_\ell\Pi_\perp$ is frozen);
- depth 3, $f = v^TCBx$, state $(v, C, A = BQ)$: $\dot v = -2CA\rho$, $\dot C = -2v(A\rho)^T$,
  $\dot A = -2C^Tv\rho^T$.

Metrics are those of the effective linear model, as quadratic forms in an extended frame
$G' = [Q, B_0^T, r_w, D^T, E]$ ($E = \Pi_\perp A_0^T$ for LoRA, $\Pi_\perp B_0^T$ for depth 3),
so that their cost after set-up is independent of d.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._eigh import eigvalsh, polar
from ._flows import AbstractFlow, FlowData, gradient_norm
from ._linalg import row_space_basis
from ._metrics import Metrics, _norm
from ._problem import Problem
from ._reduce import Reduced, _frame_cov
from ._rodas5p import gauss_jordan_inverse


def _rho(data: FlowData, AQ, u):
    """$\\rho = \\mathrm{diag}(s^2) (BQ)^T u - g$: $X^Tr = Q\\rho$ for features BQ and head u."""
    return data.sigma2 * (AQ.T @ u) - data.g


class SurgicalFineTune(AbstractFlow):
    r"""Surgical FT (head frozen): $\dot v = 0$, $\dot A = -2 v\rho^T$ on $(v, A = BQ)$."""

    def field(self, y, args: FlowData):
        v, A = y
        return jnp.zeros_like(v), -2.0 * jnp.outer(v, _rho(args, A, v))

    def factor(self, y, args: FlowData, alpha):
        r"""$(I - \alpha J)^{-1}$ in closed form: J is linear, $J\delta A = -2v(s^2 \circ
        \delta A^Tv)^T$, so $q = x^Tv$ solves $(1 + 2\alpha|v|^2 s^2) q = b^Tv$ (diagonal)."""
        v, _ = y
        c = jnp.sum(v**2)

        def solve(b):
            bv, bA = b
            q = (bA.T @ v) / (1.0 + 2.0 * alpha * c * args.sigma2)
            return bv, bA - 2.0 * alpha * jnp.outer(v, args.sigma2 * q)

        return solve


class LoRAData(NamedTuple):
    """The reduced LoRA data: the FT data and $A_0 = B_0Q$ (the frozen base, k x r)."""

    flow: FlowData
    A0: Float[Array, "k r"]


class LoRA(AbstractFlow):
    r"""LoRA on $(v, U, C = A_\ell Q)$: $B Q = A_0 + UC$."""

    train_head: bool = eqx.field(static=True, default=True)

    def field(self, y, args: LoRAData):
        v, U, C = y
        AQ = args.A0 + U @ C
        rho = _rho(args.flow, AQ, v)
        Crho = C @ rho
        dv = -2.0 * (AQ @ rho) if self.train_head else jnp.zeros_like(v)
        return dv, -2.0 * jnp.outer(v, Crho), -2.0 * jnp.outer(U.T @ v, rho)

    def factor(self, y, args: LoRAData, alpha):
        r"""$(I - \alpha J)^{-1}$ through one $(k + r_\ell)$-square solve (docs/theory.md, 10.2).

        With $\beta = 2\alpha$, $w = U^Tv$, $q = C\rho$, $x + \beta L(x) = b$ is closed by
        the auxiliaries $\delta w = x_U^Tv + U^Tx_v$, $\delta q = x_C\rho + C\delta\rho$ and
        $\delta\rho = \mathrm{diag}(s^2)\delta z$: $\delta\rho$ and $\delta q$ are affine in
        $(x_v, \delta w)$, which solve a $(k + r_\ell)$ system; then
        $x_U = b_U - \beta(x_vq^T + v\delta q^T)$ and
        $x_C = b_C - \beta(\delta w\rho^T + w\delta\rho^T)$. A step so large that the
        system is singular gives NaN, and the controller rejects it.
        """
        v, U, C = y
        data, A0 = args.flow, args.A0
        k, rl = U.shape
        beta, tau = 2.0 * alpha, 1.0 if self.train_head else 0.0
        Ae = A0 + U @ C
        rho = _rho(data, Ae, v)
        w, q = U.T @ v, C @ rho
        m = data.sigma2 / (1.0 + beta * jnp.sum(w**2) * data.sigma2)
        Ct = C.T - beta * jnp.outer(rho, w)  # (r, rl)
        Rv, Rw = m[:, None] * A0.T, m[:, None] * Ct  # d rho = rho0 + Rv x_v + Rw d w
        Qv, Qw = Ct.T @ Rv, Ct.T @ Rw - beta * jnp.sum(rho**2) * jnp.eye(rl, dtype=v.dtype)
        E = beta * jnp.outer(U @ w, rho) - Ae  # (k, r)
        Ut = U.T - beta * jnp.outer(q, v)
        vv, bt = jnp.sum(v**2), beta * tau
        gamma = 1.0 - beta * bt * jnp.sum(q**2)
        K = jnp.block([
            [gamma * jnp.eye(k, dtype=v.dtype) - beta * bt * jnp.outer(v, q @ Qv) - bt * E @ Rv,
             -beta * bt * jnp.outer(v, q @ Qw) - beta * bt * jnp.sum(rho**2) * U - bt * E @ Rw],
            [beta * vv * Qv - Ut, jnp.eye(rl, dtype=v.dtype) + beta * vv * Qw],
        ])  # fmt: skip
        Kinv = gauss_jordan_inverse(K)

        def solve(b):
            bv, bU, bC = b
            rho0 = m * (bC.T @ w)
            q0 = bC @ rho + Ct.T @ rho0
            top = bv - bt * (bU @ q + U @ (bC @ rho)) + beta * bt * v * (q @ q0) + bt * E @ rho0
            sol = Kinv @ jnp.concatenate([top, bU.T @ v - beta * vv * q0])
            xv, dw = sol[:k], sol[k:]
            drho = rho0 + Rv @ xv + Rw @ dw
            dq = q0 + Qv @ xv + Qw @ dw
            xU = bU - beta * (jnp.outer(xv, q) + jnp.outer(v, dq))
            xC = bC - beta * (jnp.outer(dw, rho) + jnp.outer(w, drho))
            return xv, xU, xC

        return solve


class Depth3(AbstractFlow):
    r"""Depth 3 on $(v, C, A = BQ)$: $\dot v = -2CA\rho$, $\dot C = -2v(A\rho)^T$,
    $\dot A = -2C^Tv\rho^T$."""

    def field(self, y, args: FlowData):
        v, C, A = y
        u = C.T @ v
        rho = _rho(args, A, u)
        Arho = A @ rho
        return -2.0 * (C @ Arho), -2.0 * jnp.outer(v, Arho), -2.0 * jnp.outer(u, rho)

    def factor(self, y, args: FlowData, alpha):
        r"""$(I - \alpha J)^{-1}$ through one k x k solve (docs/theory.md, section 10.3).

        With $\beta = 2\alpha$, $u = C^Tv$, $p = A\rho$, $x + \beta L(x) = b$ is closed by
        $\delta u = x_C^Tv + C^Tx_v$: $\delta\rho = m \circ (b_A^Tu + \tilde A^T\delta u)$
        ($\tilde A = A - \beta u\rho^T$, $m = s^2/(1 + \beta|u|^2s^2)$),
        $\delta p = x_A\rho + A\delta\rho$ and $x_v$ are affine in $\delta u$, which solves a
        k x k system; then $x_C = b_C - \beta(x_vp^T + v\delta p^T)$,
        $x_A = b_A - \beta(\delta u\rho^T + u\delta\rho^T)$. A step so large that the system
        is singular gives NaN, and the controller rejects it.
        """
        v, C, A = y
        k = v.shape[0]
        eye = jnp.eye(k, dtype=v.dtype)
        beta = 2.0 * alpha
        u = C.T @ v
        rho = _rho(args, A, u)
        p = A @ rho
        m = args.sigma2 / (1.0 + beta * jnp.sum(u**2) * args.sigma2)
        At = A - beta * jnp.outer(u, rho)
        P = (At * m) @ At.T - beta * jnp.sum(rho**2) * eye  # d p = p0 + P d u
        gamma = 1.0 - beta**2 * jnp.sum(p**2)
        N = beta**2 * jnp.outer(v, p) - beta * C  # gamma x_v = c0 + N d p
        X1 = N @ P / gamma  # x_v = x0 + X1 d u
        Ct = C.T - beta * jnp.outer(p, v)
        vv = jnp.sum(v**2)
        Kinv = gauss_jordan_inverse(eye - Ct @ X1 + beta * vv * P)

        def solve(b):
            bv, bC, bA = b
            qA = bA.T @ u
            p0 = bA @ rho + At @ (m * qA)
            x0 = (bv - beta * (bC @ p) + N @ p0) / gamma
            du = Kinv @ (bC.T @ v + Ct @ x0 - beta * vv * p0)
            drho = m * (qA + At.T @ du)
            dp = p0 + P @ du
            xv = x0 + X1 @ du
            xC = bC - beta * (jnp.outer(xv, p) + jnp.outer(v, dp))
            xA = bA - beta * (jnp.outer(du, rho) + jnp.outer(u, drho))
            return xv, xC, xA

        return solve


def field_norm(flow: AbstractFlow, y, args) -> Float[Array, ""]:
    """The norm of the gradient over the trained parameters (the field of the flow)."""
    return gradient_norm(flow.field(y, args))


# ---------------------------------------------------------------------------------------
# The extended frame and metrics of the effective linear model
# ---------------------------------------------------------------------------------------


class Frame(NamedTuple):
    r"""Gram matrices of $G' = [Q, B_0^T, r_w, D^T, E]$ (p' x p'), with the reduction.

    Column blocks: Q (r), $B_0^T$ (k), $r_w$ (1), $D^T = (B^* - B_0)^T$ (k, when $B^*$ is
    known), E (q extra directions).
    """

    red: Reduced
    gram: Float[Array, "p p"]
    id_gram: Float[Array, "p p"]
    ood_gram: Float[Array, "p p"]

    @property
    def q(self) -> int:
        return self.gram.shape[-1] - self.red.gram.shape[-1]


def extended_frame(problem: Problem, red: Reduced, E) -> Frame:
    """The frame of `linfeat._reduce.reduce` with the columns E (d x q) appended."""
    B0, w = problem.B0, problem.w_star
    cols = [red.basis, B0.T, (w - B0.T @ red.b)[:, None]]
    if problem.B_star is not None:
        cols.append((problem.B_star - B0).T)
    G = jnp.concatenate(cols + [E], axis=1)
    gram = G.T @ G
    QtG = gram[: red.r]
    return Frame(red, gram, _frame_cov(problem.id_cov, G, QtG), _frame_cov(problem.ood_cov, G, QtG))


def perp_part(red: Reduced, M) -> Float[Array, "d q"]:
    r"""$\Pi_\perp M$ for M (d x q): $M - Q(Q^TM)$ (Q has zero columns where $s = 0$)."""
    return M - red.basis @ (red.basis.T @ M)


def base_rows(fr: Frame, k: int, dtype) -> Float[Array, "k p"]:
    """The rows of $B_0$ in the frame: $[0, I, 0, 0, 0]$."""
    H = jnp.zeros((k, fr.gram.shape[-1]), dtype)
    return H.at[:, fr.red.r : fr.red.r + k].set(jnp.eye(k, dtype=dtype))


def error_coeffs(fr: Frame, dQ, u, extra) -> Float[Array, " p"]:
    r"""$c$ with $e = B_{eff}^Tu - w^* = G'c$: $c = (dQ, u - b, -1, 0, \text{extra})$, where
    dQ is the S-block $Q^T(B_{eff} - B_0)^Tu$ and `extra` the coefficients of E."""
    red = fr.red
    n_star = red.gram.shape[-1] - red.r - red.k - 1
    return jnp.concatenate(
        [dQ, u - red.b, -jnp.ones((1,), u.dtype), jnp.zeros((n_star,), u.dtype), extra]
    )


def _distance(fr: Frame, H) -> Float[Array, ""]:
    r"""$\|B - UB^*\|_2$ (Procrustes U) for $B = HG'^T$, $B^* = [0, I, 0, I, 0]G'^T$."""
    red, k = fr.red, fr.red.k
    H_star = base_rows(fr, k, H.dtype)
    H_star = H_star.at[:, red.r + k + 1 : red.r + 2 * k + 1].set(jnp.eye(k, dtype=H.dtype))
    U = polar(H @ fr.gram @ H_star.T)
    Delta = H - U @ H_star
    return jnp.sqrt(jnp.maximum(eigvalsh(Delta @ fr.gram @ Delta.T)[-1], 0.0))


def frame_metrics(fr: Frame, *, c, AQ, u, dH, H0, dS, perp2, head, head0, grad_norm) -> Metrics:
    r"""`Metrics` of the effective model (head `head`, features $B = (H_0 + dH)G'^T$).

    Args:
        fr: the frame.
        c: error coefficients (`error_coeffs`); AQ, u: $B_{eff}Q$ and the head it meets in
            $B_{eff}^T u$ (the train loss is $\|XQ\,AQ^Tu - Y\|^2$).
        dH, H0: the rows of $B - B_{start}$ and of $B_{start}$ in the frame.
        dS: $(B - B_{start})Q$ (k x r); perp2: $\|(B - B_{start})\Pi_\perp\|_F^2$.
        head, head0: the head now and at the start (balancedness of the effective pair).
        grad_norm: the norm of the gradient over the trained parameters.
    """
    red = fr.red
    # B B^T - B_start B_start^T without cancelling the O(1) parts (the FT form of the frame)
    cross = dH @ fr.gram @ H0.T
    dBB = dH @ fr.gram @ dH.T + cross + cross.T
    drift = jnp.outer(head, head) - jnp.outer(head0, head0) - dBB
    if red.v_star is not None:
        dist = _distance(fr, H0 + dH)
    else:
        dist = jnp.full((), jnp.nan, u.dtype)
    return Metrics(
        train_loss=jnp.sum((red.XQ @ (AQ.T @ u) - red.Y) ** 2),
        id_error=jnp.maximum(c @ fr.id_gram @ c, 0.0),  # PSD forms: clamp rounding below 0
        id_subspace_error=jnp.sum((fr.gram[: red.r] @ c) ** 2),
        ood_error=jnp.maximum(c @ fr.ood_gram @ c, 0.0),
        feature_distance=dist,
        feature_change_S=_norm(dS),
        feature_change_perp=jnp.sqrt(jnp.maximum(perp2, 0.0)),
        balancedness_drift=_norm(drift),
        grad_norm=grad_norm,
    )


def row_basis(X) -> tuple[Float[Array, "d r"], Float[Array, " r"]]:
    """Q and the mask of S (`linfeat._linalg.row_space_basis`), for the closed forms."""
    Q, _, mask = row_space_basis(X)
    return Q, mask
