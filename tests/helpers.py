"""One comparison helper with named tolerances derived from the solver tolerance and dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Comparisons with independent references run both solvers at rtol = 1e-12 (`TIGHT`; the
# library's float64 default is 1e-9). Global error of an adaptive solve grows to roughly
# 1e2-1e3 x the local tolerance over the O(1e2-1e3) steps to convergence, so two
# independent solves (reduced vs full, Rodas5P vs scipy) agree to ~1e-9 relative.
SOLVER_RTOL = 1e-12
TIGHT = dict(rtol=SOLVER_RTOL, atol=1e-2 * SOLVER_RTOL)
FLOW_AGREEMENT = 1e3 * SOLVER_RTOL
# Invariants (R1, R2) at rtol 1e-12: R1 is exact up to rounding in the full flow (1.7e-15
# measured by `linfeat check`); R2 drifts by the accumulated integration error (6.8e-13 measured,
# ~1e2-1e3 x rtol expected over O(1e2-1e3) steps). 1e-10 sits above the integration error and
# far below the O(1) drift of a wrong field.
INVARIANT = 1e-10


def rounding(dtype) -> float:
    """A few hundred ulps: for closed forms evaluated two different ways."""
    return 256 * float(jnp.finfo(dtype).eps)


def tree_allclose(a, b, *, rtol: float, atol: float = 0.0) -> bool:
    """True when every leaf pair agrees within atol + rtol * |b| (NaN never agrees)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        return False
    return all(
        np.shape(x) == np.shape(y)
        and np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
        for x, y in zip(la, lb, strict=True)
    )


def max_rel_err(a, b) -> float:
    """max |a - b| / max(|b|, 1e-300) over all entries (scale of b as the reference)."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
