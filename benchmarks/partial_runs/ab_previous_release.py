"""Same-minute A/B against the previous release quoted in BENCHMARKS.md (2026-12-02).

Times `lf.fine_tune_batch` on b `small` problems (d = 200, k = 10, m = n = 20) at rtol 1e-8,
atol 1e-10, without metrics, second call. Run once with the previous release first on the path
and once with the current checkout, in fresh processes, back to back:

    git worktree add /tmp/wt_prev 4760ab2
    PYTHONPATH=/tmp/wt_prev python benchmarks/partial_runs/ab_previous_release.py 256 old
    python benchmarks/partial_runs/ab_previous_release.py 256 new bs

("bs" passes batch_size=None, one chunk, as the previous release's pool took the whole batch.)
Printed on 2026-12-02 (heavily shared host; see the note):

    ['old'] b=256 first 13.76 second 1.94 traj/s 132.2 steps 111 us/lane-step 68.1
    ['new', 'bs'] b=256 first 13.82 second 2.56 traj/s 99.8 steps 112 us/lane-step 89.8
    ['old'] b=256 first 10.80 second 2.40 traj/s 106.8 steps 111 us/lane-step 84.3

Printed later on 2026-12-02, after the Rodas5P stages were unrolled (git 58871e4), right after
the benchmark run in BENCHMARKS.md, as same-minute pairs at b = 1024 (default batch_size):

    ['old'] b=1024 first 19.47 second 7.63 traj/s 134.3 steps 112 us/lane-step 66.8
    ['new'] b=1024 first 24.31 second 8.60 traj/s 119.0 steps 112 us/lane-step 75.2
    ['old'] b=1024 first 15.62 second 5.18 traj/s 197.5 steps 112 us/lane-step 45.4
    ['new'] b=1024 first 18.39 second 9.08 traj/s 112.8 steps 112 us/lane-step 79.4
    ['old'] b=1024 first 15.22 second 5.82 traj/s 175.9 steps 112 us/lane-step 51.0
    ['new'] b=1024 first 20.25 second 7.87 traj/s 130.1 steps 112 us/lane-step 68.8

and 15 minutes later, on a quieter host, `fine_tune_batch` of this release on the same 1024
problems (built with jit(vmap(make_problem))) at batch_size 1024 / 256 / 128 / 64, second
pass: 275 / 308 / 307 / 275 traj/s, then the previous release once:

    ['old'] b=1024 first 11.23 second 3.56 traj/s 287.4 steps 112 us/lane-step 31.2
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
import linfeat as lf  # noqa: E402

b = int(sys.argv[1])
keys = jax.random.split(jax.random.key(0), b)
# eager per-key calls: the previous release hangs on jit(vmap(make_problem)) at d >= 200
ps = [lf.make_problem(k, d=200, k=10, m=20, n=20, feature_error=0.5) for k in keys]
probs = jax.tree.map(lambda *x: jnp.stack(x), *ps)
v0s = jax.random.normal(jax.random.key(1), (b, 10))
extra = {"batch_size": None} if "bs" in sys.argv else {}


def run():
    return lf.fine_tune_batch(probs, v0s, with_metrics=False, rtol=1e-8, atol=1e-10, **extra)


t = time.time()
tr = run()
t1 = time.time() - t
t = time.time()
tr = run()
t2 = time.time() - t
steps = float(np.mean(tr.num_steps))
print(f"{sys.argv[2:]} b={b} first {t1:.2f} second {t2:.2f} traj/s {b / t2:.1f} "
      f"steps {steps:.0f} us/lane-step {t2 / b / steps * 1e6:.1f}")  # fmt: skip
