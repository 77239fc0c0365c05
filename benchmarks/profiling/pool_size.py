import os
import sys

nd = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={nd}"
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
from benchmarks import suite
from linfeat import _batched as bt
from linfeat._sharding import batch_mesh

b = int(sys.argv[2])
probs, v0s = suite.make_batch(0, b, d=200, m=20, n=20)
mesh = batch_mesh() if nd > 1 else None
for lanes in [int(x) for x in sys.argv[3].split(",")]:
    for seg in [int(x) for x in sys.argv[4].split(",")]:
        kw = dict(
            solver="rodas5p",
            with_metrics=False,
            lanes=lanes,
            rtol=1e-8,
            atol=1e-10,
            segment=seg,
            mesh=mesh,
            batch_size=None,
        )
        tr = bt.fine_tune_batch(probs, v0s, **kw)
        jax.block_until_ready(tr.v_final)
        t = time.perf_counter()
        tr = bt.fine_tune_batch(probs, v0s, **kw)
        jax.block_until_ready(tr.v_final)
        t2 = time.perf_counter() - t
        st = np.asarray(tr.num_steps)
        print(
            nd,
            lanes,
            seg,
            f"{t2:.3f}s -> {b / t2:.1f} traj/s; steps mean {st.mean():.0f} max {st.max()} us/lane-step {t2 / st.sum() * 1e6:.2f} status {np.bincount(np.asarray(tr.status))}",
            flush=True,
        )
