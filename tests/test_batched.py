"""The batch driver (linfeat._batched): lane parity, chunks, methods, sweeps, the k x k solve."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linfeat as lf
from linfeat import _batched as bt
from linfeat._flows import FineTune, FlowData
from linfeat._reduce import reduce

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


@pytest.mark.slow  # natural path = batch path at the defaults: tests/test_engine.py
def test_matches_fine_tune_per_lane(batch, solved):
    # the driver is vmap of the same per-instance solve: lanes equal single calls to rounding
    probs, v0s = batch
    for i in (0, 3):
        p = jax.tree.map(lambda x: x[i], probs)
        ref = lf.fine_tune(p, v0s[i])
        assert int(solved.status[i]) == lf.Status.CONVERGED
        np.testing.assert_allclose(solved.ts[i], ref.ts, rtol=1e-14)
        np.testing.assert_allclose(solved.v[i], ref.v, atol=1e-12)
        np.testing.assert_allclose(solved.B[i], ref.B, atol=1e-12)
        np.testing.assert_allclose(solved.metrics.ood_error[i], ref.metrics.ood_error, rtol=1e-10)


@pytest.mark.slow  # R1, R2 on the engine: tests/test_flow.py
def test_invariants(batch, solved):
    # R2: balancedness conserved; R1: features frozen off S.
    assert float(jnp.max(solved.metrics.balancedness_drift)) < 1e-9
    assert float(jnp.max(solved.metrics.feature_change_perp)) == 0.0  # reduced: by construction


def test_concrete_bad_head_is_rejected_before_solving(batch):
    probs, v0s = batch
    with pytest.raises(ValueError, match="v0"):  # concrete input is validated up front
        bt.fine_tune_batch(probs, v0s.at[2].set(jnp.nan), with_metrics=False)


# The default suite checks per-lane statuses in tests/test_flow.py (STEP_LIMIT, NONFINITE,
# CONVERGED, the unbatched raise); this adds MAX_TIME and the driver's own programs.
@pytest.mark.slow
def test_status_per_lane(batch):
    probs, v0s = batch
    tr = bt.fine_tune_batch(probs, v0s, max_steps=5)
    assert np.all(np.asarray(tr.status) == lf.Status.STEP_LIMIT)
    bad = v0s.at[2].set(jnp.nan)
    # traced input cannot be: the NaN lane is reported, the others are unaffected
    tr = jax.jit(jax.vmap(lambda p, v: lf.fine_tune(p, v, check=False)))(probs, bad)
    st = np.asarray(tr.status)
    assert st[2] == lf.Status.NONFINITE
    assert np.all(np.delete(st, 2) == lf.Status.CONVERGED)
    tr = bt.fine_tune_batch(probs, v0s, t_max=1e-3, ts=jnp.linspace(0, 1e-3, 5), with_metrics=False)
    assert np.all(np.asarray(tr.status) == lf.Status.MAX_TIME)


@pytest.mark.slow  # chunking and padding: also tests/test_engine.py (natural path = batch path)
def test_chunked_equals_unchunked(batch, solved):
    probs, v0s = batch
    # The last chunk is padded to the chunk shape; lanes do not interact, but the chunk shape
    # changes BLAS blocking (rounding), which can move the stopping step: compare at solver
    # tolerance, with the same statuses.
    tr = bt.fine_tune_batch(probs, v0s, batch_size=4)
    np.testing.assert_array_equal(tr.status, solved.status)
    # Q's column signs are a gauge (set by rounding in the eigensolver): compare Q Q^T and B
    proj = lambda Q: np.einsum("bdr,ber->bde", Q, Q)  # noqa: E731
    np.testing.assert_allclose(proj(tr.basis), proj(solved.basis), atol=1e-12)
    for name in ("ts", "v", "B", "v_final", "B_final"):
        np.testing.assert_allclose(getattr(tr, name), getattr(solved, name), atol=1e-9)
    for a, b in zip(tr.metrics, solved.metrics, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-8)


def test_sorted_chunks_come_back_in_lane_order(batch):
    # several chunks: lanes are solved in `lane_order` and written back to their own rows
    probs, v0s = batch
    spans, size = bt.chunks(B, 4, 1)
    assert not np.array_equal(bt.lane_order(probs.X, spans, size), np.arange(B))
    kw = dict(batch_size=4, with_metrics=False, outputs="metrics")
    tr = bt.fine_tune_batch(probs, v0s, **kw)
    np.testing.assert_array_equal(tr.v0, np.asarray(v0s))
    # the same lanes given in another order come back in that order (one compiled chunk
    # shape; a lane's result does not depend on the other lanes of its chunk, and lanes
    # differ from each other by O(1), so a misplaced lane fails)
    perm = np.array([3, 0, 5, 1, 4, 2])
    back = bt.fine_tune_batch(jax.tree.map(lambda x: x[perm], probs), v0s[perm], **kw)
    np.testing.assert_array_equal(back.status, tr.status[perm])
    np.testing.assert_allclose(back.v_final, tr.v_final[perm], atol=1e-12)
    np.testing.assert_allclose(back.A_final, tr.A_final[perm], atol=1e-12)


@pytest.mark.slow  # LP-FT and LP flows: tests/test_flow.py (the batch path is their vmap)
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
    solve = bt._chunk_solver(None, num_save=64, train_features=True, lp_init=False,
                             max_steps=100_000, outputs="full", with_metrics=False)  # fmt: skip
    before = solve._cache_size()
    assert before >= 1  # the function the call above compiled
    bt.fine_tune_batch(probs, v0s + 0.1, with_metrics=False)
    assert solve._cache_size() == before


def test_sweep_resumes_from_checkpoints(tmp_path):
    def instance(key):
        p = lf.make_problem(key, d=40, k=2, m=5, feature_error=0.3)
        return p, jax.random.normal(jax.random.fold_in(key, 1), (2,))

    keys = jax.random.split(jax.random.key(2), 5)
    a = bt.sweep(instance, keys, batch_size=2, checkpoint_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("chunk_*.npz"))) == 3
    b = bt.sweep(instance, keys, batch_size=2, checkpoint_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(a.v_final, b.v_final)
    assert a.v_final.shape == (5, 2) and a.basis is None and a.A is None
    assert np.all(a.status == lf.Status.CONVERGED)


@pytest.mark.parametrize("train_features", [True, False])
def test_structured_linear_solve_matches_dense_jacobian(train_features):
    # The k x k reduction of (I - alpha J) x = b (`FineTune.factor`) against the dense
    # Jacobian of the field from jax.jacfwd, solved by NumPy (LAPACK, outside the library).
    rng = np.random.default_rng(0)
    k, r = 3, 5
    flow = FineTune(train_features=train_features)
    for _ in range(3):
        v, A = jnp.asarray(rng.normal(size=k)), jnp.asarray(rng.normal(size=(k, r)))
        data = FlowData(jnp.asarray(rng.uniform(0.01, 3.0, r)), jnp.asarray(rng.normal(size=r)))
        rho = np.linalg.norm(np.asarray(data.sigma2 * (A.T @ v) - data.g))
        alpha = 0.3 / (1.0 + rho)  # 4 alpha^2 |rho|^2 < 1/2: K is SPD
        bv, bA = jnp.asarray(rng.normal(size=k)), jnp.asarray(rng.normal(size=(k, r)))
        dv, dA = flow.factor((v, A), data, alpha)((bv, bA))

        def f(y, data=data):
            fv, fA = flow.field((y[:k], y[k:].reshape(k, r)), data)
            return jnp.concatenate([fv, fA.ravel()])

        y = jnp.concatenate([v, A.ravel()])
        J = np.asarray(jax.jacfwd(f)(y))
        x = np.linalg.solve(np.eye(len(y)) - alpha * J, np.concatenate([bv, np.ravel(bA)]))
        np.testing.assert_allclose(dv, x[:k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.ravel(dA), x[k:], rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # square X: also tests/test_engine.py (step counts, Kvaerno5 reference)
def test_rodas5p_on_stiff_square_X_matches_explicit_reference():
    # n = m: kappa(X^T X) is large and the flow stiff. Rodas5P (the engine) against diffrax's
    # explicit Dopri8 on the same reduced field, both at rtol 1e-12 to a fixed horizon long
    # after the data are fit: they agree to ~1e-9, and the explicit method needs far more
    # steps (its step is stability-bound, Rodas5P's is not).
    p = lf.make_problem(jax.random.key(7), d=40, k=3, m=8, n=8, feature_error=0.5)
    v0 = jax.random.normal(jax.random.key(8), (3,))
    red = reduce(p)
    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-2, 3, 11)])
    ros = lf.fine_tune(p, v0, ts=ts, t_max=1e3, grad_tol=1e-300, rtol=1e-12, atol=1e-14,
                       check=False)  # fmt: skip
    ex = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, a: FineTune().field(y, a)), diffrax.Dopri8(), 0.0, 1e3,
        None, (v0, red.A0), red.flow_data, saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-14), max_steps=10**6,
    )  # fmt: skip
    assert int(ros.status) == lf.Status.MAX_TIME
    np.testing.assert_allclose(ros.v, ex.ys[0], atol=1e-9)
    B_ex = p.B0 + jnp.einsum("tkr,dr->tkd", ex.ys[1] - red.A0, red.basis)  # Q's signs: a gauge
    np.testing.assert_allclose(ros.B, B_ex, atol=1e-9)
    assert int(ros.num_steps) * 5 < int(ex.stats["num_steps"])
