r"""The orthogonal polar factor of a small square matrix by Newton-Schulz, value only.

`polar_factor(M)` returns U with $M = UP$, $P = (M^TM)^{1/2}$, for the feature distance's
Procrustes rotation (docs/theory.md, section 2.4). The iteration
$X \leftarrow X(3I - X^TX)/2$ maps every singular value $x \in (0, \sqrt 3)$ of X to
$x(3 - x^2)/2$ and keeps the singular vectors, so from $X_0 = M/\beta$ with
$\beta \ge s_{max}(M)$ the singular values grow by a factor up to 3/2 while small and converge
quadratically to 1 ($1 - x \to \tfrac32(1 - x)^2$); a zero singular value stays zero. Only
matrix products: the same O(k^3) arithmetic in every lane, no custom calls, no sweeps to
converge (against one Jacobi eigensolve of $M^TM$, `linfeat._eigh`, 4-6x dearer on the
benchmark's matrices: `benchmarks/profiling/distance_routes.py`).

- Scale: $\beta = \|(M^TM)^2\|_F^{1/4} \ge s_{max}$ (and $\le k^{1/8} s_{max}$), after a first
  division by $\|M\|_F$ so that no power overflows.
- Stop: when one step changes X by at most $\delta = 64k\epsilon$ in the Frobenius norm
  (above the rounding of a step at the fixed point, ~$\sqrt k\,\epsilon$), then one more
  step. A direction that has converged has $|1 - x| \le \delta$ and the last step leaves
  $\tfrac32\delta^2$. A direction still small has $x(1 - x^2)/2 \le \delta$, so $x \le 2\delta$
  and its singular value $s_i = x_0\beta \le 2\delta\beta$: it is treated as zero, as the
  eigensolve route drops $s_i \le k\epsilon s_{max}$, and U is a partial isometry there.
  Directions above that take $\log_{1.5}(1/x_0) + 6$ steps, at most about 80; `MAX_ITERS`
  bounds a loop that rounding would keep from stopping.
- Under `jax.vmap` the loop runs until every lane of the batch has stopped (lanes that have
  stopped are frozen by the batching of `lax.while_loop`), so an ill-conditioned lane costs
  its batch up to ~80 steps (~ one Jacobi eigensolve); well-conditioned batches take 8-14.

No derivative rule: the caller differentiates another route (`_metrics.frame_feature_distance`
takes its tangent from the eigensolve route); `jax.grad` through this function raises
(`lax.while_loop` has no reverse mode).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

MAX_ITERS = 100
STOP_PER_K = 64  # delta = STOP_PER_K * k * eps


def _step(X, eye):
    return X @ (1.5 * eye - 0.5 * (X.T @ X))


def polar_factor(M: Float[Array, "k k"]) -> Float[Array, "k k"]:
    """The orthogonal factor U of $M = UP$ (a partial isometry on M's numerical range if M
    is singular; zero for M = 0); one matrix, vmap for batches. NaN in M gives NaN."""
    M = jnp.asarray(M)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ValueError(f"`M` must be a non-empty square matrix, got shape {M.shape}")
    if not jnp.issubdtype(M.dtype, jnp.floating):
        raise TypeError(f"`M` must be a real floating matrix, got dtype {M.dtype}")
    k = M.shape[-1]
    eye = jnp.eye(k, dtype=M.dtype)
    fro = jnp.sqrt(jnp.sum(M * M))
    safe = jnp.where(fro > 0, fro, 1.0)
    M1 = M / safe
    G = M1.T @ M1
    beta = jnp.sqrt(jnp.sqrt(jnp.sqrt(jnp.sum((G @ G) ** 2))))
    X0 = M1 / jnp.where(beta > 0, beta, 1.0)
    delta = STOP_PER_K * k * jnp.finfo(M.dtype).eps

    def cond(state):
        _, change, it = state
        return (change > delta) & (it < MAX_ITERS)  # NaN > delta is False: NaN stops

    def body(state):
        X, _, it = state
        Xn = _step(X, eye)
        return Xn, jnp.sqrt(jnp.sum((Xn - X) ** 2)), it + 1

    init = (X0, jnp.asarray(jnp.inf, M.dtype), jnp.asarray(0, jnp.int32))
    X, _, _ = lax.while_loop(cond, body, init)
    return _step(X, eye)
