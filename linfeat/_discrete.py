r"""Discrete-time training through optax: GD, minibatch SGD, momentum and Adam.

docs/theory.md, section 2.

The loss is the paper's $\hat L(v, B) = \|X B^T v - Y\|^2$ (no 1/n, no 1/2), the same function
whose gradient flow `linfeat.fine_tune` integrates, so full-batch GD with step $\eta$,
$(v, B)_{j+1} = (v, B)_j - \eta \nabla \hat L$, is exactly the forward-Euler discretisation
of that flow and its iterate $j$ approximates the flow at time $t = \eta j$ with error
$O(\eta)$.

Parameters are dense, $v \in R^k$ and $B \in R^{k \times d}$: coordinatewise optimisers such as
Adam depend on the coordinate system, so the exact reduction of `linfeat._reduce` (a rotation)
is not applied here.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from . import _validate as V
from ._flow import SolverError, Status
from ._metrics import Metrics, metrics
from ._problem import Problem

OPTIMIZERS = ("gd", "sgd", "momentum", "adam")


class DiscreteTrajectory(NamedTuple):
    """Iterates of a discrete optimiser saved every `save_every` steps, with metrics.

    `steps` are the iteration counts of the saves (0 first, `num_steps` last) and
    `ts = learning_rate * steps` the flow time they correspond to under GD. `status` is
    `Status.CONVERGED` (0, the run finished with finite iterates) or `Status.NONFINITE` (3, the
    iterates became NaN/inf: the step is too large for the loss's curvature).
    """

    steps: Int[Array, " T"]
    ts: Float[Array, " T"]
    v: Float[Array, "T k"]
    B: Float[Array, "T k d"]
    metrics: Metrics
    status: Int[Array, ""]
    v_final: Float[Array, " k"]
    B_final: Float[Array, "k d"]

    @property
    def ok(self):
        return self.status == Status.CONVERGED


def _make_optimizer(optimizer, hyper) -> optax.GradientTransformation:
    """The optax transformation for a name (hyperparameters may be traced) or the object itself."""
    if not isinstance(optimizer, str):
        return optimizer
    lr = hyper["learning_rate"]
    if optimizer in ("gd", "sgd"):
        return optax.sgd(lr)
    if optimizer == "momentum":
        return optax.sgd(lr, momentum=hyper["momentum"])
    return optax.adam(lr, b1=hyper["b1"], b2=hyper["b2"], eps=hyper["eps"])


def _loss(params, B0, X, Y, scale):
    r"""$\mathrm{scale} \cdot \|X B^T v - Y\|^2$; B is $B_0$ when the features are not trained."""
    B = params.get("B", B0)
    r = X @ (B.T @ params["v"]) - Y
    return scale * jnp.sum(r**2)


@functools.partial(
    jax.jit,
    static_argnames=("optimizer", "num_steps", "save_every", "batch_size", "train_features"),
)
def _train(
    problem, v0, key, hyper, *, optimizer, num_steps, save_every, batch_size, train_features
):
    dtype = problem.X.dtype
    X, Y, B0 = problem.X, problem.Y, problem.B0
    n = X.shape[0]
    opt = _make_optimizer(optimizer, hyper)
    params = {"v": v0, "B": B0} if train_features else {"v": v0}
    grad_fn = jax.grad(_loss)

    def gradient(params, step):
        if batch_size is None:
            return grad_fn(params, B0, X, Y, 1.0)
        # Rows without replacement; the factor n / b makes the minibatch loss (and its gradient)
        # an unbiased estimate of the full one: each row is in the batch with probability b / n.
        rows = jax.random.choice(jax.random.fold_in(key, step), n, (batch_size,), replace=False)
        return grad_fn(params, B0, X[rows], Y[rows], jnp.asarray(n / batch_size, dtype))

    def one_step(step, carry):
        params, opt_state = carry
        updates, opt_state = opt.update(gradient(params, step), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def chunk(carry, start):
        # Static trip count: lowers to a scan, so the run stays reverse-differentiable.
        carry = jax.lax.fori_loop(0, save_every, lambda j, c: one_step(start + j, c), carry)
        return carry, carry[0]

    num_chunks, rest = divmod(num_steps, save_every)
    carry = (params, opt.init(params))
    starts = save_every * jnp.arange(num_chunks, dtype=jnp.int32)
    carry, saved = jax.lax.scan(chunk, carry, starts)
    steps = [jnp.zeros((1,), jnp.int32), starts + save_every]
    saved = jax.tree.map(lambda p0, p: jnp.concatenate([p0[None], p]), params, saved)
    if rest:
        # The last save is always num_steps, also when save_every does not divide it.
        carry = jax.lax.fori_loop(num_steps - rest, num_steps, one_step, carry)
        saved = jax.tree.map(lambda s, p: jnp.concatenate([s, p[None]]), saved, carry[0])
        steps.append(jnp.full((1,), num_steps, jnp.int32))
    steps = jnp.concatenate(steps)
    final = carry[0]
    B_t = saved["B"] if train_features else jnp.broadcast_to(B0, (steps.shape[0],) + B0.shape)
    B_final = final["B"] if train_features else B0
    leaves = (saved["v"], B_t, final["v"], B_final)
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves]))
    status = jnp.where(finite, Status.CONVERGED, Status.NONFINITE).astype(jnp.int32)
    ts = hyper["learning_rate"] * steps.astype(dtype)
    return steps, ts, saved["v"], B_t, status, final["v"], B_final


@functools.partial(jax.jit, static_argnames=("train_features",))
def _metrics_along(problem, v_t, B_t, v0, *, train_features):
    """`metrics` at every save; jitted apart from `_train` so all optimisers share its compile."""
    return jax.vmap(
        lambda v, B: metrics(problem, v, B, v0, problem.B0, train_features=train_features)
    )(v_t, B_t)


def _check_call(problem, v0, optimizer, num_steps, save_every, batch_size, key, hyper):
    """Validates every argument before anything is compiled or run (values only when concrete)."""
    if isinstance(optimizer, str):
        V.check_choice("optimizer", optimizer, OPTIMIZERS)
    elif not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            f"`optimizer` must be one of {OPTIMIZERS} or an optax.GradientTransformation, "
            f"got {type(optimizer).__name__}."
        )
    if not isinstance(problem, Problem):
        raise ValueError(
            f"`problem` must be a linfeat.Problem (make_problem or problem_from_arrays), got "
            f"{type(problem).__name__}."
        )
    if problem.B0.ndim != 2:
        raise ValueError(
            f"`problem` must describe one problem (B0 of shape (k, d)), got B0 of shape "
            f"{problem.B0.shape}; use jax.vmap(train_discrete) over a batch of problems."
        )
    if not jnp.issubdtype(problem.X.dtype, jnp.floating):
        raise ValueError(
            f"`problem` must hold floating arrays, got X of dtype {problem.X.dtype}; build it "
            f"with problem_from_arrays, which converts integer data."
        )
    n, (k, _) = problem.X.shape[0], problem.B0.shape
    V.check_real_float("v0", v0)
    if np.shape(v0) != (k,):
        raise ValueError(f"`v0` must have shape (k,) = ({k},), got {np.shape(v0)}.")
    V.check_finite("v0", v0)
    V.check_int("num_steps", num_steps, min=1)
    V.check_int("save_every", save_every, min=1, max=num_steps)
    if optimizer == "sgd" and batch_size is None:
        raise ValueError("optimizer='sgd' samples minibatches: pass `batch_size` (or use 'gd').")
    if optimizer == "gd" and batch_size is not None:
        raise ValueError("optimizer='gd' is full batch: drop `batch_size` or use 'sgd'.")
    if batch_size is not None:
        V.check_int("batch_size", batch_size, min=1, max=n)
        if key is None:
            raise ValueError("minibatch training needs an explicit PRNG `key`.")
    V.check_positive(
        "learning_rate",
        hyper["learning_rate"],
        scalar=True,
        fix="GD is stable only below about 1 / (lambda_max(X^T X) (||v||^2 + ||B||_2^2)).",
    )
    below_one = dict(lo_open=False, hi_open=True, scalar=True)
    if optimizer == "momentum":
        V.check_in_range(
            "momentum", hyper["momentum"], 0.0, 1.0, **below_one,
            fix="the heavy-ball coefficient must be < 1 for the iterates to settle (0 is GD).",
        )  # fmt: skip
    if optimizer == "adam":
        for name in ("b1", "b2"):
            V.check_in_range(
                name, hyper[name], 0.0, 1.0, **below_one,
                fix="Adam's decay rates are in [0, 1), e.g. b1 = 0.9, b2 = 0.999.",
            )  # fmt: skip
        V.check_positive(
            "eps",
            hyper["eps"],
            scalar=True,
            fix="Adam divides by sqrt(v) + eps, which is 0 / 0 on coordinates whose gradient is "
            "zero (e.g. B when v0 = 0); use a small positive value such as 1e-8.",
        )


def _raise_on_failure(traj: DiscreteTrajectory, problem: Problem, what: str) -> None:
    """Mirrors `linfeat._flow._raise_on_failure` for discrete runs (unbatched, concrete only)."""
    if not V.is_concrete(traj.status) or np.ndim(traj.status) != 0:
        return  # batched or traced: the caller reads `status` per trajectory
    if int(traj.status) != Status.NONFINITE:
        return
    good = np.isfinite(np.asarray(traj.v)).all(axis=-1) & np.isfinite(np.asarray(traj.B)).all(
        axis=(-2, -1)
    )
    steps = np.asarray(traj.steps)
    last_ok = int(steps[np.argmin(good)] if not good.all() else steps[-1])
    lam = float(np.linalg.norm(np.asarray(problem.X), 2) ** 2)
    eta = float(traj.ts[1] / traj.steps[1]) if traj.steps[1] > 0 else float("nan")
    raise SolverError(
        f"{what} failed with status NONFINITE: the iterates became NaN/inf by step {last_ok}. "
        f"Lower `learning_rate` (here {eta:.3g}, lambda_max(X^T X) = {lam:.3g}; GD is stable "
        f"only for learning_rate below about 1 / (lambda_max (||v||^2 + ||B||_2^2))). "
        f"(Batched calls return the status instead; pass check=False to get it here.)"
    )


def train_discrete(
    problem: Problem,
    v0: Float[Array, " k"],
    *,
    optimizer: str | optax.GradientTransformation = "gd",
    learning_rate=1e-3,
    num_steps: int = 1000,
    save_every: int | None = None,
    batch_size: int | None = None,
    key: PRNGKeyArray | None = None,
    momentum=0.9,
    train_features: bool = True,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    check: bool = True,
) -> DiscreteTrajectory:
    r"""Trains $(v, B)$ from $(v_0, B_0)$ with a discrete optimiser on $\|X B^T v - Y\|^2$.

    The loss has no 1/n and no 1/2, so "gd" with step $\eta$ is forward Euler for the flow of
    `fine_tune` and step j corresponds to flow time $t = \eta j$ (`ts`); the GD error against
    the flow at fixed t is $O(\eta)$. Runs as a `lax.scan` over chunks of `save_every` steps,
    jit-compiled; write for one problem and `jax.vmap` over problems, heads, keys or
    `learning_rate` (a non-finite run then reports `status` instead of raising).

    Parameters are dense ($v \in R^k$, $B \in R^{k\times d}$, an optax pytree
    `{"v": v, "B": B}`), with no reduction to the subspace basis, because coordinatewise
    optimisers depend on the coordinate system. GD, SGD and momentum keep B frozen on
    $S^\perp$ (R1 holds exactly, up to rounding: every gradient
    $\nabla_B = 2 v (X^T r)^T$ has rows in S = rowspace(X), and these updates are linear
    combinations of gradients). Adam does NOT: its coordinatewise normalisation moves B off S.

    Args:
        problem: the `Problem` (one instance).
        v0: initial head (k,).
        optimizer: "gd" (full-batch `optax.sgd`), "sgd" (minibatch of `batch_size` rows drawn
            without replacement at every step from `key`; the minibatch loss is scaled by
            n / batch_size so its expected gradient is the full gradient), "momentum"
            (full-batch `optax.sgd(momentum=...)`), "adam" (`optax.adam`), or any
            `optax.GradientTransformation` (static: reuse the same object to avoid
            recompiling; `learning_rate` then only sets `ts`). "momentum", "adam" and custom
            transformations also accept `batch_size` (minibatch variants).
        learning_rate: step size $\eta > 0$ (an array leaf: vmappable, no recompilation).
        num_steps: number of optimiser steps (static).
        save_every: steps between saves (static); default `max(num_steps // 64, 1)`. Saves
            are at steps 0, save_every, 2 save_every, ... and always at num_steps.
        batch_size: minibatch size in [1, n] (static); None means full batch.
        key: PRNG key, required for minibatches; the batch of step j uses `fold_in(key, j)`.
        momentum: momentum coefficient of "momentum", in [0, 1).
        train_features: False trains the head only (discrete linear probing, B = B0).
        b1, b2, eps: Adam's hyperparameters.
        check: raise `SolverError` if an unbatched run becomes non-finite.

    Returns:
        A `DiscreteTrajectory` (status 0 ok, 3 = `Status.NONFINITE`).

    Raises:
        ValueError: before anything is compiled or run, naming the argument: an unknown
            `optimizer`; `v0` not a finite real (k,) array (integer arrays rejected);
            `learning_rate` not a finite scalar > 0; `num_steps` not an int >= 1 (bools and
            floats rejected); `save_every` not an int in [1, num_steps]; `batch_size` not an
            int in [1, n] or given to "gd" / missing for "sgd"; a minibatch run without
            `key`; `momentum`, `b1`, `b2` outside [0, 1); Adam's `eps` not finite and > 0;
            non-bool `train_features` / `check`. Traced hyperparameters (under `jit`/`vmap`)
            are not value-checked: an out-of-range traced learning rate shows up as
            `status` NONFINITE or a run that does not train.

    References:
        Kumar et al. (2022), section 4; docs/theory.md, section 2 and R1.
    """
    V.check_bool("train_features", train_features)
    V.check_bool("check", check)
    if save_every is None:
        save_every = (
            max(num_steps // 64, 1)
            if isinstance(num_steps, int | np.integer) and not isinstance(num_steps, bool)
            else 1
        )
    hyper = dict(learning_rate=learning_rate, momentum=momentum, b1=b1, b2=b2, eps=eps)
    _check_call(problem, v0, optimizer, num_steps, save_every, batch_size, key, hyper)
    dtype = problem.X.dtype
    if V.is_concrete(v0) and train_features and not np.any(np.asarray(v0)):
        V.warn_theory(
            "v0 = 0: B receives no gradient at step 0 (grad_B = 2 v (X^T r)^T = 0), so training "
            "starts by moving the head alone; the theorems assume a non-zero or random head."
        )
    hyper = {name: jnp.asarray(x, dtype) for name, x in hyper.items()}
    v0 = jnp.asarray(v0, dtype)
    steps, ts, v_t, B_t, status, v_final, B_final = _train(
        problem,
        v0,
        None if batch_size is None else key,
        hyper,
        optimizer=optimizer,
        num_steps=int(num_steps),
        save_every=int(save_every),
        batch_size=None if batch_size is None else int(batch_size),
        train_features=train_features,
    )
    traj = DiscreteTrajectory(
        steps=steps,
        ts=ts,
        v=v_t,
        B=B_t,
        metrics=_metrics_along(problem, v_t, B_t, v0, train_features=train_features),
        status=status,
        v_final=v_final,
        B_final=B_final,
    )
    if check:
        _raise_on_failure(traj, problem, "train_discrete")
    return traj
