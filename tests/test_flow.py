"""FT / LP / LP-FT flows: invariants, references, transformations, failures (docs/theory.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FLOW_AGREEMENT, INVARIANT, TIGHT, max_rel_err
from scipy.integrate import solve_ivp

import linfeat as lf
from linfeat import _flow

D, K, M = 30, 3, 5


@pytest.fixture(scope="module")
def problems():
    """Four random problems sharing shapes (one compile), with varied knobs."""
    keys = jax.random.split(jax.random.key(0), 4)
    eps = jnp.array([0.0, 1e-3, 1e-1, 0.5])
    a = jnp.array([0.3, 1.0, 3.0, 1.0])
    return jax.vmap(
        lambda key, e, s: lf.make_problem(
            key, d=D, k=K, m=M, feature_error=e, v_star_norm=s, ood="mixture", ood_shift=0.5
        )
    )(keys, eps, a)


@pytest.fixture(scope="module")
def heads():
    return 1.0 * jax.random.normal(jax.random.key(1), (4, K))


def _one(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@pytest.fixture(scope="module")
def full_and_reduced(problems, heads):
    out = []
    for i in range(2):
        p, v0 = _one(problems, i), heads[i]
        out.append((p, v0, lf.fine_tune(p, v0, mode="full", **TIGHT), lf.fine_tune(p, v0, **TIGHT)))
    return out


def test_R1_features_frozen_on_S_perp(full_and_reduced):
    """R1: B(t) Pi_perp = B0 Pi_perp along the full (v, B) flow in R^d."""
    for _, _, full, red in full_and_reduced:
        assert full.status == lf.Status.CONVERGED
        assert float(full.metrics.feature_change_perp.max()) <= INVARIANT
        assert float(full.metrics.feature_change_S.max()) > 1e-3  # FT does move B on S
        assert float(red.metrics.feature_change_perp.max()) == 0.0  # exact by construction


def test_R2_balancedness_conserved(full_and_reduced):
    """R2: v v^T - B B^T is constant along FT."""
    for _, _, full, red in full_and_reduced:
        assert float(full.metrics.balancedness_drift.max()) <= INVARIANT
        assert float(red.metrics.balancedness_drift.max()) <= INVARIANT


def test_reduced_equals_full(full_and_reduced):
    for _, _, full, red in full_and_reduced:
        np.testing.assert_allclose(red.ts, full.ts)
        assert max_rel_err(red.v, full.v) < FLOW_AGREEMENT
        assert max_rel_err(red.B, full.B) < FLOW_AGREEMENT
        assert max_rel_err(red.metrics.ood_error, full.metrics.ood_error) < FLOW_AGREEMENT


def _scipy_full_flow(p, v0, ts):
    """Independent reference: plain NumPy vector field of the paper's flow, SciPy DOP853."""
    X, Y, B0 = (np.asarray(a) for a in (p.X, p.Y, p.B0))
    k, d = B0.shape

    def f(t, y):
        v, B = y[:k], y[k:].reshape(k, d)
        Xr = X.T @ (X @ (B.T @ v) - Y)
        return np.concatenate([-2 * B @ Xr, (-2 * np.outer(v, Xr)).ravel()])

    sol = solve_ivp(
        f,
        (0, ts[-1]),
        np.concatenate([v0, B0.ravel()]),
        method="DOP853",
        t_eval=ts,
        rtol=1e-12,
        atol=1e-14,
    )
    assert sol.success
    return sol.y[:k].T, sol.y[k:].T.reshape(len(ts), k, d)


def test_against_scipy_reference(problems, heads):
    for i in (0, 2):
        p, v0 = _one(problems, i), np.asarray(heads[i])
        ts = np.array([0.0, 0.01, 0.1, 0.5, 2.0])
        tr = lf.fine_tune(p, v0, ts=ts, **TIGHT)
        v_ref, B_ref = _scipy_full_flow(p, v0, ts)
        # Both solvers run at rtol 1e-12; global errors ~1e3 x local (see helpers).
        assert max_rel_err(tr.v, v_ref) < FLOW_AGREEMENT
        assert max_rel_err(tr.B, B_ref) < FLOW_AGREEMENT


