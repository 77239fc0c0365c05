"""Stress test for the CPU deadlock of batched LAPACK kernels: jitted vmaps over problems.

The previous release hung (0% CPU, both threads of the XLA intra-op pool waiting in
`lapack_dsyevd_ffi` -> `ParallelBatchMap` -> `absl::BlockingCounter::Wait`) on
`jax.jit(jax.vmap(lambda key: lf.reduce(lf.make_problem(key, d=200, k=10, m=20))))` over 64
keys, 20 calls per process, in 5 of 5 fresh processes. linfeat now makes no LAPACK call in
traced library code (docs/solvers.md); this script repeats that workload, and one FT solve
with metrics, in fresh processes under a watchdog and fails on any hang or error.

Usage: `python -m benchmarks.stress [--quick]` (exit status 0: no hang).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent(
    """
    import sys, time
    import jax
    jax.config.update("jax_enable_x64", True)
    import linfeat as lf

    def _workload(key):
        p = lf.make_problem(key, d=200, k=10, m=20)
        return lf.reduce(p)

    calls, sizes = int(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")]
    build = jax.jit(jax.vmap(_workload))
    for b in sizes:
        keys = jax.random.split(jax.random.key(b), b)
        for i in range(calls):
            jax.block_until_ready(build(jax.random.split(jax.random.fold_in(keys[0], i), b)))
    # one batch of solves with metrics (eigenproblems in the set-up and the metrics)
    keys = jax.random.split(jax.random.key(0), 64)
    probs = jax.jit(jax.vmap(lambda k: lf.make_problem(k, d=200, k=10, m=20, n=20)))(keys)
    v0s = jax.random.normal(jax.random.key(1), (64, 10))
    tr = lf.fine_tune_batch(probs, v0s)
    print("OK", int((tr.status <= 1).sum()))
    """
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stress", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 processes, 64 keys, 5 calls")
    parser.add_argument("--timeout", type=float, default=600.0, help="watchdog per process (s)")
    args = parser.parse_args(argv)
    procs, calls, sizes = (2, 5, "64") if args.quick else (5, 20, "64,4096")
    hangs = errors = 0
    for i in range(procs):
        t = time.perf_counter()
        try:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(calls), sizes],
                capture_output=True, text=True, timeout=args.timeout,
            )  # fmt: skip
            ok = out.returncode == 0 and "OK" in out.stdout
            errors += not ok
            state = "ok" if ok else f"error (exit {out.returncode}): {out.stderr[-500:]}"
        except subprocess.TimeoutExpired:
            hangs += 1
            state = f"HANG (no exit within {args.timeout:.0f} s)"
        print(f"process {i + 1}/{procs}: {calls} calls x sizes {sizes}: "
              f"{time.perf_counter() - t:.1f} s, {state}", flush=True)  # fmt: skip
    print(f"{procs} fresh processes: {hangs} hangs, {errors} errors")
    return 1 if hangs or errors else 0


if __name__ == "__main__":
    sys.exit(main())
