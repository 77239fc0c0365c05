"""What the metrics of a vmapped solve cost, and how much of it is the feature distance.

1024 `small` problems (d = 200, k = 10, m = n = 20) solved once without metrics; then
`reduced_metrics` at the 64 saves and the stop of every lane, with and without the feature
distance, and the batched eigensolves it is made of (66,560 matrices of 10 x 10, one per
lane and evaluation point). Quoted in BENCHMARKS.md ("Where the time goes").
Run: `PYTHONPATH=. python benchmarks/profiling/metrics_cost.py`.
"""

import functools
import time

import jax

jax.config.update("jax_enable_x64", True)

import linfeat as lf  # noqa: E402
from benchmarks.suite import make_batch  # noqa: E402
from linfeat._eigh import eigh, eigvalsh, polar  # noqa: E402
from linfeat._engine import at_saves_and_end  # noqa: E402
from linfeat._metrics import reduced_metrics  # noqa: E402

b = 1024
probs, v0s = make_batch(b)
tr = lf.fine_tune_batch(probs, v0s, with_metrics=False)
reds = jax.jit(jax.vmap(lf.reduce))(probs)
states = (tr.v, tr.A, tr.v_final, tr.A_final)


def best_of_two(fn, *args):
    jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


for with_distance in (False, True):

    def one(red, v, A, vf, Af, v0, wd=with_distance):
        at = functools.partial(reduced_metrics, red, v0=v0, with_distance=wd)
        return at_saves_and_end(at, (v, A), (vf, Af))

    dt = best_of_two(jax.jit(jax.vmap(one)), reds, *states, v0s)
    print(f"metrics of {b} lanes x 65 points, with_distance={with_distance}: {dt:.2f} s")

M = jax.random.normal(jax.random.key(0), (b * 65, 10, 10))
for name, fn in (("polar", polar), ("eigvalsh", eigvalsh), ("eigh", eigh)):
    print(f"{name} of {M.shape[0]} matrices 10 x 10: {best_of_two(jax.jit(jax.vmap(fn)), M):.2f} s")
