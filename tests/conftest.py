"""Test configuration.

- float64 for every check (the library never switches it on itself).
- A persistent compilation cache shared by the xdist workers of a run (and kept between local
  runs) in `.pytest_cache/jax-compilation-cache`: the suite is compile-bound, and the same
  solver program is compiled by several test files. `LINFEAT_TEST_JAX_CACHE=off` disables it,
  another value names the directory. JAX writes no cache entry for a program that holds a host
  callback, and equinox's runtime checks inside diffrax (`saveat.ts` increasing and inside
  [t0, t1]) are host callbacks unless `EQX_ON_ERROR` is `nan`; linfeat validates `ts` itself
  before it reaches diffrax (tests/test_validation.py), so the suite sets `EQX_ON_ERROR=nan`
  (before equinox is imported) and those checks cannot fire on any input the library accepts.
- XLA compiles the suite's programs without LLVM's optimisation passes
  (`--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true`, appended to
  `XLA_FLAGS` before the backend starts; subprocesses inherit it). The suite is compile-bound
  (~80% of its CPU time is XLA compilation, most of that in LLVM). The tests exercise the same
  HLO programs users run; only the machine code differs, and with it the rounding of some
  operations: measured against XLA's defaults, generated X differed by 8e-16, a converged
  FT state by 2e-13 (the same step counts), far below every tolerance here (those are
  derived from the solver tolerances, 1e-10 and up, or from rounding bounds of plain NumPy
  references). Measured on this 2-core machine: 21% less wall time on
  tests/test_experiments.py + test_theory_fixes.py + test_sharding.py (150.7 s against
  190.5 s, runtime-heavy tests included). `linfeat check`, the experiments and the benchmarks
  run at XLA's defaults; `LINFEAT_TEST_XLA_FLAGS=default` runs the suite there too.
- After each test, compiled programs are released once the process uses half of its memory
  mappings (`linfeat._runtime`): XLA:CPU maps ~3 pages per compiled kernel, and the suite
  compiles enough programs to exceed Linux's `vm.max_map_count` (the next compile then dies
  with SIGSEGV; CI did, in tests/test_gradients.py).
- Before the run, cache entries without their access-time file are removed (`_repair_cache`):
  JAX's eviction reads the access time of every entry on each write, so one entry whose
  writer was killed between its two files (a timed-out or interrupted run) made every later
  write in every worker fail with FileNotFoundError (a warning, an error under
  `filterwarnings = error`). Seen on this machine: 7 orphans left by interrupted runs failed
  tests/test_engine.py and tests/test_flow.py on their first compile.
"""

import os
import pathlib

os.environ.setdefault("EQX_ON_ERROR", "nan")
if os.environ.get("LINFEAT_TEST_XLA_FLAGS", "fast") != "default":
    _FAST = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from linfeat._runtime import release_compiled_programs  # noqa: E402

jax.config.update("jax_enable_x64", True)

_CACHE = os.environ.get(
    "LINFEAT_TEST_JAX_CACHE",
    str(pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax-compilation-cache"),
)


def _repair_cache(path: pathlib.Path) -> None:
    """Removes entries whose `-atime` file is missing, under the lock JAX's cache uses."""
    import filelock

    if not path.is_dir():
        return
    with filelock.FileLock(path / ".lockfile"):  # JAX's LRUCache holds it for each put
        for entry in path.glob("*-cache"):
            if not (path / (entry.name.removesuffix("-cache") + "-atime")).exists():
                entry.unlink(missing_ok=True)


if _CACHE != "off":
    _repair_cache(pathlib.Path(_CACHE))
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    # Eviction on (a size bound) makes JAX lock the cache with `filelock`, so that workers never
    # read an entry another one is still writing.
    jax.config.update("jax_compilation_cache_max_size", 4 * 2**30)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True)
def _bounded_mappings():
    yield
    release_compiled_programs()
