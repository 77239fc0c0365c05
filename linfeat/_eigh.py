r"""Small symmetric eigenproblems in pure JAX, with a derivative safe at degenerate eigenvalues.

Why not `jnp.linalg.eigh`/`svd`/`lstsq`: on a 2-core CPU, jaxlib's batched LAPACK kernels
(`lapack_dsyevd_ffi`, `gesdd`, `geqrf`, ...) deadlock when two of them run at once inside one
jitted program (both pool threads wait in `jax::ParallelBatchMap`), so any
`jax.jit(jax.vmap(...))` over problems could hang; and `jax.grad` through `jnp.linalg.eigh` is
NaN at repeated eigenvalues (a Gram matrix of rank-deficient data has many zero eigenvalues),
although everything linfeat computes is invariant to the basis chosen inside a degenerate
eigenspace. Everything here is plain `jnp`/`lax` (no custom calls) and is meant for the small
matrices linfeat decomposes ($1 \le c \lesssim 64$; typically 10 to 45).

Algorithm (`eigh`): cyclic two-sided Jacobi in the odd-even ("caterpillar") parallel ordering.
A round rotates the disjoint index pairs $(o + 2i, o + 2i + 1)$, $o \in \{0, 1\}$ alternating,
and every rotation also swaps its pair, $G = J\,\Pi$ with
$J^T \begin{pmatrix} a_{pp} & a_{pq} \\ a_{pq} & a_{qq} \end{pmatrix} J$ diagonal: within
$2\lceil c/2 \rceil$ rounds (a sweep) every pair meets once (odd-even transposition sort), so
no separate permutation pass is needed (measured: in XLA:CPU one costs as much as a rotation
pass; the round-robin ordering needs one per round). Each round is
$A \to G^T A G$, $V \to V G$ on all pairs at once (vectorised over pairs and over the batch),
and the rotated pairs' 2x2 blocks are set exactly (diagonal entries by the closed form,
off-diagonal to zero). Sweeps run in a `lax.while_loop` until every off-diagonal entry
satisfies $|a_{pq}| \le \epsilon \sqrt{|a_{pp} a_{qq}|}$ (Demmel-Veselic's relative test; it
is what makes the second pass of `_gram_svd` accurate for graded matrices) or `MAX_SWEEPS`;
a matrix that has converged is frozen exactly (identity rotations), so a result does not
depend on the other matrices in its batch. The input is scaled by a power of two (exact) so
that squares never overflow. Batches are laid out batch-minor ($(c, c, B)$), which XLA:CPU
vectorises; `jax.vmap` of `eigh` is routed to that layout by `custom_vmap`.

Accuracy (float64, random and degenerate matrices, `tests/test_eigh.py`): eigenvalues within
~1e-15 $\|S\|_2$ of `numpy.linalg.eigh`, $\|V^TV - I\|$ and $\|V \Lambda V^T - S\|/\|S\|$
~1e-15, like LAPACK (Jacobi is backward stable).

Cost: $O(c^3)$ per sweep, 6-12 sweeps, each round one pass over A and one over V. Measured on
the 2-core development CPU while other jobs ran (best of several): 4096 matrices 21 x 21 in
3.0 s of CPU (`jax.vmap(jnp.linalg.eigh)`: 0.3 s), 1024 of 40 x 40 in 3.9 s (0.2 s), one
21 x 21 in 0.7 ms (0.1 ms): ~10x LAPACK, the price of no deadlock and a safe derivative.
Absolute times depend on the load (a plain elementwise pass over the same batch varied 1-6 ms).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap
from jaxtyping import Array, Float

# Jacobi converges quadratically: 6-9 sweeps reach the relative test for random c <= 64
# (float64), 9-12 for matrices with large clusters of equal eigenvalues; the cap is a safety net.
MAX_SWEEPS = 20


def degenerate_tol(lam: Float[Array, "... c"]) -> Float[Array, "..."]:
    r"""Gap below which the derivative treats two eigenvalues as one: $\sqrt\epsilon\max|\lambda|$.

    Exactly repeated eigenvalues come back split by rounding: by the backward error of the
    decomposition (a few $\epsilon\|S\|$) and, usually larger, by the rounding of the input
    itself (a Gram matrix $XX^T$ with $d$ terms per entry carries errors
    $\sim\sqrt{d}\,\epsilon\,\|X\|^2$). A tolerance of $c\,\epsilon\max|\lambda|$ is below
    that spread for many inputs; then $1/(\lambda_j - \lambda_i) \sim 1/\epsilon$ multiplies
    a tangent inside the eigenspace and the (exact) cancellation in a basis-invariant result
    leaves an $O(1)$ error. With $\sqrt\epsilon$ the amplification is at most
    $\epsilon^{-1/2}$, so such cancellations cost at most $\sim\sqrt\epsilon$ relative; the
    price is that pairs closer than $\sqrt\epsilon\|S\|$ (eigenvectors only determined to
    $\epsilon/\mathrm{gap} > \sqrt\epsilon$ there anyway) lose their mutual coupling, exactly
    as exactly-degenerate ones do.
    """
    eps = jnp.finfo(lam.dtype).eps
    return float(np.sqrt(eps)) * jnp.max(jnp.abs(lam), axis=-1, initial=0.0)


# ---------------------------------------------------------------------------------------
# The Jacobi kernel on a batch-minor stack A of shape (n, n, B)
# ---------------------------------------------------------------------------------------


def _pair_diagonals(A, o: int, P: int):
    """$(a_{pp}, a_{qq}, a_{pq})$ of the pairs $(p, q) = (o + 2i, o + 2i + 1)$, each (P, B)."""
    n, _, B = A.shape
    flat = A.reshape(n * n, B)  # strided slices of the flattened matrix: no gather
    step = 2 * (n + 1)

    def take(start):
        return lax.slice(flat, (start, 0), (start + step * (P - 1) + 1, B), (step, 1))

    return take(o * (n + 1)), take((o + 1) * (n + 1)), take(o * (n + 1) + 1)


def _rotations(app, aqq, apq, active):
    r"""Entries of $G = J\Pi$ per pair, and the pair's new 2x2 block (diagonal d0, d1; off).

    $J = [[c, s], [-s, c]]$ with $t = s/c$ the smaller root of
    $t^2 a_{pq} + t(a_{pp} - a_{qq}) - a_{pq} = 0$ (|angle| <= pi/4), so that
    $J^TAJ = \mathrm{diag}(a_{pp} - t a_{pq}, a_{qq} + t a_{pq})$ (Golub & Van Loan 8.5.2);
    $\Pi$ swaps the pair. A negligible $a_{pq}$ (the convergence test of `_still_active`) is
    not rotated ($J = I$): inside a cluster of equal eigenvalues such entries are rounding
    noise, and rotating them by up to pi/4 stirs the couplings to other clusters back into
    entries already annihilated in this sweep (measured: two 10-fold clusters then needed
    over 15 sweeps instead of 11). Matrices that have converged (`active` False) get $G = I$.
    """
    eps = float(np.finfo(app.dtype).eps)
    floor = float(np.sqrt(np.finfo(app.dtype).tiny))
    rotate = active & (jnp.abs(apq) > jnp.maximum(eps * jnp.sqrt(jnp.abs(app * aqq)), floor))
    d = aqq - app
    den = jnp.abs(d) + jnp.hypot(d, 2 * apq)  # t = 2 apq sign(d) / (|d| + sqrt(d^2 + 4 apq^2))
    t = jnp.where(rotate, 2 * apq * jnp.where(d < 0, -1.0, 1.0) / jnp.where(rotate, den, 1.0), 0.0)
    c = 1 / jnp.sqrt(1 + t * t)
    s = t * c
    one, zero = jnp.ones_like(c), jnp.zeros_like(c)
    g = (
        jnp.where(active, s, one),  # G[0, 0]
        jnp.where(active, c, zero),  # G[0, 1]
        jnp.where(active, c, zero),  # G[1, 0]
        jnp.where(active, -s, one),  # G[1, 1]
    )
    d0 = jnp.where(active, aqq + t * apq, app)
    d1 = jnp.where(active, app - t * apq, aqq)
    off = jnp.where(rotate, zero, apq)
    return g, d0, d1, off


def _rows(X, g):
    """$G^T X$ on the rows of X (2P, m, B), pairs (2i, 2i + 1)."""
    P = X.shape[0] // 2
    g00, g01, g10, g11 = (x[:, None, :] for x in g)
    X4 = X.reshape((P, 2) + X.shape[1:])
    a, b = X4[:, 0], X4[:, 1]
    return jnp.stack([g00 * a + g10 * b, g01 * a + g11 * b], 1).reshape(X.shape)


def _cols(X, g):
    """$X G$ on the columns of X (m, 2P, B), pairs (2i, 2i + 1)."""
    P = X.shape[1] // 2
    g00, g01, g10, g11 = (x[None] for x in g)
    X4 = X.reshape(X.shape[0], P, 2, X.shape[2])
    a, b = X4[:, :, 0], X4[:, :, 1]
    return jnp.stack([a * g00 + b * g10, a * g01 + b * g11], 2).reshape(X.shape)


def _two_sided(A, o: int, P: int, g, d0, d1, off):
    r"""$G^T A G$ for G block diagonal on the pairs of rows/columns $o \dots o + 2P - 1$.

    The paired block is written as one expression of its four strided sub-blocks (so that
    XLA emits one pass over A per round, measured 1.3x faster than rows then columns).
    """
    n, _, B = A.shape
    e = o + 2 * P
    M = A[o:e, o:e].reshape(P, 2, P, 2, B)
    X = ((M[:, 0, :, 0], M[:, 0, :, 1]), (M[:, 1, :, 0], M[:, 1, :, 1]))
    gi = [[x[:, None] for x in g[:2]], [x[:, None] for x in g[2:]]]  # gi[a][b] = G[a, b]
    gj = [[x[None] for x in g[:2]], [x[None] for x in g[2:]]]
    # rows: R[a] = sum_b G[b, a] X[b]; then columns: Y[a][c] = sum_b R[a][b] G[b, c]
    R = [[gi[0][a] * X[0][k] + gi[1][a] * X[1][k] for k in range(2)] for a in range(2)]
    Y = [[R[a][0] * gj[0][k] + R[a][1] * gj[1][k] for k in range(2)] for a in range(2)]
    eye = np.eye(P, dtype=bool)[:, :, None]
    Y[0][0] = jnp.where(eye, d0[None], Y[0][0])
    Y[1][1] = jnp.where(eye, d1[None], Y[1][1])
    Y[0][1] = jnp.where(eye, off[None], Y[0][1])
    Y[1][0] = jnp.where(eye, off[None], Y[1][0])
    C = jnp.stack([jnp.stack(Y[0], 2), jnp.stack(Y[1], 2)], 1).reshape(2 * P, 2 * P, B)
    if o == 0 and e == n:
        return C
    # At most one idle index on each side: rows/columns that only see the other side's G.
    middle = [C]
    if o:
        middle.insert(0, _rows(A[o:e, :o], g))
    if e < n:
        middle.append(_rows(A[o:e, e:], g))
    blocks = [jnp.concatenate(middle, 1)]
    if o:
        top = A[:o]
        blocks.insert(0, jnp.concatenate([top[:, :o], _cols(top[:, o:e], g), top[:, e:]], 1))
    if e < n:
        bot = A[e:]
        blocks.append(jnp.concatenate([bot[:, :o], _cols(bot[:, o:e], g), bot[:, e:]], 1))
    return jnp.concatenate(blocks, 0)


def _round(A, V, o: int, active):
    n = A.shape[0]
    P = (n - o) // 2
    if P == 0:
        return A, V
    g, d0, d1, off = _rotations(*_pair_diagonals(A, o, P), active)
    A = _two_sided(A, o, P, g, d0, d1, off)
    if V is not None:
        e = o + 2 * P
        Vp = _cols(V[:, o:e], g)
        V = Vp if (o == 0 and e == n) else jnp.concatenate([V[:, :o], Vp, V[:, e:]], 1)
    return A, V


def _still_active(A):
    r"""Per matrix: is some $|a_{pq}| > \epsilon\sqrt{|a_{pp}a_{qq}|}$ (and above underflow)?"""
    n, _, B = A.shape
    eps = float(np.finfo(A.dtype).eps)
    floor = float(np.sqrt(np.finfo(A.dtype).tiny))  # |a_pq| below this is negligible (|A| ~ 1)
    dg = jnp.abs(A.reshape(n * n, B)[:: n + 1])
    thr = jnp.maximum(eps * jnp.sqrt(dg[:, None] * dg[None, :]), floor)
    off = ~np.eye(n, dtype=bool)[:, :, None]
    return jnp.any((jnp.abs(A) > thr) & off, axis=(0, 1))


def _jacobi(A, compute_v: bool):
    """Diagonal (n, B) and eigenvectors (n, n, B) (unsorted) of the symmetric stack A (n, n, B)."""
    n, _, B = A.shape
    V = jnp.broadcast_to(jnp.eye(n, dtype=A.dtype)[:, :, None], A.shape) if compute_v else None

    def two_rounds(_, st):
        # The first round's result is a loop output ("ping-pong" carry): XLA then neither
        # copies the carry back nor fuses the two rounds (which recomputes entries 4x).
        A, V, _A1, _V1, active = st
        A1, V1 = _round(A, V, 0, active)
        A, V = _round(A1, V1, 1, active)
        return A, V, A1, V1, active

    def sweep(st):
        A, V, active, k = st
        A, V, *_ = lax.fori_loop(0, (n + 1) // 2, two_rounds, (A, V, A, V, active))
        return A, V, active & _still_active(A), k + 1

    def cond(st):
        return jnp.any(st[2]) & (st[3] < MAX_SWEEPS)

    A, V, _, _ = lax.while_loop(cond, sweep, (A, V, _still_active(A), 0))
    return A.reshape(n * n, B)[:: n + 1], V


@functools.partial(jax.jit, static_argnames="compute_v")  # eager calls hit the compile cache
def _eigh_stack(S: Float[Array, "... c c"], compute_v: bool):
    """Sorted eigenpairs of a stack of symmetric matrices (any leading dimensions)."""
    *batch, c, _ = S.shape
    if c == 0:
        return jnp.zeros(S.shape[:-1], S.dtype), (S if compute_v else None)
    A = jnp.moveaxis(S.reshape((-1, c, c)), 0, -1)  # (c, c, B): batch-minor
    # Scale by a power of two (exact) so that max |A| is in [1/2, 1): no overflow or underflow
    # in the rotation formulas, and the underflow floor of `_still_active` is meaningful.
    amax = jnp.max(jnp.abs(A), axis=(0, 1))
    _, ex = jnp.frexp(jnp.where(jnp.isfinite(amax) & (amax > 0), amax, 1.0))
    A = A * jnp.ldexp(jnp.ones_like(amax), -ex)
    lam, V = _jacobi(A, compute_v)
    lam = lam.T * jnp.ldexp(jnp.ones_like(amax), ex)[:, None]  # (B, c)
    order = jnp.argsort(lam, axis=-1)
    lam = jnp.take_along_axis(lam, order, axis=-1).reshape(*batch, c)
    if not compute_v:
        return lam, None
    V = jnp.take_along_axis(jnp.moveaxis(V, -1, 0), order[:, None, :], axis=-1)
    return lam, V.reshape(*batch, c, c)


@custom_vmap
def _eigh_p(S):
    return _eigh_stack(S, True)


@_eigh_p.def_vmap
def _eigh_p_vmap(axis_size, in_batched, S):
    # vmap over matrices is the batch of the kernel itself (batch-minor, vectorised), not a
    # batched while loop over a batch-major stack (measured 1.5x slower).
    return _eigh_stack(S, True), (in_batched[0], in_batched[0])


@custom_vmap
def _eigvalsh_p(S):
    return _eigh_stack(S, False)[0]


@_eigvalsh_p.def_vmap
def _eigvalsh_p_vmap(axis_size, in_batched, S):
    return _eigh_stack(S, False)[0], in_batched[0]


def _mT(X):
    return jnp.swapaxes(X, -1, -2)


def _inv_gaps(lam: Float[Array, "... c"]) -> Float[Array, "... c c"]:
    r"""$F_{ij} = 1/(\lambda_j - \lambda_i)$ where that gap exceeds `degenerate_tol`, else 0."""
    diff = lam[..., None, :] - lam[..., :, None]
    gap = jnp.abs(diff) > degenerate_tol(lam)[..., None, None]
    return jnp.where(gap, 1 / jnp.where(gap, diff, 1.0), 0.0)  # double where: no inf/NaN


@jax.custom_jvp
def _eigh_sym(S):
    return _eigh_p(S)


@_eigh_sym.defjvp
def _eigh_sym_jvp(primals, tangents):
    (S,), (dS,) = primals, tangents
    lam, V = _eigh_sym(S)  # through this rule again under higher-order differentiation
    dS = 0.5 * (dS + _mT(dS))
    dSp = _mT(V) @ dS @ V  # the perturbation in the eigenbasis
    dlam = jnp.diagonal(dSp, axis1=-2, axis2=-1)
    # F o dSp is 0 inside (numerically) degenerate eigenspaces: rotations there are a gauge
    # freedom, so dV is the derivative of any basis-invariant function of the eigenspaces.
    dV = V @ (_inv_gaps(lam) * dSp)
    return (lam, V), (dlam, dV)


@jax.custom_jvp
def _eigvalsh_sym(S):
    return _eigvalsh_p(S)


@_eigvalsh_sym.defjvp
def _eigvalsh_sym_jvp(primals, tangents):
    # eigh's rule (its dV is unused here and removed by XLA's dead-code elimination)
    (lam, _), (dlam, _) = jax.jvp(_eigh_sym, primals, tangents)
    return lam, dlam


def _as_float_matrix(S, name: str = "S"):
    S = jnp.asarray(S)
    if jnp.issubdtype(S.dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must be real, got dtype {S.dtype}")
    if not jnp.issubdtype(S.dtype, jnp.floating):
        S = S.astype(jnp.result_type(float))
    return S


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def eigh(S: Float[Array, "... c c"]) -> tuple[Float[Array, "... c"], Float[Array, "... c c"]]:
    r"""Eigendecomposition $S = V \mathrm{diag}(\lambda) V^T$ of real symmetric matrices, ascending.

    Like `jnp.linalg.eigh` (the input is symmetrised, $(S + S^T)/2$; leading dimensions are a
    batch; the dtype is kept) but pure JAX: cyclic Jacobi (module docstring). Works under
    `jit`, `vmap` (routed to the vectorised kernel), `grad` and `jvp`.

    Derivative (`jax.custom_jvp`, linear in the tangent, so reverse mode works too):
    $d\lambda = \mathrm{diag}(V^T\,dS\,V)$ and $dV = V\,(F \circ V^T dS\,V)$ with
    $F_{ij} = 1/(\lambda_j - \lambda_i)$ when $|\lambda_j - \lambda_i| >$ `degenerate_tol`
    and $F_{ij} = 0$ otherwise: inside a degenerate eigenspace the basis is arbitrary, and
    the rule returns the derivative of functions that do not depend on that choice (e.g. a
    spectral projector $\sum_{i \le r} v_i v_i^T$ with $\lambda_r > \lambda_{r+1}$, or
    $\sum_i f(\lambda_i)$), finite everywhere. Inside a degenerate eigenspace it keeps only
    the diagonal of $V^T dS V$, so smooth matrix functions $V g(\Lambda) V^T$ with
    $g' \ne 0$ there are not differentiated exactly at the degenerate point (no rule in terms
    of $(\lambda, V)$ can: they are not differentiable there).

    Args:
        S: (..., c, c) real matrices, $c \le 64$ or so (the cost is $O(c^3)$ per sweep).

    Returns:
        (lam, V): eigenvalues (..., c) ascending and orthonormal eigenvectors (columns).
    """
    S = _as_float_matrix(S)
    return _eigh_sym(0.5 * (S + _mT(S)))


def eigvalsh(S: Float[Array, "... c c"]) -> Float[Array, "... c"]:
    r"""Eigenvalues of real symmetric matrices, ascending (`eigh` without the eigenvectors).

    The derivative $d\lambda = \mathrm{diag}(V^T dS\,V)$ computes the eigenvectors.
    """
    S = _as_float_matrix(S)
    return _eigvalsh_sym(0.5 * (S + _mT(S)))


def _safe_sqrt(x):
    """sqrt with a zero (not NaN/inf) derivative at x <= 0."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _safe_inv(x, keep):
    return jnp.where(keep, 1 / jnp.where(keep, x, 1.0), 0.0)


