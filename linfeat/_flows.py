r"""Training methods as flow objects: a vector field plus its structured linear solve.

A training method in linfeat is a gradient flow $\dot y = f(y)$ on a small state (the exact
reduction of docs/theory.md, section 2). To add a method, subclass `AbstractFlow` and write
`field` for one instance; `factor` (the solve of $(I - \alpha J)x = b$ that the Rosenbrock
solver needs once per step) defaults to a dense `jax.jacfwd` Jacobian with a pure-JAX
Gauss-Jordan inverse, which is exact and fine for states of up to a few hundred numbers.
Override it where the Jacobian has structure, as `FineTune` does. The solver
(`linfeat._engine.solve`) never changes.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._rodas5p import dense_factor


class AbstractFlow(eqx.Module):
    """A gradient flow $\\dot y = f(y; \\text{args})$ (autonomous), written for one instance."""

    def field(self, y, args):
        """$f(y)$: minus the gradient of the training loss, a pytree like `y`."""
        raise NotImplementedError

    def factor(self, y, args, alpha):
        """A callable $b \\mapsto (I - \\alpha J(y))^{-1} b$, J the Jacobian of `field` at y."""
        return dense_factor(self.field, y, args, alpha)

    def converged(self, y, args, grad_tol):
        """The stop test of `linfeat._engine.solve`: the gradient norm falls below `grad_tol`.

        A method whose minimiser can lie at infinity (the logistic flows of
        `linfeat._classify`) adds its own test (a training-loss threshold)."""
        return gradient_norm(self.field(y, args)) < grad_tol


class FlowData(NamedTuple):
    r"""The data of the reduced FT/LP flow: $s^2$ (squared singular values of X) and $g$.

    In the coordinates $A = BQ$ (Q the right singular vectors of X) the loss is
    $\|\mathrm{diag}(s) A^T v - U^TY\|^2$ up to a constant, with $g = \mathrm{diag}(s) U^T Y
    = Q^T X^T Y$ (docs/theory.md, section 2).
    """

    sigma2: Float[Array, " r"]
    g: Float[Array, " r"]


def _residual(v, A, data: FlowData):
    return data.sigma2 * (A.T @ v) - data.g


class FineTune(AbstractFlow):
    r"""FT (and LP) on the reduced state $y = (v, A)$, $A = BQ$ (k x r).

    $\dot v = -2A\rho$, $\dot A = -2\tau v\rho^T$, $\rho = \mathrm{diag}(s^2)A^Tv - g$, with
    $\tau = 1$ for FT and $\tau = 0$ for LP (features frozen). This is the paper's flow
    $\dot v = -\nabla_v\hat L$, $\dot B = -\nabla_B \hat L$, $\hat L = \|XB^Tv - Y\|^2$, in the
    coordinates where $X^TX$ is diagonal; B moves only inside S (R1), so nothing is lost.
    """

    train_features: bool = eqx.field(static=True, default=True)

    def field(self, y, args: FlowData):
        v, A = y
        rho = _residual(v, A, args)
        dA = -2.0 * jnp.outer(v, rho) if self.train_features else jnp.zeros_like(A)
        return -2.0 * (A @ rho), dA

    def factor(self, y, args: FlowData, alpha):
        r"""$(I - \alpha J)^{-1}$ reduced to one k x k SPD inverse (docs/solvers.md).

        With $\delta w = A^T\delta v + \delta A^T v$ and $H = \mathrm{diag}(s^2)$ the Jacobian is
        $J(\delta v, \delta A) = (-2\delta A\rho - 2AH\delta w, -2\tau(\delta v\rho^T +
        v(H\delta w)^T))$. Eliminating $\delta A$, then $\delta w$ (a diagonal solve), leaves
        $K\delta v = b$ with $K = \beta \tilde A M \tilde A^T + (1 - \beta\beta_\tau|\rho|^2) I$,
        $\beta = 2\alpha$, $\beta_\tau = \tau\beta$, $\tilde A = A - \beta_\tau v\rho^T$,
        $M = H/(1 + \beta_\tau|v|^2H)$: $K \succeq (1 - \beta^2|\rho|^2) I$ is SPD whenever
        $\beta|\rho| < 1$ (docs/theory.md, section 3.3), and $O(k^2 r)$ work
        whatever the conditioning of X. A step so large that K is not SPD gives a non-finite
        or large error estimate, and the controller rejects it.
        """
        v, A = y
        data = args
        beta = 2.0 * alpha
        beta_f = beta if self.train_features else jnp.zeros_like(beta)
        rho = _residual(v, A, data)
        dd = 1.0 + beta_f * jnp.sum(v**2) * data.sigma2
        m = data.sigma2 / dd
        At = A - beta_f * jnp.outer(v, rho)
        cc = 1.0 - beta * beta_f * jnp.sum(rho**2)
        K = beta * (At * m) @ At.T + cc * jnp.eye(v.shape[0], dtype=v.dtype)
        Kinv = spd_inverse(K)

        def solve(b):
            bv, bA = b
            q = bA.T @ v
            dv = Kinv @ (bv - beta * (bA @ rho + At @ (m * q)))
            dw = (At.T @ dv + q) / dd
            dA = bA - beta_f * (jnp.outer(dv, rho) + jnp.outer(v, data.sigma2 * dw))
            return dv, dA

        return solve


def spd_inverse(K: Float[Array, "k k"]) -> Float[Array, "k k"]:
    """Gauss-Jordan inverse of a small SPD matrix, unrolled (diagonal pivots, no LAPACK).

    SPD matrices need no pivoting; plain array operations keep it inside `jit`, `vmap`,
    `shard_map` and both autodiff modes, where batched LAPACK kernels can deadlock on CPU.
    """
    k = K.shape[-1]
    M = K
    for i in range(k):
        e = jnp.arange(k) == i
        row = jnp.where(e, 1.0, M[i]) / M[i, i]
        col = jnp.where(e, 0.0, M[:, i])
        M = jnp.where(e[None, :], 0.0, M) - col[:, None] * row[None, :]
        M = M.at[i].set(row)
    return M


def gradient_norm(f) -> Float[Array, ""]:
    """The Euclidean norm of a field value, i.e. of the loss gradient (paper units)."""
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(f)))
