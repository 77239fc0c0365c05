"""README's results section is generated from the results files, never typed.

`linfeat reproduce` rewrites the text between README's `results` markers with
`readme_results` (linfeat/_reproduce.py): an intro, then each experiment's `readme(results,
config)` (experiments/<name>.py), then the synthetic table's summary. Here: the marker
replacement, the numbers quoted by `readme` against values recomputed directly from the
arrays (a tiny real run of the cheapest experiment, and hand-made results for the sentences
the issue corrected), the section built from files, when a run rewrites README, and that
README's section is what `results/full/` generates (skipped where those files are absent).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import warnings

import numpy as np
import pytest

from linfeat import _reproduce as R
from linfeat._io import atomic_savez, atomic_write_text

NUM = r"-?\d[\d.]*(?:e-?\d+)?"


def _common():
    R.load_experiment("toy2d")  # imports the experiments package
    from _linfeat_experiments import _common as C

    return C


def _quoted(quoted: str, value: float, digits: int) -> bool:
    """`quoted` is `value` rounded to `digits` significant digits."""
    q = float(quoted.replace(",", ""))
    if value == 0:
        return q == 0
    unit = 10.0 ** (np.floor(np.log10(abs(value))) - digits + 1)
    return abs(q - value) <= 0.5 * unit * (1 + 1e-9)


# ---------------------------------------------------------------------------------------
# (a) the marker replacement
# ---------------------------------------------------------------------------------------


def test_replace_between_markers_replaces_only_the_block():
    text = f"# Title\n\nbefore {R.README_START}\nold 1\nold 2\n{R.README_END}\nafter\n"
    new = R.replace_between_markers(text, "\nnew block\n\n")
    assert new == f"# Title\n\nbefore {R.README_START}\nnew block\n{R.README_END}\nafter\n"
    # Idempotent, and the text outside the markers is kept byte for byte.
    assert R.replace_between_markers(new, "new block") == new


@pytest.mark.parametrize(
    "text, message",
    [
        ("no markers at all", "exactly once; found it 0 times"),
        (f"{R.README_START}\nx\n", "exactly once; found it 0 times"),
        (f"x\n{R.README_END}\n", "exactly once; found it 0 times"),
        (f"{R.README_START}\n{R.README_START}\nx\n{R.README_END}", "found it 2 times"),
        (f"{R.README_START}\nx\n{R.README_END}\n{R.README_END}", "found it 2 times"),
        (f"{R.README_END}\nx\n{R.README_START}", "comes before"),
    ],
)
def test_replace_between_markers_rejects_missing_doubled_or_swapped_markers(text, message):
    with pytest.raises(ValueError, match=message):
        R.replace_between_markers(text, "block")


def test_update_readme_writes_only_on_change(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"head\n{R.README_START}\nold\n{R.README_END}\ntail\n")
    assert R.update_readme(path, "new")
    assert path.read_text() == f"head\n{R.README_START}\nnew\n{R.README_END}\ntail\n"
    assert not R.update_readme(path, "new")


# ---------------------------------------------------------------------------------------
# The shared number format, and every experiment has its README paragraph
# ---------------------------------------------------------------------------------------


def test_num_keeps_the_measured_digits():
    num = _common().num
    # The issue: README said "fitted slopes 2.00", the figure printed "2" (one format now).
    assert num(2.0000059, 3) == "2.00"
    assert num(1.0482, 3) == "1.05"
    assert num(0.0999, 2) == "0.10"
    assert num(0.15612, 2) == "0.16"
    assert num(1.2991e-9, 2) == "1.3e-9"
    assert num(9722.86, 2) == "9.7e3"
    assert num(-17.83, 3) == "-17.8"
    assert num(0.0) == "0"


def test_every_experiment_has_a_readme_paragraph():
    for name in R.EXPERIMENTS:
        mod = R.load_experiment(name)
        assert callable(getattr(mod, "readme", None)), name
    assert callable(R.load_experiment("synthetic_table").summary_markdown)


# ---------------------------------------------------------------------------------------
# (b) the numbers of `readme` against the arrays
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_head_tiny():
    """The tiny smoke config of tests/test_experiments.py, computed (about 10 s)."""
    from test_experiments import _tiny_config

    mod = R.load_experiment("random_head")
    cfg = _tiny_config("random_head", mod)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # theory-condition warnings of tiny sizes
        results = mod.compute(cfg, None)
    return mod, cfg, results


def test_random_head_readme_quotes_its_results(random_head_tiny):
    mod, cfg, r = random_head_tiny
    text = mod.readme(r, cfg)
    assert text.startswith("**random_head** — ")
    assert text.endswith("![random_head](figures/random_head.png)\n")
    m = re.search(
        r"in ([\d,]+) heads per σ \((\d+) random problems × ([\d,]+) heads; (\d+) values of σ "
        r"for the CDF, (\d+) for the small-σ bound\)",
        text,
    )
    assert m, text
    heads, problems, per_problem, n_cdf, n_small = (int(g.replace(",", "")) for g in m.groups())
    assert problems == r["p_small"].shape[0] == r["cdf"].shape[0]
    assert per_problem == cfg["per_batch"] and heads == problems * per_problem
    assert n_cdf == r["cdf"].shape[1] and n_small == r["p_small"].shape[1]
    # The violations, recomputed here from the Monte Carlo arrays and the bounds' formulas.
    n, a = heads, cfg["a"]
    sig_cdf = np.asarray(cfg["sigmas_cdf"])[:, None]
    bound_cdf = np.minimum(2 * r["grid"][None, :] / (np.sqrt(np.pi) * a * sig_cdf), 1.0)
    pooled = r["cdf"].mean(axis=0)
    se = np.sqrt(np.maximum(pooled * (1 - pooled), 1 / n) / n)
    bad_cdf = int(np.sum(pooled > bound_cdf + 3 * se))
    bound_small = np.minimum(2 * np.exp(-(a**2) / (4 * np.asarray(cfg["sigmas"]) ** 2)), 1.0)
    pooled_p = r["p_small"].mean(axis=0)
    se_p = np.sqrt(np.maximum(pooled_p * (1 - pooled_p), 1 / n) / n)
    bad_small = int(np.sum(pooled_p > bound_small + 3 * se_p))
    if bad_cdf + bad_small == 0:
        assert ": no violation (beyond 3 Monte Carlo standard errors)" in text
    else:
        assert f": {bad_cdf} + {bad_small} violations" in text


def _synthetic_results(seed=0, seeds=6):
    """Hand-made synthetic_table results (relative errors), FT fitting ID exactly."""
    rng = np.random.default_rng(seed)
    shape = (10, seeds)
    lp_ood = rng.uniform(0.01, 0.5, shape)
    ft_ood = lp_ood * rng.uniform(0.2, 30.0, (10, 1)) * rng.uniform(0.9, 1.1, shape)
    return {
        "lp_ood": lp_ood,
        "ft_ood": ft_ood,
        "lpft_ood": lp_ood * rng.uniform(0.5, 1.0, shape),
        "lp_id": rng.uniform(0.05, 0.4, shape),
        "ft_id": np.zeros(shape),
        "lpft_id": np.zeros(shape),
        "r5_ft_lower": np.zeros(shape),
        "r7_lp_upper": np.ones(shape),
        "status": np.zeros((10, 2, seeds), np.int32),
        "nonconverged": np.array(0),
    }


def test_synthetic_table_summary_quotes_its_results():
    mod = R.load_experiment("synthetic_table")
    cfg = mod.CONFIGS["quick"]
    r = _synthetic_results()
    para = mod.readme(r, cfg)
    assert f"on 10 synthetic shift scenarios ({r['lp_ood'].shape[1]} seeds each, 90% " in para
    text = mod.summary_markdown(r, cfg)
    seeds = r["lp_ood"].shape[1]
    for label, diff in (
        ("FT - LP, ID error", r["ft_id"] - r["lp_id"]),
        ("FT - LP, OOD error", r["ft_ood"] - r["lp_ood"]),
        ("LP-FT - FT, OOD error", r["lpft_ood"] - r["ft_ood"]),
    ):
        m = re.search(rf"\| {re.escape(label)} \| ({NUM}) \[({NUM}), ({NUM})\] \|", text)
        assert m, label
        per_seed = 100 * diff.mean(axis=0)  # mean over scenarios, per seed
        mean = per_seed.mean()
        half = 1.6448536269514722 * per_seed.std(ddof=1) / np.sqrt(seeds)
        for quoted, value in zip(m.groups(), (mean, mean - half, mean + half)):
            assert _quoted(quoted, value, 3), (label, quoted, value)
    assert "| LP-FT - FT, ID error | 0 (exact tie) |" in text
    assert "The ID tie is exact because both FT and LP-FT interpolate" in text
    wins = int(np.sum(r["ft_ood"].mean(axis=1) < r["lp_ood"].mean(axis=1)))
    assert f"FT beats LP out of distribution in {wins} of 10 scenarios" in text
    # The summary closes synthetic_table.md too: the file and README cannot disagree.
    assert mod.markdown(r, cfg).endswith(text)


def _ood_vs_eps_results(rises):
    """Hand-made ood_vs_eps results with LP-FT's rise above its t = 0 error per (eps, seed)."""
    rises = np.asarray(rises, float)
    n_eps, seeds = rises.shape
    eps = np.logspace(-3, 0, n_eps)
    lp = np.outer(eps**2, np.linspace(1, 2, seeds))
    return {
        "eps": eps,
        "lp": lp,
        "ft_min": np.full_like(lp, 1.5),
        "lpft_final": lp,
        "lpft_max_rise": rises,
        "lpft_rise_by_eps": rises.max(axis=1),
        "slope_lp": np.array(2.0000059),
        "slope_lpft_final": np.array(1.9987),
        "slope_ft_min": np.array(3e-5),
        "r7_violations": np.array(0),
        "r5_violations": np.array(0),
        "nonconverged": np.array(0),
    }


