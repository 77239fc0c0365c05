r"""Training methods that followed LP-FT, each on the one engine (docs/theory.md, section 9).

Every method is `method(problem, v0, *, <knobs>, ts=None, t_max=None, num_save=64, rtol=None,
atol=None, grad_tol=None, max_steps=100_000, check=True)`, written for one instance: the knobs
are array arguments (vmap over them, differentiate with respect to them), the flow runs on the
exact reduced state through `linfeat._engine.solve`, and the result is a `Trajectory` (a
`WeightDecayTrajectory` for weight decay) whose `metrics` are those of the effective (v, B).
Concrete knobs are validated (errors name the argument and the fix); traced ones are not.
"""

from __future__ import annotations

from ._methods_run import run_method
from ._problem import Problem
from ._trajectory import Trajectory


def l2_sp(problem: Problem, v0, *, lam, lam_v=0.0, ts=None, t_max=None, num_save: int = 64,
          rtol=None, atol=None, grad_tol=None, max_steps: int = 100_000,
          check: bool = True) -> Trajectory:  # fmt: skip
    r"""L2-SP: fine-tuning with a pull towards the pretrained weights.

    Gradient flow of $\hat L(v, B) + \lambda\|B - B_0\|_F^2 + \lambda_v\|v - v_0\|^2$:
    $\dot v = -2BX^Tr - 2\lambda_v(v - v_0)$, $\dot B = -2v(X^Tr)^T - 2\lambda(B - B_0)$.
    $(B - B_0)\Pi_\perp$ obeys $\dot Z = -2\lambda Z$ from $Z(0) = 0$, so the features stay
    frozen on $S^\perp$ exactly and the reduction to $(v, A = BQ)$ is exact
    (docs/theory.md, section 9.2).

    Args:
        problem: the `Problem`.
        v0: initial head (k,).
        lam: $\lambda \ge 0$, the weight of $\|B - B_0\|_F^2$ ($\lambda = 0$ is FT).
        lam_v: $\lambda_v \ge 0$, the weight of $\|v - v_0\|^2$ (default 0).
        ts, t_max, num_save, rtol, atol, grad_tol, max_steps, check: as for
            `linfeat.fine_tune` (the stop test is on the norm of this method's field).

    Returns:
        A `Trajectory`.

    References:
        X. Li, Y. Grandvalet, F. Davoine, "Explicit inductive bias for transfer learning with
        convolutional networks", ICML 2018, arXiv:1802.01483.
    """
    return run_method(
        problem, v0, {"lam": (lam, "nonneg"), "lam_v": (lam_v, "nonneg")}, method="l2_sp",
        ts=ts, t_max=t_max, num_save=num_save, rtol=rtol, atol=atol, grad_tol=grad_tol,
        max_steps=max_steps, check=check, what="l2_sp",
    )  # fmt: skip


def layerwise_ft(problem: Problem, v0, *, eta_v=1.0, eta_B=1.0, ts=None, t_max=None,
                 num_save: int = 64, rtol=None, atol=None, grad_tol=None,
                 max_steps: int = 100_000, check: bool = True) -> Trajectory:  # fmt: skip
    r"""Fine-tuning with layer-wise learning rates $(\eta_v, \eta_B)$.

    $\dot v = -\eta_v\nabla_v\hat L = -2\eta_vBX^Tr$, $\dot B = -\eta_B\nabla_B\hat L =
    -2\eta_Bv(X^Tr)^T$. Conserves $vv^T/\eta_v - BB^T/\eta_B$, and equals standard FT from
    $(\rho^{1/4}v_0, \rho^{-1/4}B_0)$, $\rho = \eta_B/\eta_v$, in the time
    $s = \sqrt{\eta_v\eta_B}\,t$, mapped back by $v = \rho^{-1/4}\tilde v$,
    $B = \rho^{1/4}\tilde B$ (docs/theory.md, section 9.3, proved).

    Args:
        problem: the `Problem`.
        v0: initial head (k,).
        eta_v, eta_B: learning rates of the head and of the features, > 0 (default 1: FT).
        ts, t_max, num_save, rtol, atol, grad_tol, max_steps, check: as for
            `linfeat.fine_tune` (the stop test is on the norm of this method's field).

    Returns:
        A `Trajectory`.

    References:
        Layer-wise rates as in discriminative fine-tuning (J. Howard, S. Ruder, ULMFiT,
        arXiv:1801.06146); the rescaling is derived here, docs/theory.md, section 9.3.
    """
    return run_method(
        problem, v0, {"eta_v": (eta_v, "positive"), "eta_B": (eta_B, "positive")},
        method="layerwise", ts=ts, t_max=t_max, num_save=num_save, rtol=rtol, atol=atol,
        grad_tol=grad_tol, max_steps=max_steps, check=check, what="layerwise_ft",
    )  # fmt: skip


