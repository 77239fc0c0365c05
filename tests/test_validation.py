"""Input validation (linfeat._validate and the public functions that use it).

Every bad input raises a `ValueError` that names the argument, before anything is compiled or
run; good inputs still work; traced knobs (jit/vmap) skip the value checks; float32 stays
float32. Tiny problems (d = 8, k = 2, m = 3) keep this file fast.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linfeat as lf
from linfeat import _validate as V
from linfeat._closed_form_oracles import (
    k1_trajectory,
    k1_trajectory_problem_time,
    r12_toy,
    toy2d_limit,
    toy2d_trajectory,
)
from linfeat._cov import SubspaceCov
from linfeat._discrete import _train, train_discrete

D, K, M = 8, 2, 3  # n = 2m = 6
NAN, INF = float("nan"), float("inf")


# Every knob given and valid. Concrete knobs are validated even inside jit (they are constants,
# not tracers); feature_error and v_star_norm are vmapped (traced, so not checked: the third
# lane's feature_error = 3 is out of range and gives NaN features instead of an error).
GOOD_KNOBS = dict(
    d=D,
    k=K,
    m=M,
    n=np.int64(2 * M),
    id_spectrum=np.array([0.5, 1.0, 2.0], np.float32),
    ood="mixture",
    ood_shift=0.25,
    ood_rank=1,
    ood_rank_scale=0.0,
    dtype=jnp.float32,
)
EPS = np.array([0.3, 0.5, 3.0], np.float32)
NORMS = np.array([2.0, 1.0, 0.5], np.float32)


@pytest.fixture(scope="module")
def problems():
    """Three float32 problems from one jit(vmap(make_problem)) (the only make_problem compile)."""
    make = jax.vmap(
        lambda key, e, a: lf.make_problem(key, feature_error=e, v_star_norm=a, **GOOD_KNOBS)
    )
    return jax.jit(make)(jax.random.split(jax.random.key(0), 3), EPS, NORMS)


@pytest.fixture(scope="module")
def problem(problems):
    return jax.tree.map(lambda x: x[0], problems)


def _arrays(seed=0):
    """A valid problem_from_arrays input (float64 NumPy)."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(D, M)))[0]
    X = rng.normal(size=(2 * M, M)) @ Q.T
    O = np.linalg.qr(rng.normal(size=(D, 2 * K)))[0]
    B_star, B0 = O[:, :K].T, (0.9 * O[:, :K] + math.sqrt(1 - 0.81) * O[:, K:]).T
    v_star = rng.normal(size=K)
    return dict(X=X, Y=X @ B_star.T @ v_star, B0=B0, B_star=B_star, v_star=v_star)


# ------------------------------------------------------------------------------- checkers