def test_ood_vs_eps_quotes_the_measured_r13_rise_and_where():
    mod = R.load_experiment("ood_vs_eps")
    cfg = mod.CONFIGS["quick"]
    rises = np.zeros((6, 8))
    rises[3, :2] = [0.05, 0.02]
    rises[5, :3] = [0.31, 0.1, 1e-7]  # the last one is below the 1e-6 resolution
    r = _ood_vs_eps_results(rises)
    text = mod.readme(r, cfg)
    m = re.search(
        rf"for ε ≤ ({NUM}); its largest rise, ({NUM}), is at ε = ({NUM}) \(where (\d+) of (\d+) "
        r"seeds rise by more than 1e-6\)",
        text,
    )
    assert m, text
    assert _quoted(m[1], r["eps"][2], 2)  # the last eps before the first rise
    assert _quoted(m[2], rises.max(), 2) and _quoted(m[3], r["eps"][5], 2)
    assert (int(m[4]), int(m[5])) == (2, 8)
    m = re.search(rf"fitted log-log slopes ({NUM}) and ({NUM})", text)
    assert m and m.groups() == ("2.00", "2.00")  # as measured, to 3 digits (the figure too)
    ratio = np.median(r["lp"][0] / r["ft_min"][0])
    m = re.search(rf"median ratio ({NUM}) at ε = ({NUM})", text)
    assert m and _quoted(m[1], ratio, 2) and _quoted(m[2], r["eps"][0], 2)
    none = mod.readme(_ood_vs_eps_results(np.zeros((6, 8))), cfg)
    assert "never rises above its t = 0 value (by more than 1e-6) at any ε" in none


