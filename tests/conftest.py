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
- After each test, compiled programs are released once the process uses half of its memory
  mappings (`linfeat._runtime`): XLA:CPU maps ~3 pages per compiled kernel, and the suite
  compiles enough programs to exceed Linux's `vm.max_map_count` (the next compile then dies
  with SIGSEGV; CI did, in tests/test_gradients.py).
"""

import os
import pathlib

os.environ.setdefault("EQX_ON_ERROR", "nan")

import jax  # noqa: E402
import pytest  # noqa: E402

from linfeat._runtime import release_compiled_programs  # noqa: E402

jax.config.update("jax_enable_x64", True)

_CACHE = os.environ.get(
    "LINFEAT_TEST_JAX_CACHE",
    str(pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax-compilation-cache"),
)
if _CACHE != "off":
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
