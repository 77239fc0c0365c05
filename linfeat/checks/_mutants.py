r"""Mutation testing of `linfeat check`: plausible bugs that the checks must catch.

Each `Mutant` is one edit a careful person could make by mistake (a factor of two in the
flow's time, a flipped gradient, a projection left out of a constant, a basis column lost,
a stopping test far too loose, ...). `run_mutants` copies the package to a temporary folder,
applies one edit (its text must occur exactly once), and runs `linfeat check --quick` on the
copy in a fresh process. A mutant is **caught** when that run reports a rigorous FAIL (exit
status 1); a crash is reported separately, and a clean exit means the checks could not see
the bug. The unmodified copy runs first and must pass. `linfeat mutate` runs every mutant and
writes `figures/checks/mutants.json`, which `linfeat check` shows in paper_checks.md with its
score and whether the package source has changed since (docs/theory.md, section 7).

The package is copied once (a snapshot, so that editing the source during a run changes
nothing) and the runs share a persistent JAX compilation cache: a program whose source a
mutant does not touch compiles once, and a changed program has another cache key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .._io import atomic_write_text

PACKAGE = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "figures/checks/mutants.json"  # generated, committed next to the check figures
# A mutant of the FT engine, its reduction, metrics or bounds is tested by T1-T3 and R1-R13; a
# mutant of a zoo method also by its section (`Mutant.checks`). The other sections run their
# own instances and flows, and a mutant that fails these ids fails the whole
# `linfeat check --quick` too (the sections are independent), so each run checks just these
# ids (`--only`); the unmodified copy runs the union.
CHECK_IDS = ("T1", "T2", "T3") + tuple(f"R{i}" for i in range(1, 14))
DEFAULT_CHECK_ARGS = ("--quick",)


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One bug: replace `old` by `new` in `path` (relative to the package folder), and each
    further `(old, new)` pair of `more` in the same file (one bug that spans two places)."""

    name: str
    path: str
    old: str
    new: str
    bug: str  # the mistake, in words
    more: tuple[tuple[str, str], ...] = ()
    # ids besides `CHECK_IDS` whose sections run the mutated code (a method of the zoo)
    checks: tuple[str, ...] = ()


