"""The ID/OOD regression problem: data, features, ground truth and second moments.

docs/theory.md, section 1. A `Problem` is a pytree of arrays: problems of equal shapes stack leaf by
leaf (`stack_problems`) and vmap like generated ones.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _validate as V
from ._cov import Cov, SubspaceCov, subspace_cov
from ._geometry import principal_constants
from ._linalg import polar


class Problem(NamedTuple):
    r"""A two-layer linear regression problem with an ID subspace and an OOD shift.

    Labels $Y = X w^*$ in the paper's well-specified setting (any Y is accepted).

    Attributes:
        X: training inputs, rows are examples; S = rowspace(X).
        Y: training labels.
        B0: pretrained feature extractor with orthonormal rows.
        w_star: ground-truth linear predictor $w^* = B^{*T} v^*$.
        B_star: true features (orthonormal rows), or None when unknown.
        v_star: true head, or None when unknown.
        id_cov: ID second moment, dense (d, d) or `SubspaceCov`.
        ood_cov: OOD second moment $\Sigma$, dense (d, d) or `SubspaceCov`.
    """

    # Typed field declarations (jaxtyping shapes); Problem, Reduced and Trajectory each declare
    # their own, so `duplicates` pairs these same-shape lines: declarations, not logic.
    X: Float[Array, "n d"]
    Y: Float[Array, " n"]
    B0: Float[Array, "k d"]
    w_star: Float[Array, " d"]
    B_star: Float[Array, "k d"] | None
    v_star: Float[Array, " k"] | None
    id_cov: Cov
    ood_cov: Cov

    # sizes read off the arrays (Reduced has the same kind of properties: r, k)
    @property
    def d(self) -> int:
        return self.X.shape[-1]

    @property
    def k(self) -> int:
        return self.B0.shape[-2]

    @property
    def n(self) -> int:
        return self.X.shape[-2]


def orthonormalize_rows(B: Float[Array, "k d"]) -> Float[Array, "k d"]:
    r"""The closest matrix to B with orthonormal rows (polar factor $(BB^T)^{-1/2} B$).

    B must be a real (k, d) matrix with $k \le d$ and full row rank k; integer matrices are
    converted to the default float dtype. Values (finiteness, rank) are checked when B is
    concrete; under `jit`/`vmap` only the dtype and rank are.
    """
    V.check_real_float("B", B, allow_int=True)
    if np.ndim(B) != 2:
        raise ValueError(
            f"`B` must be a (k, d) matrix (rows are features), got shape {np.shape(B)}."
        )
    k, d = np.shape(B)
    if not 1 <= k <= d:
        raise ValueError(
            f"`B` must have 1 <= k <= d rows to have orthonormal rows, got shape {(k, d)}."
        )
    if V.is_concrete(B):
        Bn = V.as_array("B", B).astype(np.float64)
        s = np.linalg.svd(Bn, compute_uv=False)
        if not s[-1] > max(k, d) * np.finfo(np.float64).eps * s[0]:
            raise ValueError(
                f"`B` has rank below k = {k} (smallest singular value {s[-1]:.3g}, largest "
                f"{s[0]:.3g}): its rows are linearly dependent and cannot be orthonormalized; "
                f"drop or replace the dependent rows."
            )
    B = jnp.asarray(B)
    if not jnp.issubdtype(B.dtype, jnp.floating):
        B = B.astype(jnp.result_type(float))
    return polar(B.T).T


def _float_dtype(*xs):
    dts = [jnp.asarray(x).dtype for x in xs if x is not None and not isinstance(x, SubspaceCov)]
    dt = jnp.result_type(*dts) if dts else jnp.result_type(float)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.result_type(float)


def _check_cov(name: str, cov, d: int, dtype):
    if cov is None:
        return None
    if isinstance(cov, SubspaceCov):
        fix = "a second moment a Pi_S + b Pi_perp + L L^T needs variances a, b >= 0."
        V.check_nonneg(f"{name}.scale_S", cov.scale_S, scalar=True, fix=fix)
        V.check_nonneg(f"{name}.scale_perp", cov.scale_perp, scalar=True, fix=fix)
        L = V.as_array(f"{name}.factor", cov.factor, ndim=2, shape=(d, None))
        return SubspaceCov(
            jnp.asarray(cov.scale_S, dtype),
            jnp.asarray(cov.scale_perp, dtype),
            jnp.asarray(L, dtype),
        )
    S = V.as_array(name, cov, ndim=2, shape=(d, d))
    V.check_psd(name, S)
    return jnp.asarray(S, dtype)


def problem_from_arrays(
    *,
    X,
    Y,
    B0,
    B_star=None,
    v_star=None,
    w_star=None,
    ood_cov: Cov | None = None,
    id_cov: Cov | None = None,
    check_theory: bool = True,
) -> Problem:
    r"""Builds a validated `Problem` from user arrays.

    Args:
        X: training inputs (n, d).
        Y: training labels (n,).
        B0: pretrained features (k, d) with orthonormal rows.
        B_star, v_star: true features and head (give both or neither).
        w_star: true predictor (d,); defaults to $B^{*T} v^*$. One of `w_star` or
            (`B_star`, `v_star`) is required.
        ood_cov: OOD second moment, dense (d, d) PSD or `SubspaceCov`; default $I_d$.
        id_cov: ID second moment; default the empirical $X^T X / n$ (as a `SubspaceCov`).
        check_theory: warn when a theorem's hypothesis fails ($m + k \ge d$, $c_\perp = 0$).

    Returns:
        The `Problem`, in the floating dtype of the inputs (JAX promotion: float32 inputs stay
        float32). Integer arrays are accepted as data (counts, 0/1 selection matrices) and
        converted; when every input is integer the dtype is the JAX default float.

    Raises:
        ValueError: naming the argument and the fix, for wrong shapes, NaN/inf, bool, complex
            or non-numeric arrays, rows that are not orthonormal, k > m (too few independent
            training inputs), inconsistent ground truth, a second moment that is not
            symmetric PSD (or a `SubspaceCov` with a negative, non-finite or non-scalar
            scale), or traced (jit/vmap) arrays.
    """
    if not V.is_concrete(X, Y, B0, B_star, v_star, w_star, ood_cov, id_cov):
        raise ValueError(
            "`problem_from_arrays` validates concrete arrays; call it outside jit/vmap and "
            "batch the resulting Problems with `linfeat.stack_problems([...])`."
        )
    check_theory = V.check_bool("check_theory", check_theory)
    w_star_given = w_star
    Xn = V.as_array("X", X, ndim=2)
    n, d = Xn.shape
    Yn = V.as_array("Y", Y, ndim=1, shape=(n,))
    B0n = V.as_array("B0", B0, ndim=2, shape=(None, d))
    k = B0n.shape[0]
    if k < 1:
        raise ValueError("`B0` must have at least one row (k >= 1).")
    V.check_orthonormal_rows("B0", B0n)
    if (B_star is None) != (v_star is None):
        raise ValueError("give both `B_star` and `v_star` or neither (w_star = B_star.T @ v_star).")
    if B_star is not None:
        Bs = V.as_array("B_star", B_star, ndim=2, shape=(k, d))
        V.check_orthonormal_rows("B_star", Bs)
        vs = V.as_array("v_star", v_star, ndim=1, shape=(k,))
        w_from = Bs.T @ vs
        if w_star is None:
            w_star = w_from
        else:
            ws = V.as_array("w_star", w_star, ndim=1, shape=(d,))
            gap = float(np.linalg.norm(ws - w_from))
            if gap > 1e-8 * max(1.0, float(np.linalg.norm(ws))):
                raise ValueError(
                    f"`w_star` must equal B_star.T @ v_star (off by {gap:.3g}); drop `w_star` "
                    f"to have it computed."
                )
    if w_star is None:
        raise ValueError("give `w_star`, or `B_star` and `v_star`, to define the ground truth.")
    ws = V.as_array("w_star", w_star, ndim=1, shape=(d,))
    dtype = _float_dtype(X, Y, B0, B_star, v_star, w_star_given)
    s = np.linalg.svd(Xn, compute_uv=False)
    m = int(
        np.sum(
            s
            > max(n, d)
            * np.finfo(Xn.dtype if Xn.dtype.kind == "f" else float).eps
            * (s[0] if s.size else 0)
        )
    )
    if k > m:
        raise ValueError(
            f"k = {k} features but the training inputs span only m = {m} dimensions (rank of X); "
            f"the theory needs k <= m: add training inputs or use fewer features."
        )
    if id_cov is None:
        id_cov = subspace_cov(d, factor=Xn.T / np.sqrt(n), dtype=dtype)
    problem = Problem(
        X=jnp.asarray(Xn, dtype),
        Y=jnp.asarray(Yn, dtype),
        B0=jnp.asarray(B0n, dtype),
        w_star=jnp.asarray(ws, dtype),
        B_star=None if B_star is None else jnp.asarray(B_star, dtype),
        v_star=None if v_star is None else jnp.asarray(v_star, dtype),
        id_cov=_check_cov("id_cov", id_cov, d, dtype),
        ood_cov=_check_cov(
            "ood_cov",
            ood_cov
            if ood_cov is not None
            else subspace_cov(d, scale_S=1.0, scale_perp=1.0, dtype=dtype),
            d,
            dtype,
        ),
    )
    if check_theory:
        warn_theory_conditions(problem, m=m)
    return problem


def stack_problems(problems) -> Problem:
    """Stacks problems of equal shapes into one batched `Problem` (a leading batch axis).

    The stack is done on the host with NumPy, one copy per leaf. `jax.tree.map(jnp.stack,
    *problems)` gives the same arrays, but it compiles an XLA concatenation with one operand
    per problem, whose compile time grows with their number (for the 10^4 toy problems of
    `linfeat check`'s R12 it was most of that stage; CHANGELOG.md).

    Args:
        problems: a non-empty sequence of `Problem`s with the same shapes, dtypes and
            structure (`B_star` given for all or for none, second moments of one kind).

    Returns:
        The batched `Problem`, ready for `jax.vmap` and `fine_tune_batch`.

    Raises:
        ValueError: for an empty sequence, a non-`Problem` item, or items whose structure or
            shapes differ (naming the first item that differs).
    """
    problems = list(problems)
    if not problems:
        raise ValueError("`problems` is empty: give at least one Problem to stack.")
    for i, p in enumerate(problems):
        if not isinstance(p, Problem):
            raise ValueError(f"`problems[{i}]` is a {type(p).__name__}, not a linfeat Problem.")
    first_def = jax.tree.structure(problems[0])
    first_shapes = [(x.shape, x.dtype) for x in jax.tree.leaves(problems[0])]
    for i, p in enumerate(problems[1:], 1):
        shapes = [(x.shape, x.dtype) for x in jax.tree.leaves(p)]
        if jax.tree.structure(p) != first_def or shapes != first_shapes:
            raise ValueError(
                f"`problems[{i}]` differs from `problems[0]` in structure, shapes or dtypes "
                f"(B_star/v_star given for some only, second moments of different kinds, or "
                f"other sizes); stack problems of one shape class."
            )
    return jax.tree.map(lambda *xs: jnp.asarray(np.stack([np.asarray(x) for x in xs])), *problems)


def warn_theory_conditions(problem: Problem, *, m: int) -> None:
    """Warns when $m + k \\ge d$ or $c_\\perp = 0$ (docs/theory.md, section 1)."""
    d, k = problem.d, problem.k
    if m + k >= d:
        V.warn_theory(
            f"m + k = {m} + {k} >= d = {d}: the theorems need m + k < d (overparameterised "
            f"with room for the features outside S); the flows are still defined."
        )
    _, c_perp = principal_constants(problem)
    if float(c_perp) <= 1e-12:
        V.warn_theory(
            "c_perp = sigma_k(Pi_perp B0^T) = 0: the pretrained features do not see S-perp, so "
            "R5's lower bound is vacuous; the flows are still defined."
        )
