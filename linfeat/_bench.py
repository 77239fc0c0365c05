"""`linfeat bench`: runs the benchmark suite in `benchmarks/` (at the repository root).

The suite lives outside the package (it needs SciPy, optax and diffrax baselines and writes
results next to itself), so this module only finds it and delegates.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def _runner():
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "runner.py").is_file():
        raise SystemExit(
            f"linfeat bench: no benchmarks/ directory next to the linfeat package (looked in "
            f"{root}). The suite ships with the source tree: run it from a git checkout "
            f"(`pip install -e .`), or `python -m benchmarks` at the repository root."
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("benchmarks.runner")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    root = Path(__file__).resolve().parents[1]
    if (root / "benchmarks" / "runner.py").is_file():
        _runner().add_arguments(parser)
    else:  # still parse, and explain in run()
        parser.add_argument("--quick", action="store_true")


def run(args) -> int:
    return _runner().run(args)
