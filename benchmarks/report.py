# ruff: noqa: E501
"""Renders a results JSON of the runner as the Markdown tables of BENCHMARKS.md.

Usage: `python -m benchmarks.report benchmarks/results.json`.
"""

from __future__ import annotations

import json
import sys


def render(res: dict) -> str:
    m = res["machine"]
    out = [
        f"Run: {res['started']} to {res.get('finished', '?')} ({'--quick' if res['quick'] else 'full'}). "
        f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('mem_total_gb', 0):.0f} GB, {m['platform']}; "
        f"JAX {m['versions']['jax']} ({m['backend']}, devices {len(m['devices'])}), "
        f"diffrax {m['versions']['diffrax']}, optax {m['versions']['optax']}, scipy {m['versions']['scipy']}, "
        f"numpy {m['versions']['numpy']}, Python {m['versions']['python']}. "
        f"Load average at start {m['load_avg_1_5_15'][0]:.1f}, at end {res.get('load_avg_end', [float('nan')])[0]:.1f} "
        f"(shared machine). Measured roofline: {m['peak_flops_measured'] / 1e9:.1f} GFLOP/s "
        f"(f64 matmul, both cores), {m['dram_bandwidth_measured'] / 1e9:.1f} GB/s (DRAM triad).",
        "",
    ]
    if "compile" in res:
        c = res["compile"]
        out += [
            f"Compile (new shapes, `small`, b = 64): first call {c['first_call_s']:.2f} s, second "
            f"{c['second_call_s']:.2f} s, so {c['compile_s']:.2f} s of compilation; second call "
            f"recompiled: {c['recompiled']}.",
            "",
        ]
    if "protocol" in res:
        pr = res["protocol"]
        out += [
            f"Protocol: gradient test {pr['grad_tol']:.0e}; linfeat ({pr['solver']}) at rtol "
            f"{pr['tol']['rtol']:.0e} / atol {pr['tol']['atol']:.0e}, baselines at rtol "
            f"{pr['baseline_tol']['rtol']:.0e} / atol {pr['baseline_tol']['atol']:.0e} (each the "
            f"loosest that meets {pr['acc']:.0e}); baselines integrate over linfeat's time span "
            "on each instance.",
            "",
        ]
    nan = float("nan")
    out += [
        "| workload | batch | method | run s | setup s | integrate s | output s | compile s | traj/s | traj/s integrate | steps mean / max | converged | µs per lane-step | GFLOP/s | GB/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res.get("throughput", []):
        smax = f" / {r['steps_max']}" if "steps_max" in r else ""
        conv = f"{r['converged']:.1%}" if "converged" in r else ""
        out.append(
            f"| {r['workload']} | {r['batch']} | {r['method']} | {r['run_s']:.3f} | "
            f"{r.get('setup_s', nan):.3f} | {r.get('integrate_s', nan):.3f} | "
            f"{r.get('output_s', nan):.3f} | {r['compile_s']:.2f} | {r['traj_per_s']:.1f} | "
            f"{r.get('traj_per_s_integrate', nan):.0f} | "
            f"{r.get('steps_mean', nan):.0f}{smax} | {conv} | {r.get('us_per_lane_step', nan):.1f} | "
            f"{r.get('gflops', nan):.2f} | {r.get('gbytes', nan):.2f} |"
        )
        out[-1] = out[-1].replace("| nan ", "| – ")  # not measured for this method
    out += [
        "",
        "Accuracy (final w = B^T v vs the tight reference at the method's own stop time, relative; pass < 1e-8):",
        "",
    ]
    out += ["| workload | method | max rel err | pass |", "|---|---|---:|---|"]
    worst = {}
    for c in res.get("accuracy", []):
        key = (c["workload"], c["method"])
        worst[key] = max(worst.get(key, 0.0), c["rel_err_w"])
    for (wl, mth), e in worst.items():
        out.append(f"| {wl} | {mth} | {e:.1e} | {'yes' if e < 1e-8 else 'NO'} |")
    if "gd" in res:
        g = res["gd"]
        out += ["", "(c) optax gradient descent (`small`, one instance, `lax.scan`):", ""]
        out += ["| eta | steps | rel err of w | run s |", "|---:|---:|---:|---:|"]
        for r in g["rows"]:
            out.append(
                f"| {r['eta']:.0e} | {r['steps']} | {r['rel_err_w']:.2e} | {r['run_s']:.3f} |"
            )
        out += [
            "",
            f"Error is first order in eta; 1e-8 needs eta ~ {g['eta_needed']:.1e}, about "
            f"{g['steps_needed']:.1e} steps, ~{g['est_s_per_traj']:.0f} s per trajectory "
            f"(extrapolated from the measured cost per step).",
        ]
    if res.get("dscaling"):
        out += ["", "d-scaling (k = 10, m = 50, n = 100, one trajectory, 64 saves):", ""]
        out += [
            "| d | setup s | solve s | steps | status | diffrax full s | rel err linfeat | rel err diffrax full |"
        ]
        out += ["|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["dscaling"]:
            out.append(
                f"| {r['d']:.0e} | {r['setup_s']:.3f} | {r['solve_s']:.4f} | {r['steps']} | {r['status']} | "
                f"{r.get('diffrax_full_s', float('nan')):.3f} | {r.get('rel_err_linfeat', float('nan')):.1e} | "
                f"{r.get('rel_err_diffrax_full', float('nan')):.1e} |"
            )
            out[-1] = out[-1].replace("| nan ", "| – ")  # measured at d = 1e4 only
    if res.get("memory"):
        mm = res["memory"]
        out += ["", f"Bounded-memory sweep (fresh process): {json.dumps(mm)}"]
    if res.get("section_s"):
        out += [
            "",
            "Section wall times (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in res["section_s"].items()),
        ]
    return "\n".join(out) + "\n"


def _row(res, workload, batch, method):
    for r in res.get("throughput", []):
        if r["workload"].startswith(workload) and r["batch"] == batch and r["method"] == method:
            return r
    return None


def targets(res: dict) -> str:
    """The issue's targets with the measured numbers of this run and a verdict for each."""
    out = ["| target | measured in this run | verdict |", "|---|---|---|"]
    one = _row(res, "small d=200", 4096, "linfeat rodas5p")
    two = next((r for r in res.get("throughput", []) if r["workload"].startswith("small d=200")
                and r["batch"] == 4096 and r["method"].endswith("devices")), None)  # fmt: skip
    scipy = next((r for r in res.get("throughput", []) if r["workload"].startswith("small d=200")
                  and r["method"].startswith("(a)")), None)  # fmt: skip
    if one:
        best = max(x["traj_per_s"] for x in (one, two) if x)
        best_int = max(x["traj_per_s_integrate"] for x in (one, two) if x)
        txt = (f"end to end {one['traj_per_s']:.0f} traj/s (1 device)"
               + (f", {two['traj_per_s']:.0f} ({two['method'].split(', ')[-1]})" if two else "")
               + f"; integration alone {one['traj_per_s_integrate']:.0f}"
               + (f" / {two['traj_per_s_integrate']:.0f}" if two else "")
               + f"; {one['steps_mean']:.0f} steps per trajectory")  # fmt: skip
        verdict = (
            "met"
            if best >= 2000
            else f"missed ({2000 / best:.1f}x short end to end, {2000 / best_int:.1f}x for the integration)"
        )
        out.append(f"| `small`, batch 4096: >= 2,000 FT traj/s | {txt} | {verdict} |")
    if one and scipy:
        ratio = one["traj_per_s"] / scipy["traj_per_s"]
        out.append(
            f"| `small`: >= 50x baseline (a) | {one['traj_per_s']:.0f} vs scipy DOP853 "
            f"{scipy['traj_per_s']:.3f} traj/s: {ratio:.0f}x (1 device, end to end) | "
            f"{'met' if ratio >= 50 else 'missed'} |"
        )
    ds = {r["d"]: r for r in res.get("dscaling", [])}
    if 10_000 in ds and "diffrax_full_s" in ds[10_000]:
        r = ds[10_000]
        solve, total = (
            r["diffrax_full_s"] / r["solve_s"],
            r["diffrax_full_s"] / (r["solve_s"] + r["setup_s"]),
        )
        out.append(
            f"| d = 1e4: >= 100x faster per trajectory than baseline (b) | diffrax full state "
            f"{r['diffrax_full_s']:.2f} s vs linfeat solve {r['solve_s']:.4f} s: {solve:.0f}x; "
            f"with linfeat's set-up ({r['setup_s']:.3f} s): {total:.0f}x | "
            f"{'met' if solve >= 100 else 'missed'} for the solve"
            f"{'' if total >= 100 else ', missed with the set-up'} |"
        )
    if 1000 in ds and 1_000_000 in ds:
        a, b = ds[1000], ds[1_000_000]
        ratio = b["solve_s"] / a["solve_s"]
        setups = " / ".join(f"{ds[d]['setup_s']:.3g}" for d in sorted(ds))
        out.append(
            f"| d = 1e6 within 1.5x of d = 1e3 (set-up excluded) | solve {a['solve_s']:.4f} s "
            f"vs {b['solve_s']:.4f} s: {ratio:.2f}x; set-up {setups} s for d = "
            f"{', '.join(f'{d:.0e}' for d in sorted(ds))} | {'met' if ratio <= 1.5 else 'missed'} |"
        )
    mm = res.get("memory")
    if mm and "peak_rss_gb" in mm:
        out.append(
            f"| {mm['n']:,} `small` instances, < 4 GB peak | peak RSS {mm['peak_rss_gb']:.2f} GB, "
            f"{mm['wall_s']:.0f} s, chunks of {mm['batch_size']}, {mm['devices']} device(s), "
            f"{mm['converged']:.1%} converged | {'met' if mm['peak_rss_gb'] < 4 else 'missed'} |"
        )
    if "compile" in res:
        c = res["compile"]
        ok = (not c["recompiled"]) and c["compile_s"] < 5
        out.append(
            f"| no recompilation on equal shapes; FT compile < 5 s | recompiled: {c['recompiled']}; "
            f"compile {c['compile_s']:.2f} s | {'met' if ok else 'missed'} |"
        )
    acc = res.get("accuracy", [])
    if acc:
        worst = max(c["rel_err_w"] for c in acc)
        out.append(
            f"| every method within 1e-8 of the reference | worst {worst:.1e} over {len(acc)} "
            f"checks | {'met' if worst < 1e-8 else 'missed'} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    res = json.load(open(sys.argv[1]))
    print(render(res))
    print(targets(res))
