"""Test configuration.

- float64 for every check (the library never switches it on itself).
- After each test, compiled programs are released once the process uses half of its memory
  mappings (`linfeat._runtime`): XLA:CPU maps ~3 pages per compiled kernel, and the suite
  compiles enough programs to exceed Linux's `vm.max_map_count` (the next compile then dies
  with SIGSEGV; CI did, in tests/test_gradients.py).
"""

import jax
import pytest

from linfeat._runtime import release_compiled_programs

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True)
def _bounded_mappings():
    yield
    release_compiled_programs()
