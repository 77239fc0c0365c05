"""The documentation: it builds without a warning, covers the whole API, and its tutorial runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import linfeat as lf

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_docs_build_strict(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing page or an API name mkdocstrings
    cannot resolve is an error."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()


def test_api_page_lists_every_public_name():
    text = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: linfeat\.(\S+)$", text, flags=re.M))
    public = (
        set(lf.__all__) - {"theory", "methods"}
        | {f"theory.{n}" for n in lf.theory.__all__}
        | {f"methods.{n}" for n in lf.methods.__all__}
    )
    assert public <= documented, sorted(public - documented)
    assert documented - {"theory", "methods"} <= public, sorted(documented - public)


def _code_cells(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), flags=re.M | re.S)


# slow: the tutorial end to end (52 s); the API page and the docs build stay in the default suite
@pytest.mark.slow
def test_tutorial_runs(tmp_path):
    """Runs the tutorial's cells in order, as one script, in a fresh process (its own x64)."""
    cells = _code_cells(DOCS / "tutorial.md")
    assert len(cells) >= 5
    script = tmp_path / "tutorial.py"
    script.write_text("\n\n".join(cells))
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "tutorial_ood_vs_eps.png").stat().st_size > 0
    slope = float(re.search(r"fitted slope in eps: (\S+)", proc.stdout).group(1))
    assert 1.5 < slope < 2.5, proc.stdout  # R7: LP's OOD error is O(eps^2)
