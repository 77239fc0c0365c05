"""Surgical FT, LoRA and depth 3 (linfeat.methods; docs/theory.md, section 10).

References, all independent of the engine: the full-space ODE of each method in R^d solved by
SciPy (`solve_ivp`, DOP853, rtol 1e-11) on small instances, a matrix exponential
(`scipy.linalg.expm`) for the surgical closed form, the full-space metrics of
`linfeat.metrics`, and the invariants derived in docs/theory.md, section 10.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FLOW_AGREEMENT, INVARIANT, TIGHT
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import linfeat as lf
from linfeat import methods as M

D, K, MDIM, RL = 8, 2, 3, 2
TS = np.linspace(0.0, 2.0, 9)
# SciPy's DOP853 at rtol 1e-11 and the engine at rtol 1e-12 both keep a global error far below
# FLOW_AGREEMENT (1e-9 relative): measured ~1e-11 on these instances.
SCIPY = dict(method="DOP853", rtol=1e-11, atol=1e-13)
# the S-perp statements are exact algebra in the full-space reference: rounding accumulated
# over its steps (1e-16 per operation) only
FROZEN = 1e-12


@pytest.fixture(scope="module")
def prob():
    p = lf.make_problem(jax.random.key(3), d=D, k=K, m=MDIM, feature_error=0.1, ood="isotropic")
    X, Y, B0 = (np.asarray(x) for x in (p.X, p.Y, p.B0))
    QS = np.linalg.svd(X)[2][:MDIM].T  # orthonormal basis of S, independent of the library's
    perp = np.eye(D) - QS @ QS.T
    return dict(p=p, X=X, Y=Y, B0=B0, perp=perp, QS=QS, v0=np.array([0.8, -0.5]))


def _scipy(field, y0):
    sol = solve_ivp(field, (0.0, TS[-1]), y0, t_eval=TS, **SCIPY)
    assert sol.success
    return sol.y.T


def _check_metrics(prob, traj, heads, feats, start):
    """The engine's frame metrics equal linfeat.metrics of the effective model in R^d (feature
    changes relative to the effective start `start`, which plays the role of B0)."""
    p = prob["p"]._replace(B0=start)
    for i in (2, len(TS) - 1):
        full = lf.metrics(p, heads[i], feats[i], prob["v0"], start)
        red = jax.tree.map(lambda x: x[i], traj.metrics)
        for name in ("train_loss", "id_error", "ood_error", "feature_distance",
                     "feature_change_S", "feature_change_perp", "balancedness_drift"):  # fmt: skip
            a, b = float(getattr(red, name)), float(getattr(full, name))
            assert abs(a - b) <= FLOW_AGREEMENT * (1 + abs(b)), (name, i, a, b)


# ------------------------------------------------------------------------------- surgical


def test_surgical_matches_closed_form_expm_and_full_space(prob):
    X, Y, B0, v0, perp = prob["X"], prob["Y"], prob["B0"], prob["v0"], prob["perp"]
    tr = M.surgical_fine_tune(prob["p"], v0, ts=TS, **TIGHT)
    ex = M.surgical_exact(prob["p"], v0, TS)
    B_exact = B0 + v0[None, :, None] * np.asarray(ex.a)[:, None, :]
    # the engine against the closed form at every save time
    assert np.max(np.abs(np.asarray(tr.B) - B_exact)) <= FLOW_AGREEMENT
    assert np.all(np.asarray(tr.v) == v0)  # the head never moves
    # the closed form against a matrix exponential: a(t) = -2 int_0^t e^{-2c s M} h0 ds is the
    # last column of expm(t [[-2cM, h0], [0, 0]])
    c, Mx, h0 = v0 @ v0, X.T @ X, X.T @ (X @ (B0.T @ v0) - Y)
    aug = np.zeros((D + 1, D + 1))
    aug[:D, :D], aug[:D, D] = -2 * c * Mx, h0
    a_expm = np.stack([-2 * expm(t * aug)[:D, D] for t in TS])
    assert np.max(np.abs(np.asarray(ex.a) - a_expm)) <= 1e-12 * (1 + np.max(np.abs(a_expm)))

    def field(t, y):
        B = y.reshape(K, D)
        return (-2 * np.outer(v0, X.T @ (X @ (B.T @ v0) - Y))).ravel()

    B_full = _scipy(field, B0.ravel()).reshape(-1, K, D)
    assert np.max(np.abs(np.asarray(tr.B) - B_full)) <= FLOW_AGREEMENT
    dB = B_full - B0
    # frozen on S-perp, rank one along v0 (Delta B = v0 a^T)
    assert np.max(np.abs(dB @ perp)) <= FROZEN
    along = v0[None, :, None] * (v0 @ dB)[:, None, :] / (v0 @ v0)
    assert np.max(np.abs(dB - along)) <= FROZEN
    _check_metrics(prob, tr, np.broadcast_to(v0, (len(TS), K)), B_full, B0)
    # the limit: X w = Y on S, Pi_perp w = Pi_perp B0^T v0
    w_inf = np.asarray(M.surgical_exact(prob["p"], v0, 1e4 * TS).w[-1])
    assert np.max(np.abs(X @ w_inf - Y)) <= 1e-10
    assert np.max(np.abs(perp @ (w_inf - B0.T @ v0))) <= 1e-12
    # from the linear probe, the limit keeps LP's error off S and removes it on S (Sigma = I)
    v_lp = np.asarray(lf.linear_probe(prob["p"]))
    e_lp = B0.T @ v_lp - np.asarray(prob["p"].w_star)
    e_inf = np.asarray(M.surgical_exact(prob["p"], v_lp, 1e4 * TS).w[-1]) - (B0.T @ v_lp - e_lp)
    assert np.max(np.abs(e_inf - perp @ e_lp)) <= 1e-10
    assert e_inf @ e_inf < e_lp @ e_lp


# slow: vmap = loop (11 s); the engine's own vmap test stays in the default suite
@pytest.mark.slow
def test_surgical_vmap_equals_loop(prob):
    heads = np.array([[0.8, -0.5], [0.3, 1.1], [-1.2, 0.2]])
    batched = jax.vmap(lambda v: M.surgical_fine_tune(prob["p"], v, ts=TS, **TIGHT))(heads)
    for i, v in enumerate(heads):
        one = M.surgical_fine_tune(prob["p"], v, ts=TS, **TIGHT)
        np.testing.assert_allclose(batched.A[i], one.A, rtol=0, atol=1e-13)
        np.testing.assert_allclose(batched.metrics.ood_error[i], one.metrics.ood_error,
                                   rtol=1e-12)  # fmt: skip


@pytest.mark.slow  # ~14 s on 2 cores, the reverse-mode compile of the solve
def test_surgical_gradient_matches_finite_differences(prob):
    """jax.grad through the engine w.r.t. the frozen head's scale (reverse mode)."""
    v0 = jnp.asarray(prob["v0"])

    def ood(scale):
        tr = M.surgical_fine_tune(prob["p"], scale * v0, ts=TS, check=False, **TIGHT)
        return tr.metrics.ood_error[-1]

    g = float(jax.grad(ood)(1.0))
    h = 1e-5  # central differences: error h^2 f''' ~ 1e-10 plus rounding 1e-16 / h ~ 1e-11
    fd = float(ood(1.0 + h) - ood(1.0 - h)) / (2 * h)
    assert np.isfinite(g) and abs(g - fd) <= 1e-6 * (1 + abs(fd)), (g, fd)
    assert abs(fd) > 1e-3  # a derivative that is not trivially zero