def _distortion_results(perp):
    rng = np.random.default_rng(1)
    seeds, T = 16, 5
    return {
        "ts": np.array([0.0, 0.1, 1.0, 10.0, 1000.0]),
        "ft_metric_feature_change_S": rng.uniform(0.2, 0.8, (seeds, T)),
        "lpft_metric_feature_change_S": rng.uniform(0.01, 0.05, (seeds, T)),
        "max_perp_change": np.array(perp),
        "max_drift": np.array(1.08e-9),
        "oracle_tau": np.zeros((3, T)),
        "oracle_max_dev": np.array(1.19e-9),
        "nonconverged": np.array(0),
    }


def test_distortion_says_the_s_perp_change_is_zero_by_construction():
    mod = R.load_experiment("distortion")
    cfg = mod.CONFIGS["quick"]
    r = _distortion_results(0.0)
    text = mod.readme(r, cfg)
    assert "zero by construction of the exact reduction" in text
    assert "exactly 0" not in text and "reports up to" not in text
    m = re.search(
        rf"median ({NUM}) at t = 1000 over 16 seeds, ε = {cfg['eps']:g}\) and LP-FT", text
    )
    assert m and _quoted(m[1], np.median(r["ft_metric_feature_change_S"][:, -1]), 2)
    m = re.search(rf"LP-FT by O\(ε\) \(({NUM})\)", text)
    assert m and _quoted(m[1], np.median(r["lpft_metric_feature_change_S"][:, -1]), 2)
    assert (
        "conserved to 1.1e-9" in text
        and "3 k = 1 solves match the exact trajectory to 1.2e-9" in text
    )
    # A non-zero value from the reduced solve would be a bug: it is quoted, not hidden.
    assert "reports up to 3.0e-15" in mod.readme(_distortion_results(3e-15), cfg)


