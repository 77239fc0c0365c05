r"""Methods that change the parametrisation: surgical FT, LoRA and depth 3 (docs/theory.md, 10).

Each public function runs one instance (vmap it for batches; it is differentiable with
respect to the problem's arrays, the head and the method's initial arrays) through the one
solver core `linfeat._engine.solve`, on the exact small states of `linfeat._arch_flows`, and
returns the metrics of the *effective* linear model $x \mapsto u^TB_{eff}x$ at every save
time, so that every method can be compared with FT on the same footing. This module has LoRA,
depth 3 and the validation they share with surgical FT (`linfeat._methods_surgical`).
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from . import _validate as V
from ._arch_flows import (
    Depth3,
    LoRA,
    LoRAData,
    base_rows,
    error_coeffs,
    extended_frame,
    field_norm,
    frame_metrics,
    perp_part,
)
from ._engine import at_saves_and_end, solve
from ._flow import _raise_on_failure, _settings, check_call, make_settings
from ._metrics import Metrics
from ._problem import Problem
from ._reduce import reduce

_STATIC = ("num_save", "max_steps")


def _prepare(problem: Problem, v0, *, ts, t_max, num_save, rtol, atol, grad_tol, max_steps):
    """Validated v0 and settings (the checks every flow of linfeat makes)."""
    check_call(problem, v0, num_save=num_save, max_steps=max_steps)
    dtype = problem.X.dtype
    settings = make_settings(dtype, ts=ts, t_max=t_max, rtol=rtol, atol=atol, grad_tol=grad_tol)
    num_save = num_save if ts is None else int(np.shape(ts)[-1])
    return jnp.asarray(v0, dtype), settings, num_save


def _warn_zero_head(v0, what: str, effect: str) -> None:
    if V.is_concrete(v0) and np.ndim(v0) == 1 and not np.any(np.asarray(v0)):
        warnings.warn(f"{what}: v0 = 0, {effect}", V.TheoryConditionWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------


def lora_init(key: PRNGKeyArray, rank: int, d: int, *, scale=1.0, dtype=None):
    r"""A random LoRA down-projection $A_0 \in R^{r \times d}$ (U starts at 0).

    Entries i.i.d. $N(0, \text{scale}^2/d)$: Kaiming-like fan-in scaling, rows of expected
    squared norm $\text{scale}^2$. (PEFT's default, Kaiming-uniform with $a = \sqrt5$, is
    $U(-1/\sqrt d, 1/\sqrt d)$, i.e. scale $1/\sqrt3$.) A generic $A_0$ has rows outside S,
    which is what lets LoRA move the features on $S^\perp$ (docs/theory.md, section 10.2).

    Args:
        key: PRNG key.
        rank: the LoRA rank $r_\ell \ge 1$ (static).
        d: the input dimension (static).
        scale: the row scale (> 0).
        dtype: float dtype; default the JAX default float.

    Returns:
        $A_0$ of shape (rank, d).

    References:
        Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.
    """
    rank = V.check_int("rank", rank, min=1)
    d = V.check_int("d", d, min=1)
    V.check_positive("scale", scale, fix="it is the row scale of A0; pass e.g. 1.0.")
    dtype = jnp.result_type(float) if dtype is None else V.check_float_dtype("dtype", dtype)
    return jnp.asarray(scale, dtype) / np.sqrt(d) * jax.random.normal(key, (rank, d), dtype)


class LoRATrajectory(NamedTuple):
    r"""A LoRA trajectory: $B(t) = B_0 + U(t)A_\ell(t)$, $A_\ell = A_0 + (C - A_0Q)Q^T$.

    `metrics` are those of the effective model $(v, B)$ (feature changes relative to $B_0$).
    `C` holds the S-coordinates $A_\ell Q$ ($A_\ell\Pi_\perp = A_0\Pi_\perp$ never moves).
    `conserved_drift` is $\|U^TU - A_\ell A_\ell^T - (U_0^TU_0 - A_0A_0^T)\|_F$ (0 in exact
    arithmetic). Batched trajectories carry a leading axis on every field.
    """

    ts: Float[Array, " T"]
    v: Float[Array, "T k"]
    U: Float[Array, "T k rl"]
    C: Float[Array, "T rl r"]
    metrics: Metrics
    final_metrics: Metrics
    conserved_drift: Float[Array, " T"]
    v_final: Float[Array, " k"]
    U_final: Float[Array, "k rl"]
    C_final: Float[Array, "rl r"]
    t_final: Float[Array, ""]
    num_steps: Int[Array, ""]
    status: Int[Array, ""]
    A0: Float[Array, "rl d"]
    basis: Float[Array, "d r"]
    B0: Float[Array, "k d"]

    def lora_A(self, C):
        """$A_\\ell$ in $R^d$ from its S-coordinates C (any leading axes)."""
        Q = self.basis
        return self.A0 + jnp.einsum("...lr,dr->...ld", C - self.A0 @ Q, Q)

    @property
    def B(self) -> Float[Array, "T k d"]:
        """The effective features $B_0 + UA_\\ell$ at every save (unbatched)."""
        return self.B0 + self.U @ self.lora_A(self.C)

    @property
    def B_final(self) -> Float[Array, "k d"]:
        """The effective features at the stop time (unbatched)."""
        return self.B0 + self.U_final @ self.lora_A(self.C_final)


@functools.partial(jax.jit, static_argnames=_STATIC + ("train_head",))
def _lora_run(problem, v0, A0, settings, *, num_save, max_steps, train_head) -> LoRATrajectory:
    red = reduce(problem)
    ts, t_max, grad_tol = _settings(red, problem.Y, v0, settings, num_save)
    k, rl = red.k, A0.shape[0]
    fr = extended_frame(problem, red, perp_part(red, A0.T))  # E = Pi_perp A0^T
    RtR = fr.gram[-rl:, -rl:]
    flow, data = LoRA(train_head=train_head), LoRAData(red.flow_data, red.A0)
    y0 = (v0, jnp.zeros((k, rl), v0.dtype), A0 @ red.basis)
    sol = solve(flow, y0, data, ts=ts, t1=t_max, rtol=settings.rtol, atol=settings.atol,
                grad_tol=grad_tol, max_steps=max_steps)  # fmt: skip
    H0 = base_rows(fr, k, v0.dtype)
    C0 = y0[2]

    def at(v, U, C):
        UC = U @ C
        dH = jnp.zeros_like(H0).at[:, : red.r].set(UC).at[:, -rl:].set(U)
        Utv = U.T @ v
        c = error_coeffs(fr, C.T @ Utv, v, Utv)
        m = frame_metrics(
            fr, c=c, AQ=red.A0 + UC, u=v, dH=dH, H0=H0, dS=UC,
            perp2=jnp.sum((U @ RtR) * U), head=v, head0=v0,
            grad_norm=field_norm(flow, (v, U, C), data),
        )  # fmt: skip
        # A A^T = C C^T + A0 Pi_perp A0^T, whose second term is constant
        return m, jnp.linalg.norm(U.T @ U - C @ C.T + C0 @ C0.T)

    (mets, drift), (final, _) = at_saves_and_end(at, sol.ys, sol.y_final)
    (v_t, U_t, C_t), (v_f, U_f, C_f) = sol.ys, sol.y_final
    return LoRATrajectory(
        ts=ts, v=v_t, U=U_t, C=C_t, metrics=mets, final_metrics=final, conserved_drift=drift,
        v_final=v_f, U_final=U_f, C_final=C_f, t_final=sol.t_final, num_steps=sol.num_steps,
        status=sol.status, A0=A0, basis=red.basis, B0=problem.B0,
    )  # fmt: skip


def lora_fine_tune(
    problem: Problem,
    v0: Float[Array, " k"],
    *,
    A0: Float[Array, "rl d"],
    train_head: bool = True,
    ts: Float[Array, " T"] | None = None,
    t_max: float | None = None,
    num_save: int = 64,
    rtol: float | None = None,
    atol: float | None = None,
    grad_tol: float | None = None,
    max_steps: int = 100_000,
    check: bool = True,
) -> LoRATrajectory:
    r"""LoRA: gradient flow on $(v, U, A_\ell)$ with features $B = B_0 + UA_\ell$.

    Update rule ($\hat L = \|XB^Tv - Y\|^2$, $h = X^Tr$, paper's time): $\dot v = -2Bh$
    (0 with `train_head=False`), $\dot U = -2v(A_\ell h)^T$, $\dot A_\ell = -2U^Tv\,h^T$, from
    $U(0) = 0$, $A_\ell(0) = A_0$ (`lora_init`), $B_0$ frozen, no $\alpha/r$ factor (it is a
    rescaled $A_0$ and learning rate). $\dot A_\ell$ has rows in S, so $A_\ell\Pi_\perp =
    A_0\Pi_\perp$ and the exact state is $(v, U, C = A_\ell Q)$, $k + kr_\ell + r_\ell r$
    numbers whatever d. [derived] (docs/theory.md, section 10.2): $U^TU - A_\ell A_\ell^T$ is
    conserved; $(B - B_0)\Pi_\perp = UA_0\Pi_\perp$, non-zero once U moves unless the rows of
    $A_0$ lie in S: LoRA moves the features off S, FT never does (R1). One instance,
    vmappable, differentiable.

    Args:
        problem: the `Problem`.
        v0: the initial head (k,).
        A0: the initial down-projection ($r_\ell$, d), not all zero ($A_0 = 0$ is a
            stationary point of $(U, A_\ell)$).
        train_head: train v too (default, as in practice) or keep it at $v_0$ (static).
        ts, t_max, num_save, rtol, atol, grad_tol, max_steps, check: as for
            `linfeat.fine_tune`.

    Returns:
        A `LoRATrajectory`.

    References:
        Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.
    """
    v0, settings, num_save = _prepare(problem, v0, ts=ts, t_max=t_max, num_save=num_save,
                                      rtol=rtol, atol=atol, grad_tol=grad_tol,
                                      max_steps=max_steps)  # fmt: skip
    train_head = V.check_bool("train_head", train_head)
    V.check_real_float("A0", A0, allow_int=True)
    if np.ndim(A0) != 2 or np.shape(A0)[1] != problem.X.shape[-1] or np.shape(A0)[0] < 1:
        raise ValueError(
            f"`A0` must be a (rank, d) matrix with rank >= 1 and d = {problem.X.shape[-1]}, "
            f"got shape {np.shape(A0)}; draw one with `linfeat.methods.lora_init`."
        )
    if V.is_concrete(A0):
        a = V.as_array("A0", A0)
        if not np.any(a):
            raise ValueError(
                "`A0` is all zero: with U(0) = 0 too, neither LoRA factor ever receives a "
                "gradient (only the head trains, i.e. LP); draw A0 with "
                "`linfeat.methods.lora_init`."
            )
    if not train_head:
        _warn_zero_head(v0, "lora_fine_tune", "and the head is frozen: nothing moves.")
    traj = _lora_run(problem, v0, jnp.asarray(A0, problem.X.dtype), settings,
                     num_save=num_save, max_steps=max_steps, train_head=train_head)  # fmt: skip
    if check:
        _raise_on_failure(traj, "lora_fine_tune")
    return traj


# ---------------------------------------------------------------------------------------
# Depth 3
# ---------------------------------------------------------------------------------------


class DeepTrajectory(NamedTuple):
    r"""A depth-3 trajectory, $f = v^TCBx$, $B(t) = B_0 + (A(t) - B_0Q)Q^T$.

    `metrics` are those of the effective model (head v, features the composite CB; feature
    changes relative to $C_0B_0$). `drift_CB` and `drift_vC` are the drifts of the conserved
    $C^TC - BB^T$ and $vv^T - CC^T$ (Frobenius norms, 0 in exact arithmetic).
    """

    ts: Float[Array, " T"]
    v: Float[Array, "T k"]
    C: Float[Array, "T k k"]
    A: Float[Array, "T k r"]
    metrics: Metrics
    final_metrics: Metrics
    drift_CB: Float[Array, " T"]
    drift_vC: Float[Array, " T"]
    v_final: Float[Array, " k"]
    C_final: Float[Array, "k k"]
    A_final: Float[Array, "k r"]
    t_final: Float[Array, ""]
    num_steps: Int[Array, ""]
    status: Int[Array, ""]
    basis: Float[Array, "d r"]
    B0: Float[Array, "k d"]

    def _embed(self, A):
        return self.B0 + (A - self.B0 @ self.basis) @ self.basis.T

    @property
    def B(self) -> Float[Array, "T k d"]:
        """The first layer B at every save (unbatched)."""
        return self._embed(self.A)

    @property
    def composite(self) -> Float[Array, "T k d"]:
        """The composite features CB at every save (unbatched)."""
        return self.C @ self.B


@functools.partial(jax.jit, static_argnames=_STATIC)
def _deep_run(problem, v0, C0, settings, *, num_save, max_steps) -> DeepTrajectory:
    red = reduce(problem)
    ts, t_max, grad_tol = _settings(red, problem.Y, v0, settings, num_save)
    k = red.k
    fr = extended_frame(problem, red, perp_part(red, problem.B0.T))  # E = Pi_perp B0^T
    PtP = fr.gram[-k:, -k:]
    flow = Depth3()
    sol = solve(flow, (v0, C0, red.A0), red.flow_data, ts=ts, t1=t_max, rtol=settings.rtol,
                atol=settings.atol, grad_tol=grad_tol, max_steps=max_steps)  # fmt: skip
    H0 = jnp.zeros((k, fr.gram.shape[-1]), v0.dtype).at[:, red.r : red.r + k].set(C0)

    def at(v, C, A):
        D, dC = A - red.A0, C - C0
        dH = jnp.zeros_like(H0).at[:, : red.r].set(C @ D).at[:, red.r : red.r + k].set(dC)
        u = C.T @ v
        m = frame_metrics(
            fr, c=error_coeffs(fr, D.T @ u, u, jnp.zeros((k,), v.dtype)), AQ=A, u=u, dH=dH,
            H0=H0, dS=C @ D + dC @ red.A0, perp2=jnp.sum((dC @ PtP) * dC), head=v, head0=v0,
            grad_norm=field_norm(flow, (v, C, A), red.flow_data),
        )  # fmt: skip
        # B B^T - B0 B0^T = D D^T + D A0^T + A0 D^T (B - B0 = D Q^T has rows in S)
        dBB = D @ D.T + D @ red.A0.T + red.A0 @ D.T
        drift_cb = C.T @ C - C0.T @ C0 - dBB
        drift_vc = jnp.outer(v, v) - jnp.outer(v0, v0) - C @ C.T + C0 @ C0.T
        return m, jnp.linalg.norm(drift_cb), jnp.linalg.norm(drift_vc)

    (mets, d_cb, d_vc), (final, _, _) = at_saves_and_end(at, sol.ys, sol.y_final)
    (v_t, C_t, A_t), (v_f, C_f, A_f) = sol.ys, sol.y_final
    return DeepTrajectory(
        ts=ts, v=v_t, C=C_t, A=A_t, metrics=mets, final_metrics=final, drift_CB=d_cb,
        drift_vC=d_vc, v_final=v_f, C_final=C_f, A_final=A_f, t_final=sol.t_final,
        num_steps=sol.num_steps, status=sol.status, basis=red.basis, B0=problem.B0,
    )  # fmt: skip


def depth3_fine_tune(
    problem: Problem,
    v0: Float[Array, " k"],
    *,
    C0: Float[Array, "k k"] | None = None,
    ts: Float[Array, " T"] | None = None,
    t_max: float | None = None,
    num_save: int = 64,
    rtol: float | None = None,
    atol: float | None = None,
    grad_tol: float | None = None,
    max_steps: int = 100_000,
    check: bool = True,
) -> DeepTrajectory:
    r"""Fine-tuning a depth-3 linear network $f(x) = v^TCBx$ on all three layers.

    Update rule ($\hat L = \|XB^TC^Tv - Y\|^2$, $h = X^Tr$, paper's time): $\dot v = -2CBh$,
    $\dot C = -2v(Bh)^T$, $\dot B = -2C^Tv\,h^T$, from $(v_0, C_0, B_0)$ ($C_0 = I$ by
    default: the same effective model as FT's start). $\dot B$ has rows in S, so the exact
    reduction holds for the first layer and the state is $(v, C, A = BQ)$,
    $k + k^2 + kr$ numbers whatever d. [derived] (docs/theory.md, section 10.3):
    $C^TC - BB^T$ and $vv^T - CC^T$ are conserved; B is frozen on $S^\perp$ but the composite
    $CB$ is not: $(CB - C_0B_0)\Pi_\perp = (C - C_0)B_0\Pi_\perp$. One instance, vmappable,
    differentiable.

    Args:
        problem: the `Problem`.
        v0: the initial head (k,).
        C0: the initial middle layer (k, k); default the identity.
        ts, t_max, num_save, rtol, atol, grad_tol, max_steps, check: as for
            `linfeat.fine_tune`.

    Returns:
        A `DeepTrajectory`.

    References:
        Kumar et al. (2022), arXiv:2202.10054 (the two-layer case); deep linear networks:
        Arora, Cohen, Hazan, "On the Optimization of Deep Networks", arXiv:1802.06509
        (balancedness of consecutive layers).
    """
    v0, settings, num_save = _prepare(problem, v0, ts=ts, t_max=t_max, num_save=num_save,
                                      rtol=rtol, atol=atol, grad_tol=grad_tol,
                                      max_steps=max_steps)  # fmt: skip
    k = problem.B0.shape[-2]
    if C0 is None:
        C0 = jnp.eye(k, dtype=problem.X.dtype)
    V.check_real_float("C0", C0, allow_int=True)
    if np.shape(C0) != (k, k):
        raise ValueError(f"`C0` must be a ({k}, {k}) matrix, got shape {np.shape(C0)}.")
    if V.is_concrete(C0):
        V.as_array("C0", C0)
    _warn_zero_head(v0, "depth3_fine_tune", "so C and B receive no gradient at t = 0.")
    traj = _deep_run(problem, v0, jnp.asarray(C0, problem.X.dtype), settings,
                     num_save=num_save, max_steps=max_steps)  # fmt: skip
    if check:
        _raise_on_failure(traj, "depth3_fine_tune")
    return traj
