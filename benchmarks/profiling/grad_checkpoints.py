"""Value + `jax.grad` of the `grad` row's first knob against diffrax's checkpoint count.

Usage: `PYTHONPATH=. python benchmarks/profiling/grad_checkpoints.py 16 64 256 0` (0: the
library's default `RecursiveCheckpointAdjoint()`, which with `max_steps` = 100,000 keeps 446
checkpoints). For b = 256 `small` lanes (d = 200, k = 10, m = n = 20), the batch-mean OOD
error of FT after `make_problem(feature_error=eps)`: per checkpoint count, the median of 3
rounds of the forward solve, the `jax.vjp` forward half (which stores the checkpoints), the
pullback, and `jax.value_and_grad`, with the derivative (the same for every count).
"""

import statistics
import sys
import time

import diffrax
import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)
from grad_cost import make_loss  # this folder is on sys.path when the script runs

b = 256


x = jnp.asarray(0.3)
f = jax.jit(make_loss(None, b)[0])
jax.block_until_ready(f(x))
for c in [int(a) for a in sys.argv[1:]]:
    adj = diffrax.RecursiveCheckpointAdjoint(checkpoints=c if c > 0 else None)
    loss = make_loss(adj, b)[0]
    vf = jax.jit(lambda x: jax.vjp(loss, x))
    pbf = jax.jit(lambda pb: pb(jnp.ones(())))
    vg = jax.jit(jax.value_and_grad(loss))
    t = time.perf_counter()
    _, pb = jax.block_until_ready(vf(x))
    jax.block_until_ready(pbf(pb))
    jax.block_until_ready(vg(x))
    ct = time.perf_counter() - t
    res = {k: [] for k in ("fwd", "vjpf", "pull", "vg")}
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(f(x))
        res["fwd"].append(time.perf_counter() - t)
        t = time.perf_counter()
        _, pb = jax.block_until_ready(vf(x))
        res["vjpf"].append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(pbf(pb))
        res["pull"].append(time.perf_counter() - t)
        del pb
        t = time.perf_counter()
        g = jax.block_until_ready(vg(x))
        res["vg"].append(time.perf_counter() - t)
    m = {k: statistics.median(v) for k, v in res.items()}
    print(
        f"checkpoints {c}: compile {ct:.0f}s fwd {m['fwd']:.3f} vjp-fwd {m['vjpf']:.3f} pull {m['pull']:.3f} v+g {m['vg']:.3f} ({m['vg'] / m['fwd']:.2f}x) g {float(g[1]):.12g}",
        flush=True,
    )
