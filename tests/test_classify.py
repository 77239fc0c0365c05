"""Classification (docs/theory.md, section 11): logistic FT/LP/LP-FT and closed-form accuracy.

References are independent: SciPy's `solve_ivp` (Radau) on the full-space logistic flow in R^d,
`scipy.optimize.minimize` for the LP optimum, Monte Carlo for the accuracy formula, exact
values for its degenerate cases, and the invariants R1, R2.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FLOW_AGREEMENT, INVARIANT, TIGHT, max_rel_err, rounding
from scipy.integrate import solve_ivp
from scipy.optimize import minimize
from scipy.special import expit

import linfeat as lf
from linfeat import classify as C
from linfeat import theory as T

DIMS = dict(d=8, k=2, m=3)
# One fixed-time configuration (13 saves up to 1e2 / lam_max, no early stop, rtol 1e-12)
# shared by the SciPy comparison, the vmap test and the finite differences: one compiled
# program for all three (each logistic program takes ~5 s to compile on this machine).
FIXED = dict(loss_tol=0.0, grad_tol=1e-300, check=False, **TIGHT)


def _fixed_times(problem):
    lam = float(np.linalg.eigvalsh(np.asarray(problem.X.T @ problem.X))[-1])
    return np.concatenate([[0.0], np.logspace(-2, 2, 12) / lam])


def _problem(seed, *, flip_prob=0.0, feature_error=0.3, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lf.TheoryConditionWarning)
        return C.classification_problem(
            jax.random.key(seed), flip_prob=flip_prob, feature_error=feature_error,
            **{**DIMS, **kw},
        )  # fmt: skip


def _scipy_flow(problem, v0, ts, *, train_features=True):
    """The full-space logistic gradient flow in R^d, in NumPy, by SciPy's Radau."""
    X, y = np.asarray(problem.X), np.asarray(problem.Y)
    k, d = problem.B0.shape

    def f(t, s):
        v, B = s[:k], s[k:].reshape(k, d)
        h = X.T @ (-y * expit(-y * (X @ (B.T @ v))))
        dB = -np.outer(v, h) if train_features else np.zeros_like(B)
        return np.concatenate([-(B @ h), dB.ravel()])

    s0 = np.concatenate([np.asarray(v0), np.asarray(problem.B0).ravel()])
    sol = solve_ivp(f, (0.0, ts[-1]), s0, method="Radau", t_eval=ts, rtol=1e-12, atol=1e-14)
    assert sol.success
    return sol.y[:k].T, sol.y[k:].T.reshape(len(ts), k, d)


# --- the closed-form accuracy ----------------------------------------------------------------


def test_zero_one_error_monte_carlo():
    """Sheppard's formula against 200,000 Gaussian samples, within 5 standard errors, on
    random (w, w*, Sigma) including a rank-deficient Sigma and near-aligned w."""
    rng = np.random.default_rng(0)
    d, N = 5, 200_000
    zs = []
    for i in range(6):
        L = rng.standard_normal((d, d if i % 2 else 3))  # odd: PD, even: rank 3
        Sigma = L @ L.T
        w_star = rng.standard_normal(d)
        w = w_star + (0.05 if i == 5 else 1.0) * rng.standard_normal(d)
        x = rng.standard_normal((N, L.shape[1])) @ L.T
        wrong = np.sign(x @ w) != np.sign(x @ w_star)
        est, se = wrong.mean(), wrong.std(ddof=1) / math.sqrt(N)
        zs.append(abs(est - float(T.zero_one_error(w, w_star, Sigma))) / se)
    # 5 sigma: false-alarm probability ~6e-7 per case, and the draws are fixed by the seed
    assert max(zs) < 5.0, zs


def test_zero_one_error_exact_cases():
    Sigma = np.diag([2.0, 1.0, 0.0])
    w_star = np.array([1.0, 1.0, 0.0])
    tol = rounding(np.float64)
    err = lambda w, ws=w_star: float(T.zero_one_error(np.asarray(w, float), ws, Sigma))  # noqa: E731
    assert err(3.0 * w_star) <= tol  # same direction, any positive scale
    assert abs(err(-w_star) - 1.0) <= tol
    # Sigma-orthogonal: w^T Sigma w* = 2 - 2 = 0, error exactly 1/2
    assert abs(err([1.0, -2.0, 0.0]) - 0.5) <= tol
    # a component along the null direction of Sigma is invisible
    assert err(w_star + np.array([0.0, 0.0, 7.0])) <= tol
    # degenerate: zero predictor, predictor invisible under Sigma, target invisible
    assert err([0.0, 0.0, 0.0]) == 0.5
    assert err([0.0, 0.0, 1.0]) == 0.5
    assert err([1.0, 0.0, 0.0], np.array([0.0, 0.0, 1.0])) == 0.5
    # 45 degrees in the Sigma = I metric: 1/4
    assert abs(float(T.zero_one_error([1.0, 1.0], [1.0, 0.0], np.eye(2))) - 0.25) <= tol
    # finite gradients, also at the degenerate point
    g = jax.grad(lambda w: T.zero_one_error(w, jnp.asarray(w_star), jnp.asarray(Sigma)))
    assert np.all(np.isfinite(g(jnp.zeros(3)))) and np.all(np.isfinite(g(jnp.ones(3))))
    with pytest.raises(ValueError, match="w_star"):
        T.zero_one_error(np.ones(3), np.ones(2), Sigma)


