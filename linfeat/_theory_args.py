r"""Argument checks and shape aliases of the analytic functions (`linfeat.theory`).

Concrete arguments are checked (finite, $a \ge 0$ or $> 0$ where a formula divides by it,
$\sigma > 0$, $\delta \in (0, 1)$, $\varphi \ge 0$, $\varepsilon \in [0, \sqrt2]$, or
$[0, 2]$ where any fixed rotation U is allowed, $c_S, c_\perp \in [0, 1]$, $\kappa \ge 1$,
$\lambda \ge 0$) and a `ValueError` names the function, the argument and the fix; under
`jit`/`vmap` the arguments are tracers and the checks are skipped (validate once, then batch).
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import _validate as V

# Shape-annotated aliases (jaxtyping), defined once so the annotations stay short.
Scalar = Float[ArrayLike, ""]
Head = Float[ArrayLike, " k"]
Features = Float[ArrayLike, "k d"]
Inputs = Float[ArrayLike, "n d"]
ScalarOut = Float[Array, ""]
Rotation = Float[Array, "k k"]
Samples = Float[Array, " num"]

# ---------------------------------------------------------------------------------------
# Input checks (concrete inputs only; skipped for JAX tracers under jit/vmap)
# ---------------------------------------------------------------------------------------

# Rounding slack of the upper limits c <= 1 and eps <= sqrt(2) (eps <= 2): `Problem`s accept
# rows orthonormal to `ORTHONORMAL_TOL` (1e-6 on B B^T - I), which moves singular values and
# the Procrustes distance by O(1e-6); float32 rounding is far below that.
_RANGE_SLACK = 10 * V.ORTHONORMAL_TOL
_SQRT2 = math.sqrt(2.0)


def check(
    fn: str,
    name: str,
    x,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    finite: bool = True,
    what: str,
    fix: str,
) -> None:
    """Raises a ValueError naming `fn`, `name` and the fix unless every entry of x is in range.

    `what` completes "`name` must be ..."; NaN fails only through `finite`. No-op for tracers.
    """
    if not V.is_concrete(x):
        return
    try:
        if np.iscomplexobj(x):
            raise TypeError
        v = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{fn}: `{name}` must be a real number or array of them, got {x!r}; {fix}."
        ) from None
    bad = ~np.isfinite(v) if finite else np.zeros(v.shape, bool)
    if lo is not None:
        bad |= (v <= lo) if lo_open else (v < lo)
    if hi is not None:
        bad |= (v >= hi) if hi_open else (v > hi)
    if np.any(bad):
        if v.ndim == 0:
            got = f"got {float(v)!r}"
        else:
            got = f"got {float(v[bad].flat[0])!r} ({int(bad.sum())} of {v.size} entries bad)"
        raise ValueError(f"{fn}: `{name}` must be {what}, {got}; {fix}.")


# The rule of each named argument of the analytic functions, in one table: `check_args`
# looks an argument up by its name; a function that needs another rule for the same name
# (a >= 0 instead of > 0, eps up to sqrt(2) instead of 2) passes it in `rules`.
_KAPPA_FIX = "compute it with `kappa(X)` (X must not be zero)"
_CONST_FIX = "take it from `linfeat.theory.problem_constants(problem, v0)`"
A_POSITIVE = dict(
    lo=0.0,
    lo_open=True,
    what="a finite number > 0 (the norm ||v*|| = ||w*|| of the true head)",
    fix="pass the norm of the true head (docs/theory.md, section 1 needs v* != 0)",
)
A_NONNEG = dict(
    lo=0.0,
    what="a finite number >= 0 (the norm ||v*|| = ||w*|| of the true head)",
    fix="pass a norm, e.g. `jnp.linalg.norm(v_star)`",
)
# d(B0, B*) (the Procrustes minimum) is at most sqrt(2) for orthonormal rows; the bounds
# that also accept ||B0 - U B*||_2 for any fixed orthogonal U allow up to ||B0|| + ||B*|| = 2.
_EPS_WHAT = (
    "a finite number in [0, {}] (a feature distance ||B0 - U B*||_2 between orthonormal rows)"
)
_EPS_FIX = "compute it with `procrustes(B0, B_star)[0]` (rows of B0 and B* orthonormal)"
EPS_ANY_ROTATION = dict(
    lo=0.0, hi=2.0 * (1.0 + _RANGE_SLACK), what=_EPS_WHAT.format("2"), fix=_EPS_FIX
)
EPS_PROCRUSTES = dict(
    lo=0.0, hi=_SQRT2 * (1.0 + _RANGE_SLACK), what=_EPS_WHAT.format("sqrt(2)"), fix=_EPS_FIX
)
_C = dict(
    lo=0.0,
    hi=1.0 + _RANGE_SLACK,
    what="a finite number in [0, 1] (a singular value of a projection of B0^T)",
    fix=_CONST_FIX,
)
_LAM = dict(
    lo=0.0,
    what="a finite number >= 0 (an eigenvalue of the PSD second moment Sigma)",
    fix="clip a rounding-level negative eigenvalue at 0",
)
RULES = {
    "a": A_POSITIVE,
    "w_norm": A_POSITIVE,
    "eps": EPS_ANY_ROTATION,
    "phi": dict(
        lo=0.0,
        what="a finite number >= 0 (the head alignment error)",
        fix="compute it with `head_alignment_error(v0, a_star)`",
    ),
    "c_perp": _C,
    "c_S": dict(
        lo=0.0,
        hi=1.0 + _RANGE_SLACK,
        lo_open=True,
        what="a finite number in (0, 1] (R7 needs c_S = sigma_k(Pi_S B0^T) > 0: X B0^T of full "
        "column rank, a unique linear probe)",
        fix=_CONST_FIX + "; with c_S = 0 R7 gives no bound",
    ),
    "lam_min": _LAM,
    "lam_max": _LAM,
    "lam_perp": _LAM,
    "kappa": dict(
        lo=1.0 - _RANGE_SLACK,
        what="a finite number >= 1 (the condition number of X on its row space)",
        fix=_KAPPA_FIX,
    ),
    "delta": dict(
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
        what="in the open interval (0, 1) (a failure probability)",
        fix="pass a probability strictly between 0 and 1",
    ),
    "sigma": dict(
        lo=0.0,
        lo_open=True,
        what="a finite number > 0 (the standard deviation of each head coordinate)",
        fix="pass a positive head scale",
    ),
    "k": dict(lo=1.0, what="a number of features >= 1", fix="pass k = B0.shape[0]"),
}


def check_args(fn: str, rules: dict | None = None, **args) -> None:
    """`check` of each keyword argument under its rule: `rules[name]`, else `RULES[name]`."""
    rules = rules or {}
    for name, x in args.items():
        check(fn, name, x, **rules.get(name, RULES[name]))


def check_matrix(fn: str, name: str, M, ndim: int) -> None:
    if V.is_concrete(M):
        try:
            V.as_array(name, M, ndim=ndim)
        except ValueError as err:
            raise ValueError(f"{fn}: {err}") from None
