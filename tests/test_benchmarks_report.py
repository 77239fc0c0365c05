"""The benchmark report's verdicts are computed from the measurements, not written by hand."""

from benchmarks import report


def result(traj_per_s, scipy_traj_per_s, peak_gb):
    row = dict(
        workload="small d=200 k=10 m=20 n=20",
        batch=4096,
        method="linfeat rodas5p",
        traj_per_s=traj_per_s,
        traj_per_s_integrate=2 * traj_per_s,
        steps_mean=112.0,
    )
    scipy = dict(
        workload="small d=200 k=10 m=20 n=20",
        batch=4,
        traj_per_s=scipy_traj_per_s,
        method="(a) scipy DOP853 full state, loop",
    )
    return dict(
        throughput=[row, scipy],
        dscaling=[
            dict(d=1000, setup_s=0.01, solve_s=0.004),
            dict(d=10_000, setup_s=0.09, solve_s=0.004, diffrax_full_s=3.6),
            dict(d=1_000_000, setup_s=9.0, solve_s=0.007),
        ],
        memory=dict(
            n=100_000, peak_rss_gb=peak_gb, wall_s=200.0, batch_size=4096, devices=2, converged=0.97
        ),
        compile=dict(recompiled=False, compile_s=3.7),
        accuracy=[dict(rel_err_w=3e-10)],
    )


def test_verdicts_follow_the_numbers():
    lines = report.targets(result(400.0, 0.3, 2.8)).splitlines()
    by = {line.split("|")[1].strip()[:12]: line for line in lines[2:]}
    assert by["`small`, bat"].endswith("missed (5.0x short end to end, 2.5x for the integration) |")
    assert "1333x" in by["`small`: >= "] and by["`small`: >= "].endswith("| met |")
    assert "900x" in by["d = 1e4: >= "] and "missed with the set-up" in by["d = 1e4: >= "]
    assert "1.75x" in by["d = 1e6 with"] and by["d = 1e6 with"].endswith("| missed |")
    assert by["100,000 `sma"].endswith("| met |")
    assert by["every method"].endswith("| met |")
    lines = report.targets(result(2500.0, 100.0, 5.0)).splitlines()
    by = {line.split("|")[1].strip()[:12]: line for line in lines[2:]}
    assert by["`small`, bat"].endswith("| met |")
    assert by["`small`: >= "].endswith("| missed |")  # 25x < 50x
    assert by["100,000 `sma"].endswith("| missed |")
