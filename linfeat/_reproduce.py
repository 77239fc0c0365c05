"""`linfeat reproduce`: run the experiments of `experiments/` and draw the figures.

Each experiment script (`experiments/<name>.py`, at the repository root) defines
`CONFIGS = {"quick": ..., "full": ...}`, `compute(config, checkpoint) -> dict of arrays` and
`plot(results, config, outdir)` (STYLE.md 15: compute, then draw). Raw results go to
`<out>/<mode>/<name>.npz` with `<name>.json` (config, seed, package versions, cache key, run
time). The cache key hashes the config and the sources of the script, of
`experiments/_common.py` and of the `linfeat` package, so an unchanged experiment is not
recomputed. Results are written
atomically when an experiment finishes and long experiments checkpoint per chunk of seeds under
`<out>/<mode>/<name>.ckpt/<key>/`, so a run killed halfway resumes without redoing finished work.

The scripts live outside the package: they are found next to the package source
(`Path(linfeat.__file__).parents[1] / "experiments"`), which needs an editable install or a
source checkout (`pip install -e .`); `--experiments DIR` points elsewhere.
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
)
_PACKAGE = "_linfeat_experiments"  # private module name the scripts are imported under


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
    return 1 if failed else 0
