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


# the machine record `render` prints in its header line
MACHINE = dict(
    cpu="cpu", cores=2, platform="linux", backend="cpu", devices=["cpu:0"],
    versions=dict(jax="0", diffrax="0", scipy="0", numpy="0", python="3"),
    load_avg_1_5_15=[1.0, 1.0, 1.0], peak_flops_measured=1e10, dram_bandwidth_measured=1e10,
)  # fmt: skip


def test_render_every_section():
    res = result()
    res.update(
        machine=MACHINE,
        started="now", mode="full",
        dscaling=[dict(d=1000, k=10, m=50, n=100, make_problem_s=0.01, reduce_s=0.001,
                       solve_s=0.01, compile_s=10.0, steps=60, status=0)],
    )  # fmt: skip
    text = report.render(json.loads(json.dumps(res)))
    for needle in ("natural / batch", "Previous release", "same time (verdict)",
                   "linfeat / baseline", "d-scaling", "peak RSS 2.80 GB"):  # fmt: skip
        assert needle in text
    assert "| small | 4096 | on | 300.0 | 400.0 | 0.75 |" in text


def speed_result(*, keys=(90.0, 100.0), grad=(10.8, 6.8), finite=True, billion_s=0.0084,
                 arrays_setup_s=51.2, lsoda=8.0, dop=0.27):  # fmt: skip
    """A synthetic run with #14's sections: setup, setup_billion, grad, from_arrays, baselines."""
    res = result()
    res["setup"] = [
        dict(basis=b, batch=4096, d=200, k=10, m=20, n=20, columns=c, setup_per_problem_ms=0.7,
             solve_s=40.0, steps_mean=170.0, converged=0.98, end_to_end_traj_per_s=t)
        for b, c, t in zip(("full", "small"), (200, 40), keys, strict=True)
    ]  # fmt: skip
    res["setup_billion"] = dict(
        d=10**9, k=10, m=20, n=20, basis="small", make_problem_s=0.0018, solve_s=billion_s - 0.0018,
        make_problem_compile_s=2.7, solve_compile_s=6.8, total_s=billion_s, steps=48, status=0,
    )  # fmt: skip
    res["grad"] = [
        dict(knob=f"knob {i}", batch=256, forward_s=1.0, value_and_grad_s=r, ratio=r,
             forward_compile_s=9.0, grad_compile_s=35.0, grad_finite=finite, value_match=0.0)
        for i, r in enumerate(grad)
    ]  # fmt: skip
    res["workloads"] = dict(
        from_arrays=dict(
            kind="from_arrays", b=1024, d=200, k=10, n=20, cond_M=10.0, ood="dense random SPD",
            T=0.0067, num_save=32, generate_s=14.0, problem_from_arrays_s=arrays_setup_s,
            stack_s=0.0, setup_s=arrays_setup_s,
        )
    )  # fmt: skip
    res["machine"] = dict(peak_flops_measured=9.5e10)
    rows = res["baselines"]["rows"]
    rows[0] = dict(rows[0], method="scipy LSODA, reduced state", traj_per_s=lsoda)
    rows.append(dict(rows[0], method="scipy DOP853, full state", traj_per_s=dop))
    return res


def speed_verdicts(res):
    lines = report.targets_speed(res).splitlines()[2:]
    return {line.split("|")[1].strip()[:16]: line.rsplit("|", 2)[1].strip() for line in lines}


def test_speed_targets_are_computed_from_the_run():
    v = speed_verdicts(speed_result())
    # keys to metrics 100 < 3000; grad 10.8x > 4x; d = 1e9 in 8.4 ms; from arrays: 1024 lanes in
    # 51.2 s of set-up plus 2.56 s of solve (400 traj/s) -> 19 traj/s; baselines: the no-metrics
    # batch row at b = 4096 (400 traj/s) is 50x LSODA (>= 20: met), 1481x DOP853 (met)
    assert v == {
        "`small`, b = 409": "missed",
        "problems from `p": "missed",
        "linfeat >= 200x ": "met",
        "linfeat >= 20x t": "met",
        "value + grad of ": "missed",
        "d = 1e9 `make_pr": "met",
        "achieved FLOP/s ": "not measured",
    }
    text = report.targets_speed(speed_result())
    assert "19 traj/s (batch)" in text and "50x against scipy LSODA" in text and "1481x" in text
    # each verdict flips with its number
    fast = speed_result(keys=(3000.0, 3500.0), grad=(3.9, 2.0), arrays_setup_s=0.1, lsoda=25.0)
    assert speed_verdicts(fast)["problems from `p"] == "missed"  # 400 traj/s solve < 1000
    fast["natural_vs_batch"][-1] = nvb("from_arrays", 1024, "batch", True, 2000.0)
    v = speed_verdicts(fast)
    assert v["`small`, b = 409"] == "met" and v["value + grad of "] == "met"
    assert v["problems from `p"] == "met"  # 1 / (0.1 ms + 0.5 ms) = 1674 traj/s
    assert v["linfeat >= 20x t"] == "missed"  # 400 / 25 = 16x
    assert (
        speed_verdicts(speed_result(grad=(2.0, 3.0), finite=False))["value + grad of "] == "missed"
    )
    assert speed_verdicts(speed_result(billion_s=1.5))["d = 1e9 `make_pr"] == "missed"


