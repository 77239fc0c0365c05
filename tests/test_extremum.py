"""Continuous-time extrema of `linfeat check` (docs/theory.md, section 7): the cubic Hermite
extremum against brute force, and the exact time derivatives against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linfeat as lf
from linfeat.checks._extremum import hermite_extremum
from linfeat.checks._sampling import _rates


def test_hermite_is_exact_for_cubics():
    # a cubic is its own Hermite interpolant, so the extremum is exact on any grid: compare with
    # the brute-force extremum on 2e5 points (independent of the root formula)
    rng = np.random.default_rng(0)
    fine = np.linspace(0.0, 1.0, 200_001)
    ts = np.sort(np.r_[0.0, rng.uniform(0, 1, 5), 1.0])
    for _ in range(20):
        c = rng.standard_normal(4)
        f, df = np.polyval(c, ts), np.polyval(np.polyder(c), ts)
        for mode, ext in (("min", np.min), ("max", np.max)):
            got = hermite_extremum(ts[None], f[None], df[None], mode, log_time=False)[0]
            # brute force on 2e5 points is within (spacing)^2 |f''| of the continuous extremum
            assert got == pytest.approx(ext(np.polyval(c, fine)), abs=1e-8)


def test_hermite_never_worse_than_samples_and_converges():
    ts = np.linspace(0.0, 2.0, 9)[None]
    f, df = np.sin(5 * ts), 5 * np.cos(5 * ts)
    got = hermite_extremum(ts, f, df, log_time=False)[0]
    assert got <= np.min(f)
    # error h^4 |f''''| / 384 with h = 0.25, f'''' = 625: 0.0064; the true minimum is -1
    assert abs(got + 1.0) < 0.0064
    ts2 = np.linspace(0.0, 2.0, 33)[None]
    got2 = hermite_extremum(ts2, np.sin(5 * ts2), 5 * np.cos(5 * ts2), log_time=False)[0]
    assert abs(got2 + 1.0) < abs(got + 1.0) / 50  # 4th order: 4x finer -> 256x smaller


def test_log_time_interpolation_on_a_log_grid():
    # a flow-like curve (a dip, then exponential approach) saved on the checks' log grid:
    # the log-t interpolant's minimum matches the exact one, 1 - 0.5 / e at t = 1.3 (between saves)
    def f(t):
        return 1.0 - 0.5 * (t / 1.3) * np.exp(-t / 1.3) + 0.2 * np.exp(-t / 1e-3)

    def df(t):
        return -0.5 / 1.3 * (1 - t / 1.3) * np.exp(-t / 1.3) - 200.0 * np.exp(-t / 1e-3)

    ts = np.r_[0.0, np.logspace(-2, 6, 8 * 62 + 1)][None]
    got = hermite_extremum(ts, f(ts), df(ts))[0]
    assert got <= np.min(f(ts))
    assert got == pytest.approx(1.0 - 0.5 / np.e, abs=1e-9)
    assert np.min(f(ts)) - got > 1e-7  # the saves alone miss it by 5e-7, 1e4 x the error


def test_rates_match_finite_differences():
    # d||e||^2/dt and dL_ood/dt from the field, against central differences of the solved curve
    problem = lf.make_problem(
        jax.random.PRNGKey(3), d=12, k=3, m=5, feature_error=0.1, ood="random_spd"
    )
    v0 = 0.7 * jax.random.normal(jax.random.PRNGKey(4), (3,))
    lam = float(np.max(np.linalg.eigvalsh(np.asarray(problem.X.T @ problem.X))))
    t, h = 0.3 / lam, 1e-4 / lam
    tr = lf.fine_tune(problem, v0, ts=jnp.array([t - h, t, t + h]), rtol=1e-13, atol=1e-15)
    err2 = jnp.sum((jnp.einsum("tkd,tk->td", tr.B, tr.v) - problem.w_star) ** 2, axis=1)
    ood = tr.metrics.ood_error
    d_err2, d_ood = _rates(problem, tr.v, tr.A)
    # central differences: truncation h^2 |f'''| / 6 ~ 1e-8 relative; solver error 1e-13 / h
    for f, df in ((err2, d_err2), (ood, d_ood)):
        fd = (f[2] - f[0]) / (2 * h)
        assert float(df[1]) == pytest.approx(float(fd), rel=1e-6, abs=1e-6 * lam)
        assert abs(float(df[1])) > 1e-3 * lam  # the curve moves: the comparison means something


def test_refinement_replaces_an_overshooting_interpolant(monkeypatch):
    """`_refine_extrema`: a record whose saved values are corrupted between two saves (a fake
    transient the Hermite cubic overshoots) is flagged by its own error estimate, re-solved on
    a refined grid, and gets the true extrema back; untouched rows are left alone."""
    from linfeat.checks import _sampling as S

    keys = jax.random.split(jax.random.key(0), 2)
    probs = jax.vmap(lambda k: lf.make_problem(k, d=10, k=1, m=4, feature_error=0.1))(keys)
    v0 = jax.random.normal(jax.random.key(1), (2, 1))
    gt = jax.vmap(S._grad_tol)(probs, v0)
    rec = jax.tree.map(np.array, jax.vmap(S._flow_record)(probs, v0, gt))
    rec.pop("e_final")
    S._continuous_extrema(rec, {k: v.copy() for k, v in rec.items()})
    clean = {k: rec[k].copy() for k in ("ood_min", "ood_max", "err_min")}
    # a spurious steep slope at one save of row 0: the cubic through it dips far below the curve
    j = 200
    rec["ood_rate"][0, j] = -1e6 * np.max(np.abs(rec["ood_rate"][0]))
    rec["err2_rate"][0, j] = -1e6 * np.max(np.abs(rec["err2_rate"][0]))
    S._continuous_extrema(rec, {k: v.copy() for k, v in rec.items()})
    assert rec["ood_min"][0] < clean["ood_min"][0] - 1e-3  # the corrupted extremum is wrong
    S._refine_extrema(probs, v0, gt, rec, np.ones(2), False, 2)
    assert rec["refined"].tolist() == [True, False] and not rec["unresolved"].any()
    # the refined row carries its own error estimate (within the slack here); others have none
    assert 0.0 <= rec["refine_err"][0] <= S.REFINE_ERR and rec["refine_err"][1] == 0.0
    for name in ("ood_min", "ood_max", "err_min"):
        # the re-solve saves at other times: the same continuous extremum to the Hermite error
        assert rec[name][0] == pytest.approx(clean[name][0], rel=1e-8, abs=1e-14), name
        assert rec[name][1] == clean[name][1], name
