"""`linfeat reproduce`: run the experiments of `experiments/` and draw the figures.

Each experiment script (`experiments/<name>.py`, at the repository root) defines
`CONFIGS = {"quick": ..., "full": ...}`, `compute(config, checkpoint) -> dict of arrays` and
`plot(results, config, outdir)` (compute, then draw). Raw results go to
`<out>/<mode>/<name>.npz` with `<name>.json` (config, seed, package versions, cache key, run
time). The cache key hashes the config and the sources of the script, of
`experiments/_common.py` and of the `linfeat` package, so an unchanged experiment is not
recomputed. Results are written
atomically when an experiment finishes and long experiments checkpoint per chunk of seeds under
`<out>/<mode>/<name>.ckpt/<key>/`, so a run killed halfway resumes without redoing finished work.

The scripts live outside the package: they are found next to the package source
(`Path(linfeat.__file__).parents[1] / "experiments"`), which needs an editable install or a
source checkout (`pip install -e .`); `--experiments DIR` points elsewhere.

README's results are generated, never typed: each script's `readme(results, config)` returns
its paragraph, every number computed from its results (the figure quotes the same numbers
through the same functions). After a complete full run that drew the repository's figures,
`run` records the run in `<out>/full/reproduce.json` and rewrites the text of README.md
between `<!-- results:start -->` and `<!-- results:end -->` with `readme_results` (read from
the results files, so cached experiments count too); `--no-readme` skips it, `--quick` never
touches README.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

from ._io import atomic_write_text
from ._runtime import release_compiled_programs

EXPERIMENTS = (
    "toy2d",
    "distortion",
    "ood_vs_eps",
    "ft_lower_bound",
    "tradeoff",
    "time_course",
    "random_head",
    "gd_vs_flow",
    "synthetic_table",
    "zoo",
    "classification",
)
_PACKAGE = "_linfeat_experiments"  # private module name the scripts are imported under
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
RUN_RECORD = "reproduce.json"  # <out>/<mode>/: the last complete run (time, date, cores)


def repo_root() -> Path:
    """The checkout that holds `experiments/` next to the `linfeat` package source."""
    import linfeat

    root = Path(linfeat.__file__).resolve().parents[1]
    if not (root / "experiments" / "_common.py").exists():
        raise FileNotFoundError(
            f"`linfeat reproduce` needs the repository's experiments/ folder next to the package "
            f"(looked in {root / 'experiments'}). Install linfeat from a source checkout with "
            f"`pip install -e .`, or pass --experiments DIR."
        )
    return root


def load_package(experiments_dir: Path):
    """Imports `experiments_dir` as the private package `_linfeat_experiments` (by path)."""
    experiments_dir = Path(experiments_dir).resolve()
    pkg = sys.modules.get(_PACKAGE)
    if pkg is not None and Path(pkg.__path__[0]).resolve() == experiments_dir:
        return pkg
    for name in [n for n in sys.modules if n == _PACKAGE or n.startswith(_PACKAGE + ".")]:
        del sys.modules[name]
    init = experiments_dir / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        _PACKAGE, init, submodule_search_locations=[str(experiments_dir)]
    )
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE] = pkg
    spec.loader.exec_module(pkg)
    return pkg


def load_experiment(name: str, experiments_dir: Path | None = None):
    """The module of experiment `name`."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    load_package(experiments_dir or repo_root() / "experiments")
    return importlib.import_module(f"{_PACKAGE}.{name}")


