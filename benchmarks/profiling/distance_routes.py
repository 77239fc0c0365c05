"""Cheaper routes for the two eigensolves of the feature distance, against the Jacobi ones.

The feature distance (`linfeat._metrics.frame_feature_distance`, docs/theory.md section 2.4)
is most of the default path's metrics cost (`loop_overhead.py`: the metrics were 60% of
`fine_tune_batch` with metrics, and `metrics_cost.py`: the distance 95% of the metrics). It
takes two Jacobi eigensolves of k x k matrices per evaluation: `eigh(M^T M)` for the polar
factor U of M = B B*^T, and `eigvalsh(S)[-1]` for d^2 = lambda_max(S). This script measures,
on the matrices the benchmark's solves produce (b `small` lanes solved once, the frame at the
64 saves and the stop), two replacements against them and against NumPy (LAPACK, float64)
as the accuracy reference:

- lambda_max(S) by Householder tridiagonalisation and Sturm-count bisection
  (`linfeat._lambda_max.lambda_max`, which the library adopted on this measurement:
  2.6 against 16.8 us per matrix, same error);
- the polar factor by Newton-Schulz, X <- X (3I - X^T X) / 2 from X = M / |M|_F (a fixed
  number of iterations; it converges for singular values in (0, sqrt 3), and takes about
  log_1.5(|M|_F / s_min) + 5 iterations). Only its forward value and cost are measured here;
  the library's version (`linfeat._polar`, adopted on this measurement) scales by
  |(M^T M)^2|_F^(1/4), stops on the size of a step, and differentiates through the
  eigensolve route (`linfeat._metrics.frame_feature_distance`). Run:
`PYTHONPATH=. python benchmarks/profiling/distance_routes.py [b]` (default 256).
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import linfeat as lf  # noqa: E402
from benchmarks.suite import make_batch  # noqa: E402
from linfeat._eigh import eigh, eigvalsh  # noqa: E402
from linfeat._lambda_max import lambda_max  # noqa: E402
from linfeat._reduce import feature_rows  # noqa: E402

b = int(sys.argv[1]) if len(sys.argv) > 1 else 256
NS_ITERS = 14
BISECT = 64
probs, v0s = make_batch(b)
tr = lf.fine_tune_batch(probs, v0s, with_metrics=False)
reds = jax.jit(jax.vmap(lf.reduce))(probs)
A = jnp.concatenate([tr.A, tr.A_final[:, None]], axis=1)  # (b, 65, k, r)


@jax.jit
@jax.vmap
def matrices(red, A):
    """M = B B*^T and S = Delta G Delta^T (Delta = H - U H*, U by the library's route) at every
    save of one lane, with the frame's Gram G."""
    k = red.k
    H = jax.vmap(lambda a: feature_rows(red, a))(A)
    Hs = jnp.zeros_like(H[0]).at[:, red.r : red.r + k].set(jnp.eye(k))
    Hs = Hs.at[:, red.r + k + 1 :].set(jnp.eye(k))
    M = jnp.einsum("sir,rq,jq->sij", H, red.gram, Hs)

    def S_of(H, M):
        lam, V = eigh(M.T @ M)
        s = jnp.sqrt(jnp.maximum(lam, 0.0))
        U = ((M @ V) / s) @ V.T
        U = U @ (1.5 * jnp.eye(k) - 0.5 * (U.T @ U))
        D = H - U @ Hs
        return D @ red.gram @ D.T

    return M, jax.vmap(S_of)(H, M)


M, S = matrices(reds, A)
k = M.shape[-1]
M, S = M.reshape(-1, k, k), S.reshape(-1, k, k)
S = 0.5 * (S + jnp.swapaxes(S, 1, 2))
n = M.shape[0]


def polar_newton_schulz(M):
    X = M / jnp.linalg.norm(M)
    eye = jnp.eye(M.shape[-1], dtype=M.dtype)
    for _ in range(NS_ITERS):
        X = X @ (1.5 * eye - 0.5 * (X.T @ X))
    return X


def polar_eigh(M):
    lam, V = eigh(M.T @ M)
    s = jnp.sqrt(jnp.maximum(lam, 0.0))
    U = ((M @ V) / s) @ V.T
    return U @ (1.5 * jnp.eye(M.shape[-1]) - 0.5 * (U.T @ U))


def timed(fn, x, reps=3):
    f = jax.jit(jax.vmap(fn))
    out = jax.block_until_ready(f(x))
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(x))
        best = min(best, time.perf_counter() - t)
    return np.asarray(out), best


Sn, Mn = np.asarray(S), np.asarray(M)
ref_lam = np.linalg.eigvalsh(Sn)[:, -1]
u, s, vt = np.linalg.svd(Mn)
ref_U = u @ vt
print(f"{n} evaluation points ({b} lanes x 65); s_min(M) in [{s[:, -1].min():.3f}, "
      f"{s[:, -1].max():.3f}], s_max in [{s[:, 0].min():.3f}, {s[:, 0].max():.3f}]")  # fmt: skip
scale = np.abs(ref_lam).max() if np.abs(ref_lam).max() > 0 else 1.0
rows = []
for name, fn, x, ref in (
    ("lambda_max: Jacobi eigvalsh", lambda S: eigvalsh(S)[-1], S, ref_lam),
    ("lambda_max: Householder + bisection", lambda_max, S, ref_lam),
    ("polar: Jacobi eigh of M^T M (library)", polar_eigh, M, ref_U),
    (f"polar: Newton-Schulz x {NS_ITERS}", polar_newton_schulz, M, ref_U),
):
    out, secs = timed(fn, x)
    if out.ndim == 1:
        err = np.max(np.abs(out - ref) / (1.0 + np.abs(ref)))
    else:
        err = np.max(np.linalg.norm(out - ref, axis=(1, 2), ord=2))
    rows.append((name, secs, err))
    print(f"{name:40s} {secs / n * 1e6:7.2f} us per matrix  max error {err:.1e}", flush=True)
print("errors: lambda_max |x - ref| / (1 + |ref|) against numpy.linalg.eigvalsh; polar factor "
      "||U - U_ref||_2 against numpy's SVD")  # fmt: skip
