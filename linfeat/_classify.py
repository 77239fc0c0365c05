r"""Binary classification: logistic-loss FT, LP and LP-FT on the exact reduction.

docs/theory.md, section 11. Labels $y_i = \pm 1$ (`classification_problem`: $y =
\mathrm{sign}(w^{*T}x)$, each flipped with probability `flip_prob`), and the paper's
unnormalised convention, the sum over samples:
$$\hat L(v, B) = \sum_i \log\big(1 + e^{-y_i\,v^TBx_i}\big).$$
The loss depends on the parameters only through $z = XB^Tv$, so the feature gradient
$v\,(X^T\nabla\ell)^T$ has rows in $S$ and the exact reduction of section 2.3 holds: the state
is $(v, A = BQ)$, the logits are $z = XQ\,A^Tv$, and with $h = (XQ)^T\nabla\ell(z)$,
$\nabla\ell(z)_i = -y_i\,\sigma(-y_iz_i)$,
$$\dot v = -Ah,\qquad \dot A = -\tau\,v\,h^T\quad(\tau = 1\ \text{FT},\ 0\ \text{LP}).$$
`LogisticFlow` is this field; the same class on the data $(X, y)$ and the state $(v, B)$ is the
flow in $R^d$ (`mode="full"`, the reference of the checks). Every solve is
`linfeat._engine.solve` (Rodas5P; the dense Jacobian factor of `AbstractFlow`).

Stopping: on separable data the minimiser is at infinity (the norm grows like $\log t$ while
the direction converges), so the flows stop when the training loss falls to `loss_tol`
(default $10^{-2}\,n\log 2$, a hundredth of the zero predictor's loss; each sample's loss
is then below it, so every margin is at least $-\log(e^{\text{loss\_tol}} - 1)$), or the
gradient norm below `grad_tol` (the non-separable case, a finite minimiser), or at `t_max`.
The metrics report the direction (accuracies, which are scale-free) and the norm
(`head_norm`, `predictor_norm`) separately.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import _validate as V
from ._accuracy import accuracy, reduced_accuracies
from ._engine import at_saves_and_end, solve
from ._flow import _raise_on_failure, _settings, check_call, make_settings
from ._flows import AbstractFlow, gradient_norm
from ._generate import make_problem
from ._metrics import _norm, balancedness_drift, feature_change
from ._problem import Problem
from ._reduce import Reduced, reduce
from ._trajectory import Trajectory

LOSS_TOL_FRACTION = 1e-2  # default loss_tol = LOSS_TOL_FRACTION * n log 2
T_MAX_SCALE = 1e8  # default t_max = T_MAX_SCALE / lam_max(X^T X)


class LogisticData(NamedTuple):
    """Data of the logistic flow: inputs (XQ in the reduced coordinates, X in $R^d$), labels
    $\\pm 1$, the training-loss threshold of the stop test, and $\\tau$ (1 FT, 0 LP).

    $\\tau$ is data, not a static flag, so that FT, LP and both stages of LP-FT share one
    compiled solver program (compiling one takes seconds, running one milliseconds)."""

    X: Float[Array, "n r"]
    y: Float[Array, " n"]
    loss_tol: Float[Array, ""]
    tau: Float[Array, ""]


def logistic_loss(z, y) -> Float[Array, ""]:
    r"""$\sum_i \log(1 + e^{-y_iz_i})$, overflow-free (`logaddexp`)."""
    return jnp.sum(jnp.logaddexp(0.0, -y * z))


class LogisticFlow(AbstractFlow):
    r"""Logistic FT ($\tau = 1$) or LP ($\tau = 0$) on the state $(v, A)$ (or $(v, B)$ in $R^d$).

    $\dot v = -Ah$, $\dot A = -\tau vh^T$, $h = X^T\nabla\ell(z)$, $z = XA^Tv$,
    $\nabla\ell(z)_i = -y_i\sigma(-y_iz_i)$ (docs/theory.md 11.1). Stops when the loss is at
    most `loss_tol` or the gradient norm below `grad_tol`.
    """

    def field(self, y, args: LogisticData):
        v, A = y
        z = args.X @ (A.T @ v)
        h = args.X.T @ (-args.y * jax.nn.sigmoid(-args.y * z))
        return -(A @ h), -args.tau * jnp.outer(v, h)

    def loss(self, y, args: LogisticData):
        v, A = y
        return logistic_loss(args.X @ (A.T @ v), args.y)

    def converged(self, y, args: LogisticData, grad_tol):
        grad_small = gradient_norm(self.field(y, args)) < grad_tol
        return grad_small | (self.loss(y, args) <= args.loss_tol)


class ClassificationMetrics(NamedTuple):
    """Metrics of one point of a logistic flow (scalars; a time axis along a trajectory).

    `train_loss` is the logistic sum, `train_error` the fraction of training points with
    $y_iz_i \\le 0$; `id_accuracy`/`ood_accuracy` the closed-form Gaussian accuracies of the
    direction of $w = B^Tv$; `head_norm` $\\|v\\|$ and `predictor_norm` $\\|w\\|$ its scale.
    """

    train_loss: Float[Array, "*T"]
    train_error: Float[Array, "*T"]
    id_accuracy: Float[Array, "*T"]
    ood_accuracy: Float[Array, "*T"]
    head_norm: Float[Array, "*T"]
    predictor_norm: Float[Array, "*T"]
    feature_change_S: Float[Array, "*T"]
    feature_change_perp: Float[Array, "*T"]
    balancedness_drift: Float[Array, "*T"]
    grad_norm: Float[Array, "*T"]


def _reduced_metrics(red: Reduced, v, A, v0, flow: LogisticFlow, data: LogisticData):
    z = red.XQ @ (A.T @ v)
    acc = reduced_accuracies(red, v, A)
    D = A - red.A0
    c_w = jnp.concatenate([D.T @ v, v, jnp.zeros((red.gram.shape[-1] - red.r - red.k,), v.dtype)])
    drift = jnp.outer(v, v) - jnp.outer(v0, v0) - (D @ D.T + D @ red.A0.T + red.A0 @ D.T)
    return ClassificationMetrics(
        train_loss=logistic_loss(z, red.Y),
        train_error=jnp.mean((red.Y * z <= 0).astype(v.dtype)),
        id_accuracy=acc.id,
        ood_accuracy=acc.ood,
        head_norm=_norm(v),
        predictor_norm=jnp.sqrt(jnp.maximum(c_w @ red.gram @ c_w, 0.0)),
        feature_change_S=_norm(D),
        feature_change_perp=jnp.zeros((), v.dtype),
        balancedness_drift=_norm(drift),
        grad_norm=gradient_norm(flow.field((v, A), data)),
    )


def _full_metrics(problem: Problem, v, B, v0, flow: LogisticFlow, data: LogisticData):
    z = problem.X @ (B.T @ v)
    acc = accuracy(problem, v, B)
    fS, fP = feature_change(problem, B)
    return ClassificationMetrics(
        train_loss=logistic_loss(z, problem.Y),
        train_error=jnp.mean((problem.Y * z <= 0).astype(v.dtype)),
        id_accuracy=acc.id,
        ood_accuracy=acc.ood,
        head_norm=_norm(v),
        predictor_norm=_norm(B.T @ v),
        feature_change_S=fS,
        feature_change_perp=fP,
        balancedness_drift=balancedness_drift(v, B, v0, problem.B0),
        grad_norm=gradient_norm(flow.field((v, B), data)),
    )


def default_logistic_times(lam, num_save: int) -> Float[Array, " T"]:
    r"""0, then log-spaced times over $[10^{-2}, 10^{8}] / \lambda_{max}(X^TX)$."""
    tail = jnp.logspace(-2, np.log10(T_MAX_SCALE), num_save - 1, dtype=lam.dtype) / lam
    return jnp.concatenate([jnp.zeros((1,), lam.dtype), tail])


def _stage(problem, red, v0, settings, loss_tol, tau, *, num_save, max_steps, mode):
    """One logistic flow from (v0, B0): reduced (v, A) or full (v, B) state."""
    flow = LogisticFlow()
    ts, t_max, grad_tol = _settings(red, problem.Y, v0, settings, num_save)
    lam = jnp.max(red.sigma2)
    if settings.t_max is None:  # separable data: the loss falls like 1/t, allow a longer run
        t_max = T_MAX_SCALE / lam
    if settings.ts is None:
        ts = default_logistic_times(lam, num_save)
    full = mode == "full"
    data = LogisticData(problem.X if full else red.XQ, problem.Y, loss_tol, tau)
    sol = solve(
        flow,
        (v0, problem.B0 if full else red.A0),
        data,
        ts=ts,
        t1=t_max,
        rtol=settings.rtol,
        atol=settings.atol,
        grad_tol=grad_tol,
        max_steps=max_steps,
    )
    if full:
        at = lambda v, B: _full_metrics(problem, v, B, v0, flow, data)  # noqa: E731
    else:
        at = lambda v, A: _reduced_metrics(red, v, A, v0, flow, data)  # noqa: E731
    mets, final = at_saves_and_end(at, sol.ys, sol.y_final)
    to_A = (lambda B: B @ red.basis) if full else (lambda A: A)
    return Trajectory(
        ts=ts,
        v=sol.ys[0],
        A=to_A(sol.ys[1]),
        metrics=mets,
        final_metrics=final,
        v0=v0,
        v_final=sol.y_final[0],
        A_final=to_A(sol.y_final[1]),
        t_final=sol.t_final,
        num_steps=sol.num_steps,
        status=sol.status,
        basis=red.basis,
        B0=problem.B0,
    )


@functools.partial(jax.jit, static_argnames=("num_save", "max_steps", "mode"))
def _solve_logistic(problem, v0, settings, loss_tol, tau, *, num_save, max_steps,
                    mode) -> Trajectory:  # fmt: skip
    """One stage (FT for tau = 1, LP for tau = 0): one compiled program for both."""
    return _stage(problem, reduce(problem), v0, settings, loss_tol, tau, num_save=num_save,
                  max_steps=max_steps, mode=mode)  # fmt: skip


def check_labels(problem: Problem) -> None:
    """Concrete labels must be exactly +1 or -1."""
    if not V.is_concrete(problem.Y):
        return
    Y = np.asarray(problem.Y)
    bad = ~((Y == 1) | (Y == -1))
    if np.any(bad):
        raise ValueError(
            f"`problem.Y` must hold binary labels +1 / -1 for the logistic loss, got "
            f"{Y[bad][:3]} ({int(bad.sum())} bad entries); build the problem with "
            f"`classification_problem`, or pass Y = np.sign(...) to `problem_from_arrays`."
        )


def _logistic(problem, v0, *, ts, t_max, num_save, rtol, atol, grad_tol, loss_tol, max_steps,
              mode, train_features, lp_init, check, what) -> Trajectory:  # fmt: skip
    if mode not in ("reduced", "full"):
        raise ValueError(f"`mode` must be 'reduced' or 'full', got {mode!r}.")
    check_call(problem, v0, num_save=num_save, max_steps=max_steps)
    check_labels(problem)
    dtype = problem.X.dtype
    if loss_tol is None:
        loss_tol = LOSS_TOL_FRACTION * problem.X.shape[-2] * np.log(2.0)
    else:
        V.check_nonneg("loss_tol", loss_tol, scalar=True, fix="0 switches the loss test off.")
    settings = make_settings(dtype, ts=ts, t_max=t_max, rtol=rtol, atol=atol, grad_tol=grad_tol)
    num_save = num_save if ts is None else int(np.shape(ts)[-1])
    run = functools.partial(
        _solve_logistic, problem, settings=settings, loss_tol=jnp.asarray(loss_tol, dtype),
        num_save=num_save, max_steps=max_steps, mode=mode,
    )  # fmt: skip
    one, zero = jnp.ones((), dtype), jnp.zeros((), dtype)
    v0 = jnp.asarray(v0, dtype)
    if lp_init:  # LP-FT: the probe, then FT from its final head (the same program twice)
        lp = run(v0, tau=zero)
        traj = run(lp.v_final, tau=one)
        # a failed probe (step limit, NaN, solver error) makes the whole LP-FT run fail
        traj = traj._replace(status=jnp.where(lp.status >= 2, lp.status, traj.status))
    else:
        traj = run(v0, tau=one if train_features else zero)
    if check:
        _raise_on_failure(traj, what)
    return traj


_DOC_ARGS = """
    Args:
        problem: a `Problem` with labels $\\pm 1$ in `Y` (`classification_problem`).
        v0: initial head (k,){v0_default}.
        ts, num_save, rtol, atol, grad_tol, max_steps, check: as for `fine_tune`
            (`grad_tol`'s default uses $\\|Y\\| = \\sqrt n$; default save times
            log-spaced over $[10^{{-2}}, 10^{{8}}]/\\lambda_{{max}}(X^TX)$).
        t_max: stop time; default $10^8/\\lambda_{{max}}(X^TX)$ (the loss of separable data
            falls like 1/t).
        loss_tol: stop when the logistic training loss is at most this; default
            $10^{{-2}}\\,n\\log 2$ (0 switches the loss test off).
        mode: "reduced" (the engine on $(v, A = BQ)$) or "full" (the same field on $(v, B)$
            in $R^d$, the reference; small d only).

    Returns:
        A `Trajectory` whose `metrics`/`final_metrics` are `ClassificationMetrics`.

    Raises:
        ValueError: labels not $\\pm 1$, a head of the wrong shape, bad solver settings.
        SolverError: an unbatched solve failed (batched calls report `status`).
