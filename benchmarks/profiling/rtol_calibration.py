import sys

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
import linfeat as lf
from benchmarks import suite
from linfeat import _batched as bt

n = int(sys.argv[1])
b = 8
probs, v0s = suite.make_batch(0, b, d=200, m=20, n=n)
trs = {
    rtol: bt.fine_tune_batch(
        probs, v0s, solver="rodas5p", with_metrics=False, rtol=rtol, atol=rtol * 1e-2
    )
    for rtol in [1e-7, 1e-8, 1e-9, 1e-10]
}
for i in range(b):
    p = suite.take(probs, i)
    out = []
    for rtol, tr in trs.items():
        tf = float(tr.t_final[i])
        ref = lf.fine_tune(
            p,
            v0s[i],
            solver=diffrax.Dopri8(),
            rtol=1e-13,
            atol=1e-15,
            check=False,
            ts=jnp.array([0.0, tf]),
            t_max=tf,
            grad_tol=0.0,
            max_steps=10**6,
        )
        out.append(
            f"{rtol:.0e}: steps {int(tr.num_steps[i])} st {int(tr.status[i])} err {suite.rel(suite.w_of(tr, i), np.asarray(suite.baselines.w_final(ref))):.1e}"
        )
    print(i, " | ".join(out), flush=True)
