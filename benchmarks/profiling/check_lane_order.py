"""Lane order of `linfeat check`'s sampled flows (`linfeat.checks._sampling._lane_orders`).

A vmapped while loop runs every lane of a chunk to the chunk's largest step count. This
script samples one shape group of the check's knob grid (default d 24, k 3, m 8, 6 draws per
knob combination: 324 instances), solves FT and LP-FT at the check's tolerances in chunks of
36 (the check's chunk), and prints the step efficiency mean(steps) / mean(chunk maximum) for
the sampling order, knob-major orders, the order of `log_condition_estimate` of X, and the
oracle order (sorted by the measured steps), with the mean and maximum steps per knob value.
Run: `PYTHONPATH=. python benchmarks/profiling/check_lane_order.py [d k m reps]`.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from linfeat._batched import log_condition_estimate  # noqa: E402
from linfeat.checks import _sampling as S  # noqa: E402
from linfeat.checks._config import FULL, Group  # noqa: E402

CHUNK = 36


def efficiency(steps, order):
    s = steps[order].astype(float)
    s = np.r_[s, np.zeros(-len(s) % CHUNK)].reshape(-1, CHUNK)
    return steps.sum() / (s.max(axis=1).sum() * CHUNK)


def main(d=24, k=3, m=8, reps=6):
    g = Group(d, k, m, reps=reps)
    problems, v0, meta = S._sample_group(jax.random.PRNGKey(1), g, FULL)
    prep = S._run_chunked("prepare", CHUNK, problems, v0)
    ft = S._run_chunked("flow", CHUNK, problems, v0, jnp.asarray(prep["grad_tol"]))
    lpft = S._run_chunked(
        "lpft", CHUNK, problems, jnp.zeros_like(v0), jnp.asarray(prep["grad_tol_lp"])
    )
    cond = np.asarray(jax.vmap(log_condition_estimate)(problems.X))
    eps, a, sigma = meta["eps_knob"], meta["a_knob"], meta["sigma"]
    orders = {
        "sampling": np.arange(len(eps)),
        "eps, a, sigma": np.lexsort((sigma, a, eps)),
        "sigma, a, eps": np.lexsort((eps, a, sigma)),
        "condition of X": np.argsort(cond),
    }
    print(f"group d {d}, k {k}, m {m}: {len(eps)} instances, chunks of {CHUNK}")
    for name, rec in (("FT", ft), ("LP-FT", lpft)):
        steps = np.asarray(rec["steps"])
        effs = ", ".join(f"{o}: {efficiency(steps, idx):.2f}" for o, idx in orders.items())
        print(
            f"{name}: mean steps {steps.mean():.0f}, max {steps.max()}; efficiency {effs}, "
            f"oracle: {efficiency(steps, np.argsort(steps)):.2f}"
        )
        for knob, vals in (("eps", eps), ("sigma", sigma)):
            per = ", ".join(
                f"{v:g}: {steps[vals == v].mean():.0f}/{steps[vals == v].max()}"
                for v in np.unique(vals)
            )
            print(f"  mean/max steps by {knob}: {per}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
