"""The one engine: natural path = batch path, independent references, generic flows, drift."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linfeat as lf
from linfeat import _batched as bt
from linfeat._engine import default_tolerances, solve
from linfeat._flows import AbstractFlow, FineTune
from linfeat._reduce import reduce


def _batch(n_lanes, *, n, seed=0, d=40, k=3, m=6):
    keys = jax.random.split(jax.random.key(seed), n_lanes)
    probs = jax.vmap(lambda key: lf.make_problem(key, d=d, k=k, m=m, n=n, feature_error=0.5))(keys)
    v0s = jax.random.normal(jax.random.key(seed + 1), (n_lanes, k))
    return probs, v0s


@pytest.mark.parametrize("square", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_vmap_fine_tune_equals_fine_tune_batch(square, monkeypatch):
    # The natural path and the batch driver are the same per-instance computation at their
    # defaults: same statuses, same final state to rounding (32 problems, n = m and n = 2m).
    from linfeat import _flow

    probs, v0s = _batch(32, n=6 if square else 12)
    run = lambda: jax.jit(jax.vmap(lambda p, v: lf.fine_tune(p, v, check=False)))(probs, v0s)  # noqa: E731
    natural = run()
    batch = lf.fine_tune_batch(probs, v0s, batch_size=12)  # 3 chunks, the last one padded
    np.testing.assert_array_equal(np.asarray(natural.status), batch.status)
    np.testing.assert_array_equal(np.asarray(natural.num_steps), batch.num_steps)
    # no failure; MAX_TIME is a legitimate outcome on square X, where the smallest singular
    # value can make the last direction converge after the default t_max = 1e6 / lambda_max
    assert np.all(batch.status <= lf.Status.MAX_TIME) and np.mean(batch.status == 0) > 0.9
    # L-stable Rodas5P on square X at its defaults: few steps (explicit solvers need 1e4-1e5)
    assert int(np.max(batch.num_steps)) <= 300, batch.num_steps
    # different batch shapes change BLAS blocking only: agreement to a few hundred ulps
    np.testing.assert_allclose(natural.v_final, batch.v_final, rtol=0, atol=1e-12)
    # (A = B Q depends on the signs of Q's columns, a gauge: compare B itself)
    np.testing.assert_allclose(natural.B_final, batch.B_final, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        natural.metrics.ood_error, batch.metrics.ood_error, rtol=1e-10, atol=1e-14
    )
    # Over more than VMAP_CHUNK lanes, jax.vmap(fine_tune) runs the per-lane pipeline in
    # chunks (lax.map, the last chunk padded): lane by lane the same numbers as one vmap.
    monkeypatch.setattr(_flow, "VMAP_CHUNK", 12)  # 3 chunks of 12, four padded lanes
    mapped = []
    lax_map = jax.lax.map
    monkeypatch.setattr(jax.lax, "map", lambda f, xs: mapped.append(1) or lax_map(f, xs))
    chunked = run()
    assert mapped, "the chunked path was not taken"
    np.testing.assert_array_equal(chunked.status, natural.status)
    np.testing.assert_array_equal(chunked.num_steps, natural.num_steps)
    # Chunks of 12 and one batch of 32 are vectorised differently, so rounding differs; the
    # step sizes follow error estimates (differences of nearly equal stage values) and the
    # stop time moved by up to 7e-8 relative, while the converged state agrees to rounding.
    np.testing.assert_allclose(chunked.t_final, natural.t_final, rtol=1e-6)
    np.testing.assert_allclose(chunked.v_final, natural.v_final, rtol=0, atol=1e-12)
    np.testing.assert_allclose(chunked.B_final, natural.B_final, rtol=0, atol=1e-12)
    np.testing.assert_allclose(chunked.metrics.ood_error, natural.metrics.ood_error, rtol=1e-10)


def test_batch_returns_numpy_for_any_number_of_chunks():
    # One chunk of 12 lanes, then 32 lanes in three chunks of 12: the compiled program of
    # test_vmap_fine_tune_equals_fine_tune_batch (same shapes and settings).
    probs, v0s = _batch(32, n=6)
    part = lambda a, b: jax.tree.map(lambda x: x[a:b], (probs, v0s))  # noqa: E731
    one = lf.fine_tune_batch(*part(0, 12), batch_size=12)
    many = lf.fine_tune_batch(probs, v0s, batch_size=12)
    for tr in (one, many):
        assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(tr))
    # Several chunks are solved in stiffness order (`lane_order`, here not the given order)
    # and returned in the caller's order: lane by lane equal to calls on parts of the batch.
    spans, size = bt.chunks(32, 12)
    assert not np.array_equal(bt.lane_order(probs.X, spans, size), np.arange(32))
    rest = lf.fine_tune_batch(*part(12, 32), batch_size=12)
    for name in ("v_final", "A_final", "t_final", "num_steps", "status"):
        got, want = getattr(many, name), np.concatenate([getattr(one, name), getattr(rest, name)])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(
        many.metrics.ood_error,
        np.concatenate([one.metrics.ood_error, rest.metrics.ood_error]),
        rtol=1e-12,
    )


def test_log_condition_estimate_is_exact_on_diagonal_gram():
    # Diagonal Gram matrices: the pivots are the squared singular values, the zero one is the
    # rank cut; n < d and n > d use the smaller Gram.
    X = jnp.zeros((4, 7)).at[jnp.arange(4), jnp.arange(4)].set(jnp.array([2.0, 3.0, 0.0, 1.0]))
    assert float(bt.log_condition_estimate(X)) == pytest.approx(np.log(9.0), rel=1e-14)
    assert float(bt.log_condition_estimate(X.T)) == pytest.approx(np.log(9.0), rel=1e-14)
    assert float(bt.log_condition_estimate(jnp.zeros((3, 5)))) == 0.0


def test_metrics_outputs_never_return_coordinates_as_B():
    # the shapes and settings of the tests above (one compiled program for outputs="full")
    probs, v0s = jax.tree.map(lambda x: x[:12], _batch(32, n=6))
    tr = lf.fine_tune_batch(probs, v0s, batch_size=12, outputs="metrics")
    assert tr.A is None and tr.basis is None
    with pytest.raises(ValueError, match="outputs='full'"):
        tr.B_final
    with pytest.raises(ValueError, match="outputs='full'"):
        tr.B
    full = lf.fine_tune_batch(probs, v0s, batch_size=12)
    assert full.B_final.shape == (12, 3, 40) and full.B.shape == (12, 64, 3, 40)
    np.testing.assert_array_equal(tr.metrics.ood_error, full.metrics.ood_error)


@pytest.mark.slow  # the default suite compares with SciPy (tests/test_flow.py)
def test_rodas5p_against_kvaerno5():
    # Independent reference: diffrax's implicit Kvaerno5 (its own Newton solver and error
    # control) on the same reduced field at tight tolerances. Rodas5P at the defaults must
    # agree to ~rtol-level (global error ~0.03 rtol per unit of the state, measured).
    p = lf.make_problem(jax.random.key(3), d=50, k=4, m=8, n=8, feature_error=0.3)
    v0 = jax.random.normal(jax.random.key(4), (4,))
    red = reduce(p)
    tr = lf.fine_tune(p, v0)
    ts = tr.ts
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, a: FineTune().field(y, a)),
        diffrax.Kvaerno5(),
        0.0,
        ts[-1],
        None,
        (v0, red.A0),
        red.flow_data,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-14),
        max_steps=200_000,
    )
    rtol = default_tolerances(jnp.float64)[0]
    live = np.asarray(ts) <= float(tr.t_final)  # after the stop the engine holds the limit
    np.testing.assert_allclose(tr.v[live], sol.ys[0][live], atol=100 * rtol)
    # compare B in R^d: the signs of the singular vectors in Q are a gauge choice
    B_ref = p.B0 + jnp.einsum("tkr,dr->tkd", sol.ys[1] - red.A0, red.basis)
    np.testing.assert_allclose(tr.B[live], B_ref[live], atol=100 * rtol)


class _DenseFineTune(AbstractFlow):
    """FT with no structured solve: exercises the generic jacfwd + Gauss-Jordan fallback."""

    def field(self, y, args):
        return FineTune().field(y, args)


# slow: the generic dense-Jacobian fallback (13 s); the structured solve is what every flow uses
@pytest.mark.slow
def test_generic_flow_fallback_matches_structured_solve():
    p = lf.make_problem(jax.random.key(5), d=30, k=3, m=5, n=5, feature_error=0.4)
    v0 = jax.random.normal(jax.random.key(6), (3,))
    red = reduce(p)
    kw = dict(
        ts=jnp.linspace(0.0, 5.0, 6), t1=5.0, rtol=1e-9, atol=1e-11, grad_tol=1e-12,
        max_steps=10_000,
    )  # fmt: skip
    a = jax.jit(lambda: solve(FineTune(), (v0, red.A0), red.flow_data, **kw))()
    b = jax.jit(lambda: solve(_DenseFineTune(), (v0, red.A0), red.flow_data, **kw))()
    # the same method with two exact linear solves: identical steps up to rounding
    np.testing.assert_array_equal(a.num_steps, b.num_steps)
    np.testing.assert_allclose(a.ys[0], b.ys[0], atol=1e-11)
    np.testing.assert_allclose(a.ys[1], b.ys[1], atol=1e-11)


@pytest.mark.slow  # the default suite asserts <= 300 steps on square X in the parity test above
def test_square_x_needs_few_steps():
    # The flow is stiff on square Gaussian X (kappa(X^T X) ~ m^2): the explicit solvers
    # needed 1e4-1e5 steps; L-stable Rodas5P at its defaults stays under 300.
    probs, v0s = _batch(16, n=20, d=200, k=10, m=20, seed=7)
    tr = jax.jit(jax.vmap(lambda p, v: lf.fine_tune(p, v, check=False)))(probs, v0s)
    # MAX_TIME is physics, not a failure: a lane whose smallest singular value s satisfies
    # s^2 / lambda_max < ~1e-5 converges after the default t_max = 1e6 / lambda_max
    assert np.all(np.asarray(tr.status) <= lf.Status.MAX_TIME)
    assert int(np.max(tr.num_steps)) <= 300, np.asarray(tr.num_steps)


@pytest.mark.slow  # the default suite has this in tests/test_flow.py
def test_failures_reported_per_lane_and_raised_alone():
    probs, v0s = _batch(4, n=12)
    tr = lf.fine_tune_batch(probs, v0s, max_steps=3, with_metrics=False)
    assert np.all(tr.status == lf.Status.STEP_LIMIT)
    p = jax.tree.map(lambda x: x[0], probs)
    with pytest.raises(lf.SolverError, match="STEP_LIMIT"):
        lf.fine_tune(p, v0s[0], max_steps=3)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(rtol=0.0), "rtol"),
        (dict(rtol=float("nan")), "rtol"),
        (dict(atol=-1.0), "atol"),
        (dict(grad_tol=0.0), "grad_tol"),
        (dict(t_max=0.0), "t_max"),
        (dict(t_max=-2.0), "t_max"),
        (dict(num_save=0), "num_save"),
        (dict(max_steps=0), "max_steps"),
        (dict(ts=jnp.asarray([0.0, 2.0, 1.0])), "ts"),
        (dict(ts=jnp.asarray([-1.0, 2.0])), "ts"),
    ],
)
def test_bad_solver_settings_raise_before_any_step(kw, match):
    p = lf.make_problem(jax.random.key(0), d=20, k=2, m=4)
    with pytest.raises(ValueError, match=match):
        lf.fine_tune(p, jnp.ones(2), **kw)


def test_bad_head_raises():
    p = lf.make_problem(jax.random.key(0), d=20, k=2, m=4)
    with pytest.raises(ValueError, match="v0"):
        lf.fine_tune(p, jnp.ones(3))
    with pytest.raises(ValueError, match="v0"):
        lf.fine_tune(p, jnp.asarray([1.0, jnp.nan]))
    with pytest.raises(ValueError, match="v0"):
        lf.fine_tune(p, jnp.asarray([1 + 1j, 0.0]))


def test_batch_size_auto_and_bad_values():
    from linfeat._batched import auto_batch_size, batch_mesh

    # CPU (the suite's backend): 128 lanes per device, times the mesh size
    assert jax.devices()[0].platform != "cpu" or auto_batch_size() == 128
    assert auto_batch_size(batch_mesh(1)) == auto_batch_size()
    probs, v0s = jax.tree.map(lambda x: x[:2], _batch(10, n=12))  # shapes of the tests above
    for bad, match in (("big", '"auto", None'), (0, ">= 1"), (2.0, "integer")):
        with pytest.raises(ValueError, match=match):
            lf.fine_tune_batch(probs, v0s, batch_size=bad)
