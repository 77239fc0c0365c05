"""Input checks with errors that name the argument, say what was received and how to fix it.

Two kinds of check:

- *dtype and shape* checks (`check_real_float`, the `scalar=` option, `check_int`,
  `check_choice`, `check_bool`, `check_float_dtype`) only need static information and run on
  JAX tracers too, so they also fire under `jit`/`vmap`;
- *value* checks (finiteness, ranges, monotone times, orthonormality, ...) need concrete
  numbers: under `jit`/`vmap` the arguments are tracers and these checks are skipped silently.
  Validate once, outside the transformation, then batch; a traced knob that is out of range
  gives NaN or a meaningless result instead of an error.

Every value checker accepts a scalar or an array (a batch of knobs, e.g. `feature_error` for a
vmapped sweep) and checks every entry; pass `scalar=True` to require a single number. Each
returns its argument unchanged, so it can be used inline: `rtol = check_tolerance("rtol", rtol)`.

Number types: Python `int`/`float` scalars and integer scalars (NumPy or 0-d arrays) are fine
where a real number is meant; bools, complex values, strings and None never are; integer
*arrays* (ndim >= 1) are rejected where a real float array is meant (fix: `x.astype(float)`),
unless the checker is called with `allow_int=True` (data arrays such as X, which are converted
to the problem's float dtype).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

ORTHONORMAL_TOL = 1e-6
SQRT2 = math.sqrt(2.0)


class TheoryConditionWarning(UserWarning):
    """A theorem's hypothesis fails, but the flow is still defined."""


def is_concrete(*xs) -> bool:
    """True when no leaf is a JAX tracer (so values can be inspected)."""
    leaves = jax.tree.leaves(xs)
    return not any(isinstance(x, jax.core.Tracer) for x in leaves)


# ---------------------------------------------------------------------------------- helpers


def _dtype_and_ndim(x):
    """(dtype, ndim) without converting tracers; None dtype for non-numeric objects."""
    if hasattr(x, "dtype") and hasattr(x, "ndim"):
        return x.dtype, x.ndim
    try:
        a = np.asarray(x)
    except Exception:  # ragged lists and the like
        return None, 0
    return a.dtype, a.ndim


def _received(a: np.ndarray, bad: np.ndarray | None = None) -> str:
    """What was received: '-0.5' for a scalar, else the shape, bad count and first bad entry."""
    if a.ndim == 0:
        return repr(a.item())
    if bad is None or not np.any(bad):
        return f"an array of shape {a.shape}"
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    count = int(np.count_nonzero(bad))
    entries = "entry" if count == 1 else "entries"
    return (
        f"an array of shape {a.shape} with {count} bad {entries} "
        f"(first at index {idx}: {a[idx].item()!r})"
    )


def _values(x) -> np.ndarray:
    """Concrete values as a float64 NumPy array (the dtype was checked before)."""
    return np.asarray(x).astype(np.float64)


def _check_scalar(name: str, x, scalar: bool) -> None:
    if scalar and _dtype_and_ndim(x)[1] != 0:
        raise ValueError(
            f"`{name}` must be a single number, got an array of shape {np.shape(x)}; pass a "
            f"scalar (to batch it, jax.vmap over the call)."
        )


def _check_values(
    name: str,
    x,
    ok: Callable[[np.ndarray], np.ndarray],
    requirement: str,
    fix: str,
    *,
    scalar: bool = False,
    allow_int: bool = False,
):
    """Dtype (always), rank (if `scalar`) and, for concrete x, `ok(values)` on every entry."""
    check_real_float(name, x, allow_int=allow_int)
    _check_scalar(name, x, scalar)
    if not is_concrete(x):
        return x
    a = _values(x)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(a) & ok(a))
    if np.any(bad):
        nonfinite = not np.all(np.isfinite(a))
        hint = " (NaN or inf)" if nonfinite and a.ndim == 0 else ""
        raise ValueError(f"`{name}` must be {requirement}, got {_received(a, bad)}{hint}; {fix}")
    return x


# ---------------------------------------------------------------------- dtype and type checks


