r"""The result of a flow: `Trajectory`, and its atomic save and load (`sweep` checkpoints)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._engine import Status
from ._io import atomic_savez
from ._metrics import Metrics


class Trajectory(NamedTuple):
    r"""A gradient-flow trajectory saved at times `ts`, with metrics and a solver status.

    The features are kept in the exact coordinates of the reduction: `A` = B Q (k x r, Q =
    `basis` the right singular vectors of X), since FT changes B only inside S (R1):
    $B(t) = B_0 + (A(t) - B_0Q)Q^T$ (`B`, `B_final`). Batched trajectories carry a leading
    batch axis on every field. `metrics` are evaluated at the save times, `final_metrics` at
    the stop time (the converged state). With `outputs="metrics"` (sweeps) `A`, `basis` and `B0` are
    None and `B`, `B_final` raise. Saves after the stop time (`t_final`) repeat the final
    state.
    """

    # Typed field declarations (jaxtyping shapes); Problem, Reduced and Trajectory each declare
    # their own, so `duplicates` pairs these same-shape lines: declarations, not logic.
    ts: Float[Array, " T"]
    v: Float[Array, "T k"]
    A: Float[Array, "T k r"] | None
    metrics: Metrics | None
    final_metrics: Metrics | None
    v0: Float[Array, " k"]
    v_final: Float[Array, " k"]
    A_final: Float[Array, "k r"]
    t_final: Float[Array, ""]
    num_steps: Int[Array, ""]
    status: Int[Array, ""]
    basis: Float[Array, "d r"] | None
    B0: Float[Array, "k d"] | None

    def _embed(self, A):
        if self.basis is None or self.B0 is None or A is None:
            raise ValueError(
                "this trajectory keeps only the S-coordinates `A = B Q` (outputs='metrics'): "
                "pass outputs='full' to get B in R^d."
            )
        Q, B0 = self.basis, self.B0
        A0 = jnp.einsum("...kd,...dr->...kr", B0, Q)
        if A.ndim > A0.ndim:  # a time axis
            A0, B0 = A0[..., None, :, :], B0[..., None, :, :]
            Q = Q[..., None, :, :]
        return B0 + jnp.einsum("...kr,...dr->...kd", A - A0, Q)

    @property
    def B(self) -> Float[Array, "T k d"]:
        """B(t) in $R^d$ at every save time (materialises T x k x d)."""
        return self._embed(self.A)

    @property
    def B_final(self) -> Float[Array, "k d"]:
        """B at the stop time in $R^d$."""
        return self._embed(self.A_final)

    @property
    def converged(self):
        """Whether the solve stopped on the gradient test (`status == Status.CONVERGED`)."""
        return self.status == Status.CONVERGED


def save_trajectory(path, tr: Trajectory) -> None:
    """Writes a (host) trajectory to an `.npz` file atomically (`sweep` checkpoints)."""
    flat = {}
    for name, x in tr._asdict().items():
        if name in ("metrics", "final_metrics") and x is not None:
            flat.update({f"{name}.{m}": y for m, y in x._asdict().items()})
        elif x is not None:
            flat[name] = x
    atomic_savez(path, flat, compressed=False)


def load_trajectory(path) -> Trajectory:
    """Reads a trajectory written by `save_trajectory`."""
    with np.load(path) as z:
        mets = {
            name: Metrics(**{m: z[f"{name}.{m}"] for m in Metrics._fields})
            if f"{name}.train_loss" in z.files
            else None
            for name in ("metrics", "final_metrics")
        }
        fields = {n: (z[n] if n in z.files else None) for n in Trajectory._fields if n not in mets}
    return Trajectory(**mets, **fields)
