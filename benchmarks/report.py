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
    if res.get("convergence"):
        out += ["", "Time to convergence (`small`, n = 40, 64 saved points):", ""]
        out += [
            "| grad_tol | batch | converged | steps mean | run s |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in res["convergence"]:
            out.append(
                f"| {r['grad_tol']:.0e} | {r['batch']} | {r['converged']:.1%} | {r['steps_mean']:.0f} | {r['run_s']:.2f} |"
            )
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


if __name__ == "__main__":
    print(render(json.load(open(sys.argv[1]))))
