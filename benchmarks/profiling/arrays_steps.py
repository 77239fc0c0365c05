"""Step counts of `fine_tune_batch` on problems from arrays against generated `small` ones.

#14 reported 421 mean steps per trajectory on problems of the `small` size class built by
`lf.problem_from_arrays` (X not whitened, dense OOD second moment, saves at fixed times to a
finite horizon) against 112 on `small` problems from keys. Step counts do not depend on the
machine's load, so this script can run next to other jobs. It builds 256 problems of each
workload (`benchmarks.suite.arrays_workload` and `small_workload`) and prints, at the library's
default tolerances and metrics off, the mean / max accepted steps and the status for:

- the arrays workload as the benchmark runs it (32 saves on linspace(0, T, 32), t_max = T,
  T = 10 / median smallest eigenvalue of X^T X), and with 4x / 1/4 the horizon;
- both workloads with the library's default saves and stop (64 log-spaced saves, gradient test);
- the arrays workload with X whitened on its row space (Y = X w* again), to separate
  the conditioning of X from everything else.

Run: `PYTHONPATH=. python benchmarks/profiling/arrays_steps.py [b]`.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import linfeat as lf  # noqa: E402
from benchmarks.suite import CONFIGS, arrays_workload, small_workload  # noqa: E402


def steps(probs, v0s, **kw):
    tr = lf.fine_tune_batch(probs, v0s, with_metrics=False, outputs="metrics", **kw)
    s = np.asarray(tr.num_steps)
    st = np.asarray(tr.status)
    return f"mean {s.mean():6.1f}  max {s.max():5d}  status counts {np.bincount(st).tolist()}"


def whitened(probs):
    """X -> (X X^T)^{-1/2} X (same row space, all singular values 1), Y = X w* again."""

    U, _, Vt = np.linalg.svd(np.asarray(probs.X), full_matrices=False)  # host: no LAPACK in jit
    X = U @ Vt
    return probs._replace(X=jnp.asarray(X), Y=jnp.asarray(np.einsum("bnd,bd->bn", X, probs.w_star)))


def main(b=256):
    cfg = CONFIGS["full"]
    probs, v0s, info, kw = arrays_workload(cfg, b)
    small, sv0s, _ = small_workload(cfg, b)
    T = info["T"]
    print(f"arrays workload: b {b}, T = {T:g}; small workload: b {b}")
    rows = [
        ("arrays, 32 saves to T (benchmark)", probs, v0s, kw),
        ("arrays, 32 saves to T/4", probs, v0s, dict(ts=jnp.linspace(0, T / 4, 32), t_max=T / 4)),
        ("arrays, 32 saves to 4T", probs, v0s, dict(ts=jnp.linspace(0, 4 * T, 32), t_max=4 * T)),
        ("arrays, library defaults", probs, v0s, {}),
        ("arrays whitened, library defaults", whitened(probs), v0s, {}),
        ("small, library defaults", small, sv0s, {}),
        ("small, 32 saves to T", small, sv0s, kw),
    ]
    for name, p, v, k in rows:
        print(f"{name:38s} {steps(p, v, **k)}", flush=True)


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