BAD_CHECKS = [
    # (checker, args, kwargs, substring of the message besides the name)
    (V.check_real_float, (True,), {}, "bool"),
    (V.check_real_float, (np.array([True, False]),), {}, "bool"),
    (V.check_real_float, (np.array([1, 2]),), {}, "astype(float)"),
    (V.check_real_float, (jnp.arange(3),), {}, "integer array"),
    (V.check_real_float, (1 + 2j,), {}, "real"),
    (V.check_real_float, (np.array([1j]),), {}, "complex"),
    (V.check_real_float, ("0.1",), {}, "real number"),
    (V.check_real_float, (None,), {}, "real number"),
    (V.check_finite, (NAN,), {}, "NaN"),
    (V.check_finite, (np.array([1.0, INF]),), {}, "index (1,)"),
    (V.check_positive, (0.0,), {}, "> 0"),
    (V.check_positive, (-1.0,), {}, "-1.0"),
    (V.check_positive, (NAN,), {}, "NaN"),
    (V.check_positive, (np.array([1.0, 0.0, -2.0]),), {}, "2 bad entries"),
    (V.check_positive, (np.array([1.0, 2.0]),), {"scalar": True}, "single number"),
    (V.check_nonneg, (-1e-9,), {}, ">= 0"),
    (V.check_nonneg, (INF,), {}, "finite"),
    (V.check_fraction, (-0.1,), {}, "[0, 1]"),
    (V.check_fraction, (1.5,), {}, "[0, 1]"),
    (V.check_fraction, (np.array([0.5, 2.0]),), {}, "index (1,)"),
    (V.check_in_range, (1.0, 0.0, 1.0), {"hi_open": True}, "[0, 1)"),
    (V.check_in_range, (0.0, 0.0, 1.0), {"lo_open": True}, "(0, 1]"),
    (V.check_in_range, (3.0, 0.0, 2.0), {"interval": "[0, two]"}, "[0, two]"),
    (V.check_int, (True,), {"min": 1}, "integer"),
    (V.check_int, (3.0,), {"min": 1}, "int(x)"),
    (V.check_int, ("3",), {}, "integer"),
    (V.check_int, (None,), {}, "integer"),
    (V.check_int, (np.array([1, 2]),), {}, "integer"),
    (V.check_int, (0,), {"min": 1}, ">= 1"),
    (V.check_int, (5,), {"min": 1, "max": 4}, "[1, 4]"),
    (V.check_tolerance, (0.0,), {}, "> 0"),
    (V.check_tolerance, (-1e-8,), {}, "> 0"),
    (V.check_tolerance, (NAN,), {}, "NaN"),
    (V.check_tolerance, (INF,), {}, "finite"),
    (V.check_tolerance, (1.0,), {"below_one": True}, "(0, 1)"),
    (V.check_times, ([[0.0, 1.0]],), {}, "1-D"),
    (V.check_times, (np.zeros(0),), {}, "at least one"),
    (V.check_times, ([0.0, NAN],), {}, "finite"),
    (V.check_times, ([-1.0, 0.0],), {}, ">= 0"),
    (V.check_times, ([0.0, 1.0, 1.0],), {}, "strictly increasing"),
    (V.check_times, ([0.0, 2.0, 1.0],), {}, "np.unique"),
    (V.check_times, (np.arange(3),), {}, "astype(float)"),
    (V.check_times, ([0.0, 2.0],), {"t_max": 1.0}, "t_max"),
    (V.check_spectrum, (np.ones(2), 3), {}, "length 3"),
    (V.check_spectrum, (np.ones((3, 1)), 3), {}, "1-D"),
    (V.check_spectrum, (np.array([1.0, 0.0, 1.0]), 3), {}, "> 0"),
    (V.check_spectrum, (np.array([1.0, NAN, 1.0]), 3), {}, "finite"),
    (V.check_spectrum, (np.array([1, 2, 3]), 3), {}, "float array"),
    (V.check_float_dtype, (jnp.int32,), {}, "floating"),
    (V.check_float_dtype, (np.complex64,), {}, "floating"),
    (V.check_float_dtype, (bool,), {}, "floating"),
    (V.check_float_dtype, ("not-a-dtype",), {}, "floating"),
    (V.check_choice, ("c", ("a", "b")), {}, "one of"),
    (V.check_choice, (1, ("a", "b")), {}, "one of"),
    (V.check_bool, (1,), {}, "True or False"),
    (V.check_bool, ("yes",), {}, "True or False"),
    (V.as_array, (np.array([1j, 2.0]),), {}, "complex"),
    (V.as_array, (np.array([True]),), {}, "bool"),
    (V.as_array, (np.array([1, 2]),), {"allow_int": False}, "astype(float)"),
    (V.as_array, (np.array([1.0, NAN]),), {}, "NaN or inf"),
]


@pytest.mark.parametrize(
    "checker, args, kwargs, text",
    BAD_CHECKS,
    ids=[f"{c.__name__}-{i}" for i, (c, *_) in enumerate(BAD_CHECKS)],
)
def test_checker_rejects(checker, args, kwargs, text):
    with pytest.raises(ValueError, match="`x`") as info:
        checker("x", *args, **kwargs)
    assert text in str(info.value), str(info.value)