def test_linear_probe_closed_form_and_flow(problems):
    for i in range(2):
        p = _one(problems, i)
        A = np.asarray(p.X @ p.B0.T)
        v_np = np.linalg.lstsq(A, np.asarray(p.Y), rcond=None)[0]
        np.testing.assert_allclose(lf.linear_probe(p), v_np, rtol=1e-10)
        tr = lf.linear_probe_flow(p, jnp.zeros(K), **TIGHT)
        assert tr.status == lf.Status.CONVERGED
        # The flow stops once ||grad|| < grad_tol; LP's loss is quadratic with Hessian
        # 2 A^T A, so the stopped head is within grad_tol / (2 sigma_min(A)^2) of the limit.
        lam_max = np.linalg.eigvalsh(np.asarray(p.X @ p.X.T))[-1]
        grad_tol = _flow.default_grad_tol(lam_max, p.Y, jnp.zeros(K), 1e-10)
        stop_err = float(grad_tol) / (2 * np.linalg.svd(A, compute_uv=False)[-1] ** 2)
        assert np.linalg.norm(tr.v_final - v_np) < stop_err + FLOW_AGREEMENT * np.linalg.norm(v_np)
        assert float(tr.metrics.feature_change_S.max()) == 0.0  # LP never moves B


def test_linear_probe_min_norm_when_not_unique():
    """k > rank(X B0^T): the LP limit is v0 + A^+(Y - A v0) (docs/theory.md, section 2)."""
    rng = np.random.default_rng(3)
    d, k = 12, 3
    X = np.zeros((4, d))
    X[:, :4] = rng.normal(size=(4, 4))
    B0 = np.zeros((k, d))
    B0[0, 0] = B0[1, 5] = B0[2, 6] = 1.0  # two features see nothing of S: c_S = 0
    w = rng.normal(size=d)
    p = lf.problem_from_arrays(X=X, Y=X @ w, B0=B0, w_star=w, check_theory=False)
    v0 = jnp.array([0.5, -1.0, 2.0])
    v = lf.linear_probe(p, v0)
    A = X @ B0.T
    np.testing.assert_allclose(v, v0 + np.linalg.pinv(A) @ (X @ w - A @ np.asarray(v0)), rtol=1e-12)
    assert float(lf.linear_probe(p)[1]) == 0.0  # minimum norm from v0 = 0


# slow: R10 is asserted by linfeat check (tests/test_checks.py) on its own instances
@pytest.mark.slow
def test_R10_lp_ft_stationary_with_perfect_features(problems):
    """R10/R4: B0 = B* -> LP recovers a*, LP-FT does not move, OOD error 0 for all t."""
    p = _one(problems, 0)  # feature_error = 0
    np.testing.assert_allclose(lf.linear_probe(p), lf.init_head(p, "aligned"), atol=1e-10)
    tr = lf.lp_ft(p)
    assert float(jnp.max(jnp.abs(tr.v - tr.v[0]))) < 1e-12
    assert float(tr.metrics.ood_error.max()) < 1e-20


def test_vmap_equals_loop_and_no_recompile(problems, heads):
    f = jax.jit(jax.vmap(lambda p, h: lf.fine_tune(p, h, check=False)))
    batched = f(problems, heads)
    for i in range(4):
        one = lf.fine_tune(_one(problems, i), heads[i])
        assert max_rel_err(batched.v[i], one.v) < 1e-10
        assert max_rel_err(batched.metrics.ood_error[i], one.metrics.ood_error) < 1e-10
    assert batched.status.shape == (4,)
    before = _flow._solve_jit._cache_size()
    lf.fine_tune(_one(problems, 3), heads[3] * 0.5)  # same shapes, new values
    assert _flow._solve_jit._cache_size() == before


def test_float32_stays_float32():
    p = lf.make_problem(jax.random.key(5), d=20, k=2, m=4, feature_error=0.1, dtype=jnp.float32)
    v0 = jnp.array([1.0, -0.5], jnp.float32)
    tr = lf.fine_tune(p, v0)
    assert tr.v.dtype == jnp.float32 and tr.A.dtype == jnp.float32
    assert tr.metrics.ood_error.dtype == jnp.float32
    assert lf.linear_probe(p).dtype == jnp.float32


