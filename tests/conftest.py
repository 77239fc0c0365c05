"""Test configuration: float64 for every check (the library never switches it on itself)."""

import jax

jax.config.update("jax_enable_x64", True)