GOOD_CHECKS = [
    (V.check_real_float, (1,), {}),
    (V.check_real_float, (1.5,), {}),
    (V.check_real_float, (np.int64(3),), {}),
    (V.check_real_float, (np.array(2),), {}),
    (V.check_real_float, (np.array([1.0]),), {}),
    (V.check_real_float, (jnp.ones(2, jnp.float32),), {}),
    (V.check_real_float, (jnp.ones(2, jnp.bfloat16),), {}),
    (V.check_real_float, (np.array([1, 2]),), {"allow_int": True}),
    (V.check_finite, (np.array([1.0, -2.0]),), {}),
    (V.check_positive, (1e-300,), {}),
    (V.check_positive, (np.array([1.0, 2.0]),), {}),
    (V.check_nonneg, (0.0,), {}),
    (V.check_fraction, (np.array([0.0, 0.5, 1.0]),), {}),
    (V.check_in_range, (0.0, 0.0, 1.0), {"hi_open": True}),
    (V.check_tolerance, (10.0,), {}),
    (V.check_tolerance, (1e-12,), {"below_one": True}),
    (V.check_times, ([0.0, 0.5, 2.0],), {"t_max": 2.0}),
    (V.check_times, (np.arange(3),), {"allow_int": True}),
    (V.check_spectrum, (np.array([0.5, 1.0, 2.0]), 3), {}),
    (V.check_choice, ("a", ("a", "b")), {}),
]


@pytest.mark.parametrize("checker, args, kwargs", GOOD_CHECKS)
def test_checker_accepts_and_returns_input(checker, args, kwargs):
    assert checker("x", *args, **kwargs) is args[0]


def test_check_tolerance_rtol_defaults_below_one():
    with pytest.raises(ValueError, match="`rtol`.*\\(0, 1\\)"):
        V.check_tolerance("rtol", 1.0)
    assert V.check_tolerance("atol", 1.0) == 1.0


def test_check_int_returns_python_int_and_handles_tracers():
    out = V.check_int("num_save", np.int64(7), min=1)
    assert out == 7 and type(out) is int
    with pytest.raises(ValueError, match="`num_save`.*static"):
        jax.jit(lambda n: V.check_int("num_save", n, min=1))(3)
    traced = jax.jit(lambda n: V.check_int("i", n, static=False) + 1)(3)
    assert int(traced) == 4


def test_check_bool_returns_python_bool():
    assert V.check_bool("check", np.bool_(True)) is True


def test_check_float_dtype():
    assert V.check_float_dtype("dtype", None) is None
    assert V.check_float_dtype("dtype", jnp.float32) == np.float32


def test_value_checks_are_skipped_for_tracers():
    """Under jit/vmap the values are unknown: no error, the computation goes on."""

    def f(x):
        V.check_positive("x", x)
        V.check_fraction("x", x)
        V.check_finite("x", x)
        V.check_tolerance("rtol", x)
        return 2.0 * x

    assert float(jax.jit(f)(-1.0)) == -2.0
    np.testing.assert_array_equal(jax.vmap(f)(jnp.array([0.5, -3.0, NAN])), [1.0, -6.0, NAN])
    g = jax.jit(lambda t: V.check_times("ts", t) * 1.0)
    np.testing.assert_array_equal(g(jnp.array([1.0, 0.0])), [1.0, 0.0])


def test_dtype_checks_also_run_under_jit():
    """Dtype and rank are static, so they are checked on tracers too."""
    with pytest.raises(ValueError, match="`x`.*complex"):
        jax.jit(lambda x: V.check_positive("x", x))(jnp.array([1.0 + 1j]))
    with pytest.raises(ValueError, match="`ts`.*1-D"):
        jax.jit(lambda t: V.check_times("ts", t))(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="`x`.*single number"):
        jax.jit(lambda x: V.check_positive("x", x, scalar=True))(jnp.ones(3))


def test_orthonormal_check_catches_nan():
    with pytest.raises(ValueError, match="`B`"):
        V.check_orthonormal_rows("B", np.full((2, 4), NAN))


