"""The benchmark report's verdicts are computed from the measurements, not written by hand.

Synthetic results JSON only: no JAX solves (fast).
"""

import json

from benchmarks import report


def nvb(workload, batch, path, with_metrics, traj_per_s):
    return dict(
        workload=workload, batch=batch, path=path, with_metrics=with_metrics,
        first_call_s=10.0, run_s=batch / traj_per_s, compile_s=9.0, compile_events_s=8.9,
        traj_per_s=traj_per_s, steps_mean=160.0, steps_max=210, converged=0.99,
        max_time=0.01, failed=0.0, timing="second call",
    )  # fmt: skip


def compile_row(first_call_s, run_s, *, recompiled):
    """One entry of the compile-cache measurement: a third call recompiles iff `recompiled`."""
    compile_s = first_call_s - run_s
    return dict(
        first_call_s=first_call_s, run_s=run_s, compile_s=compile_s,
        compile_events_s=compile_s - 0.1, cache_before=0, cache_after=1,
        cache_after_third=2 if recompiled else 1, recompiled=recompiled,
    )  # fmt: skip


def result(*, natural=(300.0, 300.0), batch=(400.0, 400.0), old=(350.0, 100.0), same_t=3e-10,
           baseline_err=2e-9, peak_gb=2.8, recompiled=False, old_error=False):  # fmt: skip
    rows = []
    for (nat, bat), metrics in zip(zip(natural, batch, strict=True), (True, False), strict=True):
        rows += [
            nvb("small", 4096, "natural", metrics, nat),
            nvb("small", 4096, "batch", metrics, bat),
        ]
    rows += [nvb("from_arrays", 1024, "natural", True, 100.0),
             nvb("from_arrays", 1024, "batch", True, 400.0)]  # fmt: skip
    runs = [
        dict(workload="small", setting="bench", rtol=1e-8, atol=1e-10, grad_tol=1e-10,
             rows=[dict(batch=4096, traj_per_s=old[0], steps_mean=112.0, compile_s=3.0,
                        converged=0.97, run_s=4096 / old[0])]),
        dict(workload="small", setting="defaults", rtol=1e-12, atol=1e-14, grad_tol=1e-10,
             rows=[dict(batch=4096, traj_per_s=old[1], steps_mean=700.0, compile_s=4.0,
                        converged=0.99, run_s=4096 / old[1])]),
    ]  # fmt: skip
    if old_error:
        runs.append(dict(workload="from_arrays", setting="bench", error="timed out after 600 s"))
    acc = [
        dict(workload="small", method=m, lanes=8, grad_tol="default (scale-aware)",
             rel_err=[5e-7], max_rel_err=5e-7, rel_err_same_t=[same_t],
             max_rel_err_same_t=same_t, reference_failures=0, judged_on="rel_err_same_t",
             ok=same_t < 1e-8)
        for m in ("natural jit(vmap(fine_tune))", "fine_tune_batch")
    ]  # fmt: skip
    base = dict(
        method="scipy Radau, reduced state", lanes=4, rtol=1e-8, atol=1e-10, run_s=2.0,
        traj_per_s=2.0, max_rel_err_same_t=baseline_err, ok=baseline_err < 1e-8,
        state="(v, A) in R^210", jacobian="analytic, NumPy", calibration=[],
    )  # fmt: skip
    return dict(
        natural_vs_batch=rows,
        previous_release=dict(
            commit="4760ab2",
            runs=runs,
            # this release at the previous release's benchmark setting (compared with "bench")
            current_bench=[nvb("small", 4096, "batch, previous bench setting", False, batch[1])],
        ),
        accuracy=acc,
        baselines=dict(
            workload="small",
            lanes=4,
            jacobian_check_rel=1e-11,
            rows=[base],
            horizon="linfeat's stop time",
        ),  # fmt: skip
        compile=dict(
            shape=dict(d=200, n=24),
            batch=64,
            fine_tune=compile_row(20.0, 0.01, recompiled=False),
            fine_tune_batch=compile_row(30.0, 0.5, recompiled=recompiled),
        ),
        memory=dict(
            n=100_000,
            peak_rss_gb=peak_gb,
            wall_s=300.0,
            batch_size=4096,
            devices=1,
            converged=0.98,
            with_metrics=True,
        ),  # fmt: skip
    )