def check_real_float(name: str, x, *, allow_int: bool = False):
    """Raises unless x is a real number or a real floating-point array.

    Accepted: Python `int`/`float`, integer and floating scalars (NumPy or 0-d arrays), and
    arrays of a floating dtype (float16/bfloat16/float32/float64). Rejected: bools, complex
    values, strings, None, and integer arrays of rank >= 1 (unless `allow_int`). Only the dtype
    and rank are inspected, so this check also runs on JAX tracers (under `jit`/`vmap`).
    """
    if isinstance(x, bool | np.bool_):
        raise ValueError(
            f"`{name}` must be a real number, got the bool {x!r}; pass a float such as 1.0."
        )
    if isinstance(x, int | float) and not isinstance(x, bool):
        return x
    if isinstance(x, complex):
        raise ValueError(
            f"`{name}` must be real, got the complex number {x!r}; pass its real part."
        )
    dtype, ndim = _dtype_and_ndim(x)
    what = "a real number" if ndim == 0 else "a real floating-point array"
    if jnp.issubdtype(dtype, jnp.floating) if dtype is not None else False:
        return x
    if dtype is None or dtype == np.dtype(object) or dtype.kind in "USV":
        raise ValueError(
            f"`{name}` must be {what}, got {type(x).__name__} {x!r:.60}; pass a float "
            f"(or a float array)."
        )
    if jnp.issubdtype(dtype, jnp.bool_):
        raise ValueError(
            f"`{name}` must be {what}, got a bool array of shape {np.shape(x)}; pass a float "
            f"array, e.g. np.asarray({name}, dtype=float)."
        )
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(
            f"`{name}` must be real, got dtype {dtype}; linfeat works with real arrays: pass "
            f"the real part ({name}.real) if the imaginary part is spurious."
        )
    if jnp.issubdtype(dtype, jnp.integer):
        if ndim == 0 or allow_int:
            return x
        raise ValueError(
            f"`{name}` must be a float array, got an integer array (dtype {dtype}, shape "
            f"{np.shape(x)}); pass a float array, e.g. {name}.astype(float)."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must be {what}, got dtype {dtype}; pass a float array, e.g. "
            f"np.asarray({name}, dtype=float)."
        )
    return x


def check_float_dtype(name: str, dtype):
    """Raises unless `dtype` names a real floating dtype (float16, bfloat16, float32, float64).

    None is accepted and returned as is (callers substitute their default). Returns the
    `numpy.dtype`.
    """
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError as err:
        raise ValueError(
            f"`{name}` must be a floating dtype such as jnp.float32 or jnp.float64, got "
            f"{dtype!r} ({err})."
        ) from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(
            f"`{name}` must be a real floating dtype (jnp.float32 or jnp.float64), got {dt}; "
            f"integer, bool and complex dtypes cannot hold the flow's state."
        )
    return dt


def check_int(name: str, x, *, min: int | None = None, max: int | None = None, static=True):
    """Raises unless x is an integer in [min, max]; returns it as a Python `int`.

    For counts that set shapes or loop lengths (`num_save >= 1`, `max_steps >= 1`, dimensions):
    bools and floats (even 3.0) are rejected, integer NumPy scalars and concrete 0-d integer
    arrays are accepted. With `static=True` (default) a JAX tracer is an error (the value must
    be known at trace time); with `static=False` a traced integer is returned unchecked.
    """
    if isinstance(x, jax.core.Tracer):
        if static:
            raise ValueError(
                f"`{name}` must be a static Python int (it sets a shape or a loop length), got "
                f"a traced value; pass it as a Python int, outside jit/vmap (or mark it static)."
            )
        if not jnp.issubdtype(x.dtype, jnp.integer) or x.ndim != 0:
            raise ValueError(f"`{name}` must be an integer scalar, got {x.dtype}{list(x.shape)}.")
        return x
    bounds = (
        f"in [{min}, {max}]"
        if min is not None and max is not None
        else f">= {min}"
        if min is not None
        else f"<= {max}"
        if max is not None
        else ""
    )
    want = f"an integer {bounds}".rstrip()
    dtype, ndim = _dtype_and_ndim(x)
    is_int = (
        not isinstance(x, bool | np.bool_)
        and dtype is not None
        and ndim == 0
        and jnp.issubdtype(dtype, jnp.integer)
    )
    if not is_int:
        fix = (
            f"pass int({name})"
            if isinstance(x, float | np.floating) and float(x).is_integer()
            else "pass a Python int"
        )
        raise ValueError(f"`{name}` must be {want}, got {type(x).__name__} {x!r:.60}; {fix}.")
    v = int(x)
    if (min is not None and v < min) or (max is not None and v > max):
        raise ValueError(f"`{name}` must be {want}, got {v}.")
    return v