def _gram_svd(M: Float[Array, "m k"]):
    r"""$(s, W, C)$ with $MW = C$, $W$ orthogonal (k, k), C's columns $s_i u_i$; $s$ descending.

    Two passes through Gram matrices: $M^TM = V_1 \Lambda V_1^T$ gives $B = MV_1$, whose columns
    are orthogonal up to the Gram route's $O(\epsilon\,s_{\max}^2/s_j)$ leakage; the Gram
    matrix $B^TB$ of *those* columns is formed to relative accuracy and is nearly diagonal,
    and Jacobi with its relative stopping test decomposes it to relative accuracy, removing
    the leakage: singular values then come out within ~$\epsilon\,s_{\max}$ (like an SVD)
    rather than $\sqrt\epsilon\,s_{\max}$, so a rank cut-off can be LAPACK's. Needs $m \ge k$.
    """
    _, V1 = eigh(_mT(M) @ M)
    B = M @ V1
    _, V2 = eigh(_mT(B) @ B)
    W = V1 @ V2
    C = B @ V2
    s = _safe_sqrt(jnp.sum(C * C, axis=-2))
    order = jnp.argsort(-s)
    return s[order], W[:, order], C[:, order]


def svdvals(M: Float[Array, "m k"]) -> Float[Array, " r"]:
    r"""Singular values of a small matrix, descending ($r = \min(m, k)$), via eigh of Gram matrices.

    Accurate to ~$\epsilon\,s_{\max}$ absolute like `jnp.linalg.svd(M, compute_uv=False)`
    (two passes, `_gram_svd`); the derivative is $u_i^T dM\,v_i$ (0 at $s_i = 0$).
    """
    M = _as_float_matrix(M, "M")
    if M.shape[-2] < M.shape[-1]:
        M = _mT(M)
    if M.shape[-1] == 0:
        return jnp.zeros((0,), M.dtype)
    return _gram_svd(M)[0]


