"""The package's shape: no import cycles, small modules, one public surface used everywhere.

Read from the source with `ast` (nothing is imported or run): imports inside functions count
as edges too, since a cycle hidden in a function-level import is still a cycle.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import linfeat as lf

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "linfeat"
MAX_LINES = 500  # docs/solvers.md, "Layout": one idea per module, 100-400 lines, none over 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # `from . import _x` imports the submodule, not the package's __init__
                own = [target] if node.module else []
                targets = own + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v) :] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_no_import_cycles_function_level_imports_included():
    graph = _import_graph()
    assert "linfeat._problem" in graph and "linfeat._metrics" in graph["linfeat._flow"]
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: p.name)
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


PRIVATE = re.compile(r"\blinfeat\.(_\w+)|from linfeat import (_\w+)|\blf\.(_\w+)")


@pytest.mark.parametrize(
    "path",
    [ROOT / "README.md", *sorted((ROOT / "experiments").glob("*.py"))],
    ids=lambda p: p.name,
)
def test_readme_and_experiments_use_only_public_names(path):
    text = path.read_text()
    # The one exception, deliberate: the experiments' file helpers are the library's atomic
    # writes (one helper for the project), which are infrastructure, not part of the API.
    text = text.replace("from linfeat._io import", "")
    hits = [m.group(0) for m in PRIVATE.finditer(text)]
    assert not hits, f"{path.name} uses private names: {sorted(set(hits))}"
    used = set(re.findall(r"\blf\.(\w+)", text))
    assert used <= set(lf.__all__) | {"__version__"}, sorted(used - set(lf.__all__))


def test_public_api_is_small_and_every_name_is_documented():
    # the public surface: at most 30 names besides the namespaces (theory, methods, classify)
    assert len([n for n in lf.__all__ if not inspect.ismodule(getattr(lf, n))]) <= 30
    # Submodules appear as attributes once imported (`linfeat.checks` by the CLI and tests).
    attributes = {n for n in dir(lf) if not n.startswith("_")}
    namespaces = {"theory", "methods", "classify"}  # public submodules (docs/api.md has each)
    assert (
        set(lf.__all__)
        == {n for n in attributes if not inspect.ismodule(getattr(lf, n))} | namespaces
    )
    for name in (
        lf.__all__
        + [f"theory.{n}" for n in lf.theory.__all__]
        + [f"methods.{n}" for n in lf.methods.__all__]
        + [f"classify.{n}" for n in lf.classify.__all__]
    ):
        obj = lf
        for part in name.split("."):
            obj = getattr(obj, part)
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_one_version_string():
    # The installed metadata (pyproject.toml) and `linfeat.__version__` (what reports and
    # `linfeat --version` record) must agree; they had drifted (0.2.0 against 0.3.0).
    import tomllib

    root = Path(__file__).resolve().parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert meta == lf.__version__
