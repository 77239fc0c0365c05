r"""Orchestration and command line of `linfeat check` (docs/theory.md T1-T3, R1-R13, M1-M8, C1-C6).

`run_checks` runs the sampling, the extra runs that the requested checks need and the checks
themselves, in the fixed order of `ALL_IDS`; `add_arguments` and `run` are the `linfeat check`
subcommand: `run` writes paper_checks.md (and figures, JSON) and returns a non-zero exit
status when a rigorous check fails.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from tqdm.auto import tqdm

from .._cli import environment
from .._io import atomic_write_text
from .._runtime import release_compiled_programs
from ._classify import CHECKS as CLS_CHECKS
from ._classify import CLS_FULL, CLS_IDS, CLS_QUICK, collect_cls
from ._classify_obs import CHECKS as CLS_OBS_CHECKS
from ._comparisons import check_r8, check_r10, check_r11, check_r12, check_r13
from ._config import FULL, QUICK, TOL, CheckResult, Config
from ._invariants import check_r1, check_r2
from ._lower_bound import check_r5, check_r6
from ._lp import check_r3, check_r4, check_r7, check_r9
from ._methods import check_m1, check_m2, check_m3, check_m4, check_m7
from ._methods_arch import _extra_m5, _extra_m6, _extra_m8, check_m5, check_m6, check_m8
from ._oracles import _extra_k1, _extra_pairs, check_t1, check_t2
from ._report import _json_default, write_figures, write_markdown
from ._riccati import _extra_riccati, check_t3
from ._sampling import _dense_ood, _extra_lp_flow, _extra_toy, collect
from ._search import _extra_counterexample, _extra_printed_family, worst_case_search

# T1-T3 (the engine against exact trajectories in time) first, then the results R1-R13,
# then the method zoo (docs/theory.md, section 9)
ALL_IDS = ("T1", "T2", "T3") + tuple(f"R{i}" for i in range(1, 14))
ALL_IDS += tuple(f"M{i}" for i in range(1, 9))
# then C1-C6: classification (docs/theory.md section 11; own instances, `_classify`)
ALL_IDS += CLS_IDS
# the ids whose checks read the sampled groups (`collect`); the others draw their own instances
NEEDS_COLLECT = frozenset(f"R{i}" for i in range(1, 14))
# the extra stages each check id needs (each runs once, before the checks)
NEEDS_EXTRA = {
    "k1": {"T1"},
    "riccati": {"T3"},
    "full": {"R1", "R2", "T2"},
    "lp_flow": {"R4"},
    "counterexample": {"R5"},
    "search_printed": {"R5"},
    "search_rigorous": {"R5"},
    "printed_family": {"R5"},
    "toy": {"R12"},
    "m5": {"M5"},
    "m6": {"M6"},
    "m8": {"M8"},
    "cls": set(CLS_IDS),
}
# the report's time per section: the stages a section's ids need and its checks' own time
SECTIONS = {
    "T1-T3 and R1-R13": frozenset(ALL_IDS[:16]),
    "M1-M8": frozenset(f"M{i}" for i in range(1, 9)),
    "C1-C6": frozenset(CLS_IDS),
}


def section_seconds(timings: dict, results, needs: dict) -> dict:
    """Wall-clock seconds per `SECTIONS` entry: every stage whose ids lie in the section
    (the sampled groups count for R1-R13) plus the section's checks. A stage that fed two
    sections would count in both; none does."""
    out = {}
    for name, ids in SECTIONS.items():
        stages = [k for k, need in needs.items() if need & ids]
        secs = sum(timings.get(k, 0.0) for k in stages)
        if ids & NEEDS_COLLECT:
            secs += timings.get(COLLECT_STAGE, 0.0)
        checks = [r.seconds for r in results if r.id in ids]
        if checks:
            out[name] = secs + sum(checks)
    return out


COLLECT_STAGE = "sample and solve (all groups)"


def run_checks(
    cfg: Config, seed: int = 0, only=None, progress: bool = True, timings: dict | None = None
) -> list[CheckResult]:
    """Runs the requested checks (all of `ALL_IDS` by default) and returns their records.

    `timings`, if given, receives the wall-clock seconds of each stage.
    """
    timings = {} if timings is None else timings

    only = set(ALL_IDS if not only else only)
    needs_extra = NEEDS_EXTRA
    # the sampled groups feed R1-R13 (and R1, R2 with T2's full-space runs); T1-T3 and the
    # method checks alone run only their own instances
    sampled = bool(only & NEEDS_COLLECT)
    stages = (
        ["collect"]
        + [k for k, ids in needs_extra.items() if ids & only]
        + sorted(only, key=ALL_IDS.index)
    )
    bar = tqdm(
        total=(len(cfg.groups) if sampled else 0) + len(stages) - 1,
        desc="linfeat check",
        disable=not progress,
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    data = None
    if sampled:
        bar.set_postfix_str("sampling and solving")
        data = collect(cfg, seed, progress=bar)
        timings[COLLECT_STAGE] = time.perf_counter() - t0
    extra = {"v0_norm2": None, "cfg": cfg, "seed": seed, "m_cfg": cfg}
    extra_fns = {
        "k1": lambda: _extra_k1(cfg, seed),
        "riccati": lambda: _extra_riccati(cfg, seed),
        "full": lambda: _extra_pairs(cfg, seed),
        "lp_flow": lambda: _extra_lp_flow(cfg, data),
        "counterexample": _extra_counterexample,
        "search_printed": lambda: worst_case_search(cfg, seed, "printed"),
        "search_rigorous": lambda: worst_case_search(cfg, seed, "rigorous"),
        "printed_family": lambda: _extra_printed_family(cfg),
        "toy": lambda: _extra_toy(cfg),
        "m5": lambda: _extra_m5(cfg, seed),
        "m6": lambda: _extra_m6(cfg, seed),
        "m8": lambda: _extra_m8(cfg, seed),
        "cls": lambda: collect_cls(CLS_FULL if cfg.name == "full" else CLS_QUICK, seed),
    }
    for name in stages[1:]:
        if name in extra_fns:
            bar.set_postfix_str(name)
            t = time.perf_counter()
            extra[name] = extra_fns[name]()
            timings[name] = time.perf_counter() - t
            release_compiled_programs()
            bar.update(1)
    if sampled:
        extra["v0_norm2"] = data["meta"]["v0_norm2"]
        extra["dense_idx"], extra["dense_ood"] = _dense_ood(data)
    fns = {
        "T1": check_t1,
        "T2": check_t2,
        "T3": check_t3,
        "R1": check_r1,
        "R2": check_r2,
        "R3": lambda d, e: check_r3(d, e, cfg, seed),
        "R4": check_r4,
        "R5": check_r5,
        "R6": lambda d, e: check_r6(d, e, cfg, seed),
        "R7": check_r7,
        "R8": check_r8,
        "R9": check_r9,
        "R10": check_r10,
        "R11": check_r11,
        "R12": check_r12,
        "R13": check_r13,
        "M1": check_m1,
        "M2": check_m2,
        "M3": check_m3,
        "M4": check_m4,
        "M5": check_m5,
        "M6": check_m6,
        "M7": check_m7,
        "M8": check_m8,
        **{
            cid: (lambda d, e, f=f: f(e["cls"], e))
            for cid, f in {**CLS_CHECKS, **CLS_OBS_CHECKS}.items()
        },
    }
    results = []
    for rid in sorted(only, key=ALL_IDS.index):
        bar.set_postfix_str(rid)
        t = time.perf_counter()
        res = fns[rid](data, extra)
        res.seconds = time.perf_counter() - t
        release_compiled_programs()
        results.append(res)
        bar.update(1)
    bar.close()
    results_time = time.perf_counter() - t0
    timings["checks (post-processing)"] = sum(r.seconds for r in results)
    for name, secs in section_seconds(timings, results, needs_extra).items():
        timings[f"section {name}"] = secs
    for r in results:
        r.numbers.setdefault("_total_seconds", results_time)
    return results


def add_arguments(parser) -> None:
    """Arguments of `linfeat check`."""
    parser.add_argument("--quick", action="store_true", help="small sample (< 2 min on 2 cores)")
    parser.add_argument("--only", default=None, help="comma-separated result ids, e.g. T1,R5,R7")
    parser.add_argument(
        "--json", default=None, metavar="PATH", help="also write the records as JSON"
    )
    parser.add_argument("--output", default="paper_checks.md", help="Markdown report path")
    parser.add_argument(
        "--figures", default="figures/checks", help="figure directory ('' for none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Runs the checks, writes the report; exit status 1 when a rigorous check fails."""
    cfg = QUICK if args.quick else FULL
    only = None
    if args.only:
        only = [x.strip().upper() for x in args.only.split(",") if x.strip()]
        bad = [x for x in only if x not in ALL_IDS]
        if bad:
            print(f"linfeat check: unknown result id(s) {bad}; choose from {', '.join(ALL_IDS)}.")
            return 2
    parts = ["linfeat check"] + (["--quick"] if args.quick else [])
    if args.only:
        parts.append(f"--only {','.join(only)}")
    if args.seed:
        parts.append(f"--seed {args.seed}")
    command = " ".join(parts)
    t0 = time.perf_counter()
    timings: dict = {}
    results = run_checks(cfg, args.seed, only, progress=not args.no_progress, timings=timings)
    seconds = time.perf_counter() - t0
    env = environment()
    if args.figures:
        write_figures(results, args.figures)
    write_markdown(
        results,
        args.output,
        timings=timings,
        cfg=cfg,
        seed=args.seed,
        command=command,
        env=env,
        seconds=seconds,
        fig_rel=args.figures,
    )
    if args.json:
        record = dict(
            command=command,
            config=dataclasses.asdict(cfg),
            seed=args.seed,
            environment=env,
            seconds=seconds,
            stage_seconds=timings,
            tolerances=TOL,
            results=[r.to_json() for r in results],
        )
        atomic_write_text(args.json, json.dumps(record, indent=1, default=_json_default))
    failed = [r.id for r in results if r.verdict == "FAIL"]
    for r in results:
        print(f"{r.id:>4}  {r.verdict:<8}  {r.title}")
    print(
        f"wrote {args.output} in {seconds:.0f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0