# ---------------------------------------------------------------------------------------
# The section from files, and when a run rewrites README
# ---------------------------------------------------------------------------------------


def _save(out, mode, name, results, config, started, seconds):
    atomic_savez(out / mode / f"{name}.npz", results)
    meta = {
        "name": name,
        "mode": mode,
        "config": config,
        "started": started,
        "compute_seconds": seconds,
        "environment": {"backend": "cpu", "x64": True},
    }
    atomic_write_text(out / mode / f"{name}.json", json.dumps(meta, default=float))


def test_readme_results_reads_the_results_files(tmp_path, random_head_tiny):
    mod, cfg, r = random_head_tiny
    _save(tmp_path, "quick", "random_head", r, cfg, "2026-01-02T10:00:00+0000", 30.0)
    syn = R.load_experiment("synthetic_table")
    s_cfg = syn.CONFIGS["quick"]
    _save(
        tmp_path, "quick", "synthetic_table", _synthetic_results(), s_cfg, "2026-01-03T10:00", 90.0
    )
    names = ["random_head", "synthetic_table"]
    block = R.readme_results(names, tmp_path, "quick")
    assert "from 2026-01-02 to 2026-01-03 on the cpu backend, in 2.0 minutes of compute" in block
    assert "`results/quick/<name>.npz`" in block and "The last one took" not in block
    assert block.index("**random_head**") < block.index("**synthetic_table**")
    assert block.endswith(syn.summary_markdown(_synthetic_results(), s_cfg))
    # The config comes from the JSON (as computed), not from the module's CONFIGS.
    assert mod.readme(r, cfg) in block
    # A complete run's record: its measured time and date enter the intro.
    record = {"seconds": 754.2, "date": "2026-01-04", "cpus": 2, "experiments": 9, "computed": 3}
    atomic_write_text(tmp_path / "quick" / R.RUN_RECORD, json.dumps(record))
    block = R.readme_results(names, tmp_path, "quick")
    assert (
        "The last one took 12.6 minutes on 2026-01-04 (2 CPU cores; 3 of 9 experiments computed"
        in block
    )
    with pytest.raises(FileNotFoundError, match="toy2d"):
        R.readme_results(["toy2d"], tmp_path, "quick")