def polar(M: Float[Array, "c c"]) -> Float[Array, "c c"]:
    r"""Orthogonal polar factor $U = M(M^TM)^{-1/2} = PQ^T$ of a small square $M = P\Lambda Q^T$.

    The rotation of orthogonal Procrustes: $U = \arg\max_{O} \mathrm{tr}(O^T M)$.

    Singular M: directions with $s_i \le c\,\epsilon\,s_{\max}$ (LAPACK's rank) have no
    unique image; they are mapped onto an orthonormal basis of the orthogonal complement of
    the range of the others: the eigenvectors of eigenvalue 1 of $I - P_r P_r^T$ (a
    deterministic function of M), so U is always orthogonal, finite, with finite derivatives
    (the derivative along such a direction is arbitrary, as U is). Accuracy is restored by one
    more polar pass on $U_1^TU_1 \approx I$ and a final Newton-Schulz step
    $U \leftarrow U(3I - U^TU)/2$, which leaves the value unchanged to rounding and makes the
    derivative tangent to the orthogonal group exactly (so it is exact also at repeated
    singular values, where the eigenvector derivative alone is not).
    """
    M = _as_float_matrix(M, "M")
    c = M.shape[-1]
    if M.ndim != 2 or M.shape[0] != c:
        raise ValueError(f"`polar` needs a square matrix, got shape {M.shape}")
    if c == 0:
        return M
    s, W, C = _gram_svd(M)
    eps = float(np.finfo(M.dtype).eps)
    keep = s > c * eps * s[0]
    P = C * _safe_inv(s, keep)  # columns u_i, or zero where s_i is cut
    # s descends, so the cut columns are the last ones, and so are the eigenvalue-1 (largest)
    # eigenvectors of I - P P^T: they span range(P)'s complement, a basis for the cut ones.
    _, Z = eigh(jnp.eye(c, dtype=M.dtype) - P @ P.T)
    U = jnp.where(keep, P, Z) @ W.T
    lam, V = eigh(U.T @ U)  # ~I; one polar pass: orthogonal to rounding
    U = (U @ V) * _safe_inv(_safe_sqrt(lam), lam > 0) @ V.T
    return U @ (1.5 * jnp.eye(c, dtype=M.dtype) - 0.5 * (U.T @ U))


