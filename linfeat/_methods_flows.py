r"""The method zoo's vector fields and exact metrics (docs/theory.md, section 9).

Each method of `linfeat.methods` is a flow on the reduced state of docs/theory.md, section 2
($A = BQ$, Q the right singular vectors of X), run by the one solver core
(`linfeat._engine.solve`). The reduction stays exact for every method here because every
gradient of the training loss with respect to B has rows in S; the penalties only add terms
that either keep $B\Pi_\perp$ fixed (L2-SP) or scale it (weight decay:
$B(t)\Pi_\perp = e^{-2\mu t}B_0\Pi_\perp$, carried by one extra scalar).

The general effective point is $(v, A, c)$ with
$B = B_0 + (A - A_0)Q^T + (c - 1)B_0\Pi_\perp = (A - cA_0)Q^T + cB_0$; its rows in the frame
$G = [Q, B_0^T, r_w, D^T]$ are $H = [A - cA_0,\ cI,\ 0,\ 0]$ and every metric is a quadratic
form in G's Gram matrices (`effective_metrics`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._flows import AbstractFlow, FlowData, spd_inverse
from ._metrics import Metrics, _norm, frame_feature_distance
from ._reduce import Reduced


class Knobs(NamedTuple):
    """Every knob of the zoo as a traced array (defaults: plain FT)."""

    alpha: Float[Array, ""]  # WiSE-FT mixing weight (post-processing; 1 = FT)
    lam: Float[Array, ""]  # L2-SP weight on ||B - B0||_F^2
    lam_v: Float[Array, ""]  # L2-SP weight on ||v - v0||^2
    eta_v: Float[Array, ""]  # learning rate of the head
    eta_B: Float[Array, ""]  # learning rate of the features
    mu: Float[Array, ""]  # weight decay on ||v||^2 + ||B||_F^2
    tau: Float[Array, ""]  # LP time before FT (pre-processing; 0 = FT)


FT_KNOBS = dict(alpha=1.0, lam=0.0, lam_v=0.0, eta_v=1.0, eta_B=1.0, mu=0.0, tau=0.0)


class MethodData(NamedTuple):
    """Data of the zoo's flow: the FT data, the start (v0, A0) and the knobs (traced)."""

    flow: FlowData
    v0: Float[Array, " k"]
    A0: Float[Array, "k r"]
    gamma0: Float[Array, ""]  # ||B0 Pi_perp||_F
    knobs: Knobs


def _rho(v, A, data: FlowData):
    return data.sigma2 * (A.T @ v) - data.g


