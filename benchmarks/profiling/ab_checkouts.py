"""One side of an interleaved A/B of two checkouts of linfeat (a change's before and after).

Times `fine_tune_batch` and the natural path `jax.jit(jax.vmap(lf.fine_tune))`, with and
without metrics, on b `small` lanes (`benchmarks.suite.make_batch`, seed 0: the same problems
in both checkouts), best of `reps` second calls each, and prints one JSON line. Run it
alternately from the two checkouts in fresh processes, so a shared host's drift hits both:

    git worktree add --detach /tmp/before REV
    for round in 1 2; do for tree in /tmp/before .; do
        PYTHONPATH=$tree python benchmarks/profiling/ab_checkouts.py 1024 2; done; done

(`PYTHONPATH` picks the checkout's `linfeat` and `benchmarks`; the JSON names the file used.)
The A/B of the bisection top eigenvalue is `benchmarks/partial_runs/2026-12-04_ab_lambda_max.log`.
"""

import json
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import linfeat as lf  # noqa: E402
from benchmarks.suite import _natural, make_batch  # noqa: E402

b = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 2
probs, v0s = make_batch(b)
out = {"linfeat_file": lf.__file__, "b": b}
for wm in (True, False):
    for path in ("batch", "natural"):
        if path == "batch":

            def f(wm=wm):
                return lf.fine_tune_batch(probs, v0s, with_metrics=wm)
        else:
            g = _natural(None, wm)

            def f(g=g):
                return g(probs, v0s)

        jax.block_until_ready(f())
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(f())
            ts.append(time.perf_counter() - t)
        out[f"{path} metrics={wm}"] = min(ts)
print(json.dumps(out))
