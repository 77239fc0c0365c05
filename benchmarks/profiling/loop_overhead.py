"""What diffrax's loop around the Rodas5P step costs, part by part (#14 item 2).

Usage: `PYTHONPATH=. python benchmarks/profiling/loop_overhead.py [b]` (default 128, one CPU
chunk). The FT flow on b `small` lanes is integrated by `diffrax.diffeqsolve` under
`jit(vmap)` exactly as `linfeat._engine.solve` calls it, and with one part of the loop taken
away at a time:

- `engine`: saves at the 64 default times and at t1, the stop event (gradient test and
  divergence), `PIDController` (integral control), `RecursiveCheckpointAdjoint`;
- `no saves`: `SaveAt(t1=True)` only;
- `no event`: no event, and t1 set per lane to the engine's stop time (the same steps);
- `bare loop`: neither;
- `DirectAdjoint`-free forward: the bare loop with `adjoint=diffrax.ForwardMode()` (the
  while loop without the checkpointing wrapper).

Each row prints the cost per lane per loop iteration (run time / (b x max steps): a vmapped
while loop runs every lane to its chunk's maximum), the bare step alone in a `fori_loop` (as
`step_breakdown.py` measures it) and the difference, which is the loop's own cost. Then the
default path, `fine_tune_batch` with metrics on the same lanes, split into the reduction, the
bare steps, the loop's own cost, the metrics and the rest.
"""

import sys
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
import linfeat as lf
from benchmarks import suite
from benchmarks.suite import bare_step_timer
from linfeat._engine import default_grad_tol, default_times, default_tolerances, stop_event
from linfeat._flows import FineTune
from linfeat._rodas5p import Rodas5P

b = int(sys.argv[1]) if len(sys.argv) > 1 else 128
probs, v0s = suite.make_batch(b, d=200, m=20, n=20)
reds = jax.jit(jax.vmap(lf.reduce))(probs)
flow = FineTune()
rtol, atol, gscale = default_tolerances(jnp.float64)


def lane_consts(red, p, v0):
    lam = jnp.max(red.sigma2)
    return default_grad_tol(lam, p.Y, v0, gscale), default_times(lam, 64, jnp.float64), 1e6 / lam


gtol, ts, tmax = jax.jit(jax.vmap(lane_consts))(reds, probs, v0s)


def make(saves: bool, event: bool, adjoint):
    def one(red, v0, g, ts, t1):
        y0 = (v0, red.A0)
        kw = {}
        if event:
            kw["event"] = stop_event(lambda t, y, a, **k: flow.converged(y, a, g), y0)
        ts = jnp.minimum(ts, t1)  # `no event` stops at t1 = the engine's stop: clip the saves
        saveat = (
            diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(t1=True)])
            if saves
            else diffrax.SaveAt(t1=True)
        )
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: flow.field(y, a)), Rodas5P(flow), t0=0.0, t1=t1,
            dt0=None, y0=y0, args=red.flow_data, saveat=saveat,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=4096,
            throw=False, adjoint=adjoint, **kw,
        )  # fmt: skip
        t_end = sol.ts[-1][0] if saves else sol.ts[0]
        return sol.stats["num_steps"], t_end

    return jax.jit(jax.vmap(one))


def compiled(saves, event, t1, adjoint=None):
    f = make(saves, event, adjoint or diffrax.RecursiveCheckpointAdjoint())
    steps, t_end = jax.block_until_ready(f(reds, v0s, gtol, ts, t1))
    return (lambda: jax.block_until_ready(f(reds, v0s, gtol, ts, t1))), np.asarray(steps), t_end


# a shared VM's speed drifts by tens of percent within minutes: every variant is compiled
# first, then timed in interleaved rounds, and each row is its best round
ROUNDS = 5
engine, steps, t_stop = compiled(True, True, tmax)
variants = {
    "engine": (engine, steps),
    "no saves": compiled(False, True, tmax)[:2],
    "no event": compiled(True, False, t_stop)[:2],
    "bare loop": compiled(False, False, t_stop)[:2],
    "bare loop, ForwardMode": compiled(False, False, t_stop, diffrax.ForwardMode())[:2],
}
# the whole default path on the same lanes: `fine_tune_batch` (one chunk) without and with
# metrics, and the reduction it starts with
red_fn = jax.jit(jax.vmap(lf.reduce))
jax.block_until_ready(red_fn(probs))
for name, wm in (("fine_tune_batch, no metrics", False), ("fine_tune_batch, metrics", True)):
    tr = jax.block_until_ready(lf.fine_tune_batch(probs, v0s, with_metrics=wm))
    variants[name] = (
        lambda wm=wm: jax.block_until_ready(lf.fine_tune_batch(probs, v0s, with_metrics=wm)),
        np.asarray(tr.num_steps),
    )
variants["reduce"] = (lambda: jax.block_until_ready(red_fn(probs)), None)
step_timer = bare_step_timer(reds, v0s)  # compiled once; timed once per round
best = dict.fromkeys(variants, np.inf)
steps_bare = []
for _ in range(ROUNDS):
    for name, (fn, _) in variants.items():
        t = time.perf_counter()
        fn()
        best[name] = min(best[name], time.perf_counter() - t)
    steps_bare.append(step_timer() * 1e6)
step = min(steps_bare)
print(f"b = {b}; best of {ROUNDS} interleaved rounds")
for name, (_, st) in variants.items():
    if st is None or name.startswith("fine_tune_batch"):
        continue
    per = best[name] / (b * st.max()) * 1e6
    print(f"{name:22s} {best[name]:7.3f} s  steps mean {st.mean():6.1f} max {st.max():4d}  "
          f"{per:6.2f} us per lane-iteration; the loop's own cost {per - step:5.2f} "
          f"({1 - step / per:.0%})")  # fmt: skip
print(f"{'bare step (fori_loop)':22s} {step:6.2f} us per lane-step")
# where the default path's time goes, per lane (ms): the reduction, the integration loop (the
# engine row: bare steps at the chunk's maximum count, and the loop's own cost), the metrics
# at the 65 points (with - without metrics) and the rest (chunking, outputs)
full, bare = best["fine_tune_batch, metrics"], best["fine_tune_batch, no metrics"]
smax = variants["engine"][1].max()
parts = {
    "reduction": best["reduce"],
    "steps (bare, x chunk max)": step * 1e-6 * b * smax,
    "diffrax loop's own cost": best["engine"] - step * 1e-6 * b * smax,
    "metrics at 65 points": full - bare,
    "rest of fine_tune_batch": bare - best["engine"] - best["reduce"],
}
print(f"fine_tune_batch with metrics: {full / b * 1e3:.3f} ms per lane; without "
      f"{bare / b * 1e3:.3f}")  # fmt: skip
for k, v in parts.items():
    print(f"  {k:28s} {v / b * 1e3:7.3f} ms per lane ({v / full:5.1%})")