MUTANTS = (
    Mutant(
        "time x 2",
        "_reduce.py",
        "        sigma2=jnp.sum(XQ**2, axis=0),\n        g=XQ.T @ Y,\n",
        "        sigma2=2.0 * jnp.sum(XQ**2, axis=0),\n        g=2.0 * (XQ.T @ Y),\n",
        "the flow's data carry the loss twice (a factor-2 convention slip): FT runs at twice "
        "the paper's time, consistently in the field and its Jacobian",
    ),
    Mutant(
        "basis column dropped",
        "_reduce.py",
        "    Q, _, mask = row_space_basis(X)\n",
        "    Q, _, mask = row_space_basis(X)\n    Q = Q.at[:, 0].set(0.0)\n",
        "the reduced basis of S loses its first column",
    ),
    Mutant(
        "c_perp without Pi_perp",
        "_geometry.py",
        "    sP = singular_values(problem.B0 - BS)\n",
        "    sP = singular_values(problem.B0)\n",
        "c_perp computed as sigma_k(B0^T), the projection on S-perp left out",
    ),
    Mutant(
        "delta0 x 1.5",
        "_bounds.py",
        "    return jnp.minimum(\n        jnp.minimum(1.0, q_prime",
        "    return 1.5 * jnp.minimum(\n        jnp.minimum(1.0, q_prime",
        "the rigorous R5 constant delta0 inflated by 1.5",
    ),
    Mutant(
        "LP off by 1e-6",
        "_closed_form.py",
        "    return v0 + lstsq(A, problem.Y - A @ v0)\n",
        "    return (v0 + lstsq(A, problem.Y - A @ v0)) * (1.0 + 1e-6)\n",
        "the closed-form linear probe off by a relative 1e-6",
    ),
    Mutant(
        "OOD metric uses the ID moment",
        "_metrics.py",
        "        ood_error=jnp.maximum(c @ red.ood_gram @ c, 0.0),\n",
        "        ood_error=jnp.maximum(c @ red.id_gram @ c, 0.0),\n",
        "the OOD error computed with the ID second moment",
    ),
    Mutant(
        "stopping test x 1e6",
        "_engine.py",
        "    return grad_scale * lam_max * (1 + jnp.linalg.norm(Y))",
        "    return 1e6 * grad_scale * lam_max * (1 + jnp.linalg.norm(Y))",
        "the default convergence threshold 1e6 times too loose",
    ),
    Mutant(
        "eps without the rotation",
        "_geometry.py",
        "    return singular_values(B - U @ B_star)[0], U\n",
        "    return singular_values(B - B_star)[0], U\n",
        "the feature error ||B0 - B*||_2 without the Procrustes rotation U",
    ),
    Mutant(
        "a* with U transposed",
        "_constants.py",
        "    a_star = U @ problem.v_star\n",
        "    a_star = U.T @ problem.v_star\n",
        "the Procrustes factor applied transposed: a* = U^T v* instead of U v*",
    ),
    Mutant(
        "LP-FT skips the probe",
        "_flow.py",
        "    if lp_init:\n        v0 = linear_probe(problem, v0)\n",
        "    if lp_init:\n        v0 = v0\n",
        "LP-FT starts FT from its initial head instead of the linear probe",
    ),
    Mutant(
        "LoRA dA without U^T",
        "_arch_flows.py",
        "        return dv, -2.0 * jnp.outer(v, Crho), -2.0 * jnp.outer(U.T @ v, rho)\n",
        "        return dv, -2.0 * jnp.outer(v, Crho), -2.0 * jnp.outer(U @ v, rho)\n",
        "LoRA's gradient of A with U instead of U^T (runs when rank = k, as in check M6)",
        checks=("M6",),
    ),
    Mutant(
        "gradient sign",
        "_flows.py",
        "        return -2.0 * (A @ rho), dA\n",
        "        return 2.0 * (A @ rho), -dA\n",
        "gradient ascent instead of descent, in the field and consistently in its Jacobian "
        "(every FT flow blows up; the engine's divergence stop ends it)",
        more=(("        beta = 2.0 * alpha\n", "        beta = -2.0 * alpha\n"),),
    ),
)


def source_hash(root: Path = PACKAGE) -> str:
    """SHA-256 of the package's Python sources (paths and contents), to tell a stale score."""
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def apply(mutant: Mutant, root: Path) -> None:
    """Applies `mutant` to the package copy at `root`; its text must occur exactly once."""
    f = root / mutant.path
    text = f.read_text()
    for old, new in ((mutant.old, mutant.new), *mutant.more):
        count = text.count(old)
        if count != 1:
            raise ValueError(
                f"mutant {mutant.name!r}: its text occurs {count} times in {mutant.path} (needs "
                "exactly 1); update `linfeat/checks/_mutants.py` to the current source."
            )
        text = text.replace(old, new)
    f.write_text(text)