class PenalisedFlow(AbstractFlow):
    r"""The gradient flow, with layer-wise rates, of the penalised loss
    $F = \hat L + \lambda\|B - B_0\|_F^2 + \lambda_v\|v - v_0\|^2 + \mu(\|v\|^2 + \|B\|_F^2)$,
    on the state $(v, A = BQ, \gamma = \|B\Pi_\perp\|_F)$:

    $\dot v = -\eta_v(2A\rho + 2\lambda_v(v - v_0) + 2\mu v)$,
    $\dot A = -\eta_B(2v\rho^T + 2\lambda(A - A_0) + 2\mu A)$,
    $\dot\gamma = -2\eta_B(\lambda(\gamma - \gamma_0) + \mu\gamma)$.

    L2-SP ($\lambda, \lambda_v$), layer-wise rates ($\eta_v, \eta_B$) and weight decay ($\mu$)
    are its special cases and FT is all defaults. Off S only the two penalties act on B:
    $\frac{d}{dt}B\Pi_\perp = -2\eta_B(\lambda(B - B_0) + \mu B)\Pi_\perp$, which keeps
    $B\Pi_\perp = cB_0\Pi_\perp$ on the line of $B_0\Pi_\perp$ (c = 1 when $\mu = 0$), so
    $\gamma = c\gamma_0$ carries it exactly and the field's norm is the full gradient's norm
    in $R^d$ (the stop test). One class, so that every method shares one compiled solver
    program (docs/theory.md, section 9).
    """

    def field(self, y, args: MethodData):
        v, A, gamma = y
        kn = args.knobs
        rho = _rho(v, A, args.flow)
        dv = 2.0 * (A @ rho) + 2.0 * kn.lam_v * (v - args.v0) + 2.0 * kn.mu * v
        dA = 2.0 * jnp.outer(v, rho) + 2.0 * kn.lam * (A - args.A0) + 2.0 * kn.mu * A
        dgamma = 2.0 * kn.lam * (gamma - args.gamma0) + 2.0 * kn.mu * gamma
        return -kn.eta_v * dv, -kn.eta_B * dA, -kn.eta_B * dgamma

    def factor(self, y, args: MethodData, alpha):
        r"""$(I - \alpha J)^{-1}$ reduced to one k x k inverse, as `FineTune.factor`.

        With $a_v = 2\alpha\eta_v$, $a_B = 2\alpha\eta_B$, $d_v = 1 + a_v(\lambda_v + \mu)$,
        $d_B = 1 + a_B(\lambda + \mu)$, $H = \mathrm{diag}(s^2)$ and
        $\delta w = A^T\delta v + \delta A^Tv$, the equations for x are
        $d_vx_v + a_v(x_A\rho + AHx_w) = b_v$ and $d_Bx_A + a_B(x_v\rho^T + v(Hx_w)^T) = b_A$.
        Eliminating $x_A$, then $x_w$ (a diagonal solve), leaves $Kx_v = b_v - (a_v/d_B)b_A\rho
        - a_v\tilde AMq$ with $\tilde A = A - (a_B/d_B)v\rho^T$, $M = H/(1 + (a_B/d_B)|v|^2H)$,
        $q = b_A^Tv/d_B$ and $K = a_v\tilde AM\tilde A^T + (d_v - a_va_B|\rho|^2/d_B)I$;
        $x_\gamma = b_\gamma/d_B$. $O(k^2 r)$ work, against $O((kr)^3)$ for the dense
        Jacobian; all knobs at their defaults give `FineTune.factor` exactly. A step too large
        for K to be SPD gives a large error estimate, and the controller rejects it.
        """
        v, A, _ = y
        kn, data = args.knobs, args.flow
        a_v, a_B = 2.0 * alpha * kn.eta_v, 2.0 * alpha * kn.eta_B
        d_v, d_B = 1.0 + a_v * (kn.lam_v + kn.mu), 1.0 + a_B * (kn.lam + kn.mu)
        e = a_B / d_B
        rho = _rho(v, A, data)
        dd = 1.0 + e * jnp.sum(v**2) * data.sigma2
        m = data.sigma2 / dd
        At = A - e * jnp.outer(v, rho)
        cc = d_v - a_v * e * jnp.sum(rho**2)
        K = a_v * (At * m) @ At.T + cc * jnp.eye(v.shape[0], dtype=v.dtype)
        Kinv = spd_inverse(K)

        def solve(b):
            bv, bA, bg = b
            q = bA.T @ v / d_B
            xv = Kinv @ (bv - a_v * (bA @ rho / d_B + At @ (m * q)))
            xw = (At.T @ xv + q) / dd
            xA = (bA - a_B * (jnp.outer(xv, rho) + jnp.outer(v, data.sigma2 * xw))) / d_B
            return xv, xA, bg / d_B

        return solve


def perp_norm(red: Reduced) -> Float[Array, ""]:
    r"""$\|B_0\Pi_\perp\|_F = (\|B_0\|_F^2 - \|A_0\|_F^2)^{1/2}$ from the frame's Gram matrix."""
    r, k = red.r, red.k
    sq = jnp.trace(red.gram[r : r + k, r : r + k]) - jnp.sum(red.A0**2)
    return _norm(jnp.sqrt(jnp.maximum(sq, 0.0)))


def effective_rows(red: Reduced, A, c) -> Float[Array, "k p"]:
    r"""$H - H_0 = [A - cA_0,\ (c - 1)I,\ 0,\ 0]$: the rows of $B - B_0$ in the frame."""
    k = red.k
    extra = red.gram.shape[-1] - red.r - k - 1
    eye = jnp.eye(k, dtype=A.dtype)
    return jnp.concatenate(
        [A - c * red.A0, (c - 1.0) * eye, jnp.zeros((k, 1 + extra), A.dtype)], axis=1
    )


