import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
from benchmarks import suite
from linfeat import _batched as bt

n = int(sys.argv[1])
probs, v0s = suite.make_batch(0, 64, d=200, m=20, n=n)
ref = bt.fine_tune_batch(
    probs,
    v0s,
    solver="dopri8" if n == 40 else "rodas5p",
    with_metrics=False,
    rtol=1e-13,
    atol=1e-15,
)
land = bt._RODAS5P._replace(H=None)
for rtol in [1e-12, 1e-10, 1e-8]:
    tr = bt.fine_tune_batch(
        probs, v0s, solver="rodas5p", with_metrics=False, rtol=rtol, atol=rtol * 1e-2
    )
    bt._ops.cache_clear()
    orig = bt._RODAS5P
    bt._RODAS5P = land
    trl = bt.fine_tune_batch(
        probs, v0s, solver="rodas5p", with_metrics=False, rtol=rtol, atol=rtol * 1e-2
    )
    bt._RODAS5P = orig
    bt._ops.cache_clear()
    # compare saved B at times before both t_final
    T = np.asarray(tr.ts)
    ok = T <= np.minimum(np.asarray(tr.t_final), np.asarray(ref.t_final))[:, None]

    def err(a):
        dB = np.abs(np.asarray(a.B_coords) - np.asarray(ref.B_coords)).max(axis=(2, 3))
        dv = np.abs(np.asarray(a.v) - np.asarray(ref.v)).max(axis=2)
        return np.max(np.where(ok, np.maximum(dB, dv), 0))

    print(
        f"rtol {rtol:.0e}: dense steps {np.mean(tr.num_steps):.0f} max save err {err(tr):.2e} | landing steps {np.mean(trl.num_steps):.0f} max save err {err(trl):.2e}",
        flush=True,
    )
