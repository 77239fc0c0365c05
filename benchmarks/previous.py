"""Times the previous release of linfeat on saved workloads (run in a separate process).

Usage (the runner does this; see `benchmarks.runner.previous_release`):

    PYTHONPATH=/tmp/linfeat_prev python benchmarks/previous.py WORKLOAD.npz SETTING OUT.json \
        B1,B2 [LANES [SECOND_CALL_MAX_B]]

with the previous release (git commit 4760ab2, lane-pool Rodas5P) first on the path. This
file imports nothing from the current checkout: it loads the problems of a workload (arrays
written by `benchmarks.suite.save_workload`, so both releases solve the very same problems;
the old generator differs), wraps them in the old `lf.Problem` / `lf.SubspaceCov` with
`jax.tree.map(jnp.asarray, ...)` (no `jit(vmap(make_problem))`, which hangs in that release
at d >= 200), and times the old `lf.fine_tune_batch` twice per batch size (first call =
compile + run; batches above SECOND_CALL_MAX_B are timed once, less the compile time JAX
reports, as in `benchmarks.suite.timed`). SETTING is "bench" (`with_metrics=False,
rtol=1e-8, atol=1e-10`, the old BENCHMARKS.md setting) or "defaults" (the old library
defaults: metrics on, rtol 1e-12, atol 1e-14, absolute grad_tol 1e-10). The final
w = B^T v of the first lanes is written out for the accuracy check.
"""

from __future__ import annotations

import json
import sys
import time

COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
SETTINGS = {
    "bench": dict(with_metrics=False, rtol=1e-8, atol=1e-10),
    "defaults": dict(),
}


def load(path):
    import jax.numpy as jnp
    import numpy as np

    import linfeat as lf

    z = dict(np.load(path))

    def cov(name):
        if name in z:
            return jnp.asarray(z[name])
        return lf.SubspaceCov(*(jnp.asarray(z[f"{name}.{f}"]) for f in lf.SubspaceCov._fields))

    opt = lambda n: jnp.asarray(z[n]) if n in z else None  # noqa: E731
    probs = lf.Problem(
        X=jnp.asarray(z["X"]), Y=jnp.asarray(z["Y"]), B0=jnp.asarray(z["B0"]),
        w_star=jnp.asarray(z["w_star"]), B_star=opt("B_star"), v_star=opt("v_star"),
        id_cov=cov("id_cov"), ood_cov=cov("ood_cov"),
    )  # fmt: skip
    kw = {}
    if "ts" in z:
        kw["ts"] = jnp.asarray(z["ts"])
    if "t_max" in z:
        kw["t_max"] = float(z["t_max"])
    return probs, jnp.asarray(z["v0s"]), kw


def main(argv):
    path, setting, out, batches = argv[0], argv[1], argv[2], [int(b) for b in argv[3].split(",")]
    lanes = int(argv[4]) if len(argv) > 4 else 8
    second_max_b = int(argv[5]) if len(argv) > 5 else 1 << 30
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import linfeat as lf
    from linfeat._flow import default_tolerances

    probs, v0s, kw = load(path)
    kw.update(SETTINGS[setting])
    rtol, atol, gtol = default_tolerances(jnp.float64)
    res = dict(
        linfeat_file=lf.__file__,
        setting=setting,
        rtol=kw.get("rtol", rtol),
        atol=kw.get("atol", atol),
        grad_tol=kw.get("grad_tol", gtol),  # absolute in fine_tune_batch of that release
        with_metrics=kw.get("with_metrics", True),
        rows=[],
    )
    compile_s = [0.0]

    def listener(event, duration, **kwargs):
        if event in COMPILE_EVENTS:  # as `benchmarks.suite.CompileClock`
            compile_s[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    for b in batches:
        p, v = jax.tree.map(lambda x: x[:b], probs), v0s[:b]
        times = []
        for call in range(2 if b <= second_max_b else 1):
            compile_s[0] = 0.0
            t = time.perf_counter()
            tr = jax.block_until_ready(lf.fine_tune_batch(p, v, **kw))
            times.append(time.perf_counter() - t)
            if call == 0:
                events = compile_s[0]
        if len(times) == 1:  # as `benchmarks.suite.timed(second=False)`
            times.append(times[0] - events)
        steps, st = np.asarray(tr.num_steps), np.asarray(tr.status)
        n = min(lanes, b)
        Bf = np.einsum("bkp,bdp->bkd", np.asarray(tr.B_coords_final[:n]), np.asarray(tr.basis[:n]))
        w = np.einsum("bkd,bk->bd", Bf, np.asarray(tr.v_final[:n]))
        res["rows"].append(
            dict(
                batch=b, first_call_s=times[0], run_s=times[1], compile_s=times[0] - times[1],
                compile_events_s=events,
                timing="second call" if b <= second_max_b else "first call minus JAX compile",
                traj_per_s=b / times[1], steps_mean=float(steps.mean()),
                steps_max=int(steps.max()), converged=float(np.mean(st == 0)),
                max_time=float(np.mean(st == 1)), w_final=w.tolist(),
                t_final=np.asarray(tr.t_final[:n]).tolist(),
                status=st[:n].tolist(),
            )
        )  # fmt: skip
        print(f"previous release {setting} b={b}: {b / times[1]:.1f} traj/s", flush=True)
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(sys.argv[1:])
