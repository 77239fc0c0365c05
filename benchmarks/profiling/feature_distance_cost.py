"""What the reduced feature distance costs per evaluation, and its parts.

1024 `small` problems (d = 200, k = 10, m = n = 20) solved once without metrics, then
`frame_feature_distance` (docs/theory.md, section 2.4) at the 64 saves and the stop of every
lane (66,560 evaluations, one vmap), against the same with each part removed, against its
versions before `linfeat._polar` (the polar factor from a Jacobi `eigh` of M^T M, which is
still the differentiated route) and before `linfeat._lambda_max` (also lambda_max by a
Jacobi `eigvalsh`: two eigensolves), and against the five-eigensolve route before that
(polar factor, then lambda_max). Prints the largest difference of each route's distance from
the Jacobi route's. Quoted in BENCHMARKS.md.
Run: `PYTHONPATH=. python benchmarks/profiling/feature_distance_cost.py [b]`.
"""

import sys
import time

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import linfeat as lf  # noqa: E402
from benchmarks.suite import make_batch  # noqa: E402
from linfeat._eigh import eigh, eigvalsh, polar  # noqa: E402
from linfeat._metrics import (  # noqa: E402
    _frame_distance,
    _polar_by_eigh,
    frame_feature_distance,
)
from linfeat._reduce import feature_rows  # noqa: E402

b = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
probs, v0s = make_batch(b)
tr = lf.fine_tune_batch(probs, v0s, with_metrics=False)
reds = jax.jit(jax.vmap(lf.reduce))(probs)
A = jnp.concatenate([tr.A, tr.A_final[:, None]], axis=1)  # (b, 65, k, r)


def frames(red, A):
    k = red.k
    H = jax.vmap(lambda a: feature_rows(red, a))(A)
    Hs = jnp.zeros_like(H[0]).at[:, red.r : red.r + k].set(jnp.eye(k))
    return H, Hs.at[:, red.r + k + 1 :].set(jnp.eye(k))


def polar_route(H, Hs, G):
    D = H - polar(H @ G @ Hs.T) @ Hs
    return jnp.sqrt(jnp.maximum(eigvalsh(D @ G @ D.T)[-1], 0.0))


def eigh_polar_route(H, Hs, G):
    """`frame_feature_distance` as it was before `linfeat._polar` (its derivative's route)."""
    return _frame_distance(H, Hs, G, _polar_by_eigh)


def jacobi_lambda_max_route(H, Hs, G):
    """... and before `linfeat._lambda_max`: also lambda_max(S) from a Jacobi `eigvalsh`
    (patched in while it is traced)."""
    import linfeat._metrics as LM

    saved = LM.lambda_max
    LM.lambda_max = lambda S: eigvalsh(0.5 * (S + S.T))[-1]
    try:
        return eigh_polar_route(H, Hs, G)
    finally:
        LM.lambda_max = saved


def parts_eigh_only(H, Hs, G):
    M = H @ G @ Hs.T
    return eigh(M.T @ M)[0][-1]


def parts_no_eigen(H, Hs, G):  # the matrix products alone
    M = H @ G @ Hs.T
    D = H - M @ Hs
    return jnp.trace(D @ G @ D.T) + jnp.trace(H @ G @ H.T)


def compiled(fn):
    f = jax.jit(jax.vmap(lambda red, A: jax.vmap(lambda H: fn(H, *rest(red)))(frames(red, A)[0])))
    jax.block_until_ready(f(reds, A))
    return f


def rest(red):
    return frames(red, red.A0[None])[1], red.gram


n = b * 65
routes = {
    "frame_feature_distance (Newton-Schulz)": frame_feature_distance,
    "polar by eigh, lambda_max by bisection": eigh_polar_route,
    "with a Jacobi lambda_max (2 eigensolves)": jacobi_lambda_max_route,
    "previous route (polar + lambda_max, 5)": polar_route,
    "eigh of M^T M only": parts_eigh_only,
    "matrix products only": parts_no_eigen,
}
fns = {name: compiled(fn) for name, fn in routes.items()}
best = dict.fromkeys(fns, float("inf"))
for _ in range(3):  # interleaved rounds on a shared host; each row is its best round
    for name, f in fns.items():
        t = time.perf_counter()
        jax.block_until_ready(f(reds, A))
        best[name] = min(best[name], time.perf_counter() - t)
ref = fns["with a Jacobi lambda_max (2 eigensolves)"](reds, A)
for name, dt in best.items():
    diff = float(jnp.max(jnp.abs(fns[name](reds, A) - ref)))
    print(f"{name:42s} {dt:6.2f} s for {n} evaluations, {dt / n * 1e6:6.1f} us each, "
          f"max |d - d_jacobi| {diff:.1e}", flush=True)  # fmt: skip
M = jax.random.normal(jax.random.key(0), (n, 10, 10))
S = M @ jnp.swapaxes(M, 1, 2)
for name, fn in (("eigh", eigh), ("eigvalsh", eigvalsh)):
    f = jax.jit(jax.vmap(fn))
    jax.block_until_ready(f(S))
    t = time.perf_counter()
    jax.block_until_ready(f(S))
    print(f"{name} of {n} random SPD 10 x 10: {time.perf_counter() - t:.2f} s", flush=True)
