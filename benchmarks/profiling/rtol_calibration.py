"""Final-w error and steps of `fine_tune_batch` against rtol on 8 `small`-style instances.

Usage: `PYTHONPATH=. python benchmarks/profiling/rtol_calibration.py N` (N = n, the number
of training inputs: 20 is square X, the stiff case; 40 is n = 2m). Error: relative, of
w = B^T v at each solve's own stop time, against `lf.fine_tune` at rtol 1e-13, atol 1e-15
integrated to that time with no gradient test (the suite's same-time comparison).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
import linfeat as lf
from benchmarks import suite

n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
b = 8
probs, v0s = suite.make_batch(b, d=200, m=20, n=n)
trs = {
    rtol: lf.fine_tune_batch(probs, v0s, with_metrics=False, rtol=rtol, atol=rtol * 1e-2)
    for rtol in [1e-7, 1e-8, 1e-9, 1e-10]
}
ws = {rtol: suite.w_final(tr, b) for rtol, tr in trs.items()}
for i in range(b):
    p = suite.take(probs, i)
    out = []
    for rtol, tr in trs.items():
        tf = float(tr.t_final[i])
        ref = lf.fine_tune(
            p,
            v0s[i],
            rtol=1e-13,
            atol=1e-15,
            check=False,
            ts=jnp.array([0.0, tf]),
            t_max=tf,
            grad_tol=suite.NO_STOP,
        )
        w_ref = np.asarray(ref.B_final.T @ ref.v_final)
        out.append(
            f"{rtol:.0e}: steps {int(tr.num_steps[i])} st {int(tr.status[i])} "
            f"err {suite.rel(ws[rtol][i], w_ref):.1e}"
        )
    print(i, " | ".join(out), flush=True)