def cache_key(module, config: dict) -> str:
    """sha256 of the config and of the sources: the script, the shared helpers and the package.

    The package's own modules are included so that a changed solver or bound recomputes the
    results (a comment change does too: correctness over speed).
    """
    import linfeat

    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(linfeat.__version__.encode())
    package = sorted(Path(linfeat.__file__).parent.glob("*.py"))
    for path in (Path(module.__file__), Path(module.__file__).with_name("_common.py"), *package):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_one(name, *, mode, out, figdir, force=False, experiments_dir=None, plot=True, log=print):
    """Computes (or loads from the cache) one experiment and draws its figure.

    Returns a dict with `name`, `cached`, `compute_s`, `plot_s`, `nonconverged`.
    """
    from linfeat._cli import environment

    mod = load_experiment(name, experiments_dir)
    from _linfeat_experiments import _common as C  # noqa: I001  (loaded by load_experiment)

    config = dict(mod.CONFIGS[mode])
    key = cache_key(mod, config)
    res_dir = Path(out) / mode
    npz, meta_path = res_dir / f"{name}.npz", res_dir / f"{name}.json"
    cached = False
    t0 = time.perf_counter()
    if not force and npz.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        cached = meta.get("cache_key") == key
    if cached:
        results = C.load_npz(npz)
        compute_s = 0.0
    else:
        ckpt_dir = res_dir / f"{name}.ckpt" / key
        ckpt = C.Checkpoint(ckpt_dir)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        results = mod.compute(config, ckpt)
        compute_s = time.perf_counter() - t0
        meta = {
            "name": name,
            "mode": mode,
            "config": config,
            "seed": config.get("seed"),
            "cache_key": key,
            "script": f"experiments/{name}.py",
            "started": started,
            "compute_seconds": round(compute_s, 2),
            "chunks_resumed": ckpt.loaded,
            "nonconverged": int(results.get("nonconverged", 0)),
            "environment": environment(),
        }
        C.atomic_savez(npz, results)  # results first: the JSON marks the pair complete
        C.atomic_write_text(meta_path, C.to_json(meta))
        import shutil

        shutil.rmtree(res_dir / f"{name}.ckpt", ignore_errors=True)
    plot_s = 0.0
    if plot:
        t1 = time.perf_counter()
        mod.plot(results, config, Path(figdir))
        plot_s = time.perf_counter() - t1
    return {
        "name": name,
        "cached": cached,
        "compute_s": compute_s,
        "plot_s": plot_s,
        "nonconverged": int(results.get("nonconverged", 0)),
    }


def load_results(name: str, out, mode: str) -> tuple[dict, dict]:
    """The arrays of `<out>/<mode>/<name>.npz` and the metadata of its JSON (`meta["config"]`)."""
    import numpy as np

    res_dir = Path(out) / mode
    npz, meta_path = res_dir / f"{name}.npz", res_dir / f"{name}.json"
    if not (npz.exists() and meta_path.exists()):
        raise FileNotFoundError(f"no results of {name!r} in {res_dir} (run `linfeat reproduce`)")
    with np.load(npz, allow_pickle=False) as f:
        results = {k: f[k] for k in f.files}
    return results, json.loads(meta_path.read_text())


def replace_between_markers(
    text: str, block: str, start: str = README_START, end: str = README_END
) -> str:
    """`text` with everything between the markers `start` and `end` replaced by `block`.

    Each marker must occur exactly once, `start` first; the markers themselves and everything
    outside them are kept byte for byte.
    """
    for marker in (start, end):
        found = text.count(marker)
        if found != 1:
            raise ValueError(
                f"README needs the marker {marker!r} exactly once; found it {found} times"
            )
    i, j = text.index(start) + len(start), text.index(end)
    if j < i:
        raise ValueError(f"README's marker {end!r} comes before {start!r}")
    return text[:i] + "\n" + block.strip("\n") + "\n" + text[j:]