@pytest.mark.slow
def test_accuracy_paths_agree_with_dense_formula():
    """`accuracy` (structured Sigma in R^d) and the reduced frame path (along a squared-loss
    FT run) equal the dense formula on the materialised second moments."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lf.TheoryConditionWarning)
        p = lf.make_problem(jax.random.key(1), **DIMS, feature_error=0.3, ood="mixture",
                            ood_shift=0.3)  # fmt: skip
    v0 = jnp.array([0.4, -0.7])
    tr = lf.fine_tune(p, v0, num_save=4)
    _, final = C.trajectory_accuracy(p, tr)
    B = tr.B_final
    Q = np.linalg.svd(np.asarray(p.X))[2][:3].T  # basis of S
    from linfeat._cov import to_dense

    for cov, got in ((p.id_cov, final.id), (p.ood_cov, final.ood)):
        dense = 1 - float(T.zero_one_error(B.T @ tr.v_final, p.w_star, to_dense(cov, Q)))
        assert abs(float(got) - dense) < 1e-9  # the frame's Gram matrices vs dense Sigma
    acc = C.accuracy(p, tr.v_final, B)
    assert abs(float(acc.ood) - float(final.ood)) < 1e-9
    # LP with perfect features recovers w* exactly (R4): accuracy 1 under any Sigma
    p0 = p._replace(B0=p.B_star, w_star=p.B_star.T @ p.v_star)
    p0 = p0._replace(Y=p0.X @ p0.w_star)
    acc0 = C.accuracy(p0, lf.linear_probe(p0), p0.B0)
    assert 1 - float(acc0.ood) < 1e-7 and 1 - float(acc0.id) < 1e-7


# --- the flows against SciPy ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ft", "lp"])
def test_logistic_flows_match_scipy(method):
    """Reduced engine vs SciPy Radau on (v, B) in R^d at every save time, two instances."""
    fn = C.fine_tune_logistic if method == "ft" else C.linear_probe_logistic
    for seed in (2, 3):
        p = _problem(seed)
        v0 = jax.random.normal(jax.random.key(seed + 10), (2,), jnp.float64)
        ts = _fixed_times(p)
        # loss_tol = 0 and grad_tol = 1e-300: no early stop, the run reaches t_max (status 1)
        tr = fn(p, v0, ts=ts, **FIXED)
        assert int(tr.status) == lf.Status.MAX_TIME
        v_ref, B_ref = _scipy_flow(p, v0, ts, train_features=method == "ft")
        # two independent rtol-1e-12 solves: global errors ~1e2-1e3 x rtol each
        assert max_rel_err(tr.v, v_ref) < FLOW_AGREEMENT
        assert max_rel_err(tr.B, B_ref) < FLOW_AGREEMENT
        if method == "ft":
            assert float(tr.final_metrics.feature_change_S) > 1e-3  # the features moved
            # R2 for the logistic loss: v v^T - B B^T conserved (integration error only)
            assert float(jnp.max(tr.metrics.balancedness_drift)) < INVARIANT


def test_lp_optimum_matches_scipy_minimize():
    """Noisy labels in k = 2 feature dimensions: the LP optimum is finite; the flow's stop
    (gradient test) matches scipy's BFGS to a tight gradient tolerance."""
    p = _problem(4, flip_prob=0.3)
    Phi, y = np.asarray(p.X @ p.B0.T), np.asarray(p.Y)

    def loss(v):
        return np.sum(np.logaddexp(0.0, -y * (Phi @ v)))

    def grad(v):
        return Phi.T @ (-y * expit(-y * (Phi @ v)))

    ref = minimize(loss, np.zeros(2), jac=grad, method="BFGS", options={"gtol": 1e-12})
    tr = C.linear_probe_logistic(p, **TIGHT)
    assert int(tr.status) == lf.Status.CONVERGED
    assert float(tr.final_metrics.train_loss) > 1.0  # stopped by the gradient, not the loss
    # |v - v*| <= |grad| / lambda_min(Hessian): both gradients are below ~1e-9 here
    np.testing.assert_allclose(np.asarray(tr.v_final), ref.x, rtol=0, atol=1e-7)


