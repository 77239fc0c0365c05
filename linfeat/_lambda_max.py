r"""The largest eigenvalue of a small symmetric matrix, without Jacobi sweeps.

The feature distance (`linfeat._metrics.frame_feature_distance`) needs $\lambda_{max}$ of a
k x k PSD matrix at every save of every lane, and only that eigenvalue. `lambda_max` reduces
S to tridiagonal form by k - 2 Householder reflections (unrolled), then bisects the Gershgorin
interval of the tridiagonal T on its Sturm count (the number of negative pivots of
$T - xI$, i.e. of eigenvalues below x) for `BISECTIONS` halvings. Both steps are backward
stable: the result is an eigenvalue of $S + E$ with $\|E\| = O(k\epsilon\|S\|)$, the accuracy
of the Jacobi route (`linfeat._eigh.eigvalsh(S)[-1]`, which it replaces there); there is
nothing to converge, so every lane of a batch does the same O(k^3) arithmetic. On the
benchmark's matrices (k = 10) it took 2.6 against 16.8 µs per matrix with the same error
against LAPACK (`benchmarks/profiling/distance_routes.py`; docs/theory.md section 2.4).

Derivative: $d\lambda_{max} = u^T dS\,u$ with u a unit top eigenvector, taken from the Jacobi
`eigh` inside the JVP rule, so only differentiated programs pay for an eigensolve. Where the
top eigenvalue is repeated, $\lambda_{max}$ has no derivative and any u of the eigenspace
gives one of its one-sided values (as `eigvalsh`'s rule does). Plain `jnp`/`lax`, no LAPACK
custom call (docs/solvers.md, "No LAPACK in traced code"); vmaps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._eigh import eigh

# 64 halvings shrink the Gershgorin interval (width <= 4k max|S_ij| <= 4k |S|) to 2^-64 of
# its width, far below the O(k eps |S|) rounding of the Sturm count, which then decides the
# result (in float32 too).
BISECTIONS = 64


def _tridiagonal(S: Float[Array, "k k"]) -> tuple[Float[Array, " k"], Float[Array, " k-1"]]:
    """Diagonal and off-diagonal of $Q^TSQ$ by k - 2 Householder reflections (unrolled)."""
    k = S.shape[-1]
    idx = jnp.arange(k)
    for j in range(k - 2):
        x = jnp.where(idx > j, S[:, j], 0.0)
        alpha = -jnp.where(S[j + 1, j] >= 0, 1.0, -1.0) * jnp.linalg.norm(x)
        v = x - alpha * (idx == j + 1)  # no cancellation: alpha has the opposite sign
        nv = jnp.linalg.norm(v)
        v = jnp.where(nv > 0, v / jnp.where(nv > 0, nv, 1.0), 0.0)  # column already reduced
        w = S @ v
        q = w - (v @ w) * v
        S = S - 2.0 * (jnp.outer(v, q) + jnp.outer(q, v))  # (I - 2vv^T) S (I - 2vv^T)
    return jnp.diagonal(S), jnp.diagonal(S, 1)


def _largest_by_bisection(a: Float[Array, " k"], e: Float[Array, " k-1"]) -> Float[Array, ""]:
    """Largest eigenvalue of the symmetric tridiagonal (a, e) by Sturm-count bisection."""
    k = a.shape[-1]
    ae = jnp.abs(e)
    zero = jnp.zeros(1, a.dtype)
    radius = jnp.concatenate([ae, zero]) + jnp.concatenate([zero, ae])
    lo, hi = jnp.min(a - radius), jnp.max(a + radius)  # Gershgorin: every eigenvalue inside
    e2 = e**2
    # LAPACK's pivmin (dstebz): a pivot smaller than this is replaced by -pivmin
    pivmin = jnp.finfo(a.dtype).tiny * jnp.maximum(1.0, jnp.max(e2, initial=0.0))

    def count_below(x):
        q = a[0] - x
        count = (q < 0).astype(jnp.int32)
        for i in range(1, k):
            q = jnp.where(jnp.abs(q) < pivmin, -pivmin, q)
            q = a[i] - x - e2[i - 1] / q
            count = count + (q < 0)
        return count

    def halve(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        above_all = count_below(mid) == k  # every eigenvalue is below mid
        return jnp.where(above_all, lo, mid), jnp.where(above_all, mid, hi)

    lo, hi = jax.lax.fori_loop(0, BISECTIONS, halve, (lo, hi))
    return 0.5 * (lo + hi)


def _lambda_max_value(S: Float[Array, "k k"]) -> Float[Array, ""]:
    # scaled by a power of two (exact; XLA's exp2 is not) so that max |S_ij| is in [1/2, 1):
    # the squares of the off-diagonal neither overflow nor underflow
    big = jnp.max(jnp.abs(S))
    _, ex = jnp.frexp(jnp.where(jnp.isfinite(big) & (big > 0), big, 1.0))
    one = jnp.ones_like(big)
    a, e = _tridiagonal(S * jnp.ldexp(one, -ex))
    return _largest_by_bisection(a, e) * jnp.ldexp(one, ex)


@jax.custom_jvp
def _lambda_max(S):
    return _lambda_max_value(S)


@_lambda_max.defjvp
def _lambda_max_jvp(primals, tangents):
    (S,), (dS,) = primals, tangents
    _, V = eigh(S)  # Jacobi, only in differentiated programs
    u = V[..., -1]
    dS = 0.5 * (dS + jnp.swapaxes(dS, -1, -2))
    return _lambda_max(S), u @ dS @ u


def lambda_max(S: Float[Array, "k k"]) -> Float[Array, ""]:
    r"""Largest eigenvalue of a real symmetric matrix, like `eigvalsh(S)[-1]` (the input is
    symmetrised, $(S + S^T)/2$, as `linfeat._eigh.eigvalsh` does; one matrix, vmap for
    batches). Householder tridiagonalisation and bisection (module docstring); NaN in S
    gives NaN.
    """
    S = jnp.asarray(S)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] == 0:
        raise ValueError(f"`S` must be a non-empty square matrix, got shape {S.shape}")
    if not jnp.issubdtype(S.dtype, jnp.floating):
        raise TypeError(f"`S` must be a real floating matrix, got dtype {S.dtype}")
    return _lambda_max(0.5 * (S + S.T))