@pytest.mark.parametrize(
    "argv, reason",
    [
        ([], None),
        (["--quick"], "--quick"),
        (["--no-readme"], "--no-readme"),
        (["--only", "toy2d"], "--only"),
        (["--no-plot"], "--no-plot"),
    ],
)
def test_only_a_complete_default_full_run_rewrites_readme(argv, reason):
    parser = argparse.ArgumentParser()
    R.add_arguments(parser)
    args = parser.parse_args(argv)
    root = R.repo_root()
    mode = "quick" if args.quick else "full"
    names = args.only or list(R.EXPERIMENTS)
    why = R._readme_skip_reason(args, mode, names, root / "results", root / "figures", root)
    assert why is None if reason is None else reason in why
    other = R._readme_skip_reason(args, mode, names, root / "results", root / "elsewhere", root)
    assert other is not None


@pytest.fixture
def fake_run(monkeypatch):
    """`R.run` with every experiment stubbed (cached), the files it would write captured."""
    import jax

    old = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    written, readmes = {}, []

    def run_one(name, **kw):
        if name in fake_run_failures:
            raise RuntimeError("planted failure")
        return {"name": name, "cached": name != "toy2d", "compute_s": 1.0, "plot_s": 0.5,
                "nonconverged": 0}  # fmt: skip

    fake_run_failures: set[str] = set()
    monkeypatch.setattr(R, "run_one", run_one)
    monkeypatch.setattr(R, "release_compiled_programs", lambda: None)
    monkeypatch.setattr(R, "atomic_write_text", lambda path, text: written.update({path: text}))
    monkeypatch.setattr(R, "readme_results", lambda names, out, mode, **kw: f"block {mode}")
    monkeypatch.setattr(R, "update_readme", lambda path, block: readmes.append((path, block)))

    def run(argv):
        parser = argparse.ArgumentParser()
        R.add_arguments(parser)
        return R.run(parser.parse_args(argv))

    yield run, written, readmes, fake_run_failures
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def test_a_complete_full_run_records_itself_and_rewrites_readme(fake_run):
    run, written, readmes, failures = fake_run
    root = R.repo_root()
    assert run([]) == 0
    record = json.loads(written[root / "results" / "full" / R.RUN_RECORD])
    assert record["experiments"] == len(R.EXPERIMENTS) and record["computed"] == 1
    assert record["seconds"] >= 0 and re.fullmatch(r"\d{4}-\d\d-\d\d", record["date"])
    assert readmes == [(root / "README.md", "block full")]
    # --quick, --no-readme and a failed experiment leave README alone.
    readmes.clear()
    assert run(["--quick"]) == 0 and run(["--no-readme"]) == 0
    failures.add("tradeoff")
    assert run([]) == 1
    assert readmes == []


# ---------------------------------------------------------------------------------------
# (c) README's section is what results/full/ generates
# ---------------------------------------------------------------------------------------


def test_readme_section_is_generated_from_results_full():
    root = R.repo_root()
    full = root / "results" / "full"
    if not all(
        (full / f"{n}.npz").exists() and (full / f"{n}.json").exists() for n in R.EXPERIMENTS
    ):
        pytest.skip("results/full/ is incomplete here (run `linfeat reproduce`)")
    text = (root / "README.md").read_text()
    current = text.split(R.README_START, 1)[1].split(R.README_END, 1)[0].strip("\n")
    generated = R.readme_results().strip("\n")
    diff = "\n".join(
        difflib.unified_diff(
            current.splitlines(), generated.splitlines(), "README.md", "generated", lineterm=""
        )
    )
    assert current == generated, (
        "README's results section differs from what results/full/ generates; rerun "
        "`linfeat reproduce` (a complete full run rewrites it):\n" + diff
    )