def test_status_reported_per_trajectory_and_raised_unbatched(problems, heads):
    # One vmapped program: a non-finite lane among lanes that hit the step limit.
    bad = heads.at[1].set(jnp.nan)
    tr = jax.vmap(lambda p, h: lf.fine_tune(p, h, max_steps=20, check=False))(problems, bad)
    status = np.asarray(tr.status)
    assert status[1] == lf.Status.NONFINITE
    assert np.all(np.delete(status, 1) == lf.Status.STEP_LIMIT)
    with pytest.raises(lf.SolverError, match="STEP_LIMIT.*max_steps"):
        lf.fine_tune(_one(problems, 0), heads[0], max_steps=20)


def test_divergence_is_a_status_per_trajectory(problems, heads):
    """Gradient *ascent* (FT's field and Jacobian with the sign flipped) blows up in finite
    time; the engine stops each such lane early with DIVERGED, next to descent lanes that
    converge, in one vmapped program (without the stop each ran to `max_steps`)."""
    from linfeat._engine import DIVERGENCE, solve
    from linfeat._flows import FineTune

    class Ascent(FineTune):
        def field(self, y, args):
            return jax.tree.map(lambda x: -x, super().field(y, args))

        def factor(self, y, args, alpha):
            return super().factor(y, args, -alpha)

    def run(p, v0, sign):
        red = lf.reduce(p)
        ts = jnp.linspace(0.0, 10.0, 5)
        kw = dict(ts=ts, t1=ts[-1], rtol=1e-9, atol=1e-11, grad_tol=1e-300, max_steps=20_000)
        up = solve(Ascent(), (v0, red.A0), red.flow_data, **kw)
        down = solve(FineTune(), (v0, red.A0), red.flow_data, **kw)
        return up.status, up.num_steps, up.y_final, down.status

    up, steps, y_final, down = jax.jit(jax.vmap(run, in_axes=(0, 0, None)))(problems, heads, 1)
    assert np.all(np.asarray(up) == lf.Status.DIVERGED), up
    assert np.all(np.asarray(steps) < 2_000), steps  # stopped early, not at max_steps
    size = sum(np.sum(np.asarray(x) ** 2, axis=tuple(range(1, x.ndim))) for x in y_final)
    assert np.all(size > DIVERGENCE**2)
    # descent runs to t1 = 10 (grad_tol 1e-300 never passes): MAX_TIME, not DIVERGED
    assert np.all(np.asarray(down) == lf.Status.MAX_TIME), down


def test_bad_call_arguments(problems, heads):
    p = _one(problems, 0)
    with pytest.raises(ValueError, match="`v0`"):
        lf.fine_tune(p, jnp.ones(K + 1))
    with pytest.raises(ValueError, match="NaN"):
        lf.fine_tune(p, jnp.full(K, jnp.nan))
    with pytest.raises(ValueError, match="strictly increasing"):
        lf.fine_tune(p, heads[0], ts=[0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        lf.fine_tune(p, heads[0], ts=[-1.0, 1.0])
    with pytest.warns(lf.TheoryConditionWarning, match="v0 = 0"):
        lf.fine_tune(p, jnp.zeros(K))


# slow (28 s, compile-bound): the default suite keeps tests/test_gradients.py's unit test of
# the stage clip that fixed this stall.
@pytest.mark.slow
def test_huge_head_solves_that_stalled_at_t0_converge():
    """Two full-run `linfeat check` instances (d 40, k 10, m 14, heads of norm 10-13) whose
    first trial steps overflowed: the NaN error estimate made the controller retry at t = 0
    until the step limit (100,000 steps, t_final = 0). With the stage clip
    (`linfeat._rodas5p._clip`) a blown-up step has a large finite error and is rejected."""
    from linfeat.checks import _sampling as S
    from linfeat.checks._config import FULL

    keys = jax.random.split(jax.random.PRNGKey(0), len(FULL.groups))
    problems, v0, _ = S._sample_group(keys[2], FULL.groups[2], FULL)
    for i in (2090, 2318):
        p = jax.tree.map(lambda x: x[i], problems)
        tr = lf.fine_tune(p, v0[i], check=False, rtol=1e-12, atol=1e-14)
        assert int(tr.status) == lf.Status.CONVERGED and int(tr.num_steps) < 2000
        assert float(tr.t_final) > 0
