r"""Keeps a long-running process within the kernel's limit on memory mappings.

XLA:CPU (jaxlib 0.10) maps every compiled kernel into pages of its own: three mappings (code,
constants, data) per fused kernel, measured ~750 for one `fine_tune` program and ~1300 for its
gradient. Linux caps a process at `vm.max_map_count` mappings (65530 by default); past it the
next compile's `mmap` fails and the process dies with SIGSEGV inside
`backend_compile_and_load`. The default test suite did exactly that after ~90 distinct
programs (its core dump held 65009 mappings), and a long `linfeat check` or a notebook that
compiles many shapes can too. JAX keeps every executable alive in its caches, so a process
that compiles many programs releases them (`jax.clear_caches`) once it uses a large part of
its allowance: `release_compiled_programs`, called between the stages of `linfeat check`,
`linfeat reproduce`, the benchmarks and after each test.
"""

from __future__ import annotations

import gc

import jax


def map_count() -> int | None:
    """Number of memory mappings of this process (None where /proc is unavailable)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def map_limit() -> int | None:
    """The kernel's per-process limit on mappings, `vm.max_map_count` (None if unknown)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def release_compiled_programs(fraction: float = 0.5) -> bool:
    """Clears JAX's compilation caches if this process uses over `fraction` of its mappings.

    Compiled programs are recompiled on their next call (seconds each), so this runs only when
    the allowance is half used: at the default limit, after ~40 distinct solver programs.
    Returns True when the caches were cleared.
    """
    n, limit = map_count(), map_limit()
    if n is None or limit is None or n < fraction * limit:
        return False
    jax.clear_caches()
    gc.collect()
    return True