def test_render_speed_sections():
    res = speed_result()
    res.update(
        machine=MACHINE,
        started="now", mode="full",
    )  # fmt: skip
    text = report.render(json.loads(json.dumps(res)))
    assert "| small | 4096 | 200 | 10 | 20 | 20 | 40 | 0.70 | 40.00 | 170 | 98.0% | 100.0 |" in text
    assert "`make_problem` 1.8 ms + `fine_tune` 6.6 ms" in text
    assert "| knob 0 | 256 | 1.000 | 10.800 | 10.8 |" in text


def test_flops_row_and_table_are_computed_from_the_run():
    # 60,000 flop per lane-step at 2e5 bytes (0.3 flop/byte); bare step 10 us -> 6 GFLOP/s;
    # the batch row at b = 4096 without metrics: 4096 x 100 steps x 6e4 flop / 10.24 s
    # = 2.4 GFLOP/s useful; with metrics add 65 x 1e5 flop per lane.
    res = speed_result()
    res["machine"] = dict(MACHINE, peak_flops_measured=1e11, dram_bandwidth_measured=3e10)
    res["flops"] = dict(
        chunk=128, flop_per_lane_step=6e4, bytes_per_lane_step=2e5, flop_per_metrics_eval=1e5,
        bytes_per_metrics_eval=1e5, bare_step_s=1e-5, bare_step_flops=6e9, note="n",
        solves=[dict(batch=4096, path="batch", with_metrics=False, useful_flops=2.4e9),
                dict(batch=4096, path="batch", with_metrics=True, useful_flops=3.0e9)],
    )  # fmt: skip
    row = next(ln for ln in report.targets_speed(res).splitlines() if "achieved FLOP/s" in ln)
    assert row.endswith("| reported |")
    assert "bandwidth ceiling is 9.0 GFLOP/s" in row  # 0.3 flop/byte x 30 GB/s
    assert "bare Rodas5P step 6.00 GFLOP/s (6.0%)" in row
    assert "best solve 3.00 GFLOP/s useful (3.0%; batch, b 4096, metrics on)" in row
    text = report.render(json.loads(json.dumps(dict(res, started="now", mode="full"))))
    assert "| batch | 4096 | off | 2.40 | 2.4% |" in text
    assert "60,000 flop and 200 kB accessed per lane-step" in text


def test_accelerator_run_uses_the_accelerator_roofline():
    # a GPU run (`--accelerator`): the FLOP row and table divide by the device's measured f64
    # matmul rate and use its copy bandwidth, not the host CPU's
    res = speed_result()
    gpu = dict(device_kind="NVIDIA H200", count=1, platform="gpu", peak_flops_f64=5e13,
               bandwidth=4e12)  # fmt: skip
    res["machine"] = dict(MACHINE, peak_flops_measured=1e11, dram_bandwidth_measured=3e10,
                          accelerator=gpu)  # fmt: skip
    res["flops"] = dict(
        chunk=4096, flop_per_lane_step=6e4, bytes_per_lane_step=2e5, flop_per_metrics_eval=1e5,
        bytes_per_metrics_eval=1e5, bare_step_s=1e-8, bare_step_flops=6e12, note="n",
        solves=[dict(batch=65536, path="batch", with_metrics=True, useful_flops=5e11)],
    )  # fmt: skip
    row = next(ln for ln in report.targets_speed(res).splitlines() if "achieved FLOP/s" in ln)
    assert "roofline 50000.0 GFLOP/s (NVIDIA H200 f64 matmul)" in row
    assert "bandwidth ceiling is 1200.0 GFLOP/s" in row  # 0.3 flop/byte x 4 TB/s
    assert "bare Rodas5P step 6000.00 GFLOP/s (12.0%)" in row
    text = report.render(json.loads(json.dumps(dict(res, started="now", mode="accelerator"))))
    assert "| batch | 65536 | on | 500.00 | 1.0% |" in text
    assert "Accelerator: 1 x NVIDIA H200 (gpu), measured 50.0 TFLOP/s" in text


def test_accelerator_mode_configuration():
    from benchmarks import runner, suite

    acc = suite.CONFIGS["accelerator"]
    # every section it orders exists and none of them is one the runner skips for it
    assert set(acc.order) <= set(suite.SECTIONS)
    assert not set(acc.order) & set(runner.ACCELERATOR_SKIP)
    assert set(acc.order) | set(runner.ACCELERATOR_SKIP) == set(suite.SECTIONS)
    # the #14 target row needs a set-up row at b = 4096; its smoke test runs the same order
    assert 4096 in acc.setup_batches and acc.flops_chunk == 4096
    assert suite.CONFIGS["tiny-accelerator"].order == acc.order
    assert suite.CONFIGS["tiny-accelerator"].name == "tiny"
