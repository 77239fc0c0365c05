r"""Rodas5P as a diffrax solver whose linear algebra is supplied by the flow.

A Rosenbrock method solves, at every stage i of a step of size h from $y_0$,
$$(I - \gamma h J)\,u_i = \gamma h\,f(Y_i) + \gamma \textstyle\sum_{j<i} C_{ij} u_j,$$
with $J = \partial f/\partial y$ at $y_0$: one linear operator per step, applied to 8
right-hand sides. Rodas5P (Steinebach 2023) is L-stable and stiffly accurate, of order 5 with
an embedded order-4 error estimate and a 4th-order dense output, so stiffness from an
ill-conditioned $X^TX$ (square Gaussian X: $\kappa \sim m^2$) costs no extra steps.

The operator comes from the flow (`linfeat._flows.AbstractFlow.factor`): the fine-tuning
flow reduces it to one k x k SPD inverse per step, any other flow falls back to a dense
`jax.jacfwd` Jacobian and a pure-JAX LU. Because this is an `diffrax.AbstractAdaptiveSolver`,
diffrax's `diffeqsolve` brings the step-size controller, `SaveAt` with this dense output,
the stopping event, `max_steps` and its adjoints (reverse mode through
`RecursiveCheckpointAdjoint`, forward mode through `ForwardMode`).

Coefficients: OrdinaryDiffEq.jl's `Rodas5PTableau`. Design and measurements: docs/solvers.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

_GAMMA = 0.21193756319429014
# Y_i = y0 + sum_j A[i-1][j] u_j for the first len(A) + 1 stages, then Y_{i+1} = Y_i + u_i.
_A = (
    (3.0,),
    (2.849394379747939, 0.45842242204463923),
    (-6.954028509809101, 2.489845061869568, -10.358996098473584),
    (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641),
    (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
     0.030198172008377946),
)  # fmt: skip
_C = (
    (-14.155112264123755,),
    (-17.97296035885952, -2.859693295451294),
    (147.12150275711716, -1.41221402718213, 71.68940251302358),
    (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306),
    (24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125,
     -0.6610691825249471),
    (30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783,
     -19.097331116725623, -28.087943162872662),
    (37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
     -40.06618937091002, -54.66780262877968, -9.48861652309627),
)  # fmt: skip
# Dense output: d_m = sum_j H[m][j] u_j and
# y(t0 + theta h) = (1 - theta) y0 + theta (y1 + (1 - theta)(d_1 + theta (d_2 + theta d_3))).
_H = (
    (25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204,
     0.524948541321073, 1.1241088310450404, 0.4272876194431874, -0.17202221070155493),
    (-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796,
     20.176138334709044, 15.98066361424651, -6.789040303419874, -6.710236069923372),
    (11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643,
     -52.072871366152654, -59.78993625266729, -0.15582684282751913, 4.883087185713722),
)  # fmt: skip
NUM_STAGES = len(_C) + 1


def _tableau():
    """The stage, coupling, solution and dense-output weights as dense (8, 8) / (8,) arrays."""
    stage = np.zeros((NUM_STAGES, NUM_STAGES))
    for i, row in enumerate(_A, start=1):
        stage[i, : len(row)] = row
    for i in range(len(_A) + 1, NUM_STAGES):  # Y_i = Y_{i-1} + u_{i-1}
        stage[i] = stage[i - 1]
        stage[i, i - 1] += 1.0
    solution = stage[-1].copy()
    solution[-1] += 1.0  # y1 = Y_7 + u_7
    couple = np.zeros((NUM_STAGES, NUM_STAGES))
    for i, row in enumerate(_C, start=1):
        couple[i, : len(row)] = _GAMMA * np.asarray(row)
    return stage, couple, solution, np.asarray(_H)


_STAGE, _COUPLE, _SOLUTION, _DENSE = _tableau()


class Rodas5PInterpolation(diffrax.AbstractLocalInterpolation):
    """The 4th-order dense output of one Rodas5P step."""

    t0: Any
    t1: Any
    y0: Any
    y1: Any
    d: Any  # the three dense-output terms, a tuple of trees

    def evaluate(self, t0, t1=None, left: bool = True):
        del left
        if t1 is not None:
            return jax.tree.map(lambda a, b: a - b, self.evaluate(t1), self.evaluate(t0))
        h = self.t1 - self.t0
        theta = jnp.where(h > 0, (t0 - self.t0) / jnp.where(h > 0, h, 1.0), 0.0)
        d1, d2, d3 = self.d
        # y0 + theta (y1 - y0 + (1 - theta) (...)): exact where the state does not move
        return jax.tree.map(
            lambda y0, y1, a, b, c: (
                y0 + theta * ((y1 - y0) + (1 - theta) * (a + theta * (b + theta * c)))
            ),
            self.y0,
            self.y1,
            d1,
            d2,
            d3,
        )


class Rodas5P(diffrax.AbstractAdaptiveSolver):
    """Rodas5P with the linear solves of `flow.factor` (see the module docstring).

    The field must be autonomous (no explicit t); linfeat's gradient flows are. The solver
    state carries f(y) at the current point (first same as last).
    """

    flow: Any  # a linfeat._flows.AbstractFlow
    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., Rodas5PInterpolation]] = Rodas5PInterpolation

    def order(self, terms):
        return 5

    def error_order(self, terms):
        return 5  # embedded order-4 estimate: the controller's exponent is 1/5

    def init(self, terms, t0, t1, y0, args):
        return self.flow.field(y0, args)

    def func(self, terms, t0, y0, args):
        return self.flow.field(y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del terms, made_jump
        h = t1 - t0
        alpha = _GAMMA * h
        solve = self.flow.factor(y0, args, alpha)
        # Stage 0 uses f(y0) from the solver state; stage i forms
        # Y_i = y0 + sum_j _STAGE[i, j] u_j and u_i = solve(alpha f(Y_i) + sum_j _COUPLE[i, j] u_j)
        # over the earlier stages. Unrolled, with only the nonzero weights: a `fori_loop` over
        # stages 1-7 on (8, ...) stacks with dense weight rows (one copy of the field and the
        # solve in the program) ran 3.4x slower under vmap, 48-52 against 14-15 us per
        # lane-step on 1024 `small` lanes (docs/solvers.md).
        bound = _stage_bound(y0)
        us = [_clip(solve(jax.tree.map(lambda x: alpha * x, solver_state)), bound)]
        for i in range(1, NUM_STAGES):
            Y = _combine(_STAGE[i, :i], us, y0)
            f = self.flow.field(Y, args)
            us.append(
                _clip(
                    solve(_combine(_COUPLE[i, :i], us, jax.tree.map(lambda x: alpha * x, f))), bound
                )
            )
        y1 = _combine(_SOLUTION, us, y0)
        f1 = self.flow.field(y1, args)
        d = tuple(_combine(row, us) for row in _DENSE)
        dense = dict(y0=y0, y1=y1, d=d)
        y_error = us[-1]
        return y1, y_error, dense, f1, diffrax.RESULTS.successful


def _stage_bound(y0):
    """Largest |stage increment| a step may carry: far above any step the controller accepts."""
    big = 1e8 if jnp.finfo(jax.tree.leaves(y0)[0].dtype).bits == 64 else 1e3
    size = functools.reduce(
        jnp.maximum, [jnp.max(jnp.abs(x), initial=0.0) for x in jax.tree.leaves(y0)]
    )
    return big * (1.0 + size)


def _clip(u, bound):
    """Stage increments clipped to +-`bound` (NaN/inf included)."""
    return jax.tree.map(lambda x: jnp.clip(jnp.nan_to_num(x), -bound, bound), u)


def _combine(weights, us, base=None):
    """base + sum_j weights[j] us[j] over a list of state trees, skipping zero weights."""
    out = base
    for w, u in zip(weights, us):
        if w == 0.0:
            continue
        w = float(w)
        if out is None:
            out = jax.tree.map(lambda x, w=w: w * x, u)
        else:
            out = jax.tree.map(lambda o, x, w=w: o + w * x, out, u)
    return out


class DenseLinearSolve(eqx.Module):
    """(I - alpha J)^{-1} from a dense `jax.jacfwd` Jacobian: the fallback for small states."""

    inverse: jax.Array
    treedef: Any = eqx.field(static=True)
    shapes: Any = eqx.field(static=True)

    def __call__(self, rhs):
        flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(rhs)])
        out = self.inverse @ flat
        parts, start = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            parts.append(out[start : start + size].reshape(shape))
            start += size
        return jax.tree.unflatten(self.treedef, parts)


def dense_factor(field: Callable, y, args, alpha) -> DenseLinearSolve:
    """Factor $I - \\alpha J$ with the dense Jacobian of `field` at y (pure JAX, no LAPACK)."""
    leaves, treedef = jax.tree.flatten(y)
    shapes = tuple(x.shape for x in leaves)
    flat = jnp.concatenate([jnp.ravel(x) for x in leaves])

    def flat_field(z):
        parts, start = [], 0
        for shape in shapes:
            size = math.prod(shape)
            parts.append(z[start : start + size].reshape(shape))
            start += size
        out = field(jax.tree.unflatten(treedef, parts), args)
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(out)])

    J = jax.jacfwd(flat_field)(flat)
    W = jnp.eye(flat.shape[0], dtype=flat.dtype) - alpha * J
    return DenseLinearSolve(gauss_jordan_inverse(W), treedef, shapes)


def gauss_jordan_inverse(W: jax.Array) -> jax.Array:
    """Inverse of a small square matrix by Gauss-Jordan elimination with partial pivoting.

    Plain array operations in a `fori_loop`: no LAPACK custom call (batched LAPACK kernels
    deadlock on a 2-thread CPU pool, see docs/solvers.md), and it vmaps.
    """
    N = W.shape[0]
    M = jnp.concatenate([W, jnp.eye(N, dtype=W.dtype)], axis=1)
    rows = jnp.arange(N)

    def body(i, M):
        p = jnp.argmax(jnp.where(rows >= i, jnp.abs(M[:, i]), -1.0))
        Mi, Mp = M[i], M[p]
        M = M.at[i].set(Mp).at[p].set(Mi)
        pivot = M[i, i]
        row = M[i] / jnp.where(pivot == 0, 1.0, pivot)
        row = jnp.where(pivot == 0, jnp.nan, row)  # singular: NaN, so the step is rejected
        M = M - M[:, i][:, None] * row[None, :]
        return M.at[i].set(row)

    M = jax.lax.fori_loop(0, N, body, M)
    return M[:, N:]
