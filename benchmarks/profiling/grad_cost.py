"""Where value + `jax.grad` of a batch spends its time, against the forward solve.

Usage: `PYTHONPATH=. python benchmarks/profiling/grad_cost.py [b [out.json]]` (default
b = 256, the benchmark's `grad` row; the JSON is rewritten after each row, so a run cut short
keeps the rows it finished). The loss is that row's first knob: the batch-mean OOD error of FT
after `make_problem(feature_error=eps)` on `small` (d = 200, k = 10, m = n = 20), a function of
one scalar. Each is timed after a compiling call, median of `REPS` calls, the cheap compiles
first:

- forward: `jit(loss)`;
- value + grad, reverse mode (the library's default adjoint, diffrax's
  `RecursiveCheckpointAdjoint`; with `max_steps` = 100,000 it keeps 446 checkpoints, more
  than any lane's steps, so nothing is recomputed twice);
- its two halves: `jax.vjp` (the forward pass that stores the checkpoints) and the pullback
  (each step re-run from its checkpoint, then its VJP, in reverse order);
- value + derivative in forward mode: `jax.jvp` with `adjoint=diffrax.ForwardMode()` (one
  tangent, carried alongside each step; for a few knobs this is the gradient);
- one bare Rodas5P step of FT per lane (64 in a `fori_loop` under `jit(vmap)`,
  `benchmarks.suite.bare_step_timer`), with its JVP and with its VJP (what each mode adds per
  step, outside diffrax's loop).
"""

import json
import statistics
import sys
import time

import diffrax
import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)
import linfeat as lf
from benchmarks import suite

REPS = 5
K = suite.K
shape = dict(d=200, k=K, m=20, n=20)


def make_loss(adjoint, b: int):
    """The row's loss on b lanes (keys and heads as in the benchmark), FT with `adjoint`."""
    keys = jax.random.split(jax.random.key(31), b)
    v0s = jax.random.normal(jax.random.key(32), (b, K))

    def loss(eps):
        def one(kk, v):
            p = lf.make_problem(kk, **shape, feature_error=eps)
            return lf.fine_tune(p, v, check=False, adjoint=adjoint).final_metrics.ood_error

        return jnp.mean(jax.vmap(one)(keys, v0s))

    return loss, keys, v0s


def main():
    b = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    loss, keys, v0s = make_loss(None, b)
    loss_fwd, _, _ = make_loss(diffrax.ForwardMode(), b)
    x = jnp.asarray(0.3)

    forward = jax.jit(loss)
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    vjp_forward = jax.jit(lambda x: jax.vjp(loss, x))
    pullback = jax.jit(lambda pb: pb(jnp.ones(())))
    jvp = jax.jit(lambda x: jax.jvp(loss_fwd, (x,), (jnp.ones(()),)))

    out = sys.argv[2] if len(sys.argv) > 2 else None
    record = dict(b=b, backend=jax.default_backend(), jax=jax.__version__, rows=[])

    def save():
        if out:
            with open(out, "w") as f:
                json.dump(record, f, indent=1)

    steps = jax.jit(
        jax.vmap(
            lambda kk, v: (
                lf.fine_tune(
                    lf.make_problem(kk, **shape, feature_error=x), v, check=False
                ).num_steps
            )
        )  # fmt: skip
    )(keys, v0s)
    record.update(steps_mean=float(jnp.mean(steps)), steps_max=int(jnp.max(steps)))
    print(f"b = {b} on {jax.default_backend()}: mean / max accepted + rejected steps "
          f"{record['steps_mean']:.0f} / {record['steps_max']}", flush=True)  # fmt: skip

    def measure(name, fn, *args):
        """Compile (first call), then the median of REPS calls; prints and records the row."""
        t = time.perf_counter()
        res = jax.block_until_ready(fn(*args))
        first = time.perf_counter() - t
        ts = []
        for _ in range(REPS):
            del res
            t = time.perf_counter()
            res = jax.block_until_ready(fn(*args))
            ts.append(time.perf_counter() - t)
        row = dict(name=name, run_s=statistics.median(ts), first_call_s=first)
        fwd = record["rows"][0]["run_s"] if record["rows"] else row["run_s"]
        row["x_forward"] = row["run_s"] / fwd
        record["rows"].append(row)
        save()
        print(f"  {name:26s} {row['run_s']:8.4f} s  {row['x_forward']:5.2f}x forward  "
              f"(first call {first:.1f} s)", flush=True)  # fmt: skip
        return res

    # In the order a short lease should get them: the cheap compiles first.
    val0 = measure("forward", forward, x)
    val3, g3 = measure("jvp (ForwardMode)", jvp, x)
    val1, g1 = measure("value_and_grad (reverse)", value_and_grad, x)
    val2, pb = measure("vjp forward half", vjp_forward, x)
    (g2,) = measure("vjp pullback half", pullback, pb)
    del pb
    record.update(value=float(val0), grad_reverse=float(g1), grad_forward_mode=float(g3),
                  rel_diff=abs(float(g3 - g1)) / abs(float(g1)))  # fmt: skip
    save()
    print(f"values agree: {float(val0):.12g} {float(val1):.12g} {float(val2):.12g} "
          f"{float(val3):.12g}; derivative reverse {float(g1):.12g}, halves {float(g2):.12g}, "
          f"forward mode {float(g3):.12g} (rel diff {record['rel_diff']:.1e})",
          flush=True)  # fmt: skip

    # ---- one bare step, its JVP and its VJP, per lane
    probs, v0b = suite.make_batch(b, d=200, m=20, n=20)
    reds = jax.jit(jax.vmap(lf.reduce))(probs)
    print()
    per = {}
    record["per_lane_step_us"] = per
    for name, derivative in (("bare step", None), ("step + JVP", suite.step_tangent),
                             ("step + VJP", suite.step_cotangent)):  # fmt: skip
        once = suite.bare_step_timer(reds, v0b, derivative=derivative)  # compiles
        per[name] = statistics.median(once() for _ in range(REPS)) * 1e6
        print(f"  {name:12s} {per[name]:7.2f} us per lane-step  "
              f"{per[name] / per.get('bare step', per[name]):4.2f}x bare", flush=True)  # fmt: skip
        save()


if __name__ == "__main__":
    main()