# --- invariants, stopping, transformations -----------------------------------------------------


@pytest.mark.slow
def test_full_space_invariants_r1_r2():
    """mode='full' integrates (v, B) in R^d: B Pi_perp stays B0 Pi_perp (R1) and
    v v^T - B B^T is conserved (R2) for the logistic loss."""
    p = _problem(5)
    v0 = jnp.array([0.8, -0.5])
    tr = C.fine_tune_logistic(p, v0, mode="full", **TIGHT)
    m = tr.metrics
    assert float(jnp.max(m.feature_change_perp)) < 1e-12  # rounding only
    assert float(jnp.max(m.balancedness_drift)) < INVARIANT
    assert float(tr.final_metrics.feature_change_S) > 1e-2


def test_stopping_on_separable_data():
    """Separable data (clean labels, FT fits S): the loss test stops the run; the direction
    settles while the norm keeps growing when the threshold is lowered."""
    p = _problem(6)
    v0 = jnp.array([0.3, 0.9])
    n = p.X.shape[0]
    tr = C.fine_tune_logistic(p, v0)
    tol = 1e-2 * n * math.log(2.0)
    fm = tr.final_metrics
    assert int(tr.status) == lf.Status.CONVERGED
    assert float(fm.train_loss) <= tol < float(tr.metrics.train_loss[0])
    assert float(fm.train_error) == 0.0
    longer = C.fine_tune_logistic(p, v0, loss_tol=tol / 10)
    assert float(longer.final_metrics.predictor_norm) > float(fm.predictor_norm)
    d1, n1 = C.predictor(tr)
    d2, _ = C.predictor(longer)
    assert abs(float(n1) - float(fm.predictor_norm)) < 1e-8 * float(n1)
    assert abs(float(jnp.linalg.norm(d1)) - 1.0) < 1e-12
    # the direction moves little between the two stops (it converges like 1/log t)
    assert float(jnp.linalg.norm(d1 - d2)) < 0.2
    # the frame's accuracies along the run = the R^d formula at the final (v, B)
    _, final = C.trajectory_accuracy(p, tr)
    acc = C.accuracy(p, tr.v_final, tr.B_final)
    assert abs(float(final.ood - acc.ood)) < 1e-10 and abs(float(fm.id_accuracy - acc.id)) < 1e-10


# slow: vmap = loop (11 s); the engine's own vmap test stays in the default suite
@pytest.mark.slow
def test_vmap_equals_loop():
    ps = [_problem(s) for s in (7, 8)]
    heads = jax.random.normal(jax.random.key(1), (2, 2), jnp.float64)
    ts = _fixed_times(ps[0])
    batch = jax.tree.map(lambda *x: jnp.stack(x), *ps)
    out = jax.vmap(lambda p, v: C.fine_tune_logistic(p, v, ts=ts, **FIXED))(batch, heads)
    for i, p in enumerate(ps):
        one = C.fine_tune_logistic(p, heads[i], ts=ts, **FIXED)
        assert max_rel_err(out.v_final[i], one.v_final) < 1e-12
        assert max_rel_err(out.metrics.ood_accuracy[i], one.metrics.ood_accuracy) < 1e-12
        assert int(out.status[i]) == int(one.status)


@pytest.mark.slow
def test_lp_ft_starts_from_the_probe():
    """LP-FT starts FT at the probe's final head and keeps LP's OOD accuracy within 0.1."""
    p = _problem(7)
    lpft = C.lp_ft_logistic(p)
    lp = C.linear_probe_logistic(p)
    assert max_rel_err(lpft.v0, lp.v_final) < 1e-12
    assert abs(float(lpft.final_metrics.ood_accuracy - lp.final_metrics.ood_accuracy)) < 0.1