def _intro(metas: list[dict], nonconverged: int, run: dict | None, mode: str, band) -> str:
    """README's first paragraph: how the section is made, with the measured times and dates."""
    env = [m.get("environment", {}) for m in metas]
    days = sorted({m["started"][:10] for m in metas if m.get("started")})
    when = f"on {days[0]}" if len(days) == 1 else f"from {days[0]} to {days[-1]}"
    backends = ", ".join(sorted({e.get("backend", "unknown") for e in env}))
    compute_min = sum(float(m.get("compute_seconds", 0.0)) for m in metas) / 60
    parts = [
        "Every figure, the table below and every number in this section are generated by "
        "`linfeat reproduce` from the results files; a complete full run rewrites this section "
        "of README.md (`--no-readme` skips it)."
    ]
    if run is not None:
        parts.append(
            f"The last one took {run['seconds'] / 60:.1f} minutes on {run['date']} "
            f"({run['cpus']} CPU cores; {run['computed']} of {run['experiments']} experiments "
            f"computed, the others loaded from the cache)."
        )
    parts.append(
        f"The results were computed {when} on the {backends} backend, in {compute_min:.1f} "
        f"minutes of compute in all (the experiments' compute times, from their JSON files; "
        f"plotting not included)."
    )
    precision = "float64" if all(e.get("x64") for e in env) else "float32"
    lo, hi = band
    converged = (
        "No trajectory in any figure failed to converge."
        if nonconverged == 0
        else f"{nonconverged} trajectories did not converge (each figure's title gives its count)."
    )
    parts.append(
        f"Each `experiments/<name>.py` writes its raw results to `results/{mode}/<name>.npz` with "
        "a JSON of the config, seed, package versions and run time (cached: an unchanged "
        "experiment is not recomputed; a killed run resumes from its finished chunks), then draws "
        "`figures/<name>.png` / `.pdf`. Measured points come from the ODE solver "
        f'(`lf.fine_tune`, {precision}) unless stated; lines marked "bound" or "closed form" '
        f"are analytic. Bands are {lo:g}-{hi:g}% over seeds. {converged}"
    )
    return " ".join(parts) + "\n"


def readme_results(names=EXPERIMENTS, out=None, mode="full", experiments_dir=None) -> str:
    """README's results section, generated from the results files `<out>/<mode>/<name>.*`.

    The intro (measured run time and date from `<out>/<mode>/reproduce.json` when a complete
    run wrote it, compute times and dates from the experiments' JSON files), then each
    experiment's `readme(results, config)` in the order of `names`, then the summary of
    `synthetic_table`. Raises FileNotFoundError if an experiment has no results.
    """
    out = Path(out) if out is not None else repo_root() / "results"
    paragraphs, metas, nonconverged = [], [], 0
    summary = None
    for name in names:
        mod = load_experiment(name, experiments_dir)
        results, meta = load_results(name, out, mode)
        config = meta["config"]
        paragraphs.append(mod.readme(results, config))
        metas.append(meta)
        nonconverged += int(results.get("nonconverged", 0))
        if name == "synthetic_table":
            summary = mod.summary_markdown(results, config)
    from _linfeat_experiments import _common as C  # noqa: I001  (loaded by load_experiment)

    record = Path(out) / mode / RUN_RECORD
    run = json.loads(record.read_text()) if record.exists() else None
    blocks = [_intro(metas, nonconverged, run, mode, C.BAND), *paragraphs]
    if summary is not None:
        blocks.append(summary)
    return "\n".join(blocks)


def update_readme(path, block: str) -> bool:
    """Rewrites README's results section with `block` (atomically); True if the text changed."""
    path = Path(path)
    text = path.read_text()
    new = replace_between_markers(text, block)
    if new != text:
        atomic_write_text(path, new)
    return new != text


