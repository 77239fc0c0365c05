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
                  with_metrics=False, solver="dopri8", segment=64)  # fmt: skip
    fns = (ops.setup, ops.init, ops.advance, ops.finish, ops.trajectory)
    before = [f._cache_size() for f in fns]
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
