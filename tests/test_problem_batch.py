"""`lf.problems_from_arrays`: the batched `problem_from_arrays` (validation on the stacks).

Against the problems built one by one and stacked (`lf.stack_problems`), leaf by leaf, for
every kind of input the single builder takes; errors name the argument and the first failing
item; the batched PSD test agrees with `eigvalsh` on matrices around its threshold.
"""

import jax
import numpy as np
import pytest

import linfeat as lf
from linfeat._problem_batch import PSD_TOL, psd_failures


def _rows(rng, k, d):
    return np.linalg.qr(rng.normal(size=(d, k)))[0].T


def _items(b=5, n=6, d=12, k=2, seed=0, dense=True, dtype=np.float64):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(b):
        X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        Bs = _rows(rng, k, d)
        B0 = np.linalg.qr((Bs + 0.3 * rng.normal(size=(k, d))).T)[0].T
        vs = rng.normal(size=k)
        item = dict(X=X, Y=X @ (Bs.T @ vs), B0=B0, B_star=Bs, v_star=vs)
        if dense:
            W = np.linalg.qr(rng.normal(size=(d, d)))[0]
            S = (W * rng.uniform(0.0, 2.0, d)) @ W.T
            item["ood_cov"] = 0.5 * (S + S.T)
        out.append({key: np.asarray(v, dtype) for key, v in item.items()})
    return out


def _stacked(items):
    return {key: np.stack([it[key] for it in items]) for key in items[0]}


def _assert_same(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=0)


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_the_problems_built_one_by_one(dense, dtype):
    items = _items(dense=dense, dtype=dtype)
    one = lf.stack_problems([lf.problem_from_arrays(**it) for it in items])
    _assert_same(lf.problems_from_arrays(**_stacked(items)), one)


def test_w_star_only_and_a_subspace_cov():
    items = _items(dense=False)
    for it in items:
        it["w_star"] = it.pop("B_star").T @ it.pop("v_star")
    cov = lf.subspace_cov(12, scale_S=0.5, scale_perp=2.0, factor=np.ones((12, 1)))
    one = lf.stack_problems([lf.problem_from_arrays(**it, ood_cov=cov) for it in items])
    _assert_same(lf.problems_from_arrays(**_stacked(items), ood_cov=cov), one)


def test_the_batch_runs_through_the_engine():
    # The batch solves like the stacked one-by-one problems (one compiled program for both:
    # same shapes), and every lane converges.
    items = _items(b=3)
    v0 = np.random.default_rng(1).normal(size=(3, 2))
    solve = jax.jit(jax.vmap(lambda p, v: lf.fine_tune(p, v, num_save=4, check=False)))
    tr = solve(lf.problems_from_arrays(**_stacked(items)), v0)
    ref = solve(lf.stack_problems([lf.problem_from_arrays(**it) for it in items]), v0)
    assert np.all(np.asarray(tr.status) == 0)
    np.testing.assert_array_equal(np.asarray(tr.v_final), np.asarray(ref.v_final))
    np.testing.assert_array_equal(np.asarray(tr.B_final), np.asarray(ref.B_final))


def _raises(match, **changes):
    arrays = _stacked(_items())
    arrays.update(changes)
    with pytest.raises(ValueError, match=match):
        lf.problems_from_arrays(**arrays)


def test_errors_name_the_argument_and_the_item():
    a = _stacked(_items())
    B0 = a["B0"].copy()
    B0[3, 0] *= 1.01
    _raises(r"rows of `B0\[3\]` must be orthonormal", B0=B0)
    X = a["X"].copy()
    X[2, 1, 1] = np.nan
    _raises(r"`X` contains 1 NaN", X=X)
    S = a["ood_cov"].copy()
    S[4] -= 3.0 * np.eye(12)
    _raises(r"`ood_cov\[4\]` must be positive semidefinite", ood_cov=S)
    S = a["ood_cov"].copy()
    S[1, 0, 1] += 1e-3
    _raises(r"`ood_cov\[1\]` must be symmetric", ood_cov=S)
    X = a["X"].copy()
    X[2] = np.outer(np.ones(6), X[2, 0])  # rank 1 < k = 2
    _raises(r"training inputs of item 2 span only m = 1", X=X, Y=a["Y"])
    _raises(r"`X` must have 3 dimensions", X=a["X"][0], Y=a["Y"][0])
    _raises(r"`Y` has shape", Y=a["Y"][:, :5])
    w = a["B_star"][:, 0, :] * 0.0
    _raises(r"`w_star\[0\]` must equal", w_star=w)
    _raises(r"give both `B_star` and `v_star`", v_star=None)


def test_theory_warnings_count_the_items():
    arrays = _stacked(_items(b=4, n=10, d=12, k=2))  # m = 10: m + k >= d, c_perp > 0
    with pytest.warns(lf.TheoryConditionWarning, match=r"m \+ k >= d in 4 of 4 problems"):
        lf.problems_from_arrays(**arrays)
    arrays = _stacked(_items(b=4, n=6, d=12, k=2))
    B0 = arrays["B0"].copy()
    B0[2] = np.linalg.svd(arrays["X"][2], full_matrices=False)[2][:2]  # item 2: B0 inside S
    match = r"c_perp .* in 1 of 4 problems \(first: item 2\)"
    with pytest.warns(lf.TheoryConditionWarning, match=match):
        lf.problems_from_arrays(**{**arrays, "B0": B0})


def test_psd_test_agrees_with_eigvalsh_around_the_threshold():
    rng = np.random.default_rng(3)
    d = 30
    mats, expect = [], []
    for lam_min in (0.0, -0.4 * PSD_TOL, -0.9 * PSD_TOL, -1.1 * PSD_TOL, -3 * PSD_TOL, 1e-3):
        W = np.linalg.qr(rng.normal(size=(d, d)))[0]
        lam = np.r_[lam_min, rng.uniform(0.1, 1.0, d - 1)]
        S = (W * lam) @ W.T
        S = 0.5 * (S + S.T)
        mats.append(S)
        expect.append(np.linalg.eigvalsh(S)[0] < -PSD_TOL * max(1.0, np.abs(S).max()))
    got = np.zeros(len(mats), bool)
    got[psd_failures(np.stack(mats))] = True
    np.testing.assert_array_equal(got, expect)
    assert expect == [False, False, False, True, True, False]