@pytest.mark.slow
def test_gradient_matches_finite_differences():
    p = _problem(10)
    ts = _fixed_times(p)

    def f(v0):
        tr = C.fine_tune_logistic(p, v0, ts=ts, **FIXED)
        return tr.final_metrics.train_loss + tr.final_metrics.ood_accuracy

    v0 = jnp.array([0.5, -0.4])
    g = jax.grad(f)(v0)
    h = 1e-5
    fd = [(f(v0.at[i].add(h)) - f(v0.at[i].add(-h))) / (2 * h) for i in range(2)]
    # central differences: truncation O(h^2) ~ 1e-10, solver noise ~1e-12 / h ~ 1e-7
    np.testing.assert_allclose(np.asarray(g), np.asarray(fd), rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise():
    p = _problem(0)
    with pytest.raises(ValueError, match="Y"):
        C.fine_tune_logistic(p._replace(Y=p.X @ p.w_star), jnp.ones(2))
    with pytest.raises(ValueError, match="flip_prob"):
        C.classification_problem(jax.random.key(0), flip_prob=0.5, **DIMS)
    with pytest.raises(ValueError, match="flip_prob"):
        C.classification_problem(jax.random.key(0), flip_prob=-0.1, **DIMS)
    with pytest.raises(ValueError, match="v0"):
        C.fine_tune_logistic(p, jnp.ones(3))
    with pytest.raises(ValueError, match="loss_tol"):
        C.linear_probe_logistic(p, loss_tol=-1.0)
    with pytest.raises(ValueError, match="mode"):
        C.lp_ft_logistic(p, mode="dense")
    with pytest.raises(TypeError, match="unexpected"):
        C.linear_probe_logistic(p, tol=1.0)
    # labels: clean ones are sign(X w*), flips are +-1 too
    noisy = C.classification_problem(jax.random.key(3), flip_prob=0.25, **DIMS)
    clean = np.sign(np.asarray(noisy.X @ noisy.w_star))
    assert set(np.unique(np.asarray(noisy.Y))) <= {-1.0, 1.0}
    assert np.any(np.asarray(noisy.Y) != clean)


@pytest.mark.slow
def test_linfeat_check_classification_sections(tmp_path):
    """`linfeat check --quick --only C1,...,C6`: the rigorous rows pass, no sampled groups run."""
    from linfeat.checks import QUICK, run_checks
    from linfeat.checks._classify import CLS_IDS

    timings: dict = {}
    results = run_checks(QUICK, only=list(CLS_IDS), progress=False, timings=timings)
    assert [r.id for r in results] == list(CLS_IDS)
    assert "sample and solve (all groups)" not in timings
    verdicts = {r.id: r.verdict for r in results}
    # the report writer takes the sections like any other
    from linfeat.checks import write_markdown

    out = tmp_path / "paper_checks.md"
    write_markdown(results, str(out), timings=timings, cfg=QUICK, seed=0, command="linfeat check",
                   env={"versions": {}, "backend": "cpu", "devices": [], "x64": True,
                        "platform": "p"}, seconds=1.0, fig_rel=None)  # fmt: skip
    assert all(f"## {cid}:" in out.read_text() for cid in CLS_IDS)
    assert verdicts == {"C1": "PASS", "C2": "PASS", "C3": "PASS", "C4": "REPORTED",
                        "C5": "REPORTED", "C6": "REPORTED"}  # fmt: skip


def test_synthetic_table_accuracy_summary_in_points():
    """The accuracy summary of experiments/synthetic_table.py quotes what the arrays give:
    per seed the mean over scenarios of the difference, in points, then mean and 90% interval;
    the verdict compares sign and size with the paper."""
    from linfeat import _reproduce as R

    mod = R.load_experiment("synthetic_table")
    rng = np.random.default_rng(0)
    shape = (10, 40)  # scenarios, seeds
    r = {f"acc_{t}_{k}": rng.uniform(0.6, 0.9, shape) for t in ("lp", "ft", "lpft")
         for k in ("id", "ood")}  # fmt: skip
    r["acc_ft_ood"] = r["acc_lp_ood"] - 0.14  # FT 14 points below LP OOD: twice the paper's 7
    rows = {row["label"]: row for row in mod.accuracy_summary(r)}
    row = rows["FT - LP, OOD"]
    assert abs(row["mean"] + 14.0) < 1e-9 and abs(row["hi"] - row["lo"]) < 1e-9
    assert row["verdict"] == "same sign, 2.0 x the paper's size"
    per_seed = 100 * (r["acc_ft_id"] - r["acc_lp_id"]).mean(axis=0)
    half = 1.6448536269514722 * per_seed.std(ddof=1) / np.sqrt(40)
    assert abs(rows["FT - LP, ID"]["lo"] - (per_seed.mean() - half)) < 1e-9
    text = mod.accuracy_summary_markdown(r, mod.CONFIGS["quick"])
    assert (
        "| FT - LP, OOD | -14.0 [-14.0, -14.0] | -7 | same sign, 2.0 x the paper's size |" in text
    )