def verdicts(res):
    lines = report.targets(res).splitlines()[2:]
    return {line.split("|")[1].strip()[:14]: line for line in lines}


def test_all_met():
    by = verdicts(result())
    assert by["natural path >"].endswith("| met |")  # 300 / 400 = 0.75 >= 2/3
    assert "(0.75)" in by["natural path >"]
    assert by["no regression "].endswith("| met |")  # 400 >= 350, 400 >= 100
    assert "1.14x" in by["no regression "] and "4.00x" in by["no regression "]
    assert by["every method w"].endswith("| met |")  # judged on the same-time error
    assert by["no recompilati"].endswith("| met |")
    assert by["100,000 `small"].endswith("| met |")


def test_natural_path_too_slow():
    by = verdicts(result(natural=(300.0, 200.0)))  # 200 / 400 = 0.5 < 2/3 without metrics
    assert by["natural path >"].endswith("| missed (worst 0.50) |")
    # from_arrays (natural 100 vs batch 400) is reported but is not the n = m target
    assert "0.25" not in by["natural path >"]


def test_regression_and_failed_previous_run():
    by = verdicts(result(batch=(400.0, 300.0)))  # no metrics: 300 < old 350
    assert by["no regression "].endswith("| missed (worst 0.86x) |")
    by = verdicts(result(old_error=True))
    assert "1 previous-release run(s) failed" in by["no regression "]


def test_previous_release_rounds_use_the_median_paired_ratio():
    # Three interleaved rounds: one noisy round (0.5x) does not decide; the median does.
    res = result()
    prev = res["previous_release"]
    bench = prev["runs"][0]
    prev["runs"] = [dict(bench, round=r, rows=[dict(bench["rows"][0], traj_per_s=old)])
                    for r, old in enumerate((350.0, 800.0, 380.0))] + prev["runs"][1:]  # fmt: skip
    cur = prev["current_bench"][0]
    prev["current_bench"] = [dict(cur, round=r, traj_per_s=new)
                             for r, new in enumerate((420.0, 400.0, 418.0))]  # fmt: skip
    q = next(q for q in report.previous_pairs(res) if q["setting"] == "bench")
    assert q["rounds"] == 3 and q["ratios"] == [420 / 350, 400 / 800, 418 / 380]
    assert q["ratio"] == 418 / 380 and q["old"] == 380.0 and q["new"] == 418.0
    by = verdicts(res)
    assert "(1.10x, median of 3 rounds)" in by["no regression "]
    assert by["no regression "].endswith("| met |")
    # the same rounds with two slow ones: missed
    prev["current_bench"][2]["traj_per_s"] = 300.0
    assert verdicts(res)["no regression "].endswith("| missed (worst 0.79x) |")


def test_accuracy_compile_memory_failures():
    by = verdicts(result(same_t=2e-8))
    assert by["every method w"].endswith("| missed |") and "2.0e-08" in by["every method w"]
    by = verdicts(result(baseline_err=3e-8))
    assert "failing: scipy Radau, reduced state" in by["every method w"]
    by = verdicts(result(recompiled=True, peak_gb=5.0))
    assert by["no recompilati"].endswith("| missed |")
    assert by["100,000 `small"].endswith("| missed |")


def test_render_every_section():
    res = result()
    res.update(
        machine=dict(cpu="cpu", cores=2, platform="linux", backend="cpu", devices=["cpu:0"],
                     versions=dict(jax="0", diffrax="0", scipy="0", numpy="0", python="3"),
                     load_avg_1_5_15=[1.0, 1.0, 1.0], peak_flops_measured=1e10,
                     dram_bandwidth_measured=1e10),
        started="now", mode="full",
        dscaling=[dict(d=1000, k=10, m=50, n=100, make_problem_s=0.01, reduce_s=0.001,
                       solve_s=0.01, compile_s=10.0, steps=60, status=0)],
    )  # fmt: skip
    text = report.render(json.loads(json.dumps(res)))
    for needle in ("natural / batch", "Previous release", "same time (verdict)",
                   "linfeat / baseline", "d-scaling", "peak RSS 2.80 GB"):  # fmt: skip
        assert needle in text
    assert "| small | 4096 | on | 300.0 | 400.0 | 0.75 |" in text