# ---------------------------------------------------------------------------- make_problem

MAKE_BAD = [
    (dict(d=8.0), "d"),
    (dict(d=True), "d"),
    (dict(k=0), "k"),
    (dict(m=-1), "m"),
    (dict(n=2), "n"),
    (dict(n=6.0), "n"),
    (dict(ood_rank=-1), "ood_rank"),
    (dict(ood_rank=9), "ood_rank"),
    (dict(ood="gaussian"), "ood"),
    (dict(feature_error=-0.1), "feature_error"),
    (dict(feature_error=1.5), "feature_error"),
    (dict(feature_error=NAN), "feature_error"),
    (dict(feature_error=np.array([0.1, 2.0])), "feature_error"),
    (dict(feature_error=0.1 + 0j), "feature_error"),
    (dict(feature_error=True), "feature_error"),
    (dict(v_star_norm=0.0), "v_star_norm"),
    (dict(v_star_norm=-1.0), "v_star_norm"),
    (dict(v_star_norm=INF), "v_star_norm"),
    (dict(id_spectrum=np.ones(2)), "id_spectrum"),
    (dict(id_spectrum=np.array([1.0, 0.0, 1.0])), "id_spectrum"),
    (dict(id_spectrum=np.array([1.0, NAN, 1.0])), "id_spectrum"),
    (dict(id_spectrum=np.array([1, 2, 3])), "id_spectrum"),
    (dict(ood="mixture", ood_shift=-0.1), "ood_shift"),
    (dict(ood="mixture", ood_shift=1.5), "ood_shift"),
    (dict(ood_rank=1, ood_rank_scale=-1.0), "ood_rank_scale"),
    (dict(ood_rank=1, ood_rank_scale=INF), "ood_rank_scale"),
    (dict(dtype=jnp.int32), "dtype"),
    (dict(dtype=jnp.complex64), "dtype"),
]


@pytest.mark.parametrize("kwargs, name", MAKE_BAD)
def test_make_problem_rejects(kwargs, name):
    kw = dict(d=D, k=K, m=M) | kwargs
    with pytest.raises(ValueError, match=f"`{name}`"):
        lf.make_problem(jax.random.key(0), **kw)


def test_make_problem_needs_key():
    with pytest.raises(ValueError, match="`key`"):
        lf.make_problem(None, d=D, k=K, m=M)


def test_make_problem_v_star_norm_zero_points_to_problem_from_arrays():
    with pytest.raises(ValueError, match="v\\* != 0.*problem_from_arrays"):
        lf.make_problem(jax.random.key(0), d=D, k=K, m=M, v_star_norm=0.0)


def test_make_problem_good_inputs_traced_knobs_and_float32(problems):
    assert problems.X.shape == (3, 2 * M, D) and problems.B0.shape == (3, K, D)
    for leaf in jax.tree.leaves(problems):
        assert leaf.dtype == jnp.float32
    np.testing.assert_allclose(problems.ood_cov.scale_perp, 0.25)
    for i in range(2):
        cos = np.linalg.svd(
            np.asarray(problems.B0[i] @ problems.B_star[i].T, np.float64), compute_uv=False
        )
        eps_i = 2 * np.sin(np.arccos(np.clip(cos.min(), -1, 1)) / 2)
        np.testing.assert_allclose(eps_i, EPS[i], atol=2e-3)  # arccos near 1 in float32
        np.testing.assert_allclose(np.linalg.norm(problems.w_star[i]), NORMS[i], rtol=1e-5)
    assert np.all(np.isnan(problems.B0[2]))  # traced out-of-range knob: not checked


# ---------------------------------------------------------------- features_at_distance


@pytest.mark.parametrize(
    "args, name",
    [
        ((D, 5, 0.1), "2k <= d"),
        ((D, 0, 0.1), "`k`"),
        ((8.0, K, 0.1), "`d`"),
        ((D, K, -0.5), "`feature_error`"),
        ((D, K, 2.0), "`feature_error`"),
        ((D, K, np.array([0.1, NAN])), "`feature_error`"),
    ],
)
def test_features_at_distance_rejects(args, name):
    with pytest.raises(ValueError, match=name):
        lf.features_at_distance(jax.random.key(0), *args)


