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


def check_a(fn: str, a, *, name: str = "a", positive: bool = True) -> None:
    check(
        fn,
        name,
        a,
        lo=0.0,
        lo_open=positive,
        what=("a finite number > 0" if positive else "a finite number >= 0")
        + " (the norm ||v*|| = ||w*|| of the true head)",
        fix="pass the norm of the true head (docs/theory.md, section 1 needs v* != 0)"
        if positive
        else "pass a norm, e.g. `jnp.linalg.norm(v_star)`",
    )


def check_phi(fn: str, phi) -> None:
    check(
        fn,
        "phi",
        phi,
        lo=0.0,
        what="a finite number >= 0 (the head alignment error)",
        fix="compute it with `head_alignment_error(v0, a_star)`",
    )


def check_eps(fn: str, eps, *, any_rotation: bool) -> None:
    # d(B0, B*) (the Procrustes minimum) is at most sqrt(2) for orthonormal rows; the bounds
    # that also accept ||B0 - U B*||_2 for any fixed orthogonal U allow up to ||B0|| + ||B*|| = 2.
    top, top_s = (2.0, "2") if any_rotation else (_SQRT2, "sqrt(2)")
    check(
        fn,
        "eps",
        eps,
        lo=0.0,
        hi=top * (1.0 + _RANGE_SLACK),
        what=f"a finite number in [0, {top_s}] (a feature distance ||B0 - U B*||_2 between "
        "orthonormal rows)",
        fix="compute it with `procrustes(B0, B_star)[0]` (rows of B0 and B* orthonormal)",
    )


def check_c(fn: str, name: str, c) -> None:
    check(
        fn,
        name,
        c,
        lo=0.0,
        hi=1.0 + _RANGE_SLACK,
        what="a finite number in [0, 1] (a singular value of a projection of B0^T)",
        fix="take it from `linfeat.theory.problem_constants(problem, v0)`",
    )


def check_c_S(fn: str, c_S) -> None:
    check(
        fn,
        "c_S",
        c_S,
        lo=0.0,
        hi=1.0 + _RANGE_SLACK,
        lo_open=True,
        what="a finite number in (0, 1] (R7 needs c_S = sigma_k(Pi_S B0^T) > 0: X B0^T of full "
        "column rank, a unique linear probe)",
        fix="take it from `linfeat.theory.problem_constants(problem, v0)`; "
        "with c_S = 0 R7 gives no bound",
    )


def check_lam(fn: str, name: str, lam) -> None:
    check(
        fn,
        name,
        lam,
        lo=0.0,
        what="a finite number >= 0 (an eigenvalue of the PSD second moment Sigma)",
        fix="clip a rounding-level negative eigenvalue at 0",
    )


def check_kappa(fn: str, kap) -> None:
    check(
        fn,
        "kappa",
        kap,
        lo=1.0 - _RANGE_SLACK,
        what="a finite number >= 1 (the condition number of X on its row space)",
        fix="compute it with `kappa(X)` (X must not be zero)",
    )


def check_delta(fn: str, delta) -> None:
    check(
        fn,
        "delta",
        delta,
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
        what="in the open interval (0, 1) (a failure probability)",
        fix="pass a probability strictly between 0 and 1",
    )


def check_sigma(fn: str, sigma) -> None:
    check(
        fn,
        "sigma",
        sigma,
        lo=0.0,
        lo_open=True,
        what="a finite number > 0 (the standard deviation of each head coordinate)",
        fix="pass a positive head scale",
    )


def check_matrix(fn: str, name: str, M, ndim: int) -> None:
    if V.is_concrete(M):
        try:
            V.as_array(name, M, ndim=ndim)
        except ValueError as err:
            raise ValueError(f"{fn}: {err}") from None
