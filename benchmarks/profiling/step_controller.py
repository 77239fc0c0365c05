"""Where a `fine_tune_batch` lane-step goes beyond the Rodas5P step: saves and the controller.

256 `small` problems (d = 200, k = 10, m = n = 20), metrics off, library defaults:

1. `num_save` 2, 16, 64, 256: the cost of diffrax's saves (the state at every save time is
   written from the dense output inside the step loop, and a vmapped while loop carries the
   whole save buffer);
2. the step-size controller: diffrax's `PIDController` as the engine builds it (integral
   control, pcoeff 0, icoeff 1) against PI settings (patched into `linfeat._engine` for this
   script only): mean and max steps, run time, and the final w against the default's
   (the runs stop on the gradient test at slightly different times, so ~1e-5 is expected).

Run: `PYTHONPATH=. python benchmarks/profiling/step_controller.py [b]`. Quoted in BENCHMARKS.md.
"""

import functools
import sys
import time

import diffrax
import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import linfeat as lf  # noqa: E402
from benchmarks import suite  # noqa: E402
from linfeat import _engine  # noqa: E402

b = int(sys.argv[1]) if len(sys.argv) > 1 else 256
probs, v0s = suite.make_batch(b, d=200, m=20, n=20)


def best_of_three(f):
    tr = f()
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        tr = f()
        best = min(best, time.perf_counter() - t)
    return tr, best


for ns in (2, 16, 64, 256):
    tr, dt = best_of_three(lambda: lf.fine_tune_batch(probs, v0s, with_metrics=False, num_save=ns))
    st = np.asarray(tr.num_steps)
    print(f"num_save {ns:4d}: {dt:.3f} s, {dt / st.sum() * 1e6:.2f} us per lane-step "
          f"(mean steps {st.mean():.1f})", flush=True)  # fmt: skip

original = diffrax.PIDController
ref = None
try:
    for pc, ic in ((0.0, 1.0), (0.1, 0.5), (0.2, 0.4), (0.3, 0.3), (0.4, 0.3)):
        _engine.diffrax.PIDController = functools.partial(original, pcoeff=pc, icoeff=ic)
        jax.clear_caches()
        tr, dt = best_of_three(lambda: lf.fine_tune_batch(probs, v0s, with_metrics=False))
        st = np.asarray(tr.num_steps)
        w = np.einsum("bkd,bk->bd", np.asarray(tr.B_final), np.asarray(tr.v_final))
        ref = w if ref is None else ref
        err = np.max(np.linalg.norm(w - ref, axis=1) / np.linalg.norm(ref, axis=1))
        print(f"pcoeff {pc} icoeff {ic}: mean steps {st.mean():.1f}, max {st.max()}, "
              f"statuses {np.bincount(np.asarray(tr.status)).tolist()}, {dt:.2f} s, "
              f"final w vs the default {err:.1e}", flush=True)  # fmt: skip
finally:
    _engine.diffrax.PIDController = original
