"""First (compiling) eager calls: theory constants and the three flows on one problem.

Eager `theory.problem_constants`, then `r5_bounds`, `r7_bounds`, `r8_threshold` (which reuse
its compiled program), then `fine_tune`, `lp_ft`, `linear_probe_flow` and `fine_tune` with
other settings on one problem (reduction and metrics programs shared). Run in a fresh
process each time; the numbers behind CHANGELOG.md and docs/solvers.md.
Run: `python benchmarks/profiling/eager_compile.py`.
"""

import time

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import linfeat as lf  # noqa: E402
from linfeat import theory  # noqa: E402


def timed(name, f):
    t = time.perf_counter()
    jax.block_until_ready(f())
    print(f"{name:28s} {time.perf_counter() - t:6.2f} s", flush=True)


p = lf.make_problem(jax.random.PRNGKey(0), d=10, k=2, m=4, n=12, ood="inside")
v0 = jnp.zeros(2)
timed("problem_constants", lambda: theory.problem_constants(p, v0))
timed("r5, r7, r8 bounds", lambda: (theory.r5_bounds(p, v0), theory.r7_bounds(p),
                                    theory.r8_threshold(p, v0)))  # fmt: skip
q = lf.make_problem(jax.random.key(0), d=30, k=3, m=6, feature_error=0.1)
h = jnp.ones(3)
timed("fine_tune", lambda: lf.fine_tune(q, h).metrics)
timed("lp_ft", lambda: lf.lp_ft(q).metrics)
timed("linear_probe_flow", lambda: lf.linear_probe_flow(q, h).metrics)
timed("fine_tune rtol 1e-12, 16 saves", lambda: lf.fine_tune(q, h, rtol=1e-12, num_save=16).metrics)
