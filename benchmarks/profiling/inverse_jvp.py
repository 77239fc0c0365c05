"""One bare Rodas5P step of FT, its JVP and its VJP, with `spd_inverse` differentiated as
written (the unrolled Gauss-Jordan elimination) or by the rule d(K^-1) = -K^-1 dK K^-1.

Usage: `PYTHONPATH=. python benchmarks/profiling/inverse_jvp.py plain|patch` (`patch` swaps a
`jax.custom_jvp` version of `linfeat._flows.spd_inverse` in for this process only). Per lane,
b = 256 `small` lanes, 64 steps in a `fori_loop` under `jit(vmap)`, median of 7 calls; the
tangent of one step is saved to /tmp for comparing the two (relative max difference).
Measures how much of a step's derivative is the differentiated elimination (BENCHMARKS.md,
the value + grad item).
"""

import statistics
import sys
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
import linfeat as lf
import linfeat._flows as F
from benchmarks import suite

patch = sys.argv[1] == "patch"
if patch:
    gj = F.spd_inverse

    @jax.custom_jvp
    def inv(K):
        return gj(K)

    @inv.defjvp
    def _(p, t):
        (K,), (dK,) = p, t
        Ki = inv(K)
        return Ki, -Ki @ dK @ Ki

    F.spd_inverse = inv
b = 256
N = 64
probs, v0b = suite.make_batch(b, d=200, m=20, n=20)
reds = jax.jit(jax.vmap(lf.reduce))(probs)
step, y0, data, h = suite.bare_step(reds, v0b)


def step_jvp(y, d, h):
    _, ty = jax.jvp(lambda y, d: step(y, d, h), (y, d), (y, d))
    return jax.tree.map(lambda a, t: a + 1e-12 * t, y, ty)


def step_vjp(y, d, h):
    _, pull = jax.vjp(lambda y, d: step(y, d, h), y, d)
    gy, _ = pull(y)
    return jax.tree.map(lambda a, g: a + 1e-12 * g, y, gy)


outs = {}
for name, body in (("bare", step), ("jvp", step_jvp), ("vjp", step_vjp)):
    f = jax.jit(
        jax.vmap(lambda y, d, h, body=body: jax.lax.fori_loop(0, N, lambda i, y: body(y, d, h), y))
    )
    outs[name] = jax.block_until_ready(f(y0, data, h))
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        jax.block_until_ready(f(y0, data, h))
        ts.append(time.perf_counter() - t)
    print(patch, name, round(statistics.median(ts) / N / b * 1e6, 2), "us", flush=True)
# derivative values for comparison
g = jax.jit(jax.vmap(lambda y, d: jax.jvp(lambda y: step(y, d, h[0]), (y,), (y,))[1]))(y0, data)
np.save(f"/tmp/inv_jvp_{sys.argv[1]}.npy", np.asarray(g[1]))