def _run_copy(
    mutant: Mutant | None, check_args: list[str], timeout: float, snapshot: Path, cache: Path
) -> dict:
    """`linfeat check` on a copy of `snapshot` with `mutant` applied (None: unmodified)."""
    with tempfile.TemporaryDirectory(prefix="linfeat-mutant-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(snapshot, tmp / "linfeat")
        if mutant is not None:
            apply(mutant, tmp / "linfeat")
        out = tmp / "checks.json"
        env = {**os.environ, "PYTHONPATH": str(tmp), "JAX_COMPILATION_CACHE_DIR": str(cache)}
        cmd = [sys.executable, "-m", "linfeat._cli", "check", *check_args, "--no-progress"]
        cmd += ["--json", str(out), "--output", str(tmp / "paper_checks.md"), "--figures", ""]
        probe = subprocess.run(
            [sys.executable, "-c", "import linfeat; print(linfeat.__file__)"],
            env=env, cwd=tmp, capture_output=True, text=True, check=True,
        )  # fmt: skip
        if not probe.stdout.strip().startswith(str(tmp)):
            raise RuntimeError(f"the copy is not the package imported: {probe.stdout.strip()}")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout
            )
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            rc, tail = None, f"timed out after {timeout:.0f} s"
        seconds = time.perf_counter() - t0
        failed = []
        if rc in (0, 1) and out.exists():
            failed = [
                r["id"] for r in json.loads(out.read_text())["results"] if r["verdict"] == "FAIL"
            ]
    # caught: the report exists and names a failing rigorous check; any other non-zero exit
    # (a traceback also exits with 1) is a crash, shown with the end of its output
    outcome = "survived" if rc == 0 else "caught" if (rc == 1 and failed) else "crashed"
    return dict(
        rc=rc,
        outcome=outcome,
        failed=failed,
        seconds=seconds,
        tail=tail if outcome == "crashed" else "",
    )


def _only(mutants, check_args) -> list[str]:
    """`--only` for `mutants`: `CHECK_IDS` and the sections their edits run (`Mutant.checks`),
    unless `check_args` chooses the ids itself."""
    if "--only" in check_args:
        return []
    extra = [c for m in mutants for c in m.checks if c not in CHECK_IDS]
    return ["--only", ",".join(CHECK_IDS + tuple(dict.fromkeys(extra)))]


def run_mutants(
    mutants=MUTANTS,
    check_args=DEFAULT_CHECK_ARGS,
    timeout: float = 1800.0,
    progress: bool = True,
    jobs: int = 1,
) -> dict:
    """The clean copy, then every mutant, through `linfeat check <check_args>`; a record.

    `jobs` mutants run at once (separate processes) after the clean copy has filled the
    shared compilation cache. Two mutants never write the same cache entry (a program they
    both leave unchanged was compiled by the clean copy; a program one of them changes has
    its own key), and a run's verdict does not depend on the others."""
    check_args = list(check_args)
    with tempfile.TemporaryDirectory(prefix="linfeat-mutants-") as work:
        snapshot, cache = Path(work) / "linfeat", Path(work) / "jax-cache"
        shutil.copytree(PACKAGE, snapshot, ignore=shutil.ignore_patterns("__pycache__"))
        for m in mutants:  # every edit must apply before hours of runs start
            apply(m, shutil.copytree(snapshot, Path(work) / "probe", dirs_exist_ok=True))
            shutil.rmtree(Path(work) / "probe")
        clean = _run_copy(None, check_args + _only(mutants, check_args), timeout, snapshot, cache)
        if progress:
            print(f"clean copy: {clean['outcome']} ({clean['seconds']:.0f} s)", file=sys.stderr)
        done = []

        def one(m):
            res = _run_copy(m, check_args + _only([m], check_args), timeout, snapshot, cache)
            done.append(m.name)
            if progress:
                print(
                    f"[{len(done)}/{len(mutants)}] {m.name}: {res['outcome']} "
                    f"({', '.join(res['failed']) or '-'}; {res['seconds']:.0f} s)",
                    file=sys.stderr,
                )
            return dict(name=m.name, path=m.path, bug=m.bug, **res)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            rows = list(pool.map(one, mutants))  # in the order of `mutants`
        digest = source_hash(snapshot)
    caught = sum(r["outcome"] == "caught" for r in rows)
    return dict(
        command="linfeat check " + " ".join(check_args + _only(mutants, check_args)),
        source_hash=digest,
        clean=clean,
        mutants=rows,
        caught=caught,
        total=len(rows),
        score=caught / max(len(rows), 1),
        jobs=max(1, jobs),
    )


