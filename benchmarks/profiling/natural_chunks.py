"""The natural path with and without its chunking vmap rule, against `fine_tune_batch`.

2048 `small` problems, library defaults, metrics on: `jax.jit(jax.vmap(lf.fine_tune))` with
`linfeat._flow.VMAP_CHUNK` = 128 (the default: the per-lane pipeline in chunks of 128) and
with chunking off, and `lf.fine_tune_batch`; second calls timed. The numbers behind
docs/solvers.md ("Known limits") and CHANGELOG.md.
Run: `PYTHONPATH=. python benchmarks/profiling/natural_chunks.py`.
"""

import time

import jax

jax.config.update("jax_enable_x64", True)

import linfeat as lf  # noqa: E402
from benchmarks.suite import make_batch  # noqa: E402
from linfeat import _flow  # noqa: E402

B = 2048
probs, v0s = make_batch(B)


def rate(f):
    jax.block_until_ready(f())
    t = time.perf_counter()
    jax.block_until_ready(f())
    return B / (time.perf_counter() - t)


def natural():
    run = jax.jit(jax.vmap(lambda p, v: lf.fine_tune(p, v, check=False)))
    return lambda: run(probs, v0s).v_final


print(f"natural, chunks of {_flow.VMAP_CHUNK}: {rate(natural()):.1f} traj/s", flush=True)
batch = lambda: lf.fine_tune_batch(probs, v0s, outputs="metrics").v_final  # noqa: E731
print(f"fine_tune_batch: {rate(batch):.1f} traj/s", flush=True)
_flow.VMAP_CHUNK = 10**9
print(f"natural, one chunk: {rate(natural()):.1f} traj/s", flush=True)
