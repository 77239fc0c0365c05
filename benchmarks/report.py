# ruff: noqa: E501
"""Renders a results JSON of the runner as Markdown tables, with verdicts computed from it.

Usage: `python -m benchmarks.report [benchmarks/results.json]`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import median

ACC = 1e-8
NATURAL_MIN = 2 / 3  # natural path >= 2/3 of fine_tune_batch's throughput on `small`
MEMORY_MAX_GB = 4.0
# previous-release setting -> the current fine_tune_batch row it is compared with
PREVIOUS_PAIRS = {
    "bench": (False, "both at its benchmark setting (no metrics, rtol 1e-8, atol 1e-10)"),
    "defaults": (True, "library defaults vs library defaults (metrics on; the defaults differ)"),
}


def _f(x, fmt=".2f"):
    return "–" if x is None else format(x, fmt)


def _table(header: str, align: str, rows) -> list[str]:
    """A Markdown table: `header` ("a | b"), `align` one letter per column (l/r), the rows, and
    the blank line that ends it."""
    sep = "|" + "|".join("---:" if c == "r" else "---" for c in align) + "|"
    return [f"| {header} |", sep, *rows, ""]


def roofline(m: dict) -> tuple[float, float | None, str]:
    """(peak FLOP/s, bandwidth, label) of the device the solves ran on: the accelerator's when
    the run had one (`machine.accelerator`), else the host CPU's."""
    a = m.get("accelerator")
    if a:
        return a["peak_flops_f64"], a.get("bandwidth"), f"{a['device_kind']} f64 matmul"
    return m["peak_flops_measured"], m.get("dram_bandwidth_measured"), "f64 matmul, all cores"


def _nvb(res, workload, batch, path, with_metrics):
    for r in res.get("natural_vs_batch", []):
        if (r["workload"], r["batch"], r["path"], r["with_metrics"]) == (
            workload, batch, path, with_metrics,
        ):  # fmt: skip
            return r
    return None


def natural_ratios(res) -> list[dict]:
    """natural / batch throughput for every (workload, batch, metrics) measured."""
    out = []
    for r in res.get("natural_vs_batch", []):
        if r["path"] != "natural":
            continue
        b = _nvb(res, r["workload"], r["batch"], "batch", r["with_metrics"])
        if b is not None:
            out.append(dict(workload=r["workload"], batch=r["batch"],
                            with_metrics=r["with_metrics"], natural=r["traj_per_s"],
                            batch_traj_per_s=b["traj_per_s"],
                            ratio=r["traj_per_s"] / b["traj_per_s"]))  # fmt: skip
    return out


def previous_pairs(res) -> list[dict]:
    """(previous release, current fine_tune_batch) throughput at the settings compared.

    "bench" rows come in interleaved rounds (previous release, then this release at once, on
    the same problems): `ratio` is the median over rounds of the paired ratios, `old` and
    `new` the medians of the two throughputs, `ratios` every round's ratio. "defaults" pairs
    the previous release with this release's default-settings row of `natural_vs_batch`.
    A result without rounds (older runs) is one round.
    """
    prev = res.get("previous_release", {})
    groups: dict = {}
    for run in prev.get("runs", []):
        if "rows" not in run:
            continue
        for row in run["rows"]:
            key = (run["workload"], row["batch"], run["setting"])
            groups.setdefault(key, []).append((run.get("round", 0), row, run))
    out = []
    for (workload, batch, setting), items in groups.items():
        with_metrics, what = PREVIOUS_PAIRS[setting]
        olds, news, ratios = [], [], []
        for rnd, row, _ in items:
            if setting == "bench":  # this release at the same setting, same round
                new = next((r for r in prev.get("current_bench", [])
                            if (r["workload"], r["batch"], r.get("round", 0))
                            == (workload, batch, rnd)), None)  # fmt: skip
            else:
                new = _nvb(res, workload, batch, "batch", with_metrics)
            olds.append(row["traj_per_s"])
            if new is not None:
                news.append(new)
                ratios.append(new["traj_per_s"] / row["traj_per_s"])
        row, run = items[0][1], items[0][2]
        out.append(dict(workload=workload, batch=batch, setting=setting, what=what,
                        rounds=len(items), old=median(olds), old_steps=row["steps_mean"],
                        old_compile_s=median([it[1]["compile_s"] for it in items]),
                        old_converged=row["converged"], old_rtol=run["rtol"],
                        new=median([n["traj_per_s"] for n in news]) if news else None,
                        new_steps=news[0]["steps_mean"] if news else None,
                        ratio=median(ratios) if ratios else None, ratios=ratios))  # fmt: skip
    return out


