"""The `linfeat` command: version, environment, and the project's jobs.

Subcommands: `info`; `check` (paper_checks.md, docs/theory.md T1-T3, R1-R13, M1-M8, C1-C6);
`mutate` (the checks' mutation score); `reproduce` (figures); `bench` (benchmarks). Entry points
switch on float64; the library itself never does.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__


def environment() -> dict:
    """Versions of the packages linfeat uses, the JAX backend, devices and the x64 state."""
    import platform

    import jax

    versions = {"python": platform.python_version(), "linfeat": __version__}
    for mod in (
        "jax",
        "jaxlib",
        "diffrax",
        "equinox",
        "optax",
        "numpy",
        "scipy",
        "matplotlib",
        "tqdm",
    ):
        try:
            versions[mod] = importlib.import_module(mod).__version__
        except Exception:  # an optional package that is absent is reported, not fatal
            versions[mod] = None
    return {
        "versions": versions,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def _info(args) -> int:
    env = environment()
    print(f"linfeat {__version__}")
    for k, v in env["versions"].items():
        print(f"  {k:<11} {v if v is not None else '(not installed)'}")
    print(f"  backend     {env['backend']}")
    print(f"  devices     {', '.join(env['devices'])}")
    print(f"  x64         {env['x64']} (entry points switch it on; `import linfeat` does not)")
    print(f"  platform    {env['platform']}")
    return 0


# name -> (module, help). Each module has `add_arguments(parser)` and `run(args) -> int`.
_JOBS = {
    "check": (
        "linfeat.checks",
        "run the checks of docs/theory.md T1-T3, R1-R13, M1-M8, C1-C6 and write paper_checks.md",
    ),
    "mutate": (
        "linfeat.checks._mutants",
        "plant known bugs in a copy of the package; `linfeat check --quick` must catch each",
    ),
    "reproduce": ("linfeat._reproduce", "run the experiments and draw the figures"),
    "bench": ("linfeat._bench", "run the benchmark suite (see benchmarks/)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="linfeat", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"linfeat {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="package versions, JAX backend and devices, x64 state")
    for name, (mod, help_) in _JOBS.items():
        p = sub.add_parser(name, help=help_)
        try:
            importlib.import_module(mod).add_arguments(p)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise
            p.set_defaults(_missing=mod)
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "info":
        return _info(args)
    if getattr(args, "_missing", None):
        print(f"linfeat {args.command}: not available in this build ({args._missing}).")
        return 2
    return importlib.import_module(_JOBS[args.command][0]).run(args)


if __name__ == "__main__":
    sys.exit(main())