def check_bool(name: str, x) -> bool:
    """Raises unless x is a Python or NumPy bool (flags such as `train_features`, `check`)."""
    if not isinstance(x, bool | np.bool_):
        raise ValueError(f"`{name}` must be True or False, got {type(x).__name__} {x!r:.60}.")
    return bool(x)


def check_choice(name: str, x, choices) -> str:
    """Raises unless x is one of the strings `choices`."""
    if not isinstance(x, str) or x not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {x!r:.60}.")
    return x


# --------------------------------------------------------------------------- value checks


def check_finite(name: str, x, *, scalar: bool = False, allow_int: bool = False):
    """Raises unless x (a real number or float array) has no NaN/inf entry. Skipped for tracers."""
    return _check_values(
        name,
        x,
        lambda a: np.ones(a.shape, bool),
        "finite" if not scalar else "a finite number",
        "pass finite values.",
        scalar=scalar,
        allow_int=allow_int,
    )


def check_positive(name: str, x, *, scalar: bool = False, fix: str | None = None):
    """Raises unless every entry of x is finite and > 0. Skipped for tracers."""
    return _check_values(
        name, x, lambda a: a > 0, "finite and > 0", fix or "pass a positive value.", scalar=scalar
    )


def check_nonneg(name: str, x, *, scalar: bool = False, fix: str | None = None):
    """Raises unless every entry of x is finite and >= 0. Skipped for tracers."""
    return _check_values(
        name,
        x,
        lambda a: a >= 0,
        "finite and >= 0",
        fix or "pass a non-negative value.",
        scalar=scalar,
    )


def check_in_range(
    name: str,
    x,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    scalar: bool = False,
    interval: str | None = None,
    fix: str | None = None,
):
    """Raises unless every entry of x is finite and in the interval from `lo` to `hi`.

    `lo_open`/`hi_open` exclude the end points; `interval` overrides how the interval is
    printed (e.g. "[0, sqrt(2)]"). Skipped for tracers.
    """
    interval = interval or f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def ok(a):
        above = a > lo if lo_open else a >= lo
        below = a < hi if hi_open else a <= hi
        return above & below

    return _check_values(
        name,
        x,
        ok,
        f"in {interval}",
        fix or f"pass a value in {interval}.",
        scalar=scalar,
    )


def check_fraction(name: str, x, *, scalar: bool = False, fix: str | None = None):
    """Raises unless every entry of x is a finite number in [0, 1]. Skipped for tracers."""
    return check_in_range(name, x, 0.0, 1.0, scalar=scalar, fix=fix)


def check_tolerance(name: str, x, *, below_one: bool | None = None, scalar: bool = False):
    """Raises unless every entry of x is finite and > 0 (and < 1 when `below_one`).

    `below_one` defaults to True for relative tolerances (names containing "rtol"): a relative
    error tolerance >= 1 accepts any step. Skipped for tracers.
    """
    if below_one is None:
        below_one = "rtol" in name
    if below_one:
        return check_in_range(
            name,
            x,
            0.0,
            1.0,
            lo_open=True,
            hi_open=True,
            scalar=scalar,
            fix="a relative tolerance is a small positive number such as 1e-8.",
        )
    return check_positive(
        name, x, scalar=scalar, fix="a tolerance is a small positive number such as 1e-10."
    )


