"""Does Rodas5P's SPD step cap (linfeat._batched._CAP) ever bind? Same lanes with and without it."""

import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
from benchmarks import suite
from linfeat import _batched as bt

for n in (20, 40):
    probs, v0s = suite.make_batch(
        0, int(sys.argv[1]) if len(sys.argv) > 1 else 1024, d=200, m=20, n=n
    )
    out = {}
    for cap in (bt._CAP, 1e300):
        bt._CAP = cap
        bt._ops.cache_clear()
        for rtol in (1e-8, 1e-12):
            out[cap, rtol] = bt.fine_tune_batch(
                probs, v0s, with_metrics=False, rtol=rtol, atol=rtol * 1e-2
            )
    bt._CAP = 0.5**1.5
    for rtol in (1e-8, 1e-12):
        a, b = out[0.5**1.5, rtol], out[1e300, rtol]
        same = np.array_equal(np.asarray(a.num_steps), np.asarray(b.num_steps))
        dv = float(np.max(np.abs(np.asarray(a.v_final) - np.asarray(b.v_final))))
        print(
            f"n={n} rtol={rtol:.0e}: step counts identical with and without the cap: {same}; max |dv_final| {dv:.1e}",
            flush=True,
        )
