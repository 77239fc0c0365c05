"""`make_problem(..., basis="small")`: the problem drawn in its own small basis.

docs/theory.md, section 1.7. Two facts make the small basis exact in law: (i) the problem
built from $Z' = T^T$, T the Cholesky factor of $Z^TZ$, is the isometric image of the one
built from Z (checked here instance by instance, to rounding), and (ii) Bartlett's theorem
gives the law of T (checked by Kolmogorov-Smirnov tests against the exact chi-square and
normal laws). A two-sample test then compares invariants of the two generators end to end.
The keys are fixed, so every p-value is a fixed number: no test here is random.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import linfeat as lf
from linfeat._generate import _assemble, bartlett_embedding
from linfeat._geometry import principal_constants

P_MIN = 1e-3  # a KS p-value below this is a failure (fixed keys: it is not a flaky bound)


def _pair(key, d, m, k, rank, ood):
    """The problem from Z (d x c) and from T^T (c x c), T = chol(Z^T Z); same other draws."""
    kZ, ku, kG, kO = jax.random.split(key, 4)
    c = m + 2 * k + rank
    Z = jax.random.normal(kZ, (d, c))
    Zs = jnp.linalg.cholesky(Z.T @ Z).T
    u = jax.random.normal(ku, (k,))
    G = jax.random.normal(kG, (2 * m, m))
    spectrum = jnp.linspace(0.5, 2.0, m)

    def build(Z):
        return _assemble(
            Z[:, :m], Z[:, m : m + 2 * k], Z[:, m + 2 * k :], u, G, 0.4, 1.3, spectrum, 0.7,
            0.8, kO, ood=ood, dtype=Z.dtype,
        )  # fmt: skip

    return build(Z), build(Zs)


@pytest.mark.parametrize(
    "ood,rank",
    # one OOD kind in the default suite (each case compiles its own shapes); all with -m slow
    [("mixture", 2), pytest.param("perp", 0, marks=pytest.mark.slow),
     pytest.param("isotropic", 3, marks=pytest.mark.slow)],
)  # fmt: skip
def test_small_basis_is_an_isometric_image_of_the_full_draw(ood, rank):
    full, small = _pair(jax.random.key(3), 60, 7, 3, rank, ood)
    assert small.X.shape[1] == 7 + 6 + rank < full.X.shape[1] == 60
    # The exact reduction sees only Gram matrices of the frame: equal to rounding.
    rf, rs = lf.reduce(full), lf.reduce(small)
    # Q (right singular vectors of X) is defined up to column signs; align them.
    sgn = np.sign(np.sum(np.asarray(rf.XQ) * np.asarray(rs.XQ), axis=0))
    frame = np.concatenate([sgn, np.ones(rf.gram.shape[0] - sgn.size)])
    aligned = dict(
        g=rs.g * sgn, A0=rs.A0 * sgn, XQ=rs.XQ * sgn,
        **{name: getattr(rs, name) * np.outer(frame, frame)
           for name in ("gram", "id_gram", "ood_gram")},
    )  # fmt: skip
    for name in ("sigma2", "g", "A0", "b", "gram", "id_gram", "ood_gram", "XQ"):
        a, b = getattr(rf, name), aligned.get(name, getattr(rs, name))
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-11 * (1 + np.abs(a).max()), err_msg=name)
    # ... so every flow and metric is equal too, here FT from a Gaussian head.
    v0 = lf.init_head(full, "gaussian", key=jax.random.key(4))
    tf, ts = lf.fine_tune(full, v0), lf.fine_tune(small, v0)
    for name in ("ood_error", "id_error", "train_loss"):
        np.testing.assert_allclose(
            getattr(ts.final_metrics, name),
            getattr(tf.final_metrics, name),
            rtol=1e-8,
            atol=1e-12,
            err_msg=name,  # ID and train errors converge to ~1e-17: rounding there
        )
    assert float(lf.feature_distance(small.B0, small.B_star)) == pytest.approx(0.4, abs=1e-12)


@pytest.mark.parametrize("d", [40, 10**9])
def test_bartlett_factor_has_the_chi_square_and_normal_laws(d):
    c, draws = 5, 3000
    keys = jax.random.split(jax.random.key(11), draws)
    T = np.asarray(jax.vmap(lambda key: bartlett_embedding(key, d, c, jnp.float64))(keys))
    assert np.all(np.tril(T, -1) == 0)  # Z' = T^T is upper triangular
    for i in range(c):
        p = stats.kstest(T[:, i, i] ** 2, stats.chi2(d - i).cdf).pvalue
        assert p > P_MIN, (i, p)
    above = T[:, np.triu_indices(c, 1)[0], np.triu_indices(c, 1)[1]].ravel()
    assert stats.kstest(above, stats.norm.cdf).pvalue > P_MIN


@functools.partial(jax.jit, static_argnames=("basis",))
def _invariants(key, basis):
    p = lf.make_problem(key, d=30, k=2, m=5, feature_error=0.6, ood="mixture", ood_shift=0.5,
                        ood_rank=1, basis=basis)  # fmt: skip
    c_S, c_perp = principal_constants(p)
    v = lf.linear_probe(p)
    return jnp.stack([c_S, c_perp, lf.ood_error(p, v, p.B0), jnp.linalg.norm(p.B0 @ p.w_star)])


def test_small_and_full_generators_agree_in_law():
    n = 600
    kf, ks = jax.random.split(jax.random.key(5))
    full = np.asarray(jax.vmap(lambda key: _invariants(key, "full"))(jax.random.split(kf, n)))
    small = np.asarray(jax.vmap(lambda key: _invariants(key, "small"))(jax.random.split(ks, n)))
    for j, name in enumerate(("c_S", "c_perp", "LP ood error", "|B0 w*|")):
        p = stats.ks_2samp(full[:, j], small[:, j]).pvalue
        assert p > P_MIN, (name, p)


def test_small_basis_rejects_a_dense_ood_moment_and_full_rejects_a_huge_d():
    with pytest.raises(ValueError, match="random_spd"):
        lf.make_problem(jax.random.key(0), d=20, k=2, m=5, ood="random_spd", basis="small")
    with pytest.raises(ValueError, match="basis='small'"):
        lf.make_problem(jax.random.key(0), d=10**9, k=2, m=5)
    with pytest.raises(ValueError, match="basis"):
        lf.make_problem(jax.random.key(0), d=20, k=2, m=5, basis="tiny")


def test_small_basis_at_a_billion_dimensions_and_below_c():
    p = lf.make_problem(jax.random.key(1), d=10**9, k=3, m=8, feature_error=0.2, basis="small")
    assert p.X.shape == (16, 14)
    c_S, c_perp = principal_constants(p)
    # B* is nearly orthogonal to a random 8-dim S in 1e9 dimensions: c_S ~ sqrt(8 / 1e9)
    assert float(c_S) < 1e-3 and float(c_perp) > 0.999
    # With m + 2k >= d the small basis is R^d itself
    q = lf.make_problem(jax.random.key(1), d=12, k=3, m=8, basis="small")
    assert q.X.shape == (16, 12)
