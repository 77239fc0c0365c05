r"""Sweeps over several devices: the batch axis sharded with `jax.shard_map`.

Every lane of a sweep is independent, so the batch axis is split over a one-dimensional mesh
and each device runs its own copy of the per-lane code on its shard, with no collectives.
Two facts measured before linfeat (shared/SOLVER_NOTES.md) fix the details:

- a jit of a while_loop over GSPMD-sharded inputs can deadlock when devices disagree on the
  trip count; `shard_map` gives each device its own loop (and its own early exit);
- `jax.make_mesh` defaults to Explicit axes in jax 0.10, which while_loop code rejects: the
  mesh is built with `AxisType.Auto`; `check_vma=False` because loop carries start from
  constants.

On CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=N` (set before JAX starts) splits
the host into N devices: one thread each, which is also how the sweep uses several cores.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "batch"


def batch_mesh(devices: Sequence[jax.Device] | int | None = None) -> Mesh:
    """A 1-D mesh named "batch" over `devices` (default all; an int takes the first n)."""
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, int):
        available = jax.devices()
        if devices > len(available):
            raise ValueError(
                f"asked for {devices} devices, JAX sees {len(available)}: on CPU set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before JAX starts."
            )
        devices = available[:devices]
    devices = list(devices)
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def _spec(x) -> P:
    # Scalars (tolerances, flags) are replicated; everything else is split on its first axis.
    return P() if jax.numpy.ndim(x) == 0 else P(AXIS)


def shard_lanes(fn: Callable, mesh: Mesh) -> Callable:
    """`fn` (a per-batch function of pytrees whose leaves lead with the batch axis, or are
    scalars) run on every shard of the batch with `jax.shard_map`, no collectives.

    The batch length must be a multiple of the mesh size.
    """

    @functools.wraps(fn)
    def run(*args):
        in_specs = jax.tree.map(_spec, args)

        def local(*a):
            return fn(*a)

        out_shape = jax.eval_shape(fn, *args)
        out_specs = jax.tree.map(_spec, out_shape)
        return jax.shard_map(
            local, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )(*args)

    return run


def put_lanes(tree, mesh: Mesh):
    """Places a batch pytree on the mesh: leading axes split, scalars replicated."""
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, _spec(x))), tree)


def shard_sweep(
    problems,
    v0s,
    *,
    devices: Sequence[jax.Device] | int | None = None,
    **kwargs,
):
    """`fine_tune_batch` with the batch axis sharded over `devices` (default: all devices).

    Results are identical to one device (every lane runs the same arithmetic). Each chunk
    is padded to a multiple of the device count.
    """
    from ._batched import fine_tune_batch

    return fine_tune_batch(problems, v0s, mesh=batch_mesh(devices), **kwargs)