def test_features_at_distance_dtype():
    with pytest.raises(ValueError, match="`dtype`"):
        lf.features_at_distance(jax.random.key(0), D, K, 0.1, dtype=jnp.int32)


# ------------------------------------------------------------------------------ init_head


@pytest.mark.parametrize(
    "kind, kwargs, name",
    [
        ("random", {}, "kind"),
        (None, {}, "kind"),
        ("gaussian", {}, "key"),
        ("gaussian", dict(key=jax.random.key(0), scale=0.0), "scale"),
        ("gaussian", dict(key=jax.random.key(0), scale=-1.0), "scale"),
        ("gaussian", dict(key=jax.random.key(0), scale=NAN), "scale"),
        ("gaussian", dict(key=jax.random.key(0), scale=1j), "scale"),
        ("given", {}, "v"),
        ("given", dict(v=np.ones(K + 1)), "v"),
        ("given", dict(v=np.array([1.0, NAN])), "v"),
        ("given", dict(v=np.array([1, 2])), "v"),
        ("given", dict(v=np.array([1.0, 1j])), "v"),
    ],
)
def test_init_head_rejects(problem, kind, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        lf.init_head(problem, kind, **kwargs)


def test_init_head_aligned_needs_ground_truth(problem):
    p = problem._replace(B_star=None, v_star=None)
    with pytest.raises(ValueError, match="`init_head\\(kind='aligned'\\)`.*B_star"):
        lf.init_head(p, "aligned")


def test_init_head_good_and_traced(problem):
    v = lf.init_head(problem, "gaussian", key=jax.random.key(3), scale=0.5)
    assert v.shape == (K,)
    scales = jnp.array([0.5, 2.0])
    vs = jax.vmap(lambda s: lf.init_head(problem, key=jax.random.key(3), scale=s))(scales)
    np.testing.assert_allclose(vs[1], 4.0 * vs[0], rtol=1e-6)
    assert vs.dtype == jnp.float32
    assert lf.init_head(problem, "given", v=np.ones(K)).dtype == jnp.float32


# ------------------------------------------------------------------- problem_from_arrays


@pytest.mark.parametrize(
    "change, name",
    [
        (lambda a: {"X": a["X"] + 1j}, "X"),
        (lambda a: {"X": a["X"] > 0}, "X"),
        (lambda a: {"Y": a["Y"].astype(complex)}, "Y"),
        (lambda a: {"B0": np.abs(a["B0"]) > 0.1}, "B0"),
        (lambda a: {"v_star": a["v_star"] * 1j}, "v_star"),
        (lambda a: {"X": np.full((6, D), "a")}, "X"),
        (lambda a: {"ood_cov": SubspaceCov(-1.0, 1.0, np.zeros((D, 0)))}, "ood_cov.scale_S"),
        (lambda a: {"ood_cov": SubspaceCov(1.0, NAN, np.zeros((D, 0)))}, "ood_cov.scale_perp"),
        (
            lambda a: {"ood_cov": SubspaceCov(np.ones(2), 1.0, np.zeros((D, 0)))},
            "ood_cov.scale_S",
        ),
        (lambda a: {"ood_cov": SubspaceCov(1.0, 1.0, np.zeros((D - 1, 1)))}, "ood_cov.factor"),
        (lambda a: {"ood_cov": SubspaceCov(1.0, 1.0, np.ones((D, 1)) * 1j)}, "ood_cov.factor"),
        (lambda a: {"ood_cov": np.eye(D) * 1j}, "ood_cov"),
        (lambda a: {"id_cov": np.eye(D)[:, :3]}, "id_cov"),
        (lambda a: {"check_theory": "yes"}, "check_theory"),
    ],
)
def test_problem_from_arrays_rejects(change, name):
    a = _arrays()
    with pytest.raises(ValueError, match=f"`{name}`"):
        lf.problem_from_arrays(**(a | change(a)))


def test_problem_from_arrays_rejects_tracers():
    a = _arrays()
    with pytest.raises(ValueError, match="outside jit/vmap"):
        jax.jit(lambda w: lf.problem_from_arrays(**(a | {"w_star": w, "B_star": None,
                                                         "v_star": None})))(
            a["B_star"].T @ a["v_star"]
        )  # fmt: skip


def test_problem_from_arrays_accepts_integer_data():
    """Integer data (counts, 0/1 selections) are converted to the default float dtype."""
    rng = np.random.default_rng(0)
    X = np.zeros((6, D), np.int64)
    X[:, :M] = rng.integers(-3, 4, size=(6, M))
    B0 = np.zeros((K, D), np.int64)
    B0[0, 0] = B0[1, 1] = 1
    w = np.zeros(D, np.int64)
    w[0] = 2
    p = lf.problem_from_arrays(X=X, Y=X @ w, B0=B0, w_star=w, check_theory=False)
    assert p.X.dtype == jnp.result_type(float)
    np.testing.assert_array_equal(p.X, X)
    np.testing.assert_array_equal(p.w_star, w)


def test_problem_from_arrays_float32_stays_float32():
    a = {k: v.astype(np.float32) for k, v in _arrays().items()}
    p = lf.problem_from_arrays(**a)
    for leaf in jax.tree.leaves(p):
        assert leaf.dtype == jnp.float32
    # Integer data mixed with float32 features: JAX promotion keeps float32.
    b = _arrays()
    X = np.round(4 * b["X"]).astype(np.int64)
    p = lf.problem_from_arrays(
        X=X,
        Y=(X @ b["B_star"].T @ b["v_star"]).astype(np.float32),
        B0=b["B0"].astype(np.float32),
        w_star=(b["B_star"].T @ b["v_star"]).astype(np.float32),
        check_theory=False,  # rounding X moved its rows off S
    )
    assert p.X.dtype == jnp.float32


# ----------------------------------------------------------------------- orthonormalize_rows


@pytest.mark.parametrize(
    "B, text",
    [
        (np.ones(4), "(k, d) matrix"),
        (np.ones((5, 4)), "k <= d"),
        (np.ones((2, 4)), "rank below"),
        (np.array([[1.0, NAN, 0.0]]), "NaN"),
        (np.array([[1.0, 1j, 0.0]]), "complex"),
        (np.array([[True, False]]), "bool"),
    ],
)
def test_orthonormalize_rows_rejects(B, text):
    with pytest.raises(ValueError, match="`B`") as info:
        lf.orthonormalize_rows(B)
    assert text in str(info.value)


def test_orthonormalize_rows_good_inputs():
    B = lf.orthonormalize_rows(np.array([[2, 0, 0], [1, 1, 0]]))
    assert jnp.issubdtype(B.dtype, jnp.floating)
    np.testing.assert_allclose(B @ B.T, np.eye(2), atol=1e-12)
    B32 = lf.orthonormalize_rows(jnp.array([[1.0, 0.5, 0.0]], jnp.float32))
    assert B32.dtype == jnp.float32


# ---------------------------------------------------------------------------- subspace_cov


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((0,), {}, "d"),
        ((4.0,), {}, "d"),
        ((4,), dict(scale_S=-1.0), "scale_S"),
        ((4,), dict(scale_perp=NAN), "scale_perp"),
        ((4,), dict(scale_perp=1j), "scale_perp"),
        ((4,), dict(scale_S=np.array([1.0, -0.5])), "scale_S"),
        ((4,), dict(factor=np.ones((3, 1))), "factor"),
        ((4,), dict(factor=np.ones(4)), "factor"),
        ((4,), dict(factor=np.ones((4, 1)) * 1j), "factor"),
        ((4,), dict(factor=np.full((4, 1), INF)), "factor"),
        ((4,), dict(dtype=jnp.int32), "dtype"),
    ],
)
def test_subspace_cov_rejects(args, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        lf.subspace_cov(*args, **kwargs)


def test_subspace_cov_good_traced_and_float32():
    c = lf.subspace_cov(4, scale_S=1, scale_perp=0.5, factor=np.eye(4, 2, dtype=int))
    assert c.factor.dtype == jnp.result_type(float)
    c32 = lf.subspace_cov(4, scale_S=1.0, dtype=jnp.float32)
    assert all(leaf.dtype == jnp.float32 for leaf in c32)
    batched = jax.vmap(lambda a: lf.subspace_cov(4, scale_S=a))(jnp.array([0.5, -1.0]))
    np.testing.assert_array_equal(batched.scale_S, [0.5, -1.0])  # traced: not checked


# ---------------------------------------------------------------------------- train_discrete

DISCRETE_BAD = [
    (dict(v0=np.array([1, 2])), "v0"),
    (dict(v0=np.array([1.0, 1j])), "v0"),
    (dict(v0=np.array([1.0, INF])), "v0"),
    (dict(learning_rate=True), "learning_rate"),
    (dict(learning_rate=NAN), "learning_rate"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(learning_rate=np.array([1e-3, 1e-3])), "learning_rate"),
    (dict(num_steps=10.0), "num_steps"),
    (dict(num_steps=True), "num_steps"),
    (dict(num_steps=4, save_every=5), "save_every"),
    (dict(save_every=2.0), "save_every"),
    (dict(optimizer="sgd", batch_size=2.0, key=jax.random.key(0)), "batch_size"),
    (dict(optimizer="sgd", batch_size=7, key=jax.random.key(0)), "batch_size"),
    (dict(optimizer="momentum", momentum=-0.1), "momentum"),
    (dict(optimizer="momentum", momentum=1.0), "momentum"),
    (dict(optimizer="momentum", momentum=NAN), "momentum"),
    (dict(optimizer="adam", b1=1.0), "b1"),
    (dict(optimizer="adam", b2=-0.1), "b2"),
    (dict(optimizer="adam", eps=0.0), "eps"),
    (dict(optimizer="adam", eps=NAN), "eps"),
    (dict(optimizer=3), "optimizer"),
    (dict(train_features="yes"), "train_features"),
    (dict(check=1), "check"),
]


@pytest.mark.parametrize("kwargs, name", DISCRETE_BAD)
def test_train_discrete_rejects_before_compiling(problem, kwargs, name):
    kwargs = dict(kwargs)
    v0 = kwargs.pop("v0", np.array([0.3, -0.4]))
    before = _train._cache_size()
    with pytest.raises(ValueError, match=f"`{name}`"):
        train_discrete(problem, v0, **kwargs)
    assert _train._cache_size() == before  # nothing was compiled, no step was run


def test_train_discrete_rejects_non_problem():
    with pytest.raises(ValueError, match="`problem`"):
        train_discrete(_arrays(), np.ones(K))


def test_train_discrete_good_inputs_and_traced_learning_rate(problem):
    """A vmapped (traced) learning rate skips the value check and trains as usual."""
    v0 = jnp.array([0.3, -0.4])
    traj = jax.vmap(
        lambda lr: train_discrete(problem, v0, learning_rate=lr, num_steps=4, save_every=2)
    )(jnp.array([1e-2, 2e-2]))
    assert traj.v.shape == (2, 3, K)
    np.testing.assert_array_equal(traj.status, [lf.Status.CONVERGED] * 2)
    assert not np.allclose(traj.v[0, -1], traj.v[1, -1])
    np.testing.assert_allclose(traj.ts[:, -1], [4e-2, 8e-2], rtol=1e-6)
    assert traj.v.dtype == jnp.float32


# ------------------------------------------------------------------------------- oracles

ORACLE_BAD = [
    (lambda: k1_trajectory(-1.0, v0=0.3, alpha0=0.7, y=1.0), "tau"),
    (lambda: k1_trajectory(np.array([0.0, NAN]), v0=0.3, alpha0=0.7, y=1.0), "tau"),
    (lambda: k1_trajectory(np.arange(3), v0=0.3, alpha0=0.7, y=1.0), "tau"),
    (lambda: k1_trajectory(1.0, v0=NAN, alpha0=0.7, y=1.0), "v0"),
    (lambda: k1_trajectory(1.0, v0=0.3, alpha0=INF, y=1.0), "alpha0"),
    (lambda: k1_trajectory(1.0, v0=0.3, alpha0=0.7, y=1j), "y"),
    (lambda: k1_trajectory(np.ones(3), v0=np.ones(2), alpha0=0.7, y=1.0), "v0"),
    (lambda: k1_trajectory_problem_time(1.0, s=0.0, v0=0.3, alpha0=0.7, y=1.0), "s"),
    (lambda: k1_trajectory_problem_time(1.0, s=-2.0, v0=0.3, alpha0=0.7, y=1.0), "s"),
    (lambda: k1_trajectory_problem_time(-1.0, s=1.0, v0=0.3, alpha0=0.7, y=1.0), "t"),
    (lambda: toy2d_limit(NAN, 0.5, 1.0, 0.3), "beta0"),
    (lambda: toy2d_limit(0.5, INF, 1.0, 0.3), "beta_star"),
    (lambda: toy2d_limit(0.5, 0.5, True, 0.3), "v_star"),
    (lambda: toy2d_limit(0.5, 0.5, 1.0, 0.3j), "v0"),
    (lambda: toy2d_trajectory(-0.5, 0.5, 0.5, 1.0, 0.3), "t"),
    (lambda: toy2d_trajectory(np.array([0.0, 1.0]), 0.5, 0.5, np.ones(3), 0.3), "v_star"),
    (lambda: r12_toy(INF, 0.3), "a"),
    (lambda: r12_toy(1.0, np.array([1, 2])), "v0"),
]


@pytest.mark.parametrize("call, name", ORACLE_BAD)
def test_oracles_reject(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


def test_oracles_good_traced_and_float32():
    out = r12_toy(1.5, -0.3)
    assert bool(out.ft_wins)
    f32 = np.float32
    assert r12_toy(f32(1.5), f32(-0.3)).ft_error.dtype == jnp.float32
    assert toy2d_limit(f32(0.5), f32(0.5), f32(1.0), f32(0.3)).w_ft.dtype == jnp.float32
    # Traced arguments skip the value checks: a NaN lane propagates instead of raising.
    lim = jax.jit(jax.vmap(toy2d_limit))(
        jnp.array([0.5, NAN]), jnp.array([0.5, 0.5]), jnp.ones(2), jnp.array([0.3, 0.3])
    )
    assert np.isfinite(lim.ft_ood_error[0]) and np.isnan(lim.ft_ood_error[1])
    got = jax.jit(r12_toy)(1.5, -0.3)
    np.testing.assert_allclose(got.ft_error, out.ft_error, rtol=1e-14)


# ------------------------------------------------------ compiled public metrics and constants
# These run as one compiled program each; their concrete arguments are checked before it.


@pytest.mark.parametrize("bad", [np.array([0.3, np.nan]), np.ones(K + 1)])
def test_compiled_metrics_and_constants_reject_bad_heads(problem, bad):
    from linfeat import theory

    with pytest.raises(ValueError, match="`v0`"):
        theory.problem_constants(problem, bad)
    with pytest.raises(ValueError, match="`v0`"):
        theory.r5_bounds(problem, bad)
    with pytest.raises(ValueError, match="`v`"):
        lf.metrics(problem, bad, problem.B0, np.ones(K), problem.B0)
    with pytest.raises(ValueError, match="`v0`"):
        lf.metrics(problem, np.ones(K), problem.B0, bad, problem.B0)
    with pytest.raises(ValueError, match="`v`"):
        lf.ood_error(problem, bad, problem.B0)
