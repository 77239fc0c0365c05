"""One bare Rodas5P step of FT, its JVP and its VJP, per lane, with parts of the step swapped
for this process only, to see what a step's derivative costs.

Usage: `PYTHONPATH=. python benchmarks/profiling/step_derivative.py MODE [b]`, MODE one of
- `plain`: the library's step;
- `inverse`: `linfeat._flows.spd_inverse` (the unrolled Gauss-Jordan elimination) with the
  rule d(K^-1) = -K^-1 dK K^-1 as a `jax.custom_jvp`, instead of the differentiated
  elimination;
- `bound`: the stage-increment bound (`linfeat._rodas5p._stage_bound`, 1e8 (1 + max|y0|)) under
  `lax.stop_gradient`;
- `noclip`: no clipping of the stage increments at all (`_clip` the identity: NOT safe, the
  clip keeps a rejected step's NaN/inf out of the state; this measures what it costs).
b (default 256) `small` lanes at their initial state, 64 steps in a `fori_loop` under
`jit(vmap)` (`benchmarks.suite.bare_step_timer`), median of 7 calls; the tangent is taken in the direction of the state itself.
Each mode also prints the relative difference of its step JVP and VJP from the library's
(computed in the same process). Behind BENCHMARKS.md's value + grad item.
"""

import statistics
import sys

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)
import linfeat as lf
import linfeat._flows as F
import linfeat._rodas5p as R
from benchmarks import suite

mode = sys.argv[1]
b = int(sys.argv[2]) if len(sys.argv) > 2 else 256
probs, v0b = suite.make_batch(b, d=200, m=20, n=20)
reds = jax.jit(jax.vmap(lf.reduce))(probs)


def derivatives():
    """The step's JVP and VJP on every lane, traced now (after any swap)."""
    step, y0, data, h = suite.bare_step(reds, v0b)
    both = lambda y, d, h: (suite.step_tangent(step)(y, d, h), suite.step_cotangent(step)(y, d, h))  # noqa: E731
    return jax.jit(jax.vmap(both))(y0, data, h)


reference = derivatives()  # the library's step, before any swap
if mode == "inverse":
    elimination = F.spd_inverse

    @jax.custom_jvp
    def spd_inverse(K):
        return elimination(K)

    @spd_inverse.defjvp
    def _(primals, tangents):
        (K,), (dK,) = primals, tangents
        Ki = spd_inverse(K)
        return Ki, -Ki @ dK @ Ki

    F.spd_inverse = spd_inverse
elif mode == "bound":
    bound = R._stage_bound
    R._stage_bound = lambda y0: jax.lax.stop_gradient(bound(y0))
elif mode == "noclip":
    R._clip = lambda u, bound: u
elif mode != "plain":
    raise SystemExit(f"unknown mode {mode!r}: plain, inverse, bound or noclip")

swapped = derivatives()
diff = max(
    float(jnp.max(jnp.abs(a - r)) / jnp.max(jnp.abs(r)))
    for a, r in zip(jax.tree.leaves(swapped), jax.tree.leaves(reference))
)

for name, derivative in (("step", None), ("step + JVP", suite.step_tangent),
                         ("step + VJP", suite.step_cotangent)):  # fmt: skip
    once = suite.bare_step_timer(reds, v0b, derivative=derivative)  # compiles, after any swap
    us = statistics.median(once() for _ in range(7)) * 1e6
    print(f"{mode:8s} b={b} {name:11s} {us:7.2f} us per lane-step", flush=True)
print(f"{mode:8s} derivatives' max relative difference from the library's step: {diff:.1e}")