"""


def fine_tune_logistic(problem: Problem, v0: Float[Array, " k"], *, ts=None, t_max=None,
                       num_save: int = 64, rtol=None, atol=None, grad_tol=None, loss_tol=None,
                       max_steps: int = 100_000, mode: str = "reduced",
                       check: bool = True) -> Trajectory:  # fmt: skip
    r"""Fine-tuning under the logistic loss: gradient flow on $(v, B)$ from $(v_0, B_0)$.

    $\dot v = -BX^T\nabla\ell$, $\dot B = -v(X^T\nabla\ell)^T$ for
    $\hat L = \sum_i\log(1 + e^{-y_iv^TBx_i})$, integrated on the exact reduction
    (docs/theory.md 11.1) by the one engine until the loss is at most `loss_tol`, the
    gradient norm below `grad_tol`, or `t_max`. Written for one problem; vmap over problems
    and heads; differentiable with respect to `v0` and the problem.
    {args}
    References:
        Kumar et al. (2022), arXiv:2202.10054 (FT); docs/theory.md, section 11.
    """
    return _logistic(problem, v0, ts=ts, t_max=t_max, num_save=num_save, rtol=rtol, atol=atol,
                     grad_tol=grad_tol, loss_tol=loss_tol, max_steps=max_steps, mode=mode,
                     train_features=True, lp_init=False, check=check,
                     what="fine_tune_logistic")  # fmt: skip


def linear_probe_logistic(problem: Problem, v0=None, **kwargs) -> Trajectory:
    r"""Linear probing under the logistic loss: the flow $\dot v = -B_0X^T\nabla\ell$, $B = B_0$.

    Logistic regression on the features $\Phi = XB_0^T$: convex in v, with a unique finite
    minimiser when the classes overlap in feature space (then the gradient test stops it; a
    test compares with `scipy.optimize.minimize`), and a diverging norm with a converging
    direction when they are separable (the loss test stops it). Same keywords as
    `fine_tune_logistic`; `v0` defaults to 0.
    {args}
    References:
        Kumar et al. (2022), arXiv:2202.10054 (LP); docs/theory.md, section 11.
    """
    if v0 is None:
        v0 = jnp.zeros(problem.B0.shape[:-1], problem.X.dtype)
    return _logistic(problem, v0, **_defaults(kwargs), train_features=False, lp_init=False,
                     what="linear_probe_logistic")  # fmt: skip


def lp_ft_logistic(problem: Problem, *, v0=None, **kwargs) -> Trajectory:
    r"""LP-FT under the logistic loss: `linear_probe_logistic`, then FT from its final head.

    The probe runs to its own stop (loss or gradient test), and FT starts from
    $(v_{lp}, B_0)$; the trajectory is FT's (`v0` is $v_{lp}$). Same keywords as
    `fine_tune_logistic`; `v0` (the probe's start) defaults to 0. A failed probe is
    reported in `status`.
    {args}
    References:
        Kumar et al. (2022), arXiv:2202.10054 (LP-FT); docs/theory.md, section 11.
    """
    if v0 is None:
        v0 = jnp.zeros(problem.B0.shape[:-1], problem.X.dtype)
    return _logistic(problem, v0, **_defaults(kwargs), train_features=True, lp_init=True,
                     what="lp_ft_logistic")  # fmt: skip


for _fn, _v0 in (
    (fine_tune_logistic, ""),
    (linear_probe_logistic, "; default 0"),
    (lp_ft_logistic, ", where the probe starts; default 0"),
):
    _fn.__doc__ = _fn.__doc__.replace("{args}", _DOC_ARGS.format(v0_default=_v0))


def _defaults(kwargs):
    out = dict(ts=None, t_max=None, num_save=64, rtol=None, atol=None, grad_tol=None,
               loss_tol=None, max_steps=100_000, mode="reduced", check=True)  # fmt: skip
    unknown = set(kwargs) - set(out)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {sorted(unknown)}")
    out.update(kwargs)
    return out


def classification_problem(key: PRNGKeyArray, *, flip_prob=0.0, **kwargs) -> Problem:
    r"""A `make_problem` instance with binary labels $y = \mathrm{sign}(w^{*T}x)$, flipped with
    probability `flip_prob`.

    Everything but the labels is `make_problem(key_problem, **kwargs)` (dimensions, feature
    error, OOD shift...); the labels are $\mathrm{sign}(Xw^*)$ (sign(0) = +1, a probability-0
    event for Gaussian inputs), each flipped independently with probability `flip_prob`
    (label noise: the data need not be separable). The ID/OOD accuracy of a predictor is
    measured against the clean labels $\mathrm{sign}(w^{*T}x)$ (`accuracy`). Vmap over `key`
    and the numeric knobs.

    Args:
        key: PRNG key, split once into the problem's key and the flips' key.
        flip_prob: label-flip probability in [0, 1/2).
        **kwargs: the keywords of `make_problem` (d, k, m, n, feature_error, ...).

    Returns:
        A `Problem` whose `Y` holds $\pm 1$.

    Raises:
        ValueError: `flip_prob` outside [0, 1/2) or not real (when concrete), and every
            error of `make_problem`.

    References:
        Kumar et al. (2022), arXiv:2202.10054 (the model); docs/theory.md, section 11.
    """
    V.check_in_range(
        "flip_prob", flip_prob, 0.0, 0.5, hi_open=True, interval="[0, 1/2)",
        fix="it is the probability that a label is flipped; at 1/2 the labels carry no signal.",
    )  # fmt: skip
    if key is None:
        raise ValueError("`key` is required: pass a PRNG key, e.g. jax.random.key(0).")
    k_problem, k_flip = jax.random.split(key)
    problem = make_problem(k_problem, **kwargs)
    return _with_labels(problem, k_flip, jnp.asarray(flip_prob, problem.X.dtype))


@jax.jit
def _with_labels(problem, key, flip_prob):
    clean = jnp.where(problem.X @ problem.w_star >= 0, 1.0, -1.0).astype(problem.X.dtype)
    flip = jax.random.bernoulli(key, flip_prob, clean.shape)
    return problem._replace(Y=jnp.where(flip, -clean, clean))


def predictor(trajectory: Trajectory) -> tuple[Float[Array, " d"], Float[Array, ""]]:
    r"""The final predictor $w = B^Tv$ as (direction $w/\|w\|$, norm $\|w\|$).

    On separable data the logistic flows diverge in norm while the direction converges, so
    the two are reported apart (docs/theory.md 11.2). Needs a trajectory with `A` (not
    `outputs="metrics"`). A zero predictor has direction 0.
    """
    w = jnp.einsum("...kd,...k->...d", trajectory.B_final, trajectory.v_final)
    norm = jnp.linalg.norm(w, axis=-1)
    return w / jnp.where(norm > 0, norm, 1.0)[..., None], norm
