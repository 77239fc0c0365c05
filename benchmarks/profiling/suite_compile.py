"""A pytest plugin that records, per test, CPU seconds and the compile time JAX reports.

The default suite is compile-bound; this is the measurement behind that statement and the
list of the costliest tests. Run from the repository root (one JSON per xdist worker):

    LINFEAT_TEST_JAX_CACHE=/tmp/cold-cache PYTHONPATH=benchmarks/profiling \
        python -m pytest -p suite_compile
    python benchmarks/profiling/suite_compile.py      # the summary, per file and per test

`LINFEAT_TEST_JAX_CACHE` pointing at an empty directory reproduces a cold CI run. CPU time
is the worker process's (all threads) while the test runs, fixtures included.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys
import time

import pytest

OUT = os.environ.get("SUITE_COMPILE_OUT", "/tmp/suite_compile")
EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
    "/jax/compilation_cache/compile_time_saved_sec": "cache_saved",
}

_current = ["<collection>"]
_acc: dict = collections.defaultdict(collections.Counter)


def _listener(event, duration, **kwargs):
    name = EVENTS.get(event)
    if name is not None:
        _acc[_current[0]][name] += duration
        _acc[_current[0]][name + "_n"] += 1


def pytest_configure(config):
    import jax

    jax.monitoring.register_event_duration_secs_listener(_listener)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[0] = item.nodeid
    cpu, wall = time.process_time(), time.perf_counter()
    yield
    _acc[item.nodeid]["cpu"] += time.process_time() - cpu
    _acc[item.nodeid]["wall"] += time.perf_counter() - wall


def pytest_sessionfinish(session):
    os.makedirs(OUT, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    if worker == "main" and not any(v.get("cpu") for v in _acc.values()):
        return  # the xdist controller runs no test
    with open(os.path.join(OUT, f"{worker}.json"), "w") as f:
        json.dump({k: dict(v) for k, v in _acc.items()}, f)


def summary(out: str = OUT, top: int = 40) -> None:
    acc: dict = {}
    for path in glob.glob(os.path.join(out, "*.json")):
        with open(path) as f:
            acc.update(json.load(f))
    keys = ("cpu", "wall", "trace", "lower", "compile", "compile_n", "cache_saved")
    total = collections.Counter()
    files: dict = collections.defaultdict(collections.Counter)
    for test, v in acc.items():
        for k in keys:
            total[k] += v.get(k, 0)
            files[test.split("::")[0]][k] += v.get(k, 0)
    print("total: " + ", ".join(f"{k} {total[k]:.0f}" for k in keys))
    print(f"{'file':42s} {'cpu s':>7s} {'compile s':>9s} {'compiles':>8s}")
    for name, c in sorted(files.items(), key=lambda x: -x[1]["cpu"]):
        print(f"{name:42s} {c['cpu']:7.1f} {c['compile']:9.1f} {c['compile_n']:8.0f}")
    print(f"\nthe {top} costliest tests (cpu s, compile s, compiles):")
    for test, v in sorted(acc.items(), key=lambda x: -x[1].get("cpu", 0))[:top]:
        print(f"{v.get('cpu', 0):7.1f} {v.get('compile', 0):7.1f} {v.get('compile_n', 0):5.0f}  "
              f"{test}")  # fmt: skip


if __name__ == "__main__":
    summary(*sys.argv[1:2])
