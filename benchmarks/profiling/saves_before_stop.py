import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
from benchmarks import suite
from linfeat import _batched as bt

probs, v0s = suite.make_batch(0, 256, d=200, m=20, n=20)
tr = bt.fine_tune_batch(probs, v0s, solver="rodas5p", with_metrics=False, rtol=1e-8, atol=1e-10)
ts = np.asarray(tr.ts)
tf = np.asarray(tr.t_final)
nsaves = (ts <= tf[:, None]).sum(1)
print(
    "steps mean",
    np.mean(tr.num_steps),
    "saves before t_final mean",
    nsaves.mean(),
    "t_final*smax median",
    np.median(tf / ts[:, 1] * 1e-2),
)
