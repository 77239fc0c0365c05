r"""Batches and sweeps: `jax.vmap` of the one engine, chunked, sharded and resumable.

`fine_tune_batch` is `jax.vmap(fine_tune)` (the same per-instance function,
`linfeat._flow.solve_reduced`) with what large runs need around it:

- chunks of `batch_size` lanes, the last padded so one shape compiles once, results moved
  to host memory chunk by chunk (always NumPy arrays, whatever the number of chunks);
- a tqdm bar over chunks, and for `sweep` a per-chunk checkpoint (resumable after a kill);
- several devices: each chunk's batch axis is split over a 1-D mesh with `jax.shard_map`
  (no collectives: every device runs its own while loops, so devices never wait on each
  other's step counts). A jit of a while loop over GSPMD-sharded inputs can deadlock when
  devices disagree on the trip count; `jax.make_mesh` defaults to Explicit axes in
  jax 0.10, which while loops reject, so the mesh is built with `AxisType.Auto`.

On CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=N` (set before JAX starts) splits
the host into N devices, one thread each: that is how a sweep uses several cores.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

from . import _validate as V
from ._chunking import chunks, pad_rows
from ._flow import check_call, make_settings, solve_reduced
from ._problem import Problem
from ._trajectory import Trajectory, load_trajectory, save_trajectory

AXIS = "batch"
METHODS = ("ft", "lp_ft", "lp")


def batch_mesh(devices: Sequence[jax.Device] | int | None = None) -> Mesh:
    """A 1-D mesh named "batch" over `devices` (default all; an int takes the first n)."""
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, int):
        available = jax.devices()
        if devices < 1 or devices > len(available):
            raise ValueError(
                f"`devices` = {devices}, but JAX sees {len(available)}: on CPU set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before JAX starts."
            )
        devices = available[:devices]
    devices = list(devices)
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def _spec(x) -> P:
    # Scalars (tolerances) are replicated; everything else is split on its first axis.
    return P() if jnp.ndim(x) == 0 else P(AXIS)


@functools.lru_cache(maxsize=64)
def _chunk_solver(mesh: Mesh | None, **static) -> Callable:
    """The jitted per-chunk solve: vmap of the engine, shard_map'ed over `mesh` if given."""

    def run(problems, v0s, settings):
        return jax.vmap(lambda p, v: solve_reduced(p, v, settings, adjoint=None, **static))(
            problems, v0s
        )

    if mesh is None:
        return jax.jit(run)

    def sharded(problems, v0s, settings):
        lanes = jax.tree.map(lambda _: P(AXIS), (problems, v0s))
        out_shape = jax.eval_shape(run, problems, v0s, settings)
        return jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(*lanes, jax.tree.map(lambda _: P(), settings)),
            out_specs=jax.tree.map(_spec, out_shape),
            check_vma=False,
        )(problems, v0s, settings)

    return jax.jit(sharded)


# Lanes per compiled chunk and device for `batch_size="auto"`. On CPU, small chunks are faster:
# a chunk's state stays in cache, and a vmapped while loop runs every lane of a chunk to the
# chunk's largest step count, which is closer to the mean in a small chunk (1024 `small`
# lanes, no metrics: 292 traj/s in chunks of 128 vs 189 in one chunk of 1024; with metrics
# 60 vs 49; chunks of 32-64 were no faster than 128: benchmarks/profiling/chunk_size.py).
# Accelerators need wide chunks to fill the device.
CPU_LANES = 128
ACCELERATOR_LANES = 4096
SORT_LANES = True  # order lanes by `log_condition_estimate` before chunking (see `lane_order`)


def auto_batch_size(mesh: Mesh | None = None) -> int:
    """Lanes per chunk for `batch_size="auto"`: 128 per device on CPU, 4096 per device on
    accelerators (GPU, TPU)."""
    devices = jax.devices() if mesh is None else list(mesh.devices.flat)
    per = CPU_LANES if devices[0].platform == "cpu" else ACCELERATOR_LANES
    return per * (1 if mesh is None else mesh.size)


def _batch_size(batch_size, mesh: Mesh | None) -> int | None:
    if isinstance(batch_size, str):
        if batch_size != "auto":
            raise ValueError(
                f'`batch_size` must be "auto", None (one chunk) or an int >= 1, got {batch_size!r}.'
            )
        return auto_batch_size(mesh)
    if batch_size is not None:
        V.check_int("batch_size", batch_size, min=1)
    return batch_size


