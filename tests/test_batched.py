"""The batched solver (linfeat._batched) against `lf.fine_tune`, lane by lane."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linfeat as lf
from linfeat import _batched as bt

B = 6


@pytest.fixture(scope="module")
def batch():
    keys = jax.random.split(jax.random.key(0), B)
    probs = jax.vmap(lambda k: lf.make_problem(k, d=60, k=3, m=8, feature_error=0.5))(keys)
    v0s = jax.random.normal(jax.random.key(1), (B, 3))
    return probs, v0s


@pytest.fixture(scope="module")
def solved(batch):
    probs, v0s = batch
    return bt.fine_tune_batch(probs, v0s)


def w(tr, i):
    return (tr.B_coords_final[i] @ tr.basis[i].T).T @ tr.v_final[i]


@pytest.mark.parametrize("i", [0, 3])
def test_matches_fine_tune_per_lane(batch, solved, i):
    # Independent reference: diffrax Tsit5 (lf.fine_tune) vs our Dormand-Prince 8, both at
    # rtol 1e-12. Each stops when |grad| < 1e-9, which leaves the final w within
    # ~grad_tol / lambda_min of the limit: 1e-8 relative (the benchmark's criterion).
    probs, v0s = batch
    p = jax.tree.map(lambda x: x[i], probs)
    ref = lf.fine_tune(p, v0s[i])
    assert int(solved.status[i]) == lf.Status.CONVERGED
    w_ref = ref.B_final.T @ ref.v_final
    assert jnp.linalg.norm(w(solved, i) - w_ref) <= 1e-8 * jnp.linalg.norm(w_ref)
    np.testing.assert_allclose(solved.ts[i], ref.ts, rtol=1e-14)
    np.testing.assert_allclose(solved.v[i], ref.v, atol=1e-8)
    np.testing.assert_allclose(solved.metrics.ood_error[i], ref.metrics.ood_error, atol=1e-8)
    np.testing.assert_allclose(solved.B[i], ref.B, atol=1e-8)


def test_invariants(batch, solved):
    # R2: balancedness conserved; R1: features frozen off S.
    assert float(jnp.max(solved.metrics.balancedness_drift)) < 1e-9
    assert float(jnp.max(solved.metrics.feature_change_perp)) < 1e-12


def test_status_per_lane(batch):
    probs, v0s = batch
    tr = bt.fine_tune_batch(probs, v0s, max_steps=5)
    assert np.all(np.asarray(tr.status) == lf.Status.STEP_LIMIT)
    bad = v0s.at[2].set(jnp.nan)
    tr = bt.fine_tune_batch(probs, bad, with_metrics=False)
    st = np.asarray(tr.status)
    assert st[2] == lf.Status.NONFINITE
    assert np.all(np.delete(st, 2) == lf.Status.CONVERGED)
    tr = bt.fine_tune_batch(probs, v0s, t_max=1e-3, ts=jnp.linspace(0, 1e-3, 5), with_metrics=False)
    assert np.all(np.asarray(tr.status) == lf.Status.MAX_TIME)


def test_chunked_equals_unchunked(batch, solved):
    probs, v0s = batch
    # The last chunk is padded to the chunk shape; lanes do not interact, but the chunk shape
    # changes BLAS blocking (rounding), which can move the stopping step: compare at solver
    # tolerance, with the same statuses.
    tr = bt.fine_tune_batch(probs, v0s, batch_size=4)
    np.testing.assert_array_equal(tr.status, solved.status)
    np.testing.assert_array_equal(tr.basis, solved.basis)
    for name in ("ts", "v", "B_coords", "v_final", "B_coords_final"):
        np.testing.assert_allclose(getattr(tr, name), getattr(solved, name), atol=1e-9)
    for a, b in zip(tr.metrics, solved.metrics, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-8)


def test_lp_ft_and_lp(batch):
    probs, v0s = batch
    p = jax.tree.map(lambda x: x[1], probs)
    tr = bt.fine_tune_batch(probs, method="lp_ft", with_metrics=False)
    ref = lf.lp_ft(p)
    np.testing.assert_allclose(tr.v_final[1], ref.v_final, atol=1e-9)
    tr = bt.fine_tune_batch(probs, v0s, method="lp", with_metrics=False)
    np.testing.assert_allclose(tr.v_final[1], lf.linear_probe(p), atol=1e-8)


def test_no_recompile_on_second_call(batch):
    probs, v0s = batch
    bt.fine_tune_batch(probs, v0s, with_metrics=False)
    ops = bt._ops(None, num_save=64, train_features=True, lp_init=False, outputs="full",
                  with_metrics=False, solver="rodas5p", segment=128)  # fmt: skip
    fns = (ops.setup, ops.init, ops.load, ops.advance, ops.store, ops.finish, ops.trajectory)
    before = [f._cache_size() for f in fns]
    assert all(n >= 1 for n in before)  # these are the functions the call above compiled
    bt.fine_tune_batch(probs, v0s + 0.1, with_metrics=False)
    assert [f._cache_size() for f in fns] == before


def test_sweep_resumes_from_checkpoints(tmp_path):
    def instance(key):
        p = lf.make_problem(key, d=40, k=2, m=5, feature_error=0.3)
        return p, jax.random.normal(jax.random.fold_in(key, 1), (2,))

    keys = jax.random.split(jax.random.key(2), 5)
    a = bt.sweep(instance, keys, batch_size=2, checkpoint_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("chunk_*.npz"))) == 3
    b = bt.sweep(instance, keys, batch_size=2, checkpoint_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(a.v_final, b.v_final)
    assert a.v_final.shape == (5, 2) and a.basis is None and a.B_coords is None
    assert np.all(a.status == lf.Status.CONVERGED)


@pytest.mark.parametrize("train_features", [1.0, 0.0])
def test_rosenbrock_linear_solve_matches_dense_jacobian(train_features):
    # The k x k reduction of (I - alpha J) x = r (`_linearize`) against the dense Jacobian of
    # the field from jax.jacfwd, solved by NumPy.
    rng = np.random.default_rng(0)
    b, k, r = 3, 3, 5
    v = jnp.asarray(rng.normal(size=(b, k)))
    A = jnp.asarray(rng.normal(size=(b, k, r)))
    c = bt._Consts(
        sigma2=jnp.asarray(rng.uniform(0.01, 3.0, (b, r))), g=jnp.asarray(rng.normal(size=(b, r))),
        ts=None, t1=None, rtol=None, atol=None, grad_tol=None,
        train_features=jnp.asarray(train_features),
    )  # fmt: skip
    rho = np.linalg.norm(np.asarray(bt._residual(v, A, c)), axis=1)
    alpha = jnp.asarray(0.3 / (1.0 + rho))  # inside the step cap: 4 alpha^2 |rho|^2 < 1/2
    rv, rA = jnp.asarray(rng.normal(size=(b, k))), jnp.asarray(rng.normal(size=(b, k, r)))
    dv, dA = bt._linear_solve(bt._linearize(v, A, c, alpha), rv, rA)
    for i in range(b):
        ci = jax.tree.map(lambda x: x[i : i + 1] if x is not None and x.ndim else x, c)

        def f(y, ci=ci):
            fv, fA = bt._field(y[None, :k], y[None, k:].reshape(1, k, r), ci)
            return jnp.concatenate([fv[0], fA[0].ravel()])

        y = jnp.concatenate([v[i], A[i].ravel()])
        J = np.asarray(jax.jacfwd(f)(y))
        x = np.linalg.solve(np.eye(len(y)) - float(alpha[i]) * J,
                            np.concatenate([rv[i], np.ravel(rA[i])]))  # fmt: skip
        np.testing.assert_allclose(dv[i], x[:k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.ravel(dA[i]), x[k:], rtol=1e-10, atol=1e-12)


def test_rodas5p_on_stiff_square_X_matches_dopri8():
    # n = m: kappa(X^T X) is large and the flow stiff. Both solvers integrate to the same
    # fixed horizon, long after the data are fit, and save on the same grid (Rodas5P through
    # its dense output, Dopri8 by landing on the save times); both run at rtol 1e-12, so they
    # agree to ~1e-9. Explicit steps grow linearly with the horizon (stability), Rodas5P's
    # do not.
    keys = jax.random.split(jax.random.key(7), 4)
    probs = jax.vmap(lambda k: lf.make_problem(k, d=40, k=3, m=8, n=8, feature_error=0.5))(keys)
    v0s = jax.random.normal(jax.random.key(8), (4, 3))
    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-2, 3, 11)])
    kw = dict(ts=ts, t_max=1e3, grad_tol=0.0, with_metrics=False)
    ros = bt.fine_tune_batch(probs, v0s, solver="rodas5p", **kw)
    ex = bt.fine_tune_batch(probs, v0s, solver="dopri8", **kw)
    assert np.all(np.asarray(ros.status) == lf.Status.MAX_TIME)
    assert np.all(np.asarray(ex.status) == lf.Status.MAX_TIME)
    np.testing.assert_allclose(ros.v, ex.v, atol=1e-9)
    np.testing.assert_allclose(ros.B_coords, ex.B_coords, atol=1e-9)
    np.testing.assert_allclose(ros.B_coords_final, ex.B_coords_final, atol=1e-9)
    # the point of the implicit method: far fewer steps where the explicit one is stiff
    assert np.sum(ros.num_steps) * 5 < np.sum(ex.num_steps)
