"""Smoke tests of the experiments of `linfeat reproduce` (experiments/, linfeat/_reproduce.py).

Each experiment runs at a tiny size (tiny dimensions, few seeds, one shared compile of the
batched solver) and draws its figure; the cache and resume logic of `run_one` is checked on the
cheapest experiment. Numbers are not asserted beyond sanity: the checks of the theory live in
the theory tests and `linfeat check`.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from linfeat import _reproduce as R  # noqa: E402

# Tiny configs: tiny dimensions, a handful of seeds, short grids.
_TINY = {
    "toy2d": dict(heads=[0.3, -1.0], sweep_heads=5, num_save=8),
    "distortion": dict(seeds=4, oracle_seeds=2),
    "ood_vs_eps": dict(seeds=3, eps=[1e-3, 0.1, 1.0]),
    "ft_lower_bound": dict(seeds=2, u=[0.0, 0.5, 1.5]),
    "tradeoff": dict(seeds=3, eps=[0.05, 1.0], rho=[0.0, 0.1, 1.0], toy_grid=3),
    "time_course": dict(seeds=4),
    "random_head": dict(batches=2, per_batch=200, sigmas=[0.3, 1.0, 3.0]),
    "gd_vs_flow": dict(problems=2, sgd_keys=2, save_every=[1], opt_save_every=1, batch_size=4),
    "synthetic_table": dict(seeds=3, cls_dims=dict(d=12, k=2, m=4, n=8)),
    "zoo": dict(
        seeds=3, tune_seeds=2, tune_steps=2, ood_samples=20, tune_scenarios=[1], grid_points=3
    ),
    "classification": dict(seeds=3, eps=[0.1, 1.0], rho_curve=[0.0, 0.5, 1.0]),
}


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache():
    """Reuse XLA compiles across runs via the cache `linfeat reproduce` keeps (results/, ignored).

    The tiny experiments are compile-bound (about 15 distinct shapes); a warm cache saves most of
    it. The option is restored afterwards so other test modules are unaffected.
    """
    import jax

    cache_dir = R.repo_root() / "results" / ".jax_cache"
    old = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def _tiny_config(name, mod):
    from _linfeat_experiments import _common as C

    cfg = C.tiny(mod.CONFIGS["quick"], **_TINY[name])
    if name == "ft_lower_bound":
        # One shape for both groups (the k = 1 group of the real config costs a compile).
        cfg["groups"] = [dict(a=1.0, dims=C.TINY_DIMS), dict(a=5.0, dims=C.TINY_DIMS)]
    if name == "zoo":
        cfg["scenarios"] = cfg["scenarios"][:2]
    return cfg


def test_every_experiment_is_listed():
    root = R.repo_root()
    scripts = {p.stem for p in (root / "experiments").glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(R.EXPERIMENTS)


# The costliest smoke runs (25-60 s each, compile-bound) are `slow`: the default suite runs the
# cheapest one, which exercises the same shared code (batch solve, checkpoints, plotting;
# `test_cache_and_resume` the cache), and `linfeat reproduce` (README's main job) runs them
# all. synthetic_table (38-46 s) joined them when the default suite passed 10 minutes.
_SLOW = {
    "synthetic_table",
    "distortion",
    "ft_lower_bound",
    "ood_vs_eps",
    "gd_vs_flow",
    "tradeoff",
    "time_course",
    "toy2d",
    "zoo",
    "classification",
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in R.EXPERIMENTS]
)
def test_experiment_smoke(name, tmp_path):
    mod = R.load_experiment(name)
    cfg = _tiny_config(name, mod)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # theory-condition warnings of tiny sizes
        results = mod.compute(cfg, None)
    assert all(isinstance(v, np.ndarray) for v in results.values())
    assert "nonconverged" in results
    for key, val in results.items():
        # Fitted orders need two step sizes; the tiny gd_vs_flow has one (NaN by design).
        if val.dtype.kind == "f" and not key.startswith("order_"):
            assert not np.all(np.isnan(val)), key
    mod.plot(results, cfg, tmp_path)
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert (tmp_path / f"{name}.pdf").exists()
    if name == "synthetic_table":
        assert "Summary" in (tmp_path / "synthetic_table.md").read_text()
    if name == "zoo":
        assert "Knobs tuned" in (tmp_path / "zoo_table.md").read_text()
        assert (tmp_path / "zoo_tuned.png").stat().st_size > 1000


def test_cache_and_resume(tmp_path, monkeypatch):
    """An unchanged config is loaded, not recomputed; finished chunks are reused after a kill."""
    mod = R.load_experiment("random_head")
    cfg = _tiny_config("random_head", mod)
    monkeypatch.setitem(mod.CONFIGS, "quick", cfg)
    calls = []
    compute = mod.compute
    monkeypatch.setattr(mod, "compute", lambda c, ck: calls.append(1) or compute(c, ck))
    row = R.run_one("random_head", mode="quick", out=tmp_path, figdir=tmp_path / "fig")
    assert not row["cached"] and len(calls) == 1
    meta = json.loads((tmp_path / "quick" / "random_head.json").read_text())
    assert meta["config"]["batches"] == cfg["batches"] and "versions" in meta["environment"]
    row = R.run_one("random_head", mode="quick", out=tmp_path, figdir=tmp_path / "fig")
    assert row["cached"] and len(calls) == 1
    # A killed run: the chunk checkpoint exists but the result does not; it is reused.
    key = R.cache_key(mod, cfg)
    (tmp_path / "quick" / "random_head.json").unlink()
    from _linfeat_experiments import _common as C

    ck = C.Checkpoint(tmp_path / "quick" / "random_head.ckpt" / key)
    mod_results = compute(cfg, ck)
    assert ck.computed == 1
    ck2 = C.Checkpoint(tmp_path / "quick" / "random_head.ckpt" / key)
    again = compute(cfg, ck2)
    assert ck2.loaded == 1 and ck2.computed == 0
    np.testing.assert_array_equal(again["p_small"], mod_results["p_small"])