def log_condition_estimate(X: Float[Array, "n d"]) -> Float[Array, ""]:
    r"""A cheap estimate of $\log\kappa(X^TX)$ on the row space, for grouping lanes by stiffness.

    $\log(p_1 / p_{last})$ over the pivots of a diagonally pivoted $LDL^T$ elimination of the
    smaller Gram matrix, stopping at pivots below $10^{-10} p_1$ (the rank): $O(c^3)$ flops for
    $c = \min(n, d)$, against $O(c^3)$ per Jacobi sweep in the reduction. The pivots bracket
    the eigenvalues only loosely, but lanes are ordered, not measured: on 1024 `small` lanes
    (square X) the order was as good as the exact condition number's.
    """
    n, d = X.shape
    G = X @ X.T if n <= d else X.T @ X
    c = G.shape[0]
    first = jnp.max(jnp.diag(G))
    tiny = 1e-10 * first

    def body(_, st):
        M, done, last = st
        diag = jnp.where(done, -jnp.inf, jnp.diag(M))
        j = jnp.argmax(diag)
        p = diag[j]
        ok = p > tiny
        row = M[j] / jnp.where(ok, p, 1.0)
        M = jnp.where(ok, M - jnp.outer(M[:, j], row), M)
        return M, done.at[j].set(True), jnp.where(ok, p, last)

    _, _, last = jax.lax.fori_loop(0, c, body, (G, jnp.zeros(c, bool), first))
    return jnp.log(jnp.where(first > 0, first / last, 1.0))


_stiffness_keys = jax.jit(jax.vmap(log_condition_estimate))


def lane_order(X, spans, size: int) -> np.ndarray:
    """Lanes sorted by `log_condition_estimate`, computed chunk by chunk (one compiled shape).

    A vmapped while loop runs every lane of a chunk to the chunk's largest step count; the
    step count of Rodas5P grows with the spread of time scales of $X^TX$, so chunks of
    similar condition waste fewer steps: on 1024 `small` lanes in chunks of 128, the mean
    step count was 0.80 of the chunks' maxima in the given order and 0.85 in this one
    (benchmarks/profiling/chunk_size.py). A stable sort: equal keys keep their order.
    """
    keys = [np.asarray(_stiffness_keys(pad_rows(X[lo:hi], size)))[: hi - lo] for lo, hi in spans]
    return np.argsort(np.concatenate(keys), kind="stable")


@jax.jit
def _gather(tree, idx):
    return jax.tree.map(lambda x: x[idx], tree)


def _to_host(tree, rows: int):
    return jax.tree.map(lambda x: np.asarray(x)[:rows], tree)


def _place(out, part, rows, total: int):
    """Writes one chunk's host arrays into the batch's arrays (allocated at the first chunk)
    at `rows` (a slice or index array): one copy per result, no concatenation and no final
    gather (each was a full pass over fresh memory: 0.6-0.7 s per 155 MB on this 2-core host,
    a fifth of `fine_tune_batch` with the full outputs)."""
    if out is None:
        out = jax.tree.map(lambda x: np.empty((total, *x.shape[1:]), x.dtype), part)
    jax.tree.map(lambda o, x: o.__setitem__(rows, x), out, part)
    return out


def _progress(it, show: bool, unit: str):
    if not show:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, unit=unit)