def accuracy_checks(res) -> list[dict]:
    """(workload, method, error judged, ok) for every method, linfeat's and the baselines'."""
    out = []
    for c in res.get("accuracy", []):
        out.append(dict(workload=c["workload"], method=c["method"],
                        err=c[f"max_{c['judged_on']}"], ok=c["ok"]))  # fmt: skip
    base = res.get("baselines", {})
    for r in base.get("rows", []):
        out.append(dict(workload=base.get("workload", "small"), method=r["method"],
                        err=r.get("max_rel_err_same_t", float("inf")), ok=r["ok"]))  # fmt: skip
    return out


def _linfeat_batch_reference(res):
    """The fine_tune_batch row the baselines are compared with: `small`, no metrics (the
    baselines compute none), largest batch measured."""
    rows = [r for r in res.get("natural_vs_batch", []) if r["workload"] == "small"
            and r["path"] == "batch" and not r["with_metrics"]]  # fmt: skip
    if not rows:
        rows = [r for r in res.get("natural_vs_batch", [])
                if r["workload"] == "small" and r["path"] == "batch"]  # fmt: skip
    return max(rows, key=lambda r: r["batch"]) if rows else None


def render(res: dict) -> str:
    m = res["machine"]
    v = m["versions"]
    mode = res.get("mode", "quick" if res.get("quick") else "full")
    out = [
        f"Run: {res['started']} to {res.get('finished', '?')} ({mode}), git {m.get('git') or '?'}. "
        f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('mem_total_gb', 0):.0f} GB, {m['platform']}; "
        f"JAX {v['jax']} ({m['backend']}, devices {len(m['devices'])}), "
        f"diffrax {v['diffrax']}, scipy {v['scipy']}, numpy {v['numpy']}, Python {v['python']}. "
        f"Load average at start {m['load_avg_1_5_15'][0]:.1f}, at end {res.get('load_avg_end', [float('nan')])[0]:.1f} "
        f"(shared machine). Measured roofline: {m['peak_flops_measured'] / 1e9:.1f} GFLOP/s "
        f"(f64 matmul), {m['dram_bandwidth_measured'] / 1e9:.1f} GB/s (DRAM triad).",
        "",
    ]
    a = m.get("accelerator")
    if a:
        out[0] += (f" Accelerator: {a['count']} x {a['device_kind']} ({a['platform']}), measured "
                   f"{a['peak_flops_f64'] / 1e12:.1f} TFLOP/s (f64 matmul, 8192^3) and "
                   f"{a['bandwidth'] / 1e9:.0f} GB/s (copy, read + write); the solves ran there.")  # fmt: skip
    pr = res.get("protocol")
    if pr:
        d = pr["defaults"]
        out += [
            f"Protocol: library defaults rtol {d['rtol']:.0e}, atol {d['atol']:.0e}, scale-aware "
            f"grad_tol ({d['grad_scale']:.0e} x lambda_max (1 + |Y|)(1 + |v0|)); tight reference "
            f"`lf.fine_tune` at rtol {pr['reference']['rtol']:.0e} / atol {pr['reference']['atol']:.0e}; "
            f"accuracy target {pr['acc']:.0e} (relative, final w = B^T v).",
            "",
        ]
    if "compile" in res:
        c = res["compile"]
        out += [
            f"Compile (new shapes: d {c['shape']['d']}, n {c['shape']['n']}; batch {c['batch']}):",
            "",
        ]
        out += ["| function | first call s | second call s | compile s | JAX-reported compile s | jit cache before / after / after a 3rd call | recompiled |",
                "|---|---:|---:|---:|---:|---|---|"]  # fmt: skip
        for name in ("fine_tune", "fine_tune_batch"):
            r = c.get(name)
            if r:
                out.append(f"| `lf.{name}` | {r['first_call_s']:.2f} | {r['run_s']:.3f} | {r['compile_s']:.2f} | "
                           f"{r['compile_events_s']:.2f} | {r['cache_before']} / {r['cache_after']} / "
                           f"{r['cache_after_third']} | {r['recompiled']} |")  # fmt: skip
        out.append("")
    if res.get("workloads"):
        out += ["Workloads (problem set-up, excluded from the solve times):", ""]
        for name, w in res["workloads"].items():
            if w["kind"] == "small":
                out.append(f"- `{name}`: d {w['d']}, k {w['k']}, m {w['m']}, n {w['n']}, feature error "
                           f"{w['feature_error']}; {w['b']} problems by {w['build']} in {w['setup_s']:.2f} s "
                           f"(first call {w['setup_first_call_s']:.2f} s).")  # fmt: skip
            else:
                out.append(f"- `{name}`: d {w['d']}, k {w['k']}, n {w['n']}, X = Gaussian x random matrix "
                           f"(condition {w['cond_M']:.0f}), {w['ood']} OOD second moment; saves at "
                           f"linspace(0, T, {w['num_save']}), T = {w['T']:.3g}; {w['b']} problems: arrays "
                           f"{w['generate_s']:.2f} s, `lf.problem_from_arrays` {w['problem_from_arrays_s']:.2f} s, "
                           f"stacking {w['stack_s']:.2f} s"
                           + (f"; `lf.problems_from_arrays` on the stacked arrays {w['problems_from_arrays_s']:.2f} s"
                              if "problems_from_arrays_s" in w else "") + ".")  # fmt: skip
        out.append("")
    if res.get("natural_vs_batch"):
        out += [
            "Natural path `jax.jit(jax.vmap(lf.fine_tune))` vs `lf.fine_tune_batch`, library defaults, end to end (set-up of the problems excluded):",
            "",
        ]
        out += ["| workload | batch | metrics | path | run s | compile s (JAX) | traj/s | steps mean / max | converged | reached t_max | timing |",
                "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in res["natural_vs_batch"]:
            out.append(f"| {r['workload']} | {r['batch']} | {'on' if r['with_metrics'] else 'off'} | {r['path']} | "
                       f"{r['run_s']:.3f} | {r['compile_s']:.1f} ({r['compile_events_s']:.1f}) | {r['traj_per_s']:.1f} | "
                       f"{r['steps_mean']:.0f} / {r['steps_max']} | {r['converged']:.1%} | {r['max_time']:.1%} | {r.get('timing', '')} |")  # fmt: skip
        out += ["", "| workload | batch | metrics | natural traj/s | batch traj/s | natural / batch |",
                "|---|---:|---|---:|---:|---:|"]  # fmt: skip
        for q in natural_ratios(res):
            out.append(f"| {q['workload']} | {q['batch']} | {'on' if q['with_metrics'] else 'off'} | "
                       f"{q['natural']:.1f} | {q['batch_traj_per_s']:.1f} | {q['ratio']:.2f} |")  # fmt: skip
        out.append("")
    prev = res.get("previous_release")
    if prev:
        out += [
            f"Previous release (git {prev['commit']}, lane-pool Rodas5P; same problems, fresh process) vs this one (`fine_tune_batch`); "
            f"the benchmark-setting comparison runs interleaved rounds (previous, then current) and reports the median paired ratio:",
            "",
        ]
        out += ["| workload | batch | comparison | rounds | previous traj/s | steps | compile s | converged | current traj/s | steps | current / previous (median; per round) |",
                "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for q in previous_pairs(res):
            per = ", ".join(f"{x:.2f}" for x in q["ratios"])
            out.append(f"| {q['workload']} | {q['batch']} | {q['what']} | {q['rounds']} | {q['old']:.1f} | "
                       f"{q['old_steps']:.0f} | {q['old_compile_s']:.1f} | {q['old_converged']:.1%} | "
                       f"{_f(q['new'], '.1f')} | {_f(q['new_steps'], '.0f')} | {_f(q['ratio'])}"
                       f"{f' ({per})' if len(q['ratios']) > 1 else ''} |")  # fmt: skip
        for run in prev.get("runs", []):
            if "error" in run:
                out.append(f"\nPrevious release, {run.get('workload', '?')} {run.get('setting', '?')}: "
                           f"failed: {run['error'][-300:]}")  # fmt: skip
        out.append("")
    if res.get("accuracy"):
        out += ["Accuracy: max over the first lanes of |w - w_ref| / |w_ref|, w = B^T v at the stop. "
                "Verdict column: reference integrated to the method's own stop time (integration error); "
                "also shown: reference with the same stopping rule (the spread of the stop point):", ""]  # fmt: skip
        out += _table("workload | method | lanes | grad_tol | same time (verdict) | same stop rule | pass", "llrlrrl",
                      [f"| {c['workload']} | {c['method']} | {c['lanes']} | {c['grad_tol']} | "
                       f"{c['max_rel_err_same_t']:.1e} | {c['max_rel_err']:.1e} | {'yes' if c['ok'] else 'NO'} |"
                       for c in res["accuracy"]])  # fmt: skip
    base = res.get("baselines")
    if base:
        ref = _linfeat_batch_reference(res)
        out += [f"Baselines on the first {base['lanes']} `{base['workload']}` lanes, horizon {base['horizon']}, "
                f"stop: {base.get('stop', '?')}; each at the loosest rtol of {res.get('protocol', {}).get('baseline_ladder', '')} "
                f"(atol = rtol / 100) that reaches {ACC:.0e}; SciPy with {base.get('scipy_blas_threads', '?')} BLAS thread; "
                f"analytic Jacobian checked against finite differences: {base['jacobian_check_rel']:.0e}. "
                + (f"linfeat: `fine_tune_batch`, `{ref['workload']}`, b = {ref['batch']}, metrics "
                   f"{'on' if ref['with_metrics'] else 'off'}: {ref['traj_per_s']:.1f} traj/s." if ref else ""),
                ""]  # fmt: skip
        out += ["| method | state | Jacobian | rtol | run s | traj/s | linfeat / baseline | max rel err | pass |",
                "|---|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in base["rows"]:
            if "error" in r:
                out.append(
                    f"| {r['method']} | {r['state']} | {r['jacobian']} | – | – | – | – | – | NO: {r['error'][:120]} |"
                )
                continue
            ratio = ref["traj_per_s"] / r["traj_per_s"] if ref else None
            out.append(f"| {r['method']} | {r['state']} | {r['jacobian']} | {r['rtol']:.0e} | {r['run_s']:.3f} | "
                       f"{r['traj_per_s']:.2f} | {_f(ratio, '.0f')} | {r['max_rel_err_same_t']:.1e} | {'yes' if r['ok'] else 'NO'} |")  # fmt: skip
        out.append("")
    if res.get("dscaling"):
        out += ["d-scaling (`lf.make_problem` + `lf.fine_tune`, one problem, second calls):", ""]
        out += _table("d | k | m | n | make_problem s | reduce s | fine_tune s | compile s | steps | status", "r" * 10,
                      [f"| {r['d']:.0e} | {r['k']} | {r['m']} | {r['n']} | {r['make_problem_s']:.3f} | {r['reduce_s']:.4f} | "
                       f"{r['solve_s']:.4f} | {r['compile_s']:.1f} | {r['steps']} | {r['status']} |"
                       for r in res["dscaling"]])  # fmt: skip
    methods = res.get("methods") or res.get("methods_arch")  # "methods_arch": older results files
    if methods:
        out += [
            "The method zoo (`linfeat.methods`, jit(vmap), default tolerances, second calls):",
            "",
        ]
        out += _table("method | batch | d | k | m | run s | traj/s | compile s | steps mean / max | converged", "lrrrrrrrrr",
                      [f"| {r['method']} | {r['batch']} | {r['d']} | {r['k']} | {r['m']} | {r['run_s']:.3f} | "
                       f"{r['traj_per_s']:.1f} | {r['compile_s']:.1f} | {r['steps_mean']:.0f} / {r['steps_max']} | "
                       f"{r['converged']:.1%} |" for r in methods])  # fmt: skip
    if res.get("setup"):
        solve_timing = " / ".join(sorted({r.get("solve_timing", "first call minus JAX-reported compile")
                                          for r in res["setup"]}))  # fmt: skip
        out += ["From keys to per-lane metrics (`jax.jit(jax.vmap(lf.make_problem))`, then `fine_tune_batch` "
                f"with metrics; set-up: second call; solve: {solve_timing}):", ""]  # fmt: skip
        out += _table("basis | batch | d | k | m | n | columns | set-up ms / problem | solve s | steps mean | converged | end to end traj/s", "lrrrrrrrrrrr",
                      [f"| {r['basis']} | {r['batch']} | {r['d']} | {r['k']} | {r['m']} | {r['n']} | {r['columns']} | "
                       f"{r['setup_per_problem_ms']:.2f} | {r['solve_s']:.2f} | {r['steps_mean']:.0f} | {r['converged']:.1%} | "
                       f"{r['end_to_end_traj_per_s']:.1f} |" for r in res["setup"]])  # fmt: skip
    sb = res.get("setup_billion")
    if sb:
        out += [f"d = {sb['d']:.0e} (`basis=\"{sb['basis']}\"`, k {sb['k']}, m {sb['m']}): `make_problem` "
                f"{sb['make_problem_s'] * 1e3:.1f} ms + `fine_tune` {sb['solve_s'] * 1e3:.1f} ms (second calls; "
                f"compile {sb['make_problem_compile_s']:.1f} s + {sb['solve_compile_s']:.1f} s), {sb['steps']} steps, "
                f"status {sb['status']}.", ""]  # fmt: skip
    if res.get("grad"):
        out += [
            "Value + `jax.grad` of a batch-mean OOD error against the value alone (second calls):",
            "",
        ]
        out += _table("knob | batch | forward s | value + grad s | ratio | compile s (forward / grad) | finite | value match", "lrrrrrlr",
                      [f"| {r['knob']} | {r['batch']} | {r['forward_s']:.3f} | {r['value_and_grad_s']:.3f} | "
                       f"{r['ratio']:.1f} | {r['forward_compile_s']:.1f} / {r['grad_compile_s']:.1f} | "
                       f"{'yes' if r['grad_finite'] else 'NO'} | {r['value_match']:.1e} |" for r in res["grad"]])  # fmt: skip
    fl = res.get("flops")
    if fl:
        m = res.get("machine", {})
        out += [f"FLOP accounting (XLA cost analysis of one vmapped Rodas5P step of FT on a chunk of "
                f"{fl['chunk']} `small` lanes): {fl['flop_per_lane_step']:,.0f} flop and "
                f"{fl['bytes_per_lane_step'] / 1e3:.0f} kB accessed per lane-step (arithmetic intensity "
                f"{fl['flop_per_lane_step'] / fl['bytes_per_lane_step']:.2f} flop/byte); the bare step ran "
                f"{fl['bare_step_s'] * 1e6:.2f} us per lane-step, {fl['bare_step_flops'] / 1e9:.2f} GFLOP/s; "
                f"metrics >= {fl['flop_per_metrics_eval']:,.0f} flop per evaluation ({fl['note']}).", ""]  # fmt: skip
        if fl.get("solves") and "peak_flops_measured" in m:
            peak = roofline(m)[0]
            out += _table("solve (small) | batch | metrics | useful GFLOP/s | share of the measured peak", "lrlrr",
                          [f"| {r['path']} | {r['batch']} | {'on' if r['with_metrics'] else 'off'} | "
                           f"{r['useful_flops'] / 1e9:.2f} | {r['useful_flops'] / peak:.1%} |" for r in fl["solves"]])  # fmt: skip
    mm = res.get("memory")
    if mm:
        if "peak_rss_gb" in mm:
            out.append(f"Memory: `lf.sweep` of {mm['n']:,} `small` instances (outputs=\"metrics\", metrics "
                       f"{'on' if mm.get('with_metrics') else 'off'}, chunks of {mm['batch_size']}, {mm['devices']} "
                       f"device(s)) in a fresh process: peak RSS {mm['peak_rss_gb']:.2f} GB, {mm['wall_s']:.0f} s "
                       f"({mm['n'] / mm['wall_s']:.0f} traj/s incl. building and compiling), {mm['converged']:.1%} converged.")  # fmt: skip
        else:
            out.append(f"Memory: {json.dumps(mm)[:400]}")
        out.append("")
    if res.get("section_s"):
        out.append(
            "Section wall times (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in res["section_s"].items())
        )
    return "\n".join(out) + "\n"


def targets(res: dict) -> str:
    """The targets with the measured numbers of this run and a verdict for each."""
    out = ["| target | measured in this run | verdict |", "|---|---|---|"]
    nat = [q for q in natural_ratios(res) if q["workload"] == "small"]
    if nat:
        worst = min(nat, key=lambda q: q["ratio"])
        txt = "; ".join(f"b {q['batch']} metrics {'on' if q['with_metrics'] else 'off'}: "
                        f"{q['natural']:.0f} vs {q['batch_traj_per_s']:.0f} traj/s ({q['ratio']:.2f})"
                        for q in nat)  # fmt: skip
        verdict = "met" if worst["ratio"] >= NATURAL_MIN else f"missed (worst {worst['ratio']:.2f})"
        out.append(
            f"| natural path >= 2/3 of `fine_tune_batch` throughput on `small` (n = m) | {txt} | {verdict} |"
        )
    pairs = [q for q in previous_pairs(res) if q["ratio"] is not None]
    failed = [r for r in res.get("previous_release", {}).get("runs", []) if "error" in r]
    if pairs or failed:

        def rounds(q):
            n = len(q["ratios"])
            return f", median of {n} rounds" if n > 1 else ""

        txt = "; ".join(f"{q['workload']} b {q['batch']} {q['setting']}: {q['new']:.0f} vs {q['old']:.0f} "
                        f"traj/s ({q['ratio']:.2f}x{rounds(q)})" for q in pairs)  # fmt: skip
        if failed:
            txt += f"; {len(failed)} previous-release run(s) failed"
        worst = min((q["ratio"] for q in pairs), default=None)
        ok = pairs and worst >= 1.0
        verdict = (
            "met"
            if ok
            else (f"missed (worst {worst:.2f}x)" if worst is not None else "not measured")
        )
        out.append(
            f"| no regression vs the previous release (current traj/s >= previous at the settings compared) | {txt} | {verdict} |"
        )
    acc = accuracy_checks(res)
    if acc:
        bad = [c for c in acc if not c["ok"]]
        worst = max(acc, key=lambda c: c["err"])
        txt = (
            f"worst {worst['err']:.1e} ({worst['workload']}, {worst['method']}) over {len(acc)} methods"
            + (f"; failing: {', '.join(c['method'] for c in bad)}" if bad else "")
        )
        out.append(
            f"| every method within {ACC:.0e} of the tight reference | {txt} | {'met' if not bad else 'missed'} |"
        )
    c = res.get("compile")
    if c and "fine_tune" in c:
        rec = [n for n in ("fine_tune", "fine_tune_batch") if c.get(n, {}).get("recompiled")]
        txt = (f"compile {c['fine_tune']['compile_s']:.1f} s (`fine_tune`), "
               f"{c['fine_tune_batch']['compile_s']:.1f} s (`fine_tune_batch`); recompiled: "
               f"{', '.join(rec) if rec else 'none'}")  # fmt: skip
        out.append(
            f"| no recompilation on equal shapes | {txt} | {'met' if not rec else 'missed'} |"
        )
    mm = res.get("memory")
    if mm and "peak_rss_gb" in mm:
        out.append(f"| {mm['n']:,} `small` instances by `lf.sweep`, < {MEMORY_MAX_GB:.0f} GB peak | peak RSS "
                   f"{mm['peak_rss_gb']:.2f} GB, {mm['wall_s']:.0f} s, {mm['converged']:.1%} converged | "
                   f"{'met' if mm['peak_rss_gb'] < MEMORY_MAX_GB else 'missed'} |")  # fmt: skip
    return "\n".join(out) + "\n"


# Issue #14's targets (2 cores, float64)
KEYS_TO_METRICS_MIN = 3000.0  # `small`, b = 4096, keys to per-lane metrics, traj/s
ARRAYS_MIN = 1000.0  # problems from arrays, end to end, traj/s
DOP853_MIN = 200.0  # linfeat / SciPy DOP853 loop on the full state
STIFF_MIN = 20.0  # linfeat / best SciPy stiff solver on the reduced state
GRAD_MAX = 4.0  # value + grad over the forward cost
BILLION_MAX_S = 1.0  # d = 1e9 make_problem + solve, seconds


def targets_speed(res: dict) -> str:
    """Issue #14's targets with this run's numbers and a verdict each (rows only for the
    sections the run has; the roofline row says what is not measured)."""
    out = ["| #14 target | measured in this run | verdict |", "|---|---|---|"]

    def row(target, txt, ok):
        out.append(f"| {target} | {txt} | {'met' if ok else 'missed'} |")

    setup = [r for r in res.get("setup", []) if r["batch"] == 4096] or res.get("setup", [])
    if setup:
        best = max(setup, key=lambda r: r["end_to_end_traj_per_s"])
        txt = "; ".join(
            f"basis {r['basis']}: {r['end_to_end_traj_per_s']:.0f} traj/s (b {r['batch']})"
            for r in setup
        )
        row(f"`small`, b = 4096, keys to per-lane metrics >= {KEYS_TO_METRICS_MIN:,.0f} traj/s", txt,
            best["end_to_end_traj_per_s"] >= KEYS_TO_METRICS_MIN)  # fmt: skip
    wl = res.get("workloads", {}).get("from_arrays")
    arr = [r for r in res.get("natural_vs_batch", []) if r["workload"] == "from_arrays"]
    if wl and arr:
        per = wl["setup_s"] / wl["b"]  # problem_from_arrays + stacking, per problem

        def e2e(r):
            return 1.0 / (per + r["run_s"] / r["batch"])

        on = [r for r in arr if r["with_metrics"]]
        off = [r for r in arr if not r["with_metrics"]]
        best_on = max(on, key=e2e) if on else None
        best_off = max(off, key=e2e) if off else None
        txt = f"set-up {per * 1e3:.1f} ms / problem; best path with metrics " + (
            f"{e2e(best_on):.0f} traj/s ({best_on['path']})" if best_on else "not measured"
        )
        if best_off:
            txt += f", without {e2e(best_off):.0f} traj/s ({best_off['path']})"
        row(f"problems from `problem_from_arrays`, end to end (with metrics) >= {ARRAYS_MIN:,.0f} traj/s", txt,
            best_on is not None and e2e(best_on) >= ARRAYS_MIN)  # fmt: skip
    base = res.get("baselines")
    ref = _linfeat_batch_reference(res)
    if base and ref:
        rows = [r for r in base["rows"] if "error" not in r and r["ok"]]
        dop = [r for r in rows if "DOP853" in r["method"]]
        stiff = [r for r in rows if r["method"].startswith("scipy") and "reduced" in r["method"]]
        if dop:
            x = ref["traj_per_s"] / max(r["traj_per_s"] for r in dop)
            row(
                f"linfeat >= {DOP853_MIN:.0f}x the SciPy DOP853 loop (same instances, same run)",
                f"{x:.0f}x ({ref['traj_per_s']:.0f} traj/s vs {dop[0]['traj_per_s']:.2f})",
                x >= DOP853_MIN,
            )
        if stiff:
            b = max(stiff, key=lambda r: r["traj_per_s"])
            x = ref["traj_per_s"] / b["traj_per_s"]
            row(
                f"linfeat >= {STIFF_MIN:.0f}x the best SciPy stiff solver on the reduced state",
                f"{x:.0f}x against {b['method']} ({b['traj_per_s']:.2f} traj/s at rtol {b['rtol']:.0e})",
                x >= STIFF_MIN,
            )
    if res.get("grad"):
        worst = max(res["grad"], key=lambda r: r["ratio"])
        txt = "; ".join(
            f"{r['knob']}: {r['ratio']:.1f}x{'' if r['grad_finite'] else ' (non-finite)'}"
            for r in res["grad"]
        )
        row(
            f"value + grad of a batch <= {GRAD_MAX:.0f}x the forward cost",
            txt,
            worst["ratio"] <= GRAD_MAX and all(r["grad_finite"] for r in res["grad"]),
        )
    sb = res.get("setup_billion")
    if sb:
        row(f"d = 1e9 `make_problem` + solve in under {BILLION_MAX_S:.0f} s",
            f"{sb['total_s'] * 1e3:.1f} ms after compilation ({sb['make_problem_compile_s'] + sb['solve_compile_s']:.1f} s "
            f"to compile), status {sb['status']}", sb["total_s"] < BILLION_MAX_S and sb["status"] == 0)  # fmt: skip
    m = res.get("machine", {})
    fl = res.get("flops")
    if "peak_flops_measured" in m:
        peak, bw, label = roofline(m)
        if fl:
            ai = fl["flop_per_lane_step"] / fl["bytes_per_lane_step"]
            solve = max(fl.get("solves", []), key=lambda r: r["useful_flops"], default=None)
            txt = (f"roofline {peak / 1e9:.1f} GFLOP/s ({label})"
                   + (f", {bw / 1e9:.1f} GB/s: at {ai:.2f} flop/byte the bandwidth ceiling is "
                      f"{min(peak, ai * bw) / 1e9:.1f} GFLOP/s" if bw else "")
                   + f"; bare Rodas5P step {fl['bare_step_flops'] / 1e9:.2f} GFLOP/s "
                   f"({fl['bare_step_flops'] / peak:.1%})"
                   + (f", best solve {solve['useful_flops'] / 1e9:.2f} GFLOP/s useful "
                      f"({solve['useful_flops'] / peak:.1%}; {solve['path']}, b {solve['batch']}, metrics "
                      f"{'on' if solve['with_metrics'] else 'off'})" if solve else ""))  # fmt: skip
            out.append(f"| achieved FLOP/s against the measured roofline | {txt} | reported |")
        else:
            out.append(f"| achieved FLOP/s against the measured roofline | roofline {peak / 1e9:.1f} "
                       "GFLOP/s (f64 matmul); the solver's achieved FLOP/s is not measured by the runner | not measured |")  # fmt: skip
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name("results.json"))
    res = json.load(open(path))
    print(render(res))
    print(targets(res))
    print(targets_speed(res))