def check_times(name: str, ts, *, t_max=None, allow_int: bool = False):
    """Raises unless `ts` is a non-empty 1-D real array, finite, >= 0 and strictly increasing.

    With `t_max` (concrete), the last time must also be <= t_max. Dtype and rank are checked
    on tracers too; values only when concrete.
    """
    check_real_float(name, ts, allow_int=allow_int)
    dtype, ndim = _dtype_and_ndim(ts)
    if ndim != 1:
        raise ValueError(
            f"`{name}` must be a 1-D array of save times, got shape {np.shape(ts)}; pass e.g. "
            f"jnp.linspace(0.0, t_max, 64)."
        )
    if np.shape(ts)[0] < 1:
        raise ValueError(f"`{name}` must hold at least one save time, got an empty array.")
    if not is_concrete(ts):
        return ts
    t = _values(ts)
    if not np.all(np.isfinite(t)):
        raise ValueError(f"`{name}` must be finite, got {_received(t, ~np.isfinite(t))}.")
    if t.min() < 0:
        raise ValueError(
            f"`{name}` must be >= 0 (flows start at t = 0), got {_received(t, t < 0)}; drop "
            f"the negative times."
        )
    steps = np.diff(t)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0))
        raise ValueError(
            f"`{name}` must be strictly increasing, but {name}[{i + 1}] = {t[i + 1]!r} follows "
            f"{name}[{i}] = {t[i]!r}; pass np.unique({name}) (sorted, without repeats)."
        )
    if t_max is not None and is_concrete(t_max) and t[-1] > float(np.asarray(t_max)):
        raise ValueError(
            f"`{name}` must end at or before t_max = {float(np.asarray(t_max))!r}, got last "
            f"time {t[-1]!r}; raise t_max or drop the later times."
        )
    return ts


def check_spectrum(name: str, x, length: int, *, what: str = "variances"):
    """Raises unless x is a 1-D real array of `length` finite entries > 0.

    The shape is checked on tracers too; values only when concrete.
    """
    check_real_float(name, x)
    if _dtype_and_ndim(x)[1] != 1 or np.shape(x)[0] != length:
        raise ValueError(
            f"`{name}` must be a 1-D array of {length} {what}, got shape {np.shape(x)}; pass "
            f"one value per direction (length {length})."
        )
    return check_positive(name, x, fix=f"{what} must be positive.")


# ------------------------------------------------------------------------------ arrays


def as_array(
    name: str,
    x,
    *,
    ndim: int | None = None,
    shape: tuple | None = None,
    allow_int: bool = True,
) -> np.ndarray:
    """Checks rank, shape, dtype and finiteness of a concrete array; returns it as NumPy.

    Rejects bools, complex values and non-numeric arrays always, integer arrays unless
    `allow_int` (default True: integer data are converted by the caller).
    """
    a = np.asarray(x)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(
            f"`{name}` must have {ndim} dimension(s), got shape {a.shape}; "
            f"pass an array of rank {ndim}."
        )
    if shape is not None:
        for i, (got, want) in enumerate(zip(a.shape, shape, strict=True)):
            if want is not None and got != want:
                want_shape = tuple("?" if s is None else s for s in shape)
                raise ValueError(
                    f"`{name}` has shape {a.shape}, expected {want_shape} "
                    f"(axis {i} must be {want}); check that all arrays describe the same problem."
                )
    check_real_float(name, a, allow_int=allow_int)
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"`{name}` contains {bad} NaN or inf entries; pass finite values.")
    return a


def check_orthonormal_rows(name: str, B: np.ndarray, tol: float = ORTHONORMAL_TOL) -> None:
    """Raises unless $B B^T = I_k$ to `tol` (docs/theory.md, section 1)."""
    k = B.shape[0]
    off = float(np.max(np.abs(B @ B.T - np.eye(k)))) if k else 0.0
    if not off <= tol:
        raise ValueError(
            f"rows of `{name}` must be orthonormal ({name} @ {name}.T = I), but they are off "
            f"by {off:.3g} (max entry of {name} @ {name}.T - I; tolerance {tol:g}). "
            f"Use `linfeat.orthonormalize_rows({name})` to fix."
        )


def check_psd(name: str, S: np.ndarray, tol: float = 1e-10) -> None:
    """Raises unless S is a symmetric positive semidefinite matrix."""
    scale = max(1.0, float(np.max(np.abs(S)))) if S.size else 1.0
    asym = float(np.max(np.abs(S - S.T))) if S.size else 0.0
    if asym > tol * scale:
        raise ValueError(
            f"`{name}` must be symmetric (a second moment E[x x^T]); max |S - S^T| = {asym:.3g}. "
            f"Pass (S + S.T) / 2."
        )
    lam = float(np.linalg.eigvalsh(0.5 * (S + S.T))[0]) if S.size else 0.0
    if lam < -tol * scale:
        raise ValueError(
            f"`{name}` must be positive semidefinite (a second moment E[x x^T]); its smallest "
            f"eigenvalue is {lam:.3g}."
        )


def warn_theory(msg: str) -> None:
    warnings.warn(msg, TheoryConditionWarning, stacklevel=3)