def partial_lp_ft(problem: Problem, v0, *, tau, ts=None, t_max=None, num_save: int = 64,
                  rtol=None, atol=None, grad_tol=None, max_steps: int = 100_000,
                  check: bool = True) -> Trajectory:  # fmt: skip
    r"""Partial LP, then FT: the LP flow for a time $\tau$, then fine-tuning from there.

    The LP stage $\dot v = -2\Phi^T(\Phi v - Y)$, $\Phi = XB_0^T$, has the closed form
    $v(\tau) = v_0 + U\mathrm{diag}((1 - e^{-2\kappa_i\tau})/\kappa_i)U^T\Phi^T(Y - \Phi v_0)$
    with $\Phi^T\Phi = U\mathrm{diag}(\kappa)U^T$ (the factor is $2\tau$ where $\kappa_i = 0$,
    and there the bracket has no component: $v_0$'s part in $\ker\Phi$ never moves). On
    $\mathrm{range}(\Phi^T)$ this is $v^* + e^{-2\Phi^T\Phi\tau}(v_0 - v^*)$ with $v^*$ the LP
    limit. FT then runs from $(v(\tau), B_0)$; `ts` and `t_final` count FT time and
    `Trajectory.v0` is $v(\tau)$. $\tau = 0$ is FT, $\tau = \infty$ is LP-FT;
    differentiable in $\tau$ (docs/theory.md, section 9.4).

    Args:
        problem: the `Problem`.
        v0: initial head (k,) of the LP stage.
        tau: LP time $\tau \ge 0$ (the paper's time convention, $\hat L = \|XB^Tv - Y\|^2$).
        ts, t_max, num_save, rtol, atol, grad_tol, max_steps, check: as for
            `linfeat.fine_tune` (the stop test is on the norm of this method's field).

    Returns:
        A `Trajectory` of the FT stage.

    References:
        Partial linear probing before fine-tuning: Y. Ren et al., "How to prepare your task
        head for finetuning", ICLR 2023, arXiv:2302.05779.
    """
    return run_method(
        problem, v0, {"tau": (tau, "nonneg")}, method="partial_lp_ft", ts=ts, t_max=t_max,
        num_save=num_save, rtol=rtol, atol=atol, grad_tol=grad_tol, max_steps=max_steps,
        check=check, what="partial_lp_ft",
    )  # fmt: skip