def markdown_section(record: dict | None) -> list[str]:
    """paper_checks.md's "Mutation testing" section from a `run_mutants` record (or none)."""
    lines = ["## Mutation testing", ""]
    if record is None:
        return lines + [f"No record: run `linfeat mutate` (writes {DEFAULT_OUT}).", ""]
    stale = record["source_hash"] != source_hash()
    state = (
        " (**stale**: the source has changed since; rerun `linfeat mutate`)."
        if stale
        else " (the current source)."
    )
    lines += [
        f"- Score: **{record['caught']} of {record['total']}** mutants caught by "
        f"`{record['command']}` (a rigorous FAIL); the unmodified package: "
        f"{'passes' if record['clean']['outcome'] == 'survived' else 'DOES NOT PASS'}.",
        f"- Recorded on {record.get('date', '?')} for package source {record['source_hash']}"
        + state,
        "- Harness: `linfeat/checks/_mutants.py` (one edit per mutant, applied to a copy of the "
        "package, `linfeat check` in a fresh process"
        + (
            f"; {record['jobs']} mutants at a time on the same cores, so their times below "
            "include that sharing)."
            if record.get("jobs", 1) > 1
            else ")."
        ),
        "",
        "| mutant | bug | outcome | failing checks | s |",
        "|---|---|---|---|---:|",
    ]  # fmt: skip
    for r in record["mutants"]:
        lines.append(
            f"| {r['name']} | {r['bug']} | {r['outcome']} | {', '.join(r['failed']) or '-'} | "
            f"{r['seconds']:.0f} |"
        )
    return lines + [""]


def refresh_report(path: str, record: dict) -> None:
    """Replaces the "## Mutation testing" section of the report at `path` (written by
    `linfeat check`) by `markdown_section(record)`; the rest of the report is unchanged.
    A report without that section gets it appended."""
    lines = Path(path).read_text().split("\n")
    head = "## Mutation testing"
    if head in lines:
        start = lines.index(head)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), None)
        tail = lines[end:] if end is not None else []
        lines = lines[:start] + markdown_section(record) + tail
    else:
        lines = lines + [""] + markdown_section(record)
    atomic_write_text(path, "\n".join(lines))


def load(path: str = DEFAULT_OUT) -> dict | None:
    """The record written by `linfeat mutate`, or None when there is none."""
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else None


def add_arguments(parser) -> None:
    """Arguments of `linfeat mutate`."""
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to write the JSON record")
    parser.add_argument("--only", default=None, help="comma-separated mutant names (default: all)")
    parser.add_argument(
        "--check-args",
        default=" ".join(DEFAULT_CHECK_ARGS),
        help="arguments of each `linfeat check` run",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument(
        "--jobs", type=int, default=1, help="mutants run at once (after the clean copy)"
    )
    parser.add_argument(
        "--report",
        default="paper_checks.md",
        help="a report of `linfeat check` whose mutation section is rewritten from the new "
        "record, if the file exists ('' for none)",
    )


def run(args) -> int:
    """Runs the harness, writes the record; exit status 1 unless every mutant is caught."""
    mutants = MUTANTS
    if args.only:
        names = [x.strip() for x in args.only.split(",")]
        unknown = sorted(set(names) - {m.name for m in MUTANTS})
        if unknown:
            print(f"linfeat mutate: unknown mutant(s) {unknown}; choose from "
                  f"{', '.join(m.name for m in MUTANTS)}.")  # fmt: skip
            return 2
        mutants = tuple(m for m in MUTANTS if m.name in names)
    if args.jobs < 1:
        print(f"linfeat mutate: --jobs must be >= 1, got {args.jobs}.")
        return 2
    record = run_mutants(mutants, args.check_args.split(), args.timeout, jobs=args.jobs)
    record["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=1))
    print(f"mutation score {record['caught']}/{record['total']}; wrote {args.out}")
    if args.report and Path(args.report).exists():
        refresh_report(args.report, record)
        print(f"rewrote the mutation section of {args.report}")
    ok = record["clean"]["outcome"] == "survived" and record["caught"] == record["total"]
    return 0 if ok else 1
