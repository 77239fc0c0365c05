r"""The report of `linfeat check`: paper_checks.md, its figures and JSON encoding.

`write_markdown` writes the header (command, versions, rules `TOL`), the summary table and
one section per result of docs/theory.md R1-R13; `write_figures` draws the R5, R8 and R12
figures (matplotlib, optional and imported only there); `_fmt` formats numbers, `_command`
the reproduce line, `_json_default` the numpy values of the JSON records.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys

import numpy as np

from .._io import atomic_write_text
from ._config import RIGOROUS, SAVES, TOL, CheckResult
from ._mutants import load as load_mutants
from ._mutants import markdown_section


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if math.isinf(x) or math.isnan(x):
            return str(x)
        return f"{x:.4g}"
    if isinstance(x, dict):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    return str(x)


def _command(args_str: str, rid: str) -> str:
    return f"linfeat check {args_str}--only {rid}".replace("  ", " ")


def write_figures(results: list[CheckResult], outdir: str) -> None:
    """Small figures where a plot says more than the numbers (matplotlib, Agg, lazy).

    matplotlib is optional (`pip install linfeat[experiments]`); without it no figure is drawn.
    """
    # lazy: matplotlib is optional and `import linfeat.checks` must not load it
    try:
        import matplotlib
    except ImportError:
        print("linfeat check: matplotlib is not installed; skipping figures.", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    for r in results:
        if r.plot is None:
            continue
        path = os.path.join(outdir, f"{r.id.lower()}.png")
        if r.id == "R5":
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
            bins = np.logspace(-1, 4, 60)
            for key, lab in (
                ("ratio_p", "printed, min over t"),
                ("ratio_t0", "printed, t = 0"),
                ("ratio_rig", "rigorous, min over t"),
            ):
                x = np.asarray(r.plot[key])
                x = x[np.isfinite(x) & (x > 0)]
                if x.size:
                    axes[0].hist(
                        np.clip(x, bins[0], bins[-1]), bins=bins, histtype="step", label=lab
                    )
            axes[0].axvline(1.0, color="k", lw=0.8)
            axes[0].set_xscale("log")
            axes[0].set_xlabel("measured / bound (random instances)")
            axes[0].legend(fontsize=7)
            axes[1].plot(r.plot["search_p"], "o-", label="printed")
            axes[1].plot(r.plot["search_r"], "s-", label="rigorous")
            axes[1].axhline(1.0, color="k", lw=0.8)
            axes[1].set_yscale("log")
            axes[1].set_xlabel("search round")
            axes[1].set_ylabel("best min_t ||e|| / bound")
            axes[1].legend(fontsize=7)
        elif r.id == "R8":
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            eps, ratio = np.asarray(r.plot["eps"]), np.asarray(r.plot["ratio"])
            pos = eps > 0
            jitter = np.exp(np.random.default_rng(0).uniform(-0.15, 0.15, pos.sum()))
            ax.scatter(eps[pos] * jitter, np.clip(ratio[pos], 1e-12, None), s=4, alpha=0.4)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("feature error eps")
            ax.set_ylabel("L_ood(LP) / min_t L_ood(FT)")
        elif r.id == "R12":
            fig, ax = plt.subplots(figsize=(4, 3.6))
            a, v0, win = (np.asarray(r.plot[k]) for k in ("a", "v0", "sim_win"))
            ax.scatter(a[win], v0[win], marker="o", s=12, label="FT wins (simulated)")
            ax.scatter(a[~win], v0[~win], marker="x", s=12, label="LP wins (simulated)")
            th = np.linspace(-np.pi / 2, np.pi / 2, 200)
            ax.plot(np.cos(th), np.sin(th), "k-", lw=0.8, label="a^2 + v0^2 = 1")
            ax.set_xlabel("a")
            ax.set_ylabel("v0")
            ax.legend(fontsize=7)
        else:
            continue
        fig.suptitle(f"{r.id}: {r.title}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        r.figure = path


def write_markdown(
    results, path, *, cfg, seed, command, env, seconds, fig_rel, timings=None
) -> None:
    """paper_checks.md: header (how it was generated), summary table, one section per result."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    v = env["versions"]
    timings = timings or {}
    sections = {k[8:]: x for k, x in timings.items() if k.startswith("section ")}
    stages = {k: x for k, x in timings.items() if not k.startswith("section ")}
    lines = [
        "# paper_checks.md: every result of docs/theory.md as an executable check",
        "",
        "<!-- Generated by `linfeat check`; do not edit by hand. -->",
        "",
        f"- Generated by: `{command}` on {now}, in {seconds:.0f} s (mode `{cfg.name}`, seed "
        f"{seed}).",
        "- Versions: " + ", ".join(f"{k} {v[k]}" for k in v if v[k]) + ".",
        f"- Backend: {env['backend']} ({', '.join(env['devices'])}), x64 = {env['x64']}; "
        f"{env['platform']}.",
        "- Rules (fixed in `linfeat/checks/_config.py` before the run): a **rigorous** statement "
        "([paper], "
        "or [derived] with proof) passes only with 0 violations on every instance, within the "
        f"slack `TOL` = {json.dumps(TOL)} (flows at rtol 1e-12, atol 1e-14; convergence when "
        "the gradient norm is below 1e-10 lam_max(X^T X)(1 + |Y|)(1 + |v0|)); statements about the "
        "converged state also fail on non-converged runs. **Observations** (R13, the printed R5 "
        "constant, [unsure] constants) are reported, never asserted. Non-converged runs are "
        "counted "
        "in every row.",
        "- Sampling: problems from `linfeat.make_problem` (n = 2m Gaussian inputs on a Haar-random "
        "S, Haar features at Procrustes distance eps, |v*| fixed), Gaussian heads N(0, sigma^2 I); "
        "the knob grid eps x |v*| x sigma is crossed with the OOD kinds (each combination meets "
        "each "
        f"kind), per shape group. 'min over t' is over {SAVES} saved, log-spaced times (8 per "
        "interval of the library's default 64), and each check says how far the extremum moved "
        "from the 64-point grid.",
        "- Stage times (s): " + (", ".join(f"{k} {v:.1f}" for k, v in stages.items()) or "-") + ".",
        "- Time by section (its stages and its checks; docs/theory.md section 7 sets 15 minutes "
        "on 2 cores for T1-T3 and R1-R13 in the full run): "
        + (", ".join(f"{k} {v:.1f} s ({v / 60:.1f} min)" for k, v in sections.items()) or "-")
        + ".",
        "",
        "## Summary",
        "",
        "Independent instances: the largest count of a rigorous row that is not a corollary "
        "(a row that restates other results on the same instances still fails the check when "
        "violated, but is not counted as evidence) and not an implementation row (a library "
        "formula against docs/theory.md's); exceedances: what the observation rows count "
        "(reported, never asserted).",
        "",
        "| id | result | label | verdict | independent instances | violations | exceedances "
        "(observations) | key number |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        main = r.subs[0]
        own = [s.n for s in r.subs if s.kind == RIGOROUS and s.corollary_of is None and s.evidence]
        cors = sorted({s.corollary_of for s in r.subs if s.corollary_of})
        n = str(max(own)) if own else "-"
        if cors:
            n += f" (corollary rows: of {'; '.join(cors)})"
        viol = sum((s.violations or 0) for s in r.subs if s.kind == RIGOROUS)
        obs = [s.violations for s in r.subs if s.kind != RIGOROUS and s.violations is not None]
        lines.append(
            f"| {r.id} | {r.title} | {r.label} | **{r.verdict}** | {n} | {viol} | "
            f"{sum(obs) if obs else '-'} | {main.worst_name} {_fmt(main.worst)} |"
        )
    lines.append("")
    args_str = command.split("linfeat check", 1)[-1].strip()
    args_str = " ".join(a for a in args_str.split() if not a.startswith("--only"))
    args_str = (args_str + " ") if args_str else ""
    for r in results:
        lines += [
            f"## {r.id}: {r.title}",
            "",
            f"- Claim: {r.claim}",
            f"- Label: {r.label}",
            f"- Reproduce: `{_command(args_str, r.id)}` (seed {seed})",
            f"- Sampled: {_fmt(r.ranges)}",
            f"- Verdict: **{r.verdict}**",
            "",
            "| check | label | kind | rule | instances | violations | non-converged | worst | "
            "verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in r.subs:
            kind = s.kind + (f" (corollary of {s.corollary_of})" if s.corollary_of else "")
            kind += "" if s.evidence else " (implementation)"
            lines.append(
                f"| {s.name} | {s.label} | {kind} | {s.rule} | {s.n} | {_fmt(s.violations)} | "
                f"{s.nonconverged} | {s.worst_name} {_fmt(s.worst)} | {s.verdict} |"
            )
        nums = {k: v for k, v in r.numbers.items() if not k.startswith("_")}
        if nums:
            lines += ["", "Numbers:", ""] + [f"- {k}: {_fmt(v)}" for k, v in nums.items()]
        if r.notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in r.notes]
        if r.figure:
            rel = os.path.relpath(r.figure, os.path.dirname(os.path.abspath(path)) or ".")
            lines += ["", f"![{r.id}]({rel})"]
        lines.append("")
    lines += markdown_section(load_mutants())
    atomic_write_text(path, "\n".join(lines))
    del fig_rel


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return str(x)
