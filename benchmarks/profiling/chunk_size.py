"""`fine_tune_batch` throughput against `batch_size` (lanes per compiled chunk).

1024 `small` problems at the previous release's benchmark setting (rtol 1e-8, atol 1e-10, no
metrics); two passes, the first also compiles. A vmapped while loop runs every lane of a
chunk to the chunk's largest step count, so smaller chunks waste fewer steps. Quoted in
BENCHMARKS.md and in `benchmarks/partial_runs/ab_previous_release.py`.
Run: `PYTHONPATH=. python benchmarks/profiling/chunk_size.py`.
"""

import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import linfeat as lf  # noqa: E402
from benchmarks.suite import make_batch  # noqa: E402

b = 1024
probs, v0s = make_batch(b)
for rep in range(2):
    for bs in (1024, 256, 128, 64):
        kw = dict(with_metrics=False, rtol=1e-8, atol=1e-10, batch_size=bs)
        if rep == 0:
            lf.fine_tune_batch(probs, v0s, **kw)
        t = time.perf_counter()
        tr = lf.fine_tune_batch(probs, v0s, **kw)
        dt = time.perf_counter() - t
        steps = np.asarray(tr.num_steps)
        print(f"pass {rep} batch_size={bs}: {dt:.2f} s, {b / dt:.0f} traj/s, steps mean "
              f"{steps.mean():.0f}, max {steps.max()}", flush=True)  # fmt: skip
