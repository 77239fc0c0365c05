r"""A batch of problems from user arrays, validated at once (`problems_from_arrays`).

`problem_from_arrays` validates one problem with NumPy and returns device arrays; building
10^3 problems one by one costs 7-50 ms each (the benchmark's 1024 problems of the `small`
size class: 51 s on 2026-12-02, 6.9 s on 2026-12-04; a shared host), per-call overhead and
a LAPACK `eigvalsh` of each dense (d, d) second moment. Here every check runs once on the
stacked arrays: batched matrix products for orthonormal rows, one batched SVD of X for the
ranks and the projections on S, a batched Cholesky factorisation for positive
semidefiniteness (exact test below), and the theory's conditions in NumPy. Everything is
NumPy on the host (no XLA program, so no compile and no batched-LAPACK kernel inside a
jitted program, docs/solvers.md). The result equals
`stack_problems([problem_from_arrays(...) for each item])` leaf by leaf, and every error names
the argument, the first item that fails and the fix.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._cov import SubspaceCov
from ._problem import Problem, _float_dtype

PSD_TOL = 1e-10  # as `linfeat._validate.check_psd`: lambda_min >= -PSD_TOL max(1, max|S|)


def _batched(name: str, x, ndim: int, shape: tuple) -> np.ndarray:
    """`x` as a NumPy array of rank `ndim` (a leading batch axis) and `shape`; finite, real."""
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(
            f"`{name}` must have {ndim} dimensions (a leading batch axis, then one problem's "
            f"{ndim - 1}), got shape {a.shape}; stack the problems' arrays along axis 0."
        )
    V.as_array(name, a, shape=shape)  # shape, dtype and finiteness of the whole stack
    return a


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_orthonormal(name: str, B: np.ndarray) -> None:
    k = B.shape[1]
    off = np.max(np.abs(B @ np.swapaxes(B, 1, 2) - np.eye(k)), axis=(1, 2))
    bad = ~(off <= V.ORTHONORMAL_TOL)
    if np.any(bad):
        i = _first(bad)
        raise ValueError(
            f"rows of `{name}[{i}]` must be orthonormal ({name} @ {name}.T = I), but they are "
            f"off by {off[i]:.3g} (tolerance {V.ORTHONORMAL_TOL:g}); {int(bad.sum())} of "
            f"{len(B)} items fail. Use `linfeat.orthonormalize_rows` on each to fix."
        )


def psd_failures(S: np.ndarray, tol: float = PSD_TOL) -> np.ndarray:
    r"""Indices of the symmetric matrices in the stack `S` (b, d, d) that are not PSD to `tol`.

    The test of `check_psd` is $\lambda_{\min}(S) \ge -\tau$, $\tau = $ `tol`
    $\max(1, \max|S|)$. A batched Cholesky factorisation of $S + (\tau/2) I$ succeeds only if
    $\lambda_{\min}(S) > -\tau/2$ up to its backward error ($O(d\epsilon\max|S|)$,
    $\approx 10^{-14}\max|S|$ at d = 200, far below $\tau/2$), so a success passes the test;
    a PSD matrix, even singular, factors. A matrix whose factorisation fails, and only such a
    matrix, gets the exact `eigvalsh` test: the shift decides which matrices take the slow
    path, never the verdict.
    """
    scale = np.maximum(1.0, np.max(np.abs(S), axis=(1, 2)))
    tau = tol * scale
    shifted = S + (0.5 * tau)[:, None, None] * np.eye(S.shape[-1])
    try:
        np.linalg.cholesky(shifted)
        return np.zeros(0, int)
    except np.linalg.LinAlgError:
        pass
    # the stack has a matrix that is not positive definite: factor one by one, and check
    # the ones that fail exactly
    bad = []
    for i, M in enumerate(shifted):
        try:
            np.linalg.cholesky(M)
        except np.linalg.LinAlgError:
            if np.linalg.eigvalsh(S[i])[0] < -tau[i]:
                bad.append(i)
    return np.asarray(bad, int)


def _check_dense_cov(name: str, S: np.ndarray) -> None:
    St = np.ascontiguousarray(np.swapaxes(S, 1, 2))  # one strided pass, then contiguous ones
    scale = np.maximum(1.0, np.max(np.abs(S), axis=(1, 2)))
    asym = np.max(np.abs(S - St), axis=(1, 2))
    bad = asym > PSD_TOL * scale
    if np.any(bad):
        i = _first(bad)
        raise ValueError(
            f"`{name}[{i}]` must be symmetric (a second moment E[x x^T]); max |S - S^T| = "
            f"{asym[i]:.3g}. Pass (S + S.T) / 2."
        )
    St += S
    St *= 0.5
    fail = psd_failures(St)  # the symmetric part, as `check_psd` tests it
    if fail.size:
        i = int(fail[0])
        lam = float(np.linalg.eigvalsh(S[i])[0])
        raise ValueError(
            f"`{name}[{i}]` must be positive semidefinite (a second moment E[x x^T]); its "
            f"smallest eigenvalue is {lam:.3g} ({fail.size} of {len(S)} items fail)."
        )


def _cov(name: str, cov, b: int, d: int, dtype, default) -> SubspaceCov | jnp.ndarray:
    """A batched second moment: dense (b, d, d), or a `SubspaceCov` whose scales are (b,) or
    scalars and whose factor is (b, d, r) or (d, r) (broadcast to the batch)."""
    if cov is None:
        return default
    if isinstance(cov, SubspaceCov):
        fix = "a second moment a Pi_S + b Pi_perp + L L^T needs variances a, b >= 0."
        scales = []
        for part in ("scale_S", "scale_perp"):
            x = np.asarray(getattr(cov, part))
            if x.ndim not in (0, 1) or (x.ndim == 1 and x.shape[0] != b):
                raise ValueError(
                    f"`{name}.{part}` must be a scalar or have shape ({b},), got {x.shape}."
                )
            V.check_nonneg(f"{name}.{part}", x, fix=fix)
            scales.append(jnp.asarray(np.broadcast_to(x, (b,)), dtype))
        L = np.asarray(cov.factor)
        if L.ndim == 2:
            L = np.broadcast_to(L, (b, *L.shape))
        L = _batched(f"{name}.factor", L, 3, (b, d, None))
        return SubspaceCov(*scales, jnp.asarray(L, dtype))
    S = _batched(name, cov, 3, (b, d, d))
    _check_dense_cov(name, S)
    return jnp.asarray(S, dtype)


def problems_from_arrays(
    *,
    X,
    Y,
    B0,
    B_star=None,
    v_star=None,
    w_star=None,
    ood_cov=None,
    id_cov=None,
    check_theory: bool = True,
) -> Problem:
    r"""A batch of validated problems from stacked user arrays (a leading batch axis b).

    The batched `problem_from_arrays`: the same arguments with one more leading axis, the
    same checks and the same result as stacking the problems built one by one
    (`stack_problems`), computed on the stacks at once (1024 `small`-class problems with
    a dense 200 x 200 OOD second moment: 1.9-5.1 ms per problem against 14.3 one by one, in
    one session on a shared 2-core host). The result vmaps like a batch
    of generated problems: `jax.vmap(lf.fine_tune)(problems, v0s)` or `lf.fine_tune_batch`.

    Args:
        X: training inputs (b, n, d).
        Y: training labels (b, n).
        B0: pretrained features (b, k, d), orthonormal rows in every item.
        B_star, v_star: true features (b, k, d) and heads (b, k) (give both or neither).
        w_star: true predictors (b, d); defaults to $B^{*T} v^*$ per item.
        ood_cov: dense (b, d, d) symmetric PSD, or a `SubspaceCov` with (b,) or scalar scales
            and a (b, d, r) or shared (d, r) factor; default $I_d$ for every item.
        id_cov: as `ood_cov`; default the empirical $X^TX/n$ of each item.
        check_theory: warn (once, with the number of items) when a theorem's hypothesis
            fails: $m + k \ge d$ or $c_\perp = 0$.

    Returns:
        One `Problem` whose leaves have the leading axis b.

    Raises:
        ValueError: as `problem_from_arrays`, naming the argument and the first failing item
            (`X[i]`, ...), for wrong shapes, NaN/inf, bool, complex or non-numeric arrays, rows
            that are not orthonormal, k > m, inconsistent ground truth, or a second moment
            that is not symmetric PSD; and for traced arrays (call it outside jit/vmap).
    """
    if not V.is_concrete(X, Y, B0, B_star, v_star, w_star, ood_cov, id_cov):
        raise ValueError(
            "`problems_from_arrays` validates concrete arrays; call it outside jit/vmap."
        )
    check_theory = V.check_bool("check_theory", check_theory)
    w_star_given = w_star
    Xn = np.asarray(X)
    if Xn.ndim != 3:
        raise ValueError(
            f"`X` must have 3 dimensions (b, n, d): a leading batch axis, then one problem's "
            f"(n, d) inputs; got shape {Xn.shape}. For one problem use `problem_from_arrays`."
        )
    b, n, d = Xn.shape
    if b < 1:
        raise ValueError("`X` holds no problem (b = 0); pass at least one.")
    Xn = _batched("X", Xn, 3, (b, n, d))
    Yn = _batched("Y", Y, 2, (b, n))
    B0n = _batched("B0", B0, 3, (b, None, d))
    k = B0n.shape[1]
    if k < 1:
        raise ValueError("`B0` must have at least one row (k >= 1).")
    _check_orthonormal("B0", B0n)
    if (B_star is None) != (v_star is None):
        raise ValueError("give both `B_star` and `v_star` or neither (w_star = B_star.T @ v_star).")
    Bs = vs = None
    if B_star is not None:
        Bs = _batched("B_star", B_star, 3, (b, k, d))
        _check_orthonormal("B_star", Bs)
        vs = _batched("v_star", v_star, 2, (b, k))
        # item by item, as `problem_from_arrays` computes it (bitwise the same w*)
        w_from = np.stack([B.T @ v for B, v in zip(Bs, vs, strict=True)])
        if w_star is not None:
            ws = _batched("w_star", w_star, 2, (b, d))
            gap = np.linalg.norm(ws - w_from, axis=1)
            bad = gap > 1e-8 * np.maximum(1.0, np.linalg.norm(ws, axis=1))
            if np.any(bad):
                i = _first(bad)
                raise ValueError(
                    f"`w_star[{i}]` must equal B_star[{i}].T @ v_star[{i}] (off by "
                    f"{gap[i]:.3g}); drop `w_star` to have it computed."
                )
        else:
            w_star = w_from
    if w_star is None:
        raise ValueError("give `w_star`, or `B_star` and `v_star`, to define the ground truth.")
    ws = _batched("w_star", w_star, 2, (b, d))
    dtype = _float_dtype(X, Y, B0, B_star, v_star, w_star_given)
    # ranks (as `problem_from_arrays`) and an orthonormal basis of each S, from one batched SVD
    U, s, Vt = np.linalg.svd(Xn.astype(np.float64), full_matrices=False)
    eps = np.finfo(Xn.dtype if Xn.dtype.kind == "f" else float).eps
    m = np.sum(s > max(n, d) * eps * s[:, :1], axis=1)
    bad = k > m
    if np.any(bad):
        i = _first(bad)
        raise ValueError(
            f"k = {k} features but the training inputs of item {i} span only m = {int(m[i])} "
            f"dimensions (rank of X[{i}]); the theory needs k <= m: add training inputs or use "
            f"fewer features."
        )
    ones = jnp.ones((b,), dtype)
    default_ood = SubspaceCov(ones, ones, jnp.zeros((b, d, 0), dtype))
    default_id = SubspaceCov(
        jnp.zeros((b,), dtype),
        jnp.zeros((b,), dtype),
        jnp.asarray(np.swapaxes(Xn, 1, 2) / np.sqrt(n), dtype),
    )
    problem = Problem(
        X=jnp.asarray(Xn, dtype),
        Y=jnp.asarray(Yn, dtype),
        B0=jnp.asarray(B0n, dtype),
        w_star=jnp.asarray(ws, dtype),
        B_star=None if Bs is None else jnp.asarray(Bs, dtype),
        v_star=None if vs is None else jnp.asarray(vs, dtype),
        id_cov=_cov("id_cov", id_cov, b, d, dtype, default_id),
        ood_cov=_cov("ood_cov", ood_cov, b, d, dtype, default_ood),
    )
    if check_theory:
        _warn_theory(B0n, Vt, m, d, k)
    return problem


def _warn_theory(B0: np.ndarray, Vt: np.ndarray, m: np.ndarray, d: int, k: int) -> None:
    r"""`warn_theory_conditions` over the batch, one warning per condition with its count:
    $m + k \ge d$, and $c_\perp = \sigma_k(\Pi_\perp B_0^T) \le 10^{-12}$ ($\Pi_S$ from the
    right singular vectors of X with nonzero singular values)."""
    b = len(m)
    over = m + k >= d
    if np.any(over):
        i = _first(over)
        V.warn_theory(
            f"m + k >= d in {int(over.sum())} of {b} problems (first: item {i}, m + k = "
            f"{int(m[i])} + {k} >= d = {d}): the theorems need m + k < d (overparameterised "
            f"with room for the features outside S); the flows are still defined."
        )
    r = np.arange(Vt.shape[1])
    basis = np.where((r[None, :] < m[:, None])[:, :, None], Vt, 0.0)  # (b, min(n, d), d)
    BS = (B0 @ np.swapaxes(basis, 1, 2)) @ basis  # Pi_S B0^T, transposed: two batched GEMMs
    c_perp = np.linalg.svd(B0 - BS, compute_uv=False)[:, k - 1]
    flat = c_perp <= 1e-12
    if np.any(flat):
        i = _first(flat)
        V.warn_theory(
            f"c_perp = sigma_k(Pi_perp B0^T) = 0 in {int(flat.sum())} of {b} problems "
            f"(first: item {i}): the pretrained features do not see S-perp, so R5's lower "
            f"bound is vacuous; the flows are still defined."
        )
