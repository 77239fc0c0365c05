"""Ordering lanes by stiffness before chunking (`linfeat._batched.lane_order`).

A vmapped while loop runs every lane of a chunk to the chunk's largest step count. This
script measures, on 1024 `small` problems (square X, n = m = 20) and on 1024 with n = 2m
(rank-deficient n x n Gram), (1) the step efficiency mean(steps) / mean(chunk max) in chunks
of 128 for the given order, the order of `log_condition_estimate`, and the order of the exact
condition number (NumPy SVD); (2) `fine_tune_batch` throughput with `SORT_LANES` off and on,
interleaved over 3 rounds (no metrics, rtol 1e-8: the previous release's benchmark setting).
Run: `PYTHONPATH=. python benchmarks/profiling/lane_order.py`.
"""

import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import linfeat as lf  # noqa: E402
from benchmarks.suite import make_batch  # noqa: E402
from linfeat import _batched  # noqa: E402

B, CHUNK = 1024, 128
KW = dict(with_metrics=False, rtol=1e-8, atol=1e-10, outputs="metrics")


def efficiency(steps, order):
    return steps.mean() / steps[order].reshape(-1, CHUNK).max(axis=1).mean()


for n in (20, 40):
    probs, v0s = make_batch(B, n=n, m=20)
    steps = np.asarray(lf.fine_tune_batch(probs, v0s, batch_size=None, **KW).num_steps)
    est = np.asarray(jax.jit(jax.vmap(_batched.log_condition_estimate))(probs.X))
    s = np.linalg.svd(np.asarray(probs.X), compute_uv=False)
    s = np.where(s > 1e-8 * s[:, :1], s, np.nan)
    exact = np.log(s[:, 0] / np.nanmin(s, axis=1))
    print(f"n = {n}: steps mean {steps.mean():.1f}, max {steps.max()}; efficiency in chunks of "
          f"{CHUNK}: given order {efficiency(steps, np.arange(B)):.3f}, estimate "
          f"{efficiency(steps, np.argsort(est)):.3f}, exact cond "
          f"{efficiency(steps, np.argsort(exact)):.3f}", flush=True)  # fmt: skip
    for flag in (False, True):
        _batched.SORT_LANES = flag
        lf.fine_tune_batch(probs, v0s, **KW)  # compile
    times = {False: [], True: []}
    for _ in range(3):
        for flag in (False, True):
            _batched.SORT_LANES = flag
            t = time.perf_counter()
            lf.fine_tune_batch(probs, v0s, **KW)
            times[flag].append(time.perf_counter() - t)
    off, on = np.median(times[False]), np.median(times[True])
    print(
        f"  fine_tune_batch (auto chunks): unsorted {B / off:.0f} traj/s, sorted "
        f"{B / on:.0f} traj/s (median of 3 interleaved; ratio {off / on:.3f})",
        flush=True,
    )