def lstsq(
    A: Float[Array, "n k"], b: Float[Array, " n"] | Float[Array, "n m"], rcond: float | None = None
) -> Float[Array, " k"] | Float[Array, "k m"]:
    r"""Minimum-norm least-squares solution of $Ax = b$, like `jnp.linalg.lstsq(A, b)[0]`.

    Through the SVD of A from Gram matrices of the smaller side (`_gram_svd`, $O(nk^2)$ for
    $n \times k$), with LAPACK's relative cut-off: singular values $\le$
    `rcond` $s_{\max}$ are treated as zero, `rcond` defaulting to $\max(n, k)\,\epsilon$.
    Finite derivatives (divisions are masked).
    """
    A = _as_float_matrix(A, "A")
    b = jnp.asarray(b, A.dtype)
    n, k = A.shape
    if rcond is None:
        rcond = max(n, k) * float(np.finfo(A.dtype).eps)
    if min(n, k) == 0:
        return jnp.zeros((k,) + b.shape[1:], A.dtype)
    tall = n >= k
    s, W, C = _gram_svd(A if tall else A.T)
    keep = s > rcond * s[0]
    inv_s2 = _safe_inv(s * s, keep)
    vec = b.ndim == 1
    B2 = b[:, None] if vec else b
    # tall: A = (C / s) diag(s) W^T, so x = W diag(1/s^2) C^T b;
    # wide: A^T W = C with W the left singular vectors of A, so x = C diag(1/s^2) W^T b.
    x = W @ (inv_s2[:, None] * (C.T @ B2)) if tall else C @ (inv_s2[:, None] * (W.T @ B2))
    return x[:, 0] if vec else x
