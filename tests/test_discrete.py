"""Discrete-time training (linfeat._discrete): GD -> flow convergence order, R1 under optax
optimisers, and the transformations (vmap, float32, divergence status).

Runs share compiled programs: every unbatched run uses NUM_STEPS / SAVE_EVERY, and the
batched GD runs of the order and divergence tests use the same shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import linfeat as lf
from linfeat._discrete import DiscreteTrajectory, _train, train_discrete
from linfeat._flow import SolverError, Status

D, K, M = 20, 2, 5  # n = 2m = 10
NUM_STEPS, SAVE_EVERY = 200, 20


def tol(kind: str) -> float:
    """Named tolerances, each derived from float64 rounding or the reference's accuracy."""
    return {
        # Same arithmetic up to summation order (row permutations, batched matmuls): the
        # differences start at ~1e-16 and do not grow along these contracting runs.
        "rounding": 1e-12,
        # R1: (B - B0) Pi_perp is a sum of rounding errors of rows that lie in S, |B| ~ 1.
        "frozen_perp": 1e-12,
        # float32 against float64 on the same run: ~1e3 float32 ulps after NUM_STEPS steps.
        "float32": 1e-4,
    }[kind]


def assert_close(actual, expected, kind: str):
    """|actual - expected| <= tol(kind) * max(1, |expected|), elementwise."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.abs(actual - expected)
    bound = tol(kind) * np.maximum(1.0, np.abs(expected))
    assert np.all(err <= bound), f"max error {err.max():.3e} exceeds {kind} tolerance"


def random_problem(seed: int = 0):
    """A problem built in NumPy (no compile): S of dim M, random true and pretrained features."""
    rng = np.random.default_rng(seed)
    n = 2 * M
    Q = np.linalg.qr(rng.standard_normal((D, M)))[0]
    X = rng.standard_normal((n, M)) @ Q.T
    B_star = np.linalg.qr(rng.standard_normal((D, K)))[0].T
    B0 = np.linalg.qr(B_star.T + 0.3 * rng.standard_normal((D, K)))[0].T
    v_star = rng.standard_normal(K)
    problem = lf.problem_from_arrays(
        X=X, Y=X @ B_star.T @ v_star, B0=B0, B_star=B_star, v_star=v_star
    )
    return problem, jnp.asarray(rng.standard_normal(K))


@pytest.fixture(scope="module")
def setup():
    problem, v0 = random_problem()
    lam = float(np.linalg.norm(np.asarray(problem.X), 2) ** 2)  # lambda_max(X^T X)
    return problem, v0, lam


def run(problem, v0, **kwargs):
    return train_discrete(problem, v0, num_steps=NUM_STEPS, save_every=SAVE_EVERY, **kwargs)


# slow: a convergence-order sweep (12 s); the gd_vs_flow experiment measures the same order
@pytest.mark.slow
def test_gd_converges_to_flow_with_order_one(setup):
    """Forward Euler: GD with step eta is within O(eta) of the flow at t = eta * steps."""
    problem, v0, lam = setup
    scales = np.array([4e-3, 2e-3, 1e-3, 5e-4])
    t_end = 2.0 / lam  # the loss drops by 2-4 orders of magnitude by then
    # One compiled program for all steps: num_steps fits the smallest eta, and the state at
    # t_end is the save at step t_end / eta = 500, 1000, 2000, 4000 (all multiples of 500).
    traj = jax.vmap(
        lambda eta: train_discrete(problem, v0, learning_rate=eta, num_steps=4000, save_every=500)
    )(jnp.asarray(scales / lam))
    rows = np.arange(4)
    idx = np.array([1, 2, 4, 8])
    np.testing.assert_allclose(traj.ts[rows, idx], t_end, rtol=1e-12)
    # Reference: the adaptive flow at rtol 1e-12 (global error ~1e-10), far below the GD
    # errors measured here (>= 5e-5 on seeds 0-3).
    ref = lf.fine_tune(problem, v0, ts=jnp.asarray([0.0, t_end]))
    v_ref, B_ref = np.asarray(ref.v[-1]), np.asarray(ref.B[-1])
    err = np.sqrt(
        np.sum((np.asarray(traj.v[rows, idx]) - v_ref) ** 2, axis=-1)
        + np.sum((np.asarray(traj.B[rows, idx]) - B_ref) ** 2, axis=(-2, -1))
    )
    order = np.log2(err[:-1] / err[1:])
    # err = C eta + D eta^2 + ..., so the observed order is 1 + O(eta * lambda_max) (measured
    # 1.0002 - 1.007 on seeds 0-3 at these steps). The window [0.8, 1.2] leaves a wide margin
    # for other problem draws while failing a wrong time convention (order ~0: the error would
    # not vanish) or a different scheme (order 2).
    assert np.all((order > 0.8) & (order < 1.2)), f"observed orders {order}"
    moved = np.sqrt(np.sum((v_ref - np.asarray(v0)) ** 2) + np.sum((B_ref - problem.B0) ** 2))
    assert err[-1] < 1e-3 * moved


@pytest.mark.parametrize("optimizer", ["gd", "sgd", "momentum", "adam"])
def test_feature_change_off_S(setup, optimizer):
    """R1 holds for GD, SGD and momentum (their updates have rows in S); Adam breaks it."""
    problem, v0, lam = setup
    if optimizer == "adam":
        traj = run(problem, v0, optimizer="adam", learning_rate=1e-2)
    else:
        extra = dict(batch_size=4, key=jax.random.key(2)) if optimizer == "sgd" else {}
        traj = run(problem, v0, optimizer=optimizer, learning_rate=1e-2 / lam, **extra)
    assert int(traj.status) == Status.CONVERGED
    m = traj.metrics
    assert float(m.train_loss[-1]) < 0.1 * float(m.train_loss[0])  # it did train
    assert float(m.feature_change_S[-1]) > 1e-2  # and moved the features on S
    if optimizer == "adam":
        assert float(jnp.max(m.feature_change_perp)) > 1e-6
    else:
        assert float(jnp.max(m.feature_change_perp)) < tol("frozen_perp")


def test_sgd_full_batch_equals_gd(setup):
    problem, v0, lam = setup
    eta = 1e-2 / lam
    gd = run(problem, v0, learning_rate=eta)
    sgd = run(
        problem, v0, optimizer="sgd", learning_rate=eta, batch_size=problem.n, key=jax.random.key(3)
    )
    assert_close(sgd.v, gd.v, "rounding")
    assert_close(sgd.B, gd.B, "rounding")
    np.testing.assert_array_equal(sgd.steps, np.arange(0, NUM_STEPS + 1, SAVE_EVERY))


def test_vmap_over_problems_heads_keys_equals_loop(setup):
    _, _, lam = setup
    pairs = [random_problem(seed) for seed in range(3)]
    problems = jax.tree.map(lambda *xs: jnp.stack(xs), *[p for p, _ in pairs])
    heads = jnp.stack([v0 for _, v0 in pairs])
    keys = jax.random.split(jax.random.key(4), 3)
    kw = dict(optimizer="sgd", learning_rate=1e-2 / lam, batch_size=4)
    batched = jax.vmap(lambda p, v0, key: run(p, v0, key=key, **kw))(problems, heads, keys)
    for i, (problem, v0) in enumerate(pairs):
        one = run(problem, v0, key=keys[i], **kw)
        assert_close(batched.v[i], one.v, "rounding")
        assert_close(batched.B[i], one.B, "rounding")
        assert_close(batched.metrics.train_loss[i], one.metrics.train_loss, "rounding")
        assert int(batched.status[i]) == Status.CONVERGED


def test_learning_rate_does_not_recompile(setup):
    problem, v0, lam = setup
    run(problem, v0, learning_rate=1e-2 / lam)
    before = _train._cache_size()
    run(problem, v0, learning_rate=3e-3 / lam)
    assert _train._cache_size() == before


def test_custom_transformation_equals_name(setup):
    problem, v0, lam = setup
    eta = 1e-2 / lam
    named = run(problem, v0, learning_rate=eta)
    custom = run(problem, v0, optimizer=optax.sgd(eta), learning_rate=eta)
    np.testing.assert_array_equal(custom.v, named.v)
    np.testing.assert_array_equal(custom.B, named.B)


def test_head_only_reaches_linear_probe(setup):
    """train_features=False is discrete LP: B stays B0 and v tends to the LP solution."""
    problem, v0, _ = setup
    A = np.asarray(problem.X @ problem.B0.T)
    lam_A = np.linalg.eigvalsh(A.T @ A)
    # GD on the quadratic |A v - Y|^2 (Hessian 2 A^T A) with eta = 0.9 / lambda_max(A^T A)
    # contracts by 1 - 1.8 lambda_min / lambda_max per step: ~1e-35 after NUM_STEPS here.
    traj = run(problem, v0, learning_rate=0.9 / lam_A[-1], train_features=False)
    np.testing.assert_array_equal(traj.B_final, problem.B0)
    assert float(jnp.max(traj.metrics.feature_change_S)) == 0.0
    assert_close(traj.v_final, lf.linear_probe(problem), "rounding")


@pytest.mark.slow  # float32 end to end: tests/test_flow.py and tests/test_validation.py
def test_float32_stays_float32(setup):
    problem, v0, lam = setup
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), problem)
    traj = run(p32, v0.astype(jnp.float32), learning_rate=1e-2 / lam)
    assert isinstance(traj, DiscreteTrajectory)
    for leaf in (traj.ts, traj.v, traj.B, traj.v_final, traj.B_final, *traj.metrics):
        assert leaf.dtype == jnp.float32
    ref = run(problem, v0, learning_rate=1e-2 / lam)
    assert_close(traj.v, ref.v, "float32")
    assert_close(traj.B, ref.B, "float32")


def test_divergence_reported_under_vmap_and_raised_unbatched(setup):
    problem, v0, lam = setup
    # GD is stable only for eta below ~1 / (lambda_max (|v|^2 + 1)); 10 / lambda_max blows up.
    etas = jnp.asarray([1e-3, 10.0, 2e-3, 1e3]) / lam
    traj = jax.vmap(
        lambda eta: train_discrete(problem, v0, learning_rate=eta, num_steps=4000, save_every=500)
    )(etas)
    np.testing.assert_array_equal(
        traj.status, [Status.CONVERGED, Status.NONFINITE, Status.CONVERGED, Status.NONFINITE]
    )
    with pytest.raises(SolverError, match="NONFINITE"):
        run(problem, v0, learning_rate=10.0 / lam)
    quiet = run(problem, v0, learning_rate=10.0 / lam, check=False)
    assert int(quiet.status) == Status.NONFINITE


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(v0=np.ones(K + 1)), "v0"),
        (dict(v0=np.array([1.0, np.nan])), "v0"),
        (dict(num_steps=0), "num_steps"),
        (dict(save_every=0), "save_every"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=-1e-3), "learning_rate"),
        (dict(learning_rate=np.inf), "learning_rate"),
        (dict(optimizer="sgd", batch_size=0, key=jax.random.key(0)), "batch_size"),
        (dict(optimizer="sgd", batch_size=2 * M + 1, key=jax.random.key(0)), "batch_size"),
        (dict(optimizer="sgd", key=jax.random.key(0)), "batch_size"),
        (dict(optimizer="gd", batch_size=4, key=jax.random.key(0)), "batch_size"),
        (dict(optimizer="sgd", batch_size=4), "key"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(optimizer="momentum", momentum=1.0), "momentum"),
        (dict(optimizer="adam", b2=1.5), "b2"),
    ],
)
def test_bad_inputs_raise(setup, kwargs, name):
    problem, v0, _ = setup
    kwargs = dict(kwargs)
    v0 = kwargs.pop("v0", v0)
    with pytest.raises(ValueError, match=f"`{name}`"):
        train_discrete(problem, v0, **kwargs)
