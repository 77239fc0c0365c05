"""`fine_tune_batch` throughput against `batch_size` (lanes per compiled chunk).

1024 `small` problems, without metrics at the previous release's benchmark setting (rtol
1e-8, atol 1e-10) and with metrics at the library defaults; `outputs="metrics"`. Each size is
called twice and the second call timed. A vmapped while loop runs every lane of a chunk to
the chunk's largest step count, so smaller chunks waste fewer steps, and a small chunk's
state stays in cache. This is the measurement behind `batch_size="auto"` (128 lanes per
device on CPU, `linfeat._batched.CPU_LANES`), quoted in BENCHMARKS.md.
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
for with_metrics, tol in ((False, dict(rtol=1e-8, atol=1e-10)), (True, {})):
    for bs in (1024, 512, 256, 128, 64, 32):
        kw = dict(with_metrics=with_metrics, batch_size=bs, outputs="metrics", **tol)
        lf.fine_tune_batch(probs, v0s, **kw)  # compile
        t = time.perf_counter()
        tr = lf.fine_tune_batch(probs, v0s, **kw)
        dt = time.perf_counter() - t
        steps = np.asarray(tr.num_steps)
        print(f"metrics={with_metrics} batch_size={bs}: {dt:.2f} s, {b / dt:.0f} traj/s, steps "
              f"mean {steps.mean():.0f}, max {steps.max()}", flush=True)  # fmt: skip
