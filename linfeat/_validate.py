"""Input checks with errors that name the argument and the fix.

Checks run on concrete values only: under `jit`/`vmap` the arguments are tracers and the
checks are skipped (validate once, outside the transformation, then batch).
"""

from __future__ import annotations

import warnings

import jax
import numpy as np

ORTHONORMAL_TOL = 1e-6


class TheoryConditionWarning(UserWarning):
    """A theorem's hypothesis fails, but the flow is still defined."""


def is_concrete(*xs) -> bool:
    """True when no leaf is a JAX tracer (so values can be inspected)."""
    leaves = jax.tree.leaves(xs)
    return not any(isinstance(x, jax.core.Tracer) for x in leaves)


def as_array(name: str, x, *, ndim: int | None = None, shape: tuple | None = None) -> np.ndarray:
    """Checks rank, shape and finiteness of a concrete array; returns it as NumPy."""
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
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"`{name}` must be numeric, got dtype {a.dtype}.")
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"`{name}` contains {bad} NaN or inf entries; pass finite values.")
    return a


def check_orthonormal_rows(name: str, B: np.ndarray, tol: float = ORTHONORMAL_TOL) -> None:
    """Raises unless $B B^T = I_k$ to `tol` (THEORY.md section 1)."""
    k = B.shape[0]
    off = float(np.max(np.abs(B @ B.T - np.eye(k)))) if k else 0.0
    if off > tol:
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


def check_nonneg(name: str, x) -> float:
    """Raises unless x is a finite number >= 0."""
    v = float(np.asarray(x))
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {v}.")
    return v


def warn_theory(msg: str) -> None:
    warnings.warn(msg, TheoryConditionWarning, stacklevel=3)
