"""Per-lane cost of one Rodas5P step of the FT flow and of its parts, vmapped over b lanes.

Usage: `PYTHONPATH=. python benchmarks/profiling/step_breakdown.py 256`. Each part runs 64
times in a `fori_loop` under `jit(vmap)` (so dispatch is amortised) on b `small` lanes at
their initial state; compare "one step" with the whole solve's cost per lane-step
(`fine_tune_batch` without metrics, run time / (b x mean steps)): the difference is what
diffrax's loop (controller, event, saves, dense output) and the vmapped while loop add.
A Rodas5P step is 1 factor, 8 solves and 8 field evaluations (`linfeat._rodas5p`).
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
import linfeat as lf
from benchmarks import suite
from linfeat._flows import FineTune
from linfeat._rodas5p import Rodas5P

b = int(sys.argv[1]) if len(sys.argv) > 1 else 256
N = 64
probs, v0s = suite.make_batch(b, d=200, m=20, n=20)
reds = jax.jit(jax.vmap(lf.reduce))(probs)
data = reds.flow_data
y0 = (v0s, reds.A0)
flow = FineTune()
h = 1e-3 / jnp.max(reds.sigma2, axis=-1)  # a step of the size the solver takes early on


def bench(name, body):
    def one(y, data, h):
        return jax.lax.fori_loop(0, N, lambda i, y: body(y, data, h), y)

    f = jax.jit(jax.vmap(one))
    jax.block_until_ready(f(y0, data, h))
    reps = 5
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(f(y0, data, h))
    us = (time.perf_counter() - t) / reps / N / b * 1e6
    print(f"{name:34s} {us:8.3f} us per lane", flush=True)
    return us


def field(y, data, h):
    fv, fA = flow.field(y, data)
    return (y[0] + 1e-12 * fv, y[1] + 1e-12 * fA)


def factor(y, data, h):
    solve = flow.factor(y, data, 0.2 * h)
    dv, dA = solve(y)
    return (y[0] + 1e-12 * dv, y[1] + 1e-12 * dA)


def step(y, data, h):
    solver = Rodas5P(flow)
    f0 = flow.field(y, data)
    y1, _, _, _, _ = solver.step(None, 0.0, h, y, data, f0, False)
    return y1


t_field = bench("field (x9 per step)", field)
t_factor = bench("factor + 1 solve (x1 per step)", factor)
t_step = bench("one Rodas5P step (+1 field)", step)
tr = lf.fine_tune_batch(probs, v0s, with_metrics=False)  # compile
t = time.perf_counter()
tr = lf.fine_tune_batch(probs, v0s, with_metrics=False)
secs = time.perf_counter() - t
steps = np.asarray(tr.num_steps)
print(
    f"{'whole solve per lane-step':34s} {secs / steps.sum() * 1e6:8.3f} us "
    f"(mean {steps.mean():.0f}, max {steps.max()} steps; a vmapped loop runs "
    f"max steps for every lane: {secs / (b * steps.max()) * 1e6:.3f} us per lane per "
    f"iteration)"
)