def _h0(red: Reduced, dtype) -> Float[Array, "k p"]:
    k = red.k
    return jnp.zeros((k, red.gram.shape[-1]), dtype).at[:, red.r : red.r + k].set(jnp.eye(k))


def _distance(red: Reduced, H) -> Float[Array, ""]:
    r"""$\|B - UB^*\|_2$, Procrustes U, for $B = HG^T$ (as `reduced_feature_distance`)."""
    k = red.k
    Hs = _h0(red, H.dtype).at[:, red.r + k + 1 :].set(jnp.eye(k, dtype=H.dtype))
    return frame_feature_distance(H, Hs, red.gram)


def effective_metrics(red: Reduced, v, A, c, v0, grad2) -> Metrics:
    r"""`Metrics` of $(v, B)$, $B = (A - cA_0)Q^T + cB_0$, for a flow started at $(v_0, B_0)$.

    $c_e = H^Tv - (0, b, 1, 0)$, $L = c_e^T(G^T\Sigma G)c_e$; $(B - B_0)\Pi_S = (A - A_0)Q^T$
    and $(B - B_0)\Pi_\perp = (c - 1)B_0\Pi_\perp$; `grad2` is the squared norm of the
    method's field (its stop test). `balancedness_drift` is the FT invariant's drift,
    $\|vv^T - BB^T - (v_0v_0^T - B_0B_0^T)\|_F$, for every method.
    """
    k, r = red.k, red.r
    dH = effective_rows(red, A, c)
    H0 = _h0(red, v.dtype)
    H = H0 + dH
    target = jnp.zeros(red.gram.shape[-1], v.dtype).at[r : r + k].set(red.b).at[r + k].set(1.0)
    # c_e from the small blocks: (A - cA0)^T v, c v - b (no O(1) cancellation for c = 1)
    ce = dH.T @ v + H0.T @ v - target
    gram = red.gram
    # B B^T - B0 B0^T = dH G dH^T + dH G H0^T + H0 G dH^T exactly
    dBB = dH @ gram @ dH.T + dH @ gram @ H0.T + H0 @ gram @ dH.T
    drift = jnp.outer(v, v) - jnp.outer(v0, v0) - dBB
    if red.v_star is not None:
        dist = _distance(red, H)
    else:
        dist = jnp.full((), jnp.nan, v.dtype)
    return Metrics(
        train_loss=jnp.sum((red.XQ @ (A.T @ v) - red.Y) ** 2),
        id_error=jnp.maximum(ce @ red.id_gram @ ce, 0.0),
        id_subspace_error=jnp.sum((gram[:r] @ ce) ** 2),
        ood_error=jnp.maximum(ce @ red.ood_gram @ ce, 0.0),
        feature_distance=dist,
        feature_change_S=_norm(A - red.A0),
        feature_change_perp=jnp.abs(1.0 - c) * perp_norm(red),
        balancedness_drift=_norm(drift),
        grad_norm=jnp.sqrt(grad2),
    )


def ft_grad2(red: Reduced, v, A) -> Float[Array, ""]:
    r"""$\|\nabla\hat L\|^2 = 4\|A\rho\|^2 + 4\|v\|^2\|\rho\|^2$ at (v, A) (FT's field)."""
    rho = _rho(v, A, red.flow_data)
    return 4.0 * jnp.sum((A @ rho) ** 2) + 4.0 * jnp.sum(v**2) * jnp.sum(rho**2)


def error_coefficients_at(red: Reduced, v, A, c=1.0) -> Float[Array, " p"]:
    r"""$c_e$ of the effective point (v, A, c): $e = B^Tv - w^* = Gc_e$."""
    k, r = red.k, red.r
    dH = effective_rows(red, A, c)
    target = jnp.zeros(red.gram.shape[-1], v.dtype).at[r : r + k].set(red.b).at[r + k].set(1.0)
    return dH.T @ v + _h0(red, v.dtype).T @ v - target