# ------------------------------------------------------------------------------- LoRA


def _lora_field(X, Y, B0, train_head):
    def field(t, y):
        v, U, A = y[:K], y[K : K + K * RL].reshape(K, RL), y[K + K * RL :].reshape(RL, D)
        B = B0 + U @ A
        h = X.T @ (X @ (B.T @ v) - Y)
        dv = -2 * B @ h if train_head else np.zeros(K)
        return np.concatenate([dv, (-2 * np.outer(v, A @ h)).ravel(),
                               (-2 * np.outer(U.T @ v, h)).ravel()])  # fmt: skip

    return field


def _lora_full(prob, A0, train_head=True):
    y0 = np.concatenate([prob["v0"], np.zeros(K * RL), A0.ravel()])
    ys = _scipy(_lora_field(prob["X"], prob["Y"], prob["B0"], train_head), y0)
    return (
        ys[:, :K],
        ys[:, K : K + K * RL].reshape(-1, K, RL),
        ys[:, K + K * RL :].reshape(-1, RL, D),
    )


def test_lora_matches_full_space_and_moves_features_off_S(prob):
    B0, perp = prob["B0"], prob["perp"]
    A0 = np.asarray(M.lora_init(jax.random.key(5), RL, D))
    tr = M.lora_fine_tune(prob["p"], prob["v0"], A0=A0, ts=TS, **TIGHT)
    v, U, A = _lora_full(prob, A0)
    B = B0 + U @ A
    assert np.max(np.abs(np.asarray(tr.v) - v)) <= FLOW_AGREEMENT
    assert np.max(np.abs(np.asarray(tr.B) - B)) <= FLOW_AGREEMENT
    _check_metrics(prob, tr, v, B, B0)
    # U^T U - A A^T is conserved (in the independent reference and in the engine)
    cons = np.transpose(U, (0, 2, 1)) @ U - A @ np.transpose(A, (0, 2, 1))
    assert np.max(np.abs(cons - cons[0])) <= INVARIANT
    assert np.max(np.asarray(tr.conserved_drift)) <= INVARIANT
    # with the head, v v^T - U U^T is not: B0 breaks the (v, U) rescaling symmetry
    vu = v[:, :, None] * v[:, None, :] - U @ np.transpose(U, (0, 2, 1))
    assert np.max(np.abs(vu - vu[0])) > 1e-2
    # Delta B Pi_perp = U A0 Pi_perp exactly (A Pi_perp frozen), and it is not zero:
    # ||U A0 Pi_perp||_F >= sigma_min(A0 Pi_perp) ||U||_F (A0 Pi_perp has full row rank)
    assert np.max(np.abs((A - A0) @ perp)) <= FROZEN
    assert np.max(np.abs((B - B0) @ perp - U @ A0 @ perp)) <= FROZEN
    smin = np.linalg.svd(A0 @ perp, compute_uv=False)[-1]
    moved = np.linalg.norm((B - B0) @ perp, axis=(1, 2))
    assert np.all(moved >= smin * np.linalg.norm(U, axis=(1, 2)) * (1 - 1e-9))
    assert moved[-1] > 1e-2 and float(tr.metrics.feature_change_perp[-1]) > 1e-2