def _readme_skip_reason(args, mode, names, out, figdir, root) -> str | None:
    """Why this run does not rewrite README's results section (None: it does)."""
    if getattr(args, "no_readme", False):
        return "--no-readme"
    if mode != "full":
        return "a --quick run"
    if set(names) != set(EXPERIMENTS):
        return "not every experiment ran (--only)"
    if args.no_plot:
        return "no figures drawn (--no-plot)"
    if Path(out).resolve() != (root / "results").resolve():
        return f"results outside the repository's results/ ({out})"
    if Path(figdir).resolve() != (root / "figures").resolve():
        return f"figures outside the repository's figures/ ({figdir})"
    if not (root / "README.md").exists():
        return f"no README.md in {root}"
    return None


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="small sizes (under 5 minutes)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=EXPERIMENTS,
        help=f"run only this experiment (repeatable): {', '.join(EXPERIMENTS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results cache directory (default: <repo>/results); with --out (or --quick) the "
        "figures go to OUT/<quick|full>/figures unless --figures is given",
    )
    parser.add_argument(
        "--figures",
        type=Path,
        default=None,
        help="figure directory (default: <repo>/figures for a full run without --out)",
    )
    parser.add_argument("--force", action="store_true", help="recompute even if cached")
    parser.add_argument("--no-plot", action="store_true", help="compute only")
    parser.add_argument(
        "--no-readme",
        action="store_true",
        help="do not rewrite README.md's results section (a complete full run does by default)",
    )
    parser.add_argument(
        "--experiments",
        type=Path,
        default=None,
        help="experiments folder (default: <repo>/experiments)",
    )


def run(args) -> int:
    import jax

    mode = "quick" if args.quick else "full"
    try:
        root = repo_root() if args.experiments is None else Path(args.experiments).resolve().parent
    except FileNotFoundError as err:
        print(f"linfeat reproduce: {err}", file=sys.stderr)
        return 2
    exp_dir = args.experiments or root / "experiments"
    out = Path(args.out) if args.out is not None else root / "results"
    if args.figures is not None:
        figdir = Path(args.figures)
    elif mode == "full" and args.out is None:
        figdir = root / "figures"
    else:
        figdir = out / mode / "figures"
    # Persistent compilation cache: a resumed or repeated run skips the ~5 s compiles.
    try:
        jax.config.update("jax_compilation_cache_dir", str(out / ".jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    except Exception:  # an older jax without the option: compile as usual
        pass
    names = args.only or list(EXPERIMENTS)
    from tqdm.auto import tqdm

    print(
        f"linfeat reproduce ({mode}): {len(names)} experiment(s); results in {out / mode}, "
        f"figures in {figdir}"
    )
    rows, failed = [], []
    t_all = time.perf_counter()
    bar = tqdm(names, desc="reproduce", unit="exp", dynamic_ncols=True)
    for name in bar:
        bar.set_postfix_str(name)
        try:
            row = run_one(
                name,
                mode=mode,
                out=out,
                figdir=figdir,
                force=args.force,
                experiments_dir=exp_dir,
                plot=not args.no_plot,
                log=bar.write,
            )
        except Exception:
            bar.write(f"[{name}] FAILED:\n{traceback.format_exc()}")
            failed.append(name)
            continue
        rows.append(row)
        release_compiled_programs()
        state = "cached" if row["cached"] else f"computed in {row['compute_s']:.1f} s"
        nc = f", {row['nonconverged']} non-converged" if row["nonconverged"] else ""
        bar.write(f"[{name}] {state}, plotted in {row['plot_s']:.1f} s{nc}")
    bar.close()
    total = time.perf_counter() - t_all
    print(
        f"done in {total:.1f} s: {len(rows)} ok, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else "")
    )
    if failed:
        if mode == "full":
            print("README.md not rewritten: an experiment failed")
        return 1
    if set(names) == set(EXPERIMENTS):  # a complete run: record it (README's intro quotes it)
        import os

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        record = {
            "seconds": round(total, 1),
            "date": time.strftime("%Y-%m-%d"),
            "cpus": cpus,
            "experiments": len(rows),
            "computed": sum(not row["cached"] for row in rows),
            "rows": rows,
        }
        atomic_write_text(out / mode / RUN_RECORD, json.dumps(record, indent=2) + "\n")
    why_not = _readme_skip_reason(args, mode, names, out, figdir, root)
    if why_not is None:
        block = readme_results(EXPERIMENTS, out, mode, experiments_dir=exp_dir)
        changed = update_readme(root / "README.md", block)
        print(f"README.md: results section {'rewritten' if changed else 'unchanged'}")
    elif mode == "full":
        print(f"README.md not rewritten: {why_not}")
    return 0