# The keyword arguments repeat fine_tune's on purpose (`duplicates` pairs the two signatures):
# fine_tune_batch is jax.vmap(fine_tune) with the same knobs, and each public function states
# its own signature, which an options object would hide from help() and the API reference.
def fine_tune_batch(
    problems: Problem,
    v0s: Float[Array, "b k"] | None = None,
    *,
    method: str = "ft",
    ts: Float[Array, " T"] | None = None,
    t_max: float | None = None,
    num_save: int = 64,
    rtol: float | None = None,
    atol: float | None = None,
    grad_tol: float | None = None,
    max_steps: int = 100_000,
    batch_size: int | str | None = "auto",
    outputs: str = "full",
    with_metrics: bool = True,
    progress: bool = False,
    devices: Sequence[jax.Device] | int | None = None,
) -> Trajectory:
    r"""FT, LP-FT or LP for a batch of problems: `jax.vmap(fine_tune)`, chunked.

    Every lane is the same computation as `fine_tune` on that problem with the same
    defaults (one engine), so the numbers agree with a vmapped `fine_tune` to rounding.
    Failures are reported per lane in `status`, never raised.

    Args:
        problems: a `Problem` whose leaves carry a leading batch axis b (equal shapes).
        v0s: initial heads (b, k); for `method="lp_ft"` the head LP starts from (default 0).
        method: "ft", "lp_ft" (FT from the linear-probe head, R10) or "lp" (flow on v only).
        ts, t_max, num_save, rtol, atol, grad_tol, max_steps: as for `fine_tune`
            (shared by all lanes).
        batch_size: lanes per compiled chunk (memory is O(batch_size)); "auto" (default):
            128 lanes per device on CPU, 4096 per device on accelerators; None: one chunk.
        outputs: "full" (everything `fine_tune` returns) or "metrics" (no per-time `A`, no
            `basis`/`B0`: O(T + kr) memory per lane, for huge sweeps; `B` then raises).
        with_metrics: evaluate `Metrics` at the save times (False: `metrics` is None).
        progress: a tqdm bar over chunks.
        devices: None (default: one device), a number n (the first n devices) or a list of
            devices: each chunk's lanes are split over them (`jax.shard_map` on a 1-D mesh);
            equal to one device up to rounding (the shard shape changes BLAS blocking only).

    Returns:
        A `Trajectory` of NumPy arrays with a leading batch axis on every field.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    if outputs not in ("full", "metrics"):
        raise ValueError(f"`outputs` must be 'full' or 'metrics', got {outputs!r}.")
    mesh = None if devices is None else batch_mesh(devices)
    batch_size = _batch_size(batch_size, mesh)
    b = problems.X.shape[0]
    k = problems.B0.shape[-2]
    dtype = problems.X.dtype
    if v0s is None:
        if method == "ft":
            raise ValueError("`fine_tune_batch(method='ft')` needs the initial heads `v0s` (b, k).")
        v0s = jnp.zeros((b, k), dtype)
    if np.shape(v0s) != (b, k):
        raise ValueError(f"`v0s` must have shape (b, k) = {(b, k)}, got {np.shape(v0s)}.")
    check_call(problems, v0s, num_save=num_save, max_steps=max_steps)
    if t_max is not None and np.ndim(t_max) != 0:
        raise ValueError("`t_max` must be one number shared by the batch.")
    settings = make_settings(dtype, ts=ts, t_max=t_max, rtol=rtol, atol=atol, grad_tol=grad_tol)
    solve = _chunk_solver(
        mesh,
        num_save=num_save if ts is None else int(np.shape(ts)[-1]),
        train_features=method != "lp",
        lp_init=method == "lp_ft",
        max_steps=max_steps,
        outputs=outputs,
        with_metrics=with_metrics,
    )
    spans, size = chunks(b, batch_size, 1 if mesh is None else mesh.size)
    v0s = jnp.asarray(v0s, dtype)
    # Several chunks: solve lanes of similar stiffness together (`lane_order`); every lane's
    # result is the same whatever the other lanes of its chunk.
    order = lane_order(problems.X, spans, size) if len(spans) > 1 and SORT_LANES else None
    out = None
    for lo, hi in _progress(spans, progress, "chunks"):
        if order is None:
            chunk = pad_rows(jax.tree.map(lambda x: x[lo:hi], (problems, v0s)), size)
            rows = slice(lo, hi)
        else:  # the chunk's lanes, padded with copies of its last one, in one gather
            idx = np.concatenate([order[lo:hi], np.repeat(order[hi - 1], size - (hi - lo))])
            chunk = _gather((problems, v0s), idx)
            rows = order[lo:hi]  # written back to the lanes' own positions
        if mesh is not None:
            chunk = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P(AXIS))), chunk)
        out = _place(out, _to_host(solve(*chunk, settings), hi - lo), rows, b)
    return out


def sweep(
    instance: Callable[[Any], tuple[Problem, Float[Array, " k"]]],
    params: Any,
    *,
    batch_size: int = 4096,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    outputs: str = "metrics",
    **solver_kwargs,
) -> Trajectory:
    r"""Builds and solves a large sweep chunk by chunk in bounded memory, resumably.

    `instance(p)` maps one slice of `params` (a pytree with a leading axis, e.g. PRNG keys,
    or keys and knobs) to `(problem, v0)`; it is vmapped and jitted per chunk, so only
    `batch_size` problems exist at once, and solved by `fine_tune_batch` in its own
    (`batch_size="auto"`) chunks. With `checkpoint_dir`, every finished chunk is written
    there atomically (`chunk_<start>.npz`) and a rerun skips the chunks on disk.

    Args:
        instance: single-instance constructor, `(problem, v0) = instance(p)`.
        params: pytree of arrays with a leading axis of length N (the sweep size).
        batch_size: problems built per chunk (and per checkpoint).
        checkpoint_dir: directory for resumable per-chunk results, or None.
        progress: tqdm bar over chunks.
        outputs: "metrics" (default; O(T + kr) per lane) or "full".
        **solver_kwargs: passed to `fine_tune_batch` (method, ts, rtol, devices, ...).

    Returns:
        A `Trajectory` of NumPy arrays with leading axis N.
    """
    V.check_int("batch_size", batch_size, min=1)
    N = jax.tree.leaves(params)[0].shape[0]
    devices = solver_kwargs.get("devices")
    spans, size = chunks(N, batch_size, 1 if devices is None else batch_mesh(devices).size)
    build = jax.jit(jax.vmap(instance))
    out = None
    for lo, hi in _progress(spans, progress, "chunks"):
        path = None
        if checkpoint_dir is not None:
            path = os.path.join(checkpoint_dir, f"chunk_{lo:09d}.npz")
            if os.path.exists(path):
                out = _place(out, load_trajectory(path), slice(lo, hi), N)
                continue
        problems, v0s = build(pad_rows(jax.tree.map(lambda x: x[lo:hi], params), size))
        tr = fine_tune_batch(problems, v0s, outputs=outputs, **solver_kwargs)
        tr = jax.tree.map(lambda x: x[: hi - lo], tr)
        if path is not None:
            save_trajectory(path, tr)
        out = _place(out, tr, slice(lo, hi), N)
    return out