def test_lora_rows_in_S_keep_features_frozen_off_S(prob):
    Z = np.asarray(jax.random.normal(jax.random.key(6), (RL, MDIM)))
    A0 = Z @ prob["QS"].T  # rows inside S
    tr = M.lora_fine_tune(prob["p"], prob["v0"], A0=A0, ts=TS, **TIGHT)
    assert np.max(np.asarray(tr.metrics.feature_change_perp)) <= FROZEN
    assert float(tr.metrics.feature_change_S[-1]) > 1e-2  # it does move, inside S
    B = np.asarray(tr.B)
    assert np.max(np.abs((B - prob["B0"]) @ prob["perp"])) <= FROZEN


@pytest.mark.slow  # a variant (train_head=False): one more compile of the LoRA flow
def test_lora_frozen_head(prob):
    A0 = np.asarray(M.lora_init(jax.random.key(7), RL, D))
    tr = M.lora_fine_tune(prob["p"], prob["v0"], A0=A0, train_head=False, ts=TS, **TIGHT)
    v, U, A = _lora_full(prob, A0, train_head=False)
    assert np.all(np.asarray(tr.v) == prob["v0"])
    assert np.max(np.abs(np.asarray(tr.B) - (prob["B0"] + U @ A))) <= FLOW_AGREEMENT
    assert np.max(np.asarray(tr.conserved_drift)) <= INVARIANT


# ------------------------------------------------------------------------------- depth 3


def test_depth3_matches_full_space_and_conserves_balancedness(prob):
    X, Y, B0, v0, perp = prob["X"], prob["Y"], prob["B0"], prob["v0"], prob["perp"]
    C0 = np.array([[1.1, 0.2], [-0.1, 0.9]])
    tr = M.depth3_fine_tune(prob["p"], v0, C0=C0, ts=TS, **TIGHT)

    def field(t, y):
        v, C, B = y[:K], y[K : K + K * K].reshape(K, K), y[K + K * K :].reshape(K, D)
        h = X.T @ (X @ (B.T @ (C.T @ v)) - Y)
        return np.concatenate([-2 * C @ (B @ h), (-2 * np.outer(v, B @ h)).ravel(),
                               (-2 * np.outer(C.T @ v, h)).ravel()])  # fmt: skip

    ys = _scipy(field, np.concatenate([v0, C0.ravel(), B0.ravel()]))
    v, C, B = (
        ys[:, :K],
        ys[:, K : K + K * K].reshape(-1, K, K),
        ys[:, K + K * K :].reshape(-1, K, D),
    )
    CB = C @ B
    assert np.max(np.abs(np.asarray(tr.v) - v)) <= FLOW_AGREEMENT
    assert np.max(np.abs(np.asarray(tr.composite) - CB)) <= FLOW_AGREEMENT
    _check_metrics(prob, tr, v, CB, C0 @ B0)
    T = lambda x: np.transpose(x, (0, 2, 1))  # noqa: E731
    for q in (T(C) @ C - B @ T(B), v[:, :, None] * v[:, None, :] - C @ T(C)):
        assert np.max(np.abs(q - q[0])) <= INVARIANT
    assert max(np.max(tr.drift_CB), np.max(tr.drift_vC)) <= INVARIANT
    # the first layer is frozen on S-perp, the composite is not:
    # (CB - C0 B0) Pi_perp = (C - C0) B0 Pi_perp, of norm >= c_perp ||C - C0||_F
    assert np.max(np.abs((B - B0) @ perp)) <= FROZEN
    moved = np.linalg.norm((CB - C0 @ B0) @ perp, axis=(1, 2))
    c_perp = np.linalg.svd(perp @ B0.T, compute_uv=False)[-1]
    assert np.all(moved >= c_perp * np.linalg.norm(C - C0, axis=(1, 2)) * (1 - 1e-9))
    assert moved[-1] > 1e-2