def weight_decay_ft(problem: Problem, v0, *, mu, ts=None, t_max=None, num_save: int = 64,
                    rtol=None, atol=None, grad_tol=None, max_steps: int = 100_000,
                    check: bool = True):  # fmt: skip
    r"""Fine-tuning with weight decay on both layers.

    Gradient flow of $\hat L + \mu(\|v\|^2 + \|B\|_F^2)$: $\dot v = -2BX^Tr - 2\mu v$,
    $\dot B = -2v(X^Tr)^T - 2\mu B$. Off S only the decay acts:
    $B(t)\Pi_\perp = e^{-2\mu t}B_0\Pi_\perp$ (carried exactly by one scalar of the state), and
    the imbalance decays as $vv^T - BB^T = e^{-4\mu t}(v_0v_0^T - B_0B_0^T)$ (the issue's
    $e^{-2\mu t}$ holds for the penalty $\tfrac{\mu}{2}(\cdot)$; docs/theory.md, section 9.5).

    Args:
        problem: the `Problem`.
        v0: initial head (k,).
        mu: decay $\mu \ge 0$ ($\mu = 0$ is FT).
        ts, t_max, num_save, rtol, atol, grad_tol, max_steps, check: as for
            `linfeat.fine_tune` (the stop test is on the norm of this method's field).

    Returns:
        A `WeightDecayTrajectory` (a `Trajectory` plus the factor $c(t) = e^{-2\mu t}$ of
        $B\Pi_\perp$, which `B` and `B_final` include).

    References:
        A. Krogh, J. Hertz, "A simple weight decay can improve generalization", NeurIPS 1991;
        decoupled form: I. Loshchilov, F. Hutter, arXiv:1711.05101.
    """
    return run_method(
        problem, v0, {"mu": (mu, "nonneg")}, method="weight_decay", ts=ts, t_max=t_max,
        num_save=num_save, rtol=rtol, atol=atol, grad_tol=grad_tol, max_steps=max_steps,
        check=check, what="weight_decay_ft",
    )  # fmt: skip


def combined_ft(problem: Problem, v0, *, lam=0.0, lam_v=0.0, eta_v=1.0, eta_B=1.0, mu=0.0,
                tau=0.0, alpha=1.0, ts=None, t_max=None, num_save: int = 64, rtol=None,
                atol=None, grad_tol=None, max_steps: int = 100_000,
                check: bool = True):  # fmt: skip
    r"""The flow every method here is a case of: partial LP, then the penalised flow, then WiSE-FT.

    LP for time $\tau$ (`partial_lp_ft`), then $\dot v = -\eta_v\nabla_vF$,
    $\dot B = -\eta_B\nabla_BF$ with
    $F = \hat L + \lambda\|B - B_0\|_F^2 + \lambda_v\|v - v_0\|^2 + \mu(\|v\|^2 + \|B\|_F^2)$,
    and the states mixed with the start as $(1 - \alpha)\theta_0 + \alpha\theta(t)$ (`wise_ft`);
    $v_0$ in F and in the mixing is the head FT starts from, $v(\tau)$. The defaults are
    plain FT. One call sets any combination of knobs (and one
    `jax.grad` differentiates with respect to all of them); $B(t)\Pi_\perp = c(t)B_0\Pi_\perp$
    with $\dot c = -2\eta_B(\lambda(c - 1) + \mu c)$ (docs/theory.md, section 9).

    Args:
        problem: the `Problem`.
        v0: initial head (k,).
        lam, lam_v, mu, tau: $\ge 0$; eta_v, eta_B: $> 0$; alpha: finite (see the methods).
        ts, t_max, num_save, rtol, atol, grad_tol, max_steps, check: as for
            `linfeat.fine_tune` (the stop test is on the norm of this method's field).

    Returns:
        A `WeightDecayTrajectory` (a `Trajectory` plus the factor c(t) of $B\Pi_\perp$).

    References:
        arXiv:1802.01483 (L2-SP), arXiv:2302.05779 (partial LP), arXiv:2109.01903 (WiSE-FT).
    """
    knobs = dict(lam=(lam, "nonneg"), lam_v=(lam_v, "nonneg"), eta_v=(eta_v, "positive"),
                 eta_B=(eta_B, "positive"), mu=(mu, "nonneg"), tau=(tau, "nonneg"),
                 alpha=(alpha, "finite"))  # fmt: skip
    return run_method(
        problem, v0, knobs, method="weight_decay", ts=ts, t_max=t_max, num_save=num_save,
        rtol=rtol, atol=atol, grad_tol=grad_tol, max_steps=max_steps, check=check,
        what="combined_ft",
    )  # fmt: skip
