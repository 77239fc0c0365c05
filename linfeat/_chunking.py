"""Chunk and pad: one helper for every batched loop (sweeps, the vmap rule, the checks).

A batch of b lanes is cut into spans of at most `batch_size`, and the last span is padded to
the full chunk size by repeating its last row, so one compiled shape serves every chunk; the
padded lanes' results are dropped by the caller.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def chunks(n: int, batch_size: int | None, multiple: int = 1) -> tuple[list[tuple[int, int]], int]:
    """Spans [lo, hi) of at most `batch_size` (None: one chunk), and the padded chunk size."""
    size = n if batch_size is None else max(1, min(batch_size, n))
    spans = [(i, min(i + size, n)) for i in range(0, n, size)]
    return spans, -(-size // multiple) * multiple


def pad_rows(tree, n: int):
    """Pads every leaf's leading axis to n by repeating its last row (one compiled shape)."""

    def pad(x):
        if x.shape[0] == n:
            return x
        return jnp.concatenate([x, jnp.repeat(x[-1:], n - x.shape[0], axis=0)])

    return jax.tree.map(pad, tree)