# ------------------------------------------------------------------------------- solver


def test_structured_solves_equal_dense_jacobian_solves():
    """LoRA's and depth 3's closed-form (I - alpha J)^{-1} (docs/theory.md, section 10) equal
    the dense solve with the jax.jacfwd Jacobian, on random states (rounding level)."""
    from linfeat._arch_flows import Depth3, LoRA, LoRAData
    from linfeat._flows import FlowData
    from linfeat._rodas5p import dense_factor

    rng = np.random.default_rng(0)
    k, r, rl = 3, 5, 2

    def draw(*shapes):
        return tuple(jnp.asarray(rng.normal(size=s)) for s in shapes)

    @jax.jit
    def gap(y_deep, y_lora, b_deep, b_lora, data, A0, alpha):
        out = []
        for flow, y, b, args in (
            (Depth3(), y_deep, b_deep, data),
            (LoRA(), y_lora, b_lora, LoRAData(data, A0)),
            (LoRA(train_head=False), y_lora, b_lora, LoRAData(data, A0)),
        ):
            fast = flow.factor(y, args, alpha)(b)
            dense = dense_factor(flow.field, y, args, alpha)(b)
            out.append(jnp.max(jnp.stack([jnp.max(jnp.abs(a - c)) for a, c in zip(fast, dense)])))
        return jnp.stack(out)  # fmt: skip

    for alpha in (0.01, 0.1, 0.3):
        deep, lora = draw(k, (k, k), (k, r)), draw(k, (k, rl), (rl, r))
        data = FlowData(jnp.asarray(rng.uniform(0.5, 2.0, r)), jnp.asarray(rng.normal(size=r)))
        gaps = gap(deep, lora, draw(k, (k, k), (k, r)), draw(k, (k, rl), (rl, r)), data,
                   draw((k, r))[0], alpha)  # fmt: skip
        assert np.all(np.asarray(gaps) <= 1e-12), (alpha, gaps)


# ------------------------------------------------------------------------------- inputs


def test_bad_inputs_raise(prob):
    p, v0 = prob["p"], prob["v0"]
    A0 = np.asarray(M.lora_init(jax.random.key(5), RL, D))
    with pytest.raises(ValueError, match="A0"):
        M.lora_fine_tune(p, v0, A0=A0[:, :-1])
    with pytest.raises(ValueError, match="all zero"):
        M.lora_fine_tune(p, v0, A0=np.zeros((RL, D)))
    with pytest.raises(ValueError, match="A0"):
        M.lora_fine_tune(p, v0, A0=np.full((RL, D), np.nan))
    with pytest.raises(ValueError, match="C0"):
        M.depth3_fine_tune(p, v0, C0=np.eye(K + 1))
    with pytest.raises(ValueError, match="v0"):
        M.surgical_fine_tune(p, np.ones(K + 1))
    with pytest.raises(ValueError, match="rank"):
        M.lora_init(jax.random.key(0), 0, D)
    with pytest.raises(ValueError, match="ts"):
        M.surgical_exact(p, v0, np.array([0.0, 2.0, 1.0]))
    with pytest.warns(lf.TheoryConditionWarning, match="v0 = 0"):
        M.surgical_fine_tune(p, np.zeros(K), ts=TS)


@pytest.mark.slow  # ~40 s on 2 cores: three flows compiled, SciPy references
def test_method_checks_pass():
    """`linfeat check --only M5,M6,M8` (two instances each) passes every rigorous row, and its
    trajectory comparisons see flows that move far more than their tolerance."""
    from linfeat import checks as C

    tiny = C.Config(name="tiny", groups=())
    res = {r.id: r for r in C.run_checks(tiny, seed=1, only=["M5", "M6", "M8"], progress=False)}
    for rid in ("M5", "M6", "M8"):
        rigorous = [s for s in res[rid].subs if s.kind == C.RIGOROUS]
        assert res[rid].verdict == "PASS" and all(s.n == 2 for s in rigorous), rid
    assert res["M5"].numbers["median travel max_t |B(t) - B0|"] > 1e3 * C.TOL["trajectory"]
    assert res["M6"].subs[-2].worst > 1e-3  # LoRA moved the features off S on every instance
