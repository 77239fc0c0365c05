"""Workloads and measurements of the benchmark suite (see `benchmarks.runner`).

Sections (each a key of the results JSON; `report.py` renders them and computes the verdicts):

- `compile`: compile seconds of `lf.fine_tune` and `lf.fine_tune_batch` on shapes used
  nowhere else, and whether a second call with equal shapes recompiles (jit cache sizes).
- `natural_vs_batch`: the natural path `jax.jit(jax.vmap(lf.fine_tune))` against
  `lf.fine_tune_batch`, both at the library defaults, end to end, with metrics (the default)
  and without, on `small` (b = 1024, 4096) and on a `from_arrays` workload (b = 1024).
- `previous_release`: the same problems solved by the release before the one-engine
  rewrite (git commit `PREV_COMMIT`), in a separate process (`benchmarks/previous.py`), at
  its benchmark setting and at its defaults; and this release's `fine_tune_batch` at that
  benchmark setting on the same problems (`current_bench`, the like-for-like rows).
- `accuracy`: final w = B^T v of the first lanes of every method against a tight reference.
- `baselines`: SciPy DOP853 on the full state, SciPy BDF / Radau / LSODA on the reduced
  state with the analytic Jacobian, diffrax Kvaerno5 vmapped, on the first lanes of `small`.
- `dscaling`: one problem at d = 1e3, 1e4, 1e5 (set-up and solve, second call).
- `memory`: peak RSS of a fresh process running an `lf.sweep` of 100,000 `small` instances.
- `methods`, `setup`, `grad`: the method zoo, keys to per-lane metrics (and d = 1e9), and
  value + `jax.grad` against the forward cost.
- `flops`: XLA's flop and byte counts of one vmapped Rodas5P step and of one metrics
  evaluation, the bare step's time, and the useful FLOP/s of the `natural_vs_batch` solves.

Modes (`CONFIGS`): full, `--quick`, the hidden `--tiny` smoke test, and `--accelerator` for
a GPU/TPU host (4096-lane chunks, batches up to 65,536, its own section order; see
`benchmarks.runner`).

Accuracy protocol. Every method's final w = B^T v is compared with a tight reference,
`lf.fine_tune(p, v0, rtol=1e-13, atol=1e-15)`, in two ways:

- `rel_err_same_t` (the verdict): the reference integrated to *the method's own stop time*
  with no gradient test: the integration error of the method, whatever its stopping rule.
- `rel_err` (reported): the reference with *the same stopping rule* (gradient norm below the
  method's `grad_tol`, else its `t_max`). Thresholds that differ move the final state by
  ~grad_tol / curvature; but even the same threshold does not fix the stop point, because
  diffrax's event fires at the end of the step on which the test first passes (no root
  finding), and a solve at rtol 1e-9 and one at 1e-13 take different steps: on `small` with
  the default scale-aware threshold this spread was ~5e-7 relative, against ~1e-10 for the
  integration error. It measures the stopping rule, not the solver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import linfeat as lf
from linfeat import _batched as bt
from linfeat._engine import default_grad_tol, default_tolerances
from linfeat._runtime import release_compiled_programs

from . import baselines
from .runner import LineChild, machine, previous_release, rss_of_sweep

K = 10
ACC = 1e-8  # final w within 1e-8 (relative) of the tight reference
REF_TOL = dict(rtol=1e-13, atol=1e-15)
NO_STOP = 1e-300  # a gradient threshold that never fires
PREV_COMMIT = "4760ab2"  # the last commit before the one-engine rewrite
PREV_BENCH_SETTING = dict(with_metrics=False, rtol=1e-8, atol=1e-10)  # benchmarks/previous.py
LADDER = (1e-8, 1e-10, 1e-12)  # baseline rtols, loosest first (atol = rtol / 100)


@dataclass(frozen=True)
class Config:
    """Sizes of one mode of the suite (full, --quick, hidden --tiny)."""

    name: str
    d: int = 200
    m: int = 20
    n: int = 20
    small_batches: tuple = (1024, 4096)
    arrays_batch: int = 1024
    acc_lanes: int = 8
    base_lanes: int = 4
    dscaling: tuple = (1_000, 10_000, 100_000)
    dscaling_m: int = 50
    sweep_n: int = 100_000
    sweep_batch: int = 4096
    compile_batch: int = 64
    second_call_max_b: int = 1024  # larger batches: one call (see `timed`)
    with_metrics_off: tuple = ("small", "from_arrays")  # workloads also timed without metrics
    sweep_devices: int = 0  # devices of the sweep's child process; 0: one per core
    prev_timeout_s: int = 600
    # interleaved rounds (previous release, then this release, on the same problems) of the
    # like-for-like "bench" comparison; the report takes the median of the paired ratios,
    # so one slow minute on a shared host does not decide the verdict
    prev_rounds: int = 3
    child_timeout_s: int = 600  # per answer of the Kvaerno5 child
    # the sections' order (None: `SECTIONS`); the accelerator mode runs the #14 targets first,
    # so a run cut short by a device lease still returns them
    order: tuple | None = None
    flops_chunk: int | None = None  # lanes of the `flops` section's chunk (None: one CPU chunk)
    setup_batches: tuple | None = None  # batches of the `setup` section (None: the largest small)


CONFIGS = {
    "full": Config("full"),
    "quick": Config(
        "quick", small_batches=(1024,), arrays_batch=256, base_lanes=2,
        dscaling=(1_000, 10_000), sweep_n=10_000, prev_timeout_s=300, prev_rounds=2,
        with_metrics_off=("small",),
    ),
    # `--accelerator` (a GPU or TPU host): the library's accelerator chunk (4096 lanes) and a
    # batch 16 chunks wide; the CPU-only sections (SciPy baselines, the previous release's
    # worktree, host RSS) and the compile / d-scaling / zoo sections are skipped by the runner
    "accelerator": Config(
        "accelerator", small_batches=(4096, 65536), arrays_batch=1024, second_call_max_b=65536,
        with_metrics_off=("small",), flops_chunk=4096, setup_batches=(4096, 65536),
        order=("setup", "natural_vs_batch", "flops", "grad", "accuracy"),
    ),
    "tiny": Config(
        "tiny", d=40, small_batches=(8,), arrays_batch=8, acc_lanes=4, base_lanes=2,
        dscaling=(40, 400), dscaling_m=20, sweep_n=0, sweep_batch=8, compile_batch=4,
        prev_timeout_s=300, prev_rounds=1,
    ),
}  # fmt: skip
# the accelerator mode's order and set-up batches at the tiny sizes (`--accelerator --tiny`, a
# smoke test on CPU of what a device lease will run)
CONFIGS["tiny-accelerator"] = dataclasses.replace(
    CONFIGS["tiny"], order=CONFIGS["accelerator"].order, setup_batches=(8, 16)
)

# What one section hands to the next (trajectories, workloads): filled as sections run.
STATE: dict = {}


def checkpoint(res: dict) -> None:
    """Writes the results so far (`run_all` does after each section; the long sections after
    each row too, so a run stopped by a device lease or Ctrl-C keeps its finished rows)."""
    out = STATE.get("out")
    if out is not None:
        Path(out).write_text(json.dumps(res, indent=1, default=float))


def take(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------- timing


COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileClock:
    """Sums JAX's tracing, lowering and XLA compile durations (`jax.monitoring`) in a block."""

    def __enter__(self):
        self.seconds = 0.0

        def listener(event, duration, **kwargs):
            if event in COMPILE_EVENTS:
                self.seconds += duration

        self._listener = listener
        jax.monitoring.register_event_duration_secs_listener(listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def timed(fn, *args, second: bool = True, **kwargs):
    """(result, timings): first call (compile + run), second call (run), compile_s = first -
    second, and the compile time JAX itself reports for the first call (tracing, lowering,
    XLA; `compile_events_s`). With `second=False` (the largest batches, to save a full
    re-run) there is one call and run_s = first - compile_events_s: at b = 1024 the two
    ways agreed to ~0.5 s on a busy machine."""
    with CompileClock() as clock:
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **kwargs))
        first = time.perf_counter() - t
    if second:
        del out
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **kwargs))
        run = time.perf_counter() - t
    else:
        run = first - clock.seconds
    return out, dict(
        first_call_s=first, run_s=run, compile_s=first - run, compile_events_s=clock.seconds,
        timing="second call" if second else "first call minus JAX-reported compile",
    )  # fmt: skip


def status_fractions(status) -> dict:
    st = np.asarray(status)
    return dict(
        converged=float(np.mean(st == lf.Status.CONVERGED)),
        max_time=float(np.mean(st == lf.Status.MAX_TIME)),
        failed=float(np.mean(st >= lf.Status.STEP_LIMIT)),
    )


def w_final(tr, n: int) -> np.ndarray:
    """w = B_final^T v_final of the first n lanes of a batched trajectory, (n, d)."""
    sub = jax.tree.map(lambda x: x[:n], tr)
    return np.asarray(jnp.einsum("bkd,bk->bd", sub.B_final, sub.v_final))


# --------------------------------------------------------------------------- workloads


def small_workload(cfg: Config, b: int, seed: int = 0):
    """b `small` problems built from keys with jit(vmap(make_problem)), and Gaussian heads."""
    shape = dict(d=cfg.d, k=K, m=cfg.m, n=cfg.n, feature_error=0.5)
    keys = jax.random.split(jax.random.key(seed), b)
    build = jax.jit(jax.vmap(lambda kk: lf.make_problem(kk, **shape)))
    probs, t = timed(build, keys)
    v0s = jax.random.normal(jax.random.key(seed + 1), (b, K))
    info = dict(
        kind="small", b=b, **shape, build="jax.jit(jax.vmap(lf.make_problem))",
        setup_first_call_s=t["first_call_s"], setup_s=t["run_s"],
    )  # fmt: skip
    return probs, jax.block_until_ready(v0s), info


def make_batch(b: int, *, d: int = 200, m: int = 20, n: int = 20, seed: int = 0):
    """b `small`-style problems and heads (for the profiling scripts)."""
    probs, v0s, _ = small_workload(Config("adhoc", d=d, m=m, n=n), b, seed)
    return probs, v0s


def _orthonormal_rows(rng, k, d):
    return np.linalg.qr(rng.normal(size=(d, k)))[0].T


def _random_matrix(rng, d, cond):
    U = np.linalg.qr(rng.normal(size=(d, d)))[0]
    V = np.linalg.qr(rng.normal(size=(d, d)))[0]
    return (U * np.logspace(0, np.log10(cond), d)) @ V.T


def arrays_workload(cfg: Config, b: int, seed: int = 7, num_save: int = 32):
    """b problems from user arrays, same size class as `small`: built one by one
    (`lf.problem_from_arrays`, then `lf.stack_problems`) and at once from the stacked arrays
    (`lf.problems_from_arrays`, the set-up the targets count; both give the same leaves).

    Per instance: X = G M (G Gaussian n x d, M a random d x d matrix of condition number 10:
    a non-identity input covariance, not whitened), a dense random SPD OOD second moment
    W diag(U[1/2, 2]) W^T, B_star random orthonormal rows, B0 = rows of B_star plus noise,
    orthonormalised, v_star on the unit sphere, Y = X B_star^T v_star. Saves at
    `ts = linspace(0, T, 32)` up to the horizon T = 10 / median of the smallest non-zero
    eigenvalue of X^T X (the slowest mode relaxes by ~e^-10 by T).
    """
    rng = np.random.default_rng(seed)
    d, n = cfg.d, cfg.n
    t0 = time.perf_counter()
    raw = []
    for _ in range(b):
        X = rng.normal(size=(n, d)) @ _random_matrix(rng, d, 10.0)
        B_star = _orthonormal_rows(rng, K, d)
        B0 = np.linalg.qr(B_star.T + 0.3 * rng.normal(size=(d, K)))[0].T
        v_star = rng.normal(size=K)
        v_star /= np.linalg.norm(v_star)
        W = np.linalg.qr(rng.normal(size=(d, d)))[0]
        ood = (W * rng.uniform(0.5, 2.0, d)) @ W.T
        ood = 0.5 * (ood + ood.T)
        raw.append(dict(X=X, Y=X @ (B_star.T @ v_star), B0=B0, B_star=B_star, v_star=v_star,
                        ood_cov=ood))  # fmt: skip
    v0s = rng.normal(size=(b, K))
    t1 = time.perf_counter()
    problems = [lf.problem_from_arrays(**a) for a in raw]
    t2 = time.perf_counter()
    probs = jax.block_until_ready(lf.stack_problems(problems))
    t3 = time.perf_counter()
    stacked = {key: np.stack([a[key] for a in raw]) for key in raw[0]}
    t4 = time.perf_counter()
    batched = jax.block_until_ready(lf.problems_from_arrays(**stacked))
    t5 = time.perf_counter()
    for x, y in zip(jax.tree.leaves(batched), jax.tree.leaves(probs), strict=True):
        if not np.array_equal(np.asarray(x), np.asarray(y)):  # the same problems, both paths
            raise AssertionError("problems_from_arrays differs from the one-by-one problems")
    lam_min = [np.linalg.svd(a["X"], compute_uv=False)[-1] ** 2 for a in raw]
    T = float(f"{10.0 / np.median(lam_min):.2g}")
    info = dict(
        kind="from_arrays", b=b, d=d, k=K, n=n, cond_M=10.0, ood="dense random SPD",
        T=T, num_save=num_save, generate_s=t1 - t0, problem_from_arrays_s=t2 - t1,
        stack_s=t3 - t2, one_by_one_setup_s=t3 - t1, problems_from_arrays_s=t5 - t4,
        setup_s=t5 - t4,  # the batched builder: what a user with stacked arrays runs
    )  # fmt: skip
    ts = jnp.linspace(0.0, T, num_save)
    return probs, jnp.asarray(v0s), info, dict(ts=ts, t_max=T)


def save_workload(path: Path, probs, v0s, kw: dict, b: int) -> None:
    """The first b problems of a workload as flat arrays for `benchmarks/previous.py`."""
    flat = {}
    for name, x in probs._asdict().items():
        if hasattr(x, "_asdict"):  # a structured second moment (lf.subspace_cov)
            flat.update({f"{name}.{f}": np.asarray(y[:b]) for f, y in x._asdict().items()})
        elif x is not None:
            flat[name] = np.asarray(x[:b])
    flat["v0s"] = np.asarray(v0s[:b])
    if "ts" in kw:
        flat["ts"], flat["t_max"] = np.asarray(kw["ts"]), np.asarray(kw["t_max"])
    np.savez(path, **flat)


def workloads(cfg: Config) -> dict:
    """name -> (problems, heads, info, solver kwargs, batch sizes), built once per run."""
    if "workloads" not in STATE:
        bmax = max(cfg.small_batches)
        probs, v0s, info = small_workload(cfg, bmax)
        wl = {"small": (probs, v0s, info, {}, cfg.small_batches)}
        probs, v0s, info, kw = arrays_workload(cfg, cfg.arrays_batch)
        wl["from_arrays"] = (probs, v0s, info, kw, (cfg.arrays_batch,))
        STATE["workloads"] = wl
    return STATE["workloads"]


# --------------------------------------------------------------------------- sections


def section_compile(res, cfg: Config):
    """Compile seconds on shapes not used elsewhere (n = m + 4), and no recompilation."""
    from linfeat._flow import _solve_jit

    b = cfg.compile_batch
    keys = jax.random.split(jax.random.key(11), b)
    shape = dict(d=cfg.d, k=K, m=cfg.m, n=cfg.m + 4, feature_error=0.5)
    probs = jax.jit(jax.vmap(lambda kk: lf.make_problem(kk, **shape)))(keys)
    v0s = jax.random.normal(jax.random.key(12), (b, K))
    out = {"shape": shape, "batch": b}

    p, v0 = take(probs, 0), v0s[0]
    before = _solve_jit._cache_size()
    _, t = timed(lambda: lf.fine_tune(p, v0))
    out["fine_tune"] = dict(**t, cache_before=before, cache_after=_solve_jit._cache_size())
    # one more call with equal shapes (a new instance): must hit the cache
    lf.fine_tune(take(probs, 1), v0s[1])
    out["fine_tune"]["cache_after_third"] = _solve_jit._cache_size()

    static = dict(num_save=64, train_features=True, lp_init=False, max_steps=100_000,
                  outputs="full", with_metrics=True)  # fine_tune_batch's order  # fmt: skip
    before = bt._chunk_solver(None, **static)._cache_size()
    _, t = timed(lambda: lf.fine_tune_batch(probs, v0s))
    solver = bt._chunk_solver(None, **static)
    after = solver._cache_size()
    lf.fine_tune_batch(jax.tree.map(lambda x: x[::-1], probs), v0s[::-1])
    out["fine_tune_batch"] = dict(
        **t, cache_before=before, cache_after=after, cache_after_third=solver._cache_size()
    )
    for name in ("fine_tune", "fine_tune_batch"):
        r = out[name]
        # the first call compiles one executable; the second and third must reuse it
        r["recompiled"] = (r["cache_after"] - r["cache_before"] > 1) or (
            r["cache_after_third"] != r["cache_after"]
        )
        print(f"  compile {name}: first {r['first_call_s']:.2f} s, second {r['run_s']:.3f} s, "
              f"compile {r['compile_s']:.2f} s (JAX reports {r['compile_events_s']:.2f} s); "
              f"cache {r['cache_before']} -> {r['cache_after']} -> {r['cache_after_third']}",
              flush=True)  # fmt: skip
    res["compile"] = out


@functools.cache
def _natural(ts_key, with_metrics: bool):
    """The natural path: jax.jit(jax.vmap(fine_tune)), one jitted function per variant."""
    kw = {} if ts_key is None else dict(ts=jnp.asarray(ts_key[0]), t_max=ts_key[1])

    def one(p, v):
        tr = lf.fine_tune(p, v, check=False, **kw)
        # without metrics: drop them from the output, XLA removes their computation
        return tr if with_metrics else tr._replace(metrics=None, final_metrics=None)

    return jax.jit(jax.vmap(one))


def section_natural_vs_batch(res, cfg: Config):
    rows = res.setdefault("natural_vs_batch", [])
    res["workloads"] = {}
    for name, (probs_all, v0_all, info, kw, batches) in workloads(cfg).items():
        res["workloads"][name] = info
        ts_key = None if not kw else (tuple(np.asarray(kw["ts"]).tolist()), kw["t_max"])
        for b in batches:
            probs, v0s = take(probs_all, slice(0, b)), v0_all[:b]
            for with_metrics in (True, False) if name in cfg.with_metrics_off else (True,):
                for path in ("natural", "batch"):
                    two = b <= cfg.second_call_max_b
                    if path == "natural":
                        tr, t = timed(_natural(ts_key, with_metrics), probs, v0s, second=two)
                    else:
                        tr, t = timed(
                            lambda: lf.fine_tune_batch(probs, v0s, with_metrics=with_metrics,
                                                       **kw), second=two)  # fmt: skip
                    steps = np.asarray(tr.num_steps)
                    row = dict(
                        workload=name, batch=b, path=path, with_metrics=with_metrics, **t,
                        traj_per_s=b / t["run_s"], steps_mean=float(steps.mean()),
                        steps_max=int(steps.max()), **status_fractions(tr.status),
                    )  # fmt: skip
                    rows.append(row)
                    _print(row)
                    checkpoint(res)
                    if with_metrics and b == batches[-1]:
                        n = min(cfg.acc_lanes, b)
                        STATE.setdefault("finals", {})[(name, path)] = dict(
                            w=w_final(tr, n), t_final=np.asarray(tr.t_final[:n]),
                            status=np.asarray(tr.status[:n]),
                        )  # fmt: skip
                    del tr
            if name == "small" and b == batches[-1] and len(jax.devices()) > 1:
                ndev = len(jax.devices())
                tr, t = timed(lambda: lf.fine_tune_batch(probs, v0s, devices=ndev), second=two)
                steps = np.asarray(tr.num_steps)
                row = dict(
                    workload=name, batch=b, path=f"batch, {ndev} devices", with_metrics=True,
                    **t, traj_per_s=b / t["run_s"], steps_mean=float(steps.mean()),
                    steps_max=int(steps.max()), **status_fractions(tr.status),
                )  # fmt: skip
                rows.append(row)
                _print(row)
                del tr


def section_previous_release(res, cfg: Config, out_dir: Path):
    """The same problems through the previous release, in a fresh process per setting.

    The like-for-like comparison ("bench": both releases at the previous benchmark setting)
    runs `cfg.prev_rounds` interleaved rounds, each the previous release (fresh process)
    followed at once by this release on the same problems; the report pairs them by round.
    """
    out = res["previous_release"] = dict(commit=PREV_COMMIT, runs=[], rounds=cfg.prev_rounds)
    for name, (probs, v0s, _, kw, batches) in workloads(cfg).items():
        npz = out_dir / f"{name}.npz"
        save_workload(npz, probs, v0s, kw, max(batches))
        plan = [("bench", r) for r in range(cfg.prev_rounds)] + [("defaults", 0)]
        for setting, rnd in plan:
            r = previous_release(PREV_COMMIT, npz, setting, batches, cfg.acc_lanes,
                                 cfg.second_call_max_b, timeout=cfg.prev_timeout_s)  # fmt: skip
            r.update(workload=name, round=rnd)
            if "rows" in r:
                for row in r["rows"]:
                    n = len(row["w_final"])
                    fin = dict(w=np.asarray(row.pop("w_final")),
                               t_final=np.asarray(row.pop("t_final")),
                               status=np.asarray(row.pop("status")), n=n,
                               grad_tol=r["grad_tol"])  # fmt: skip
                    if rnd == 0:
                        STATE.setdefault("finals", {})[(name, f"previous {setting}",
                                                        row["batch"])] = fin  # fmt: skip
                    print(f"  previous release {name} b={row['batch']} {setting} "
                          f"(round {rnd}): {row['traj_per_s']:.1f} traj/s, steps "
                          f"{row['steps_mean']:.0f}, compile {row['compile_s']:.1f} s",
                          flush=True)  # fmt: skip
            else:
                print(f"  previous release {name} {setting}: {r.get('error', '')[-300:]}")
            out["runs"].append(r)
            if setting == "bench":
                _current_at_previous_setting(out, name, probs, v0s, kw, batches, cfg, rnd)
        npz.unlink()


def _current_at_previous_setting(out, name, probs, v0s, kw, batches, cfg, rnd):
    """This release at the previous release's benchmark setting, on the same problems: the
    like-for-like rows for "bench" (the library defaults differ)."""
    for b in batches:
        pb, vb = take(probs, slice(0, b)), v0s[:b]
        tr, t = timed(
            lambda: lf.fine_tune_batch(pb, vb, **{**kw, **PREV_BENCH_SETTING}),
            second=b <= cfg.second_call_max_b,
        )  # fmt: skip
        steps = np.asarray(tr.num_steps)
        row = dict(workload=name, batch=b, round=rnd, path="batch, previous bench setting",
                   with_metrics=False, **t, traj_per_s=b / t["run_s"],
                   steps_mean=float(steps.mean()), steps_max=int(steps.max()),
                   **status_fractions(tr.status))  # fmt: skip
        out.setdefault("current_bench", []).append(row)
        print(
            f"  this release {name} b={b} at the previous bench setting (round {rnd}): "
            f"{row['traj_per_s']:.1f} traj/s, steps {row['steps_mean']:.0f}",
            flush=True,
        )
        del tr


# --------------------------------------------------------------------------- accuracy


def _default_stop(probs, v0s, n, kw):
    """(grad_tol, t_max) that `fine_tune` uses by default on the first n lanes."""
    scale = default_tolerances(jnp.float64)[2]

    def one(p, v):
        lam = jnp.max(lf.reduce(p).sigma2)
        return default_grad_tol(lam, p.Y, v, scale), 1e6 / lam

    g, tm = jax.jit(jax.vmap(one))(take(probs, slice(0, n)), v0s[:n])
    g, tm = np.asarray(g), np.asarray(tm)
    if kw:
        tm = np.full(n, float(kw["t_max"]))
    return g, tm


_REFS: dict = {}


def reference(key, p, v0, t_max: float, grad_tol: float) -> tuple[np.ndarray, float, int]:
    """w = B^T v of the tight solve `lf.fine_tune(rtol 1e-13, atol 1e-15)` with this stop
    rule (gradient below grad_tol, or t_max); memoised. Returns (w, t_stop, status)."""
    k = (key, float(t_max), float(grad_tol))
    if k not in _REFS:
        tr = lf.fine_tune(
            p, v0, ts=jnp.asarray([0.0, t_max]), t_max=t_max, grad_tol=grad_tol, check=False,
            **REF_TOL,
        )  # fmt: skip
        _REFS[k] = (np.asarray(tr.B_final.T @ tr.v_final), float(tr.t_final), int(tr.status))
    return _REFS[k]


def _accuracy_row(name, method, probs, v0s, fin, grad_tols, t_maxs, grad_tol_kind):
    n = len(fin["w"])
    e, e_t, bad = [], [], []
    for i in range(n):
        p, v0 = take(probs, i), v0s[i]
        w_ref, _, st = reference((name, i), p, v0, t_maxs[i], grad_tols[i])
        w_t, _, st_t = reference((name, i), p, v0, fin["t_final"][i], NO_STOP)
        e.append(rel(fin["w"][i], w_ref))
        e_t.append(rel(fin["w"][i], w_t))
        bad += [s for s in (st, st_t) if s >= lf.Status.STEP_LIMIT]
    row = dict(
        workload=name, method=method, lanes=n, grad_tol=grad_tol_kind,
        rel_err=e, max_rel_err=max(e), rel_err_same_t=e_t, max_rel_err_same_t=max(e_t),
        reference_failures=len(bad), judged_on="rel_err_same_t",
        ok=bool(max(e_t) < ACC and not bad),
    )  # fmt: skip
    print(f"  accuracy {name:12s} {method:34s} max rel err {max(e_t):.1e} (same time), "
          f"{max(e):.1e} (same stop rule)  {'OK' if row['ok'] else 'FAIL'}",
          flush=True)  # fmt: skip
    return row


def section_accuracy(res, cfg: Config):
    acc = res.setdefault("accuracy", [])
    finals = STATE.get("finals", {})
    for name, (probs, v0s, _, kw, batches) in workloads(cfg).items():
        n = min(cfg.acc_lanes, batches[-1])
        g, tm = _default_stop(probs, v0s, n, kw)
        for path, label in (("natural", "natural jit(vmap(fine_tune))"),
                            ("batch", "fine_tune_batch")):  # fmt: skip
            if (name, path) in finals:
                acc.append(_accuracy_row(name, label, probs, v0s, finals[(name, path)], g, tm,
                                         "default (scale-aware)"))  # fmt: skip
        for setting in ("bench", "defaults"):
            fin = finals.get((name, f"previous {setting}", batches[-1]))
            if fin is not None:
                gt = np.full(fin["n"], fin["grad_tol"])
                acc.append(_accuracy_row(name, f"previous release {setting}", probs, v0s, fin,
                                         gt, tm, f"{fin['grad_tol']:g} absolute"))  # fmt: skip


# --------------------------------------------------------------------------- baselines


def _linfeat_stop(cfg: Config, n: int):
    """linfeat's stop time and threshold on the first n `small` lanes (library defaults)."""
    probs, v0s, _, kw, _ = workloads(cfg)["small"]
    fin = STATE.get("finals", {}).get(("small", "batch"))
    if fin is None or len(fin["t_final"]) < n:
        tr = lf.fine_tune_batch(take(probs, slice(0, n)), v0s[:n], with_metrics=False)
        fin = dict(w=w_final(tr, n), t_final=np.asarray(tr.t_final))
    g, _ = _default_stop(probs, v0s, n, kw)
    return probs, v0s, fin, g


def _ladder(name, run, lanes, check, extra=None):
    """Runs `run(rtol, atol)` -> (ws, t_stops, info, seconds) from the loosest rtol of
    `LADDER` until every lane is within ACC (same-time comparison)."""
    cal = []
    for rtol in LADDER:
        ws, t_stops, info, secs = run(rtol, rtol * 1e-2)
        errs = [check(i, ws[i], t_stops[i]) for i in range(lanes)]
        cal.append(dict(rtol=rtol, atol=rtol * 1e-2, run_s=secs, max_rel_err_same_t=max(errs),
                        **info))  # fmt: skip
        print(
            f"  baseline {name:34s} rtol {rtol:.0e}: {secs:8.3f} s for {lanes} "
            f"({lanes / secs:8.2f} traj/s), max rel err {max(errs):.1e}",
            flush=True,
        )
        if max(errs) < ACC:
            break
    best = cal[-1]
    return dict(
        method=name,
        lanes=lanes,
        rtol=best["rtol"],
        atol=best["atol"],
        run_s=best["run_s"],
        traj_per_s=lanes / best["run_s"],
        max_rel_err_same_t=best["max_rel_err_same_t"],
        ok=bool(best["max_rel_err_same_t"] < ACC),
        calibration=cal,
        **(extra or {}),
    )


def kvaerno5_server(path: str) -> None:
    """Child process of `_kvaerno5_row`: loads the lanes, compiles, then answers one
    `{"rtol", "atol"}` request per line with the timed jit(vmap) Kvaerno5 solve."""
    z = np.load(path)
    args = tuple(jnp.asarray(z[k]) for k in ("sigma2", "g", "v0", "A0", "t_max", "grad_tol"))
    kv = baselines.kvaerno5_vmap()
    with CompileClock() as clock:
        t = time.perf_counter()
        jax.block_until_ready(kv(*args, 1e-8, 1e-10))
        first = time.perf_counter() - t
    print("RESULT" + json.dumps(dict(first_call_s=first, compile_events_s=clock.seconds)),
          flush=True)  # fmt: skip
    for line in sys.stdin:
        req = json.loads(line)
        t = time.perf_counter()
        out = jax.block_until_ready(kv(*args, req["rtol"], req["atol"]))
        secs = time.perf_counter() - t
        v, A, ts, steps, conv, failed = (np.asarray(x).tolist() for x in out)
        print("RESULT" + json.dumps(dict(v=v, A=A, ts=ts, steps=steps, failed=failed,
                                         run_s=secs)), flush=True)  # fmt: skip


def _kvaerno5_row(cfg: Config, n, P, V0, reds, t_stop, g, check) -> dict:
    """diffrax Kvaerno5 (jit(vmap)) in a child process with a deadline per solve: its Newton
    solves use batched LAPACK LU, which can deadlock on a 2-thread CPU pool."""
    tmp = Path(STATE.get("out_dir", ".")) / "kvaerno5_lanes.npz"
    np.savez(tmp, sigma2=np.stack([r.sigma2 for r in reds]), g=np.stack([r.g for r in reds]),
             v0=np.stack(V0), A0=np.stack([r.A0 for r in reds]), t_max=np.asarray(t_stop),
             grad_tol=np.asarray(g))  # fmt: skip
    child = LineChild(
        "import jax; jax.config.update('jax_enable_x64', True); "
        f"from benchmarks import suite; suite.kvaerno5_server({str(tmp)!r})"
    )
    extra = dict(state=f"(v, A) in R^{K + K * cfg.m}", process="child, deadline per solve",
                 jacobian="jax.jacfwd in diffrax's VeryChord, dense LU (lineax)")  # fmt: skip
    name = "diffrax Kvaerno5, reduced, jit(vmap)"
    try:
        ready = child.ask(None, timeout=cfg.child_timeout_s)

        def kv_run(rtol, atol):
            r = child.ask(dict(rtol=rtol, atol=atol), timeout=cfg.child_timeout_s)
            v, A = np.asarray(r["v"]), np.asarray(r["A"])
            ws = [(P[i].B0 + (A[i] - reds[i].A0) @ reds[i].basis.T).T @ v[i] for i in range(n)]
            info = dict(steps_mean=float(np.mean(r["steps"])), failed=int(np.sum(r["failed"])))
            return ws, np.asarray(r["ts"]), info, r["run_s"]

        row = _ladder(name, kv_run, n, check, extra)
        row.update(first_call_s=ready["first_call_s"], compile_events_s=ready["compile_events_s"],
                   compile_s=ready["first_call_s"] - row["calibration"][0]["run_s"])  # fmt: skip
    except (TimeoutError, RuntimeError) as e:
        row = dict(method=name, lanes=n, error=str(e), stderr=child.stderr_tail(500), ok=False,
                   **extra)  # fmt: skip
        print(f"  baseline {name}: {e}", flush=True)
    finally:
        child.close()
        tmp.unlink(missing_ok=True)
    return row


def section_baselines(res, cfg: Config):
    n = cfg.base_lanes
    probs, v0s, fin, g = _linfeat_stop(cfg, n)
    t_stop = fin["t_final"][:n]
    P = [jax.tree.map(np.asarray, take(probs, i)) for i in range(n)]
    V0 = [np.asarray(v0s[i]) for i in range(n)]
    reduce_jit = jax.jit(lf.reduce)
    reds = [jax.tree.map(np.asarray, reduce_jit(take(probs, i))) for i in range(n)]
    jac_err = baselines.check_jacobian(
        reds[0].sigma2, reds[0].g, K, np.concatenate([V0[0], reds[0].A0.ravel()])
    )

    def check(i, w, ts):
        return rel(w, reference(("small", i), take(probs, i), v0s[i], ts, NO_STOP)[0])

    rows = []

    def scipy_run(fn, **kws):
        def run(rtol, atol):
            t = time.perf_counter()
            outs = [fn(i, rtol=rtol, atol=atol, **kws) for i in range(n)]
            secs = time.perf_counter() - t
            return ([o[0] for o in outs], [o[1] for o in outs],
                    dict(nfev_mean=float(np.mean([o[2] for o in outs]))), secs)  # fmt: skip

        return run

    blas = contextlib.ExitStack()
    blas_libs = blas.enter_context(baselines.blas_threads(1))
    full = scipy_run(lambda i, **kw: baselines.scipy_full(
        P[i].X, P[i].Y, P[i].B0, V0[i], t_max=t_stop[i], grad_tol=g[i], **kw))  # fmt: skip
    rows.append(
        _ladder(
            "scipy DOP853, full state",
            full,
            n,
            check,
            dict(state=f"(v, B) in R^{K + K * cfg.d}", jacobian="none (explicit)"),
        )
    )
    for method in ("BDF", "Radau", "LSODA"):
        red_run = scipy_run(
            lambda i, **kw: baselines.scipy_reduced(
                reds[i], P[i].B0, V0[i], t_max=t_stop[i], grad_tol=g[i], **kw
            ),
            method=method,
        )
        rows.append(
            _ladder(
                f"scipy {method}, reduced state",
                red_run,
                n,
                check,
                dict(
                    state=f"(v, A) in R^{K + K * cfg.m}",
                    jacobian="analytic, NumPy (baselines.reduced_jacobian)",
                ),
            )
        )

    blas.close()
    rows.append(_kvaerno5_row(cfg, n, P, V0, reds, t_stop, g, check))
    res["baselines"] = dict(
        workload="small", lanes=n, jacobian_check_rel=jac_err, scipy_blas_threads=1,
        scipy_blas_libraries=blas_libs, horizon="linfeat's stop time on each instance",
        stop="gradient norm below linfeat's default threshold, else the horizon", rows=rows,
    )  # fmt: skip


# --------------------------------------------------------------------------- d-scaling


def section_dscaling(res, cfg: Config):
    rows = res.setdefault("dscaling", [])
    for d in cfg.dscaling:
        shape = dict(d=d, k=K, m=cfg.dscaling_m, feature_error=0.5)
        mk = jax.jit(lambda kk, shape=shape: lf.make_problem(kk, **shape))
        p, t_mk = timed(mk, jax.random.key(2))
        _, t_red = timed(jax.jit(lf.reduce), p)
        v0 = jax.random.normal(jax.random.key(3), (K,))
        tr, t_ft = timed(lf.fine_tune, p, v0)
        row = dict(
            **shape, n=2 * cfg.dscaling_m, make_problem_s=t_mk["run_s"],
            make_problem_compile_s=t_mk["compile_s"], reduce_s=t_red["run_s"],
            solve_s=t_ft["run_s"], compile_s=t_ft["compile_s"],
            compile_events_s=t_ft["compile_events_s"], steps=int(tr.num_steps),
            status=int(tr.status),
        )  # fmt: skip
        rows.append(row)
        print(f"  d-scaling d={d:.0e}: make_problem {row['make_problem_s']:.3f} s, reduce "
              f"{row['reduce_s']:.4f} s, fine_tune {row['solve_s']:.4f} s (compile "
              f"{row['compile_s']:.1f} s), {row['steps']} steps, status {row['status']}",
              flush=True)  # fmt: skip
        del p, tr


# --------------------------------------------------------------------------- memory


def memory_sweep(n: int, batch_size: int, d: int = 200, m: int = 20) -> dict:
    """n `small` instances built and solved chunk by chunk by `lf.sweep` (fresh process)."""
    devices = len(jax.devices()) if len(jax.devices()) > 1 else None

    def instance(key):
        p = lf.make_problem(key, d=d, k=K, m=m, n=m, feature_error=0.5)
        return p, jax.random.normal(jax.random.fold_in(key, 1), (K,))

    keys = jax.random.split(jax.random.key(5), n)
    tr = lf.sweep(instance, keys, batch_size=batch_size, progress=False, outputs="metrics",
                  devices=devices)  # fmt: skip
    return dict(
        n=n,
        batch_size=batch_size,
        devices=1 if devices is None else devices,
        outputs="metrics",
        with_metrics=tr.metrics is not None,
        steps_mean=float(np.mean(tr.num_steps)),
        **status_fractions(tr.status),
    )


def section_memory(res, cfg: Config):
    if cfg.sweep_n <= 0:
        res["memory"] = dict(skipped=f"{cfg.name} mode")
        return
    devices = cfg.sweep_devices or os.cpu_count() or 1  # a sweep uses one device per core
    out = rss_of_sweep(cfg.sweep_n, cfg.sweep_batch, devices, d=cfg.d, m=cfg.m)
    res["memory"] = out
    print(f"  memory: {out}", flush=True)


# --------------------------------------------------------------------------- methods (the zoo)


def section_methods(res, cfg: Config):
    """FT and every flow of `linfeat.methods` on the same `compile_batch` small problems, each
    `jax.jit(jax.vmap(method))` through the one engine (second calls; default tolerances; knobs
    at moderate values). Surgical FT, LoRA and depth 3 change the parametrisation and each
    have a structured Rosenbrock solve: measured --tiny (d = 40, 4 lanes, load ~11 on 2 cores),
    run 0.10, 0.16, 0.15, 0.11 s; with the dense Jacobian solve LoRA and depth 3 had taken
    5.6 s and 51 s (N = 130 and 310 state numbers, O(N^3) per step). WiSE-FT is FT plus an
    interpolation of its end point; L2-SP, layer-wise rates, partial LP then FT and weight
    decay are FT's reduced flow with other coefficients."""
    from linfeat import methods as M

    b = cfg.compile_batch
    probs, v0s, _ = small_workload(cfg, b, seed=11)
    A0 = M.lora_init(jax.random.key(12), 4, cfg.d)
    runs = {
        "fine_tune": lambda p, v: lf.fine_tune(p, v, check=False),
        "wise_ft (alpha 0.5)": lambda p, v: M.wise_ft(p, v, alpha=0.5, check=False),
        "l2_sp (lam 0.1, lam_v 0.1)": lambda p, v: M.l2_sp(p, v, lam=0.1, lam_v=0.1, check=False),
        "layerwise_ft (eta_B / eta_v = 4)": lambda p, v: M.layerwise_ft(
            p, v, eta_v=0.5, eta_B=2.0, check=False
        ),
        "partial_lp_ft (tau 1)": lambda p, v: M.partial_lp_ft(p, v, tau=1.0, check=False),
        "weight_decay_ft (mu 0.01)": lambda p, v: M.weight_decay_ft(p, v, mu=0.01, check=False),
        "surgical_fine_tune": lambda p, v: M.surgical_fine_tune(p, v, check=False),
        "lora_fine_tune (rank 4)": lambda p, v: M.lora_fine_tune(p, v, A0=A0, check=False),
        "depth3_fine_tune": lambda p, v: M.depth3_fine_tune(p, v, check=False),
    }
    rows = res.setdefault("methods", [])
    for name, fn in runs.items():
        tr, t = timed(jax.jit(jax.vmap(fn)), probs, v0s)
        steps = np.asarray(tr.num_steps)
        row = dict(method=name, batch=b, d=cfg.d, k=K, m=cfg.m, run_s=t["run_s"],
                   compile_s=t["compile_s"], traj_per_s=b / t["run_s"],
                   steps_mean=float(steps.mean()), steps_max=int(steps.max()),
                   **status_fractions(tr.status))  # fmt: skip
        rows.append(row)
        print(f"  {name:34s} b={b} run {row['run_s']:.3f} s ({row['traj_per_s']:.1f} traj/s), "
              f"compile {row['compile_s']:.1f} s, steps {row['steps_mean']:.0f} / "
              f"{row['steps_max']}, converged {row['converged']:.1%}", flush=True)  # fmt: skip
        del tr


# --------------------------------------------------------------------------- set-up (small basis)


def section_setup(res, cfg: Config):
    """From keys to per-lane metrics on `small`, with the problems drawn in R^d
    (`basis="full"`) and in their own (m + 2k)-dimensional basis (`basis="small"`, Bartlett;
    docs/theory.md section 1.7), each `jax.jit(jax.vmap(lf.make_problem))` then
    `fine_tune_batch(outputs="metrics")`; and `make_problem` + `fine_tune` at d = 1e9."""
    shape = dict(d=cfg.d, k=K, m=cfg.m, n=cfg.n, feature_error=0.5)
    rows = res.setdefault("setup", [])
    for b, basis in [(b, basis) for b in cfg.setup_batches or cfg.small_batches[-1:]
                     for basis in ("full", "small")]:  # fmt: skip
        keys = jax.random.split(jax.random.key(21), b)
        v0s = jax.block_until_ready(jax.random.normal(jax.random.key(22), (b, K)))
        build = jax.jit(jax.vmap(lambda kk, basis=basis: lf.make_problem(kk, **shape, basis=basis)))
        probs, t_b = timed(build, keys)
        tr, t_s = timed(lambda p, v: lf.fine_tune_batch(p, v, outputs="metrics"), probs, v0s,
                        second=b <= cfg.second_call_max_b)  # fmt: skip
        total = t_b["run_s"] + t_s["run_s"]
        row = dict(basis=basis, batch=b, **shape, columns=int(probs.X.shape[-1]),
                   setup_s=t_b["run_s"], setup_per_problem_ms=1e3 * t_b["run_s"] / b,
                   setup_compile_s=t_b["compile_s"], solve_s=t_s["run_s"],
                   solve_timing=t_s["timing"], end_to_end_traj_per_s=b / total,
                   steps_mean=float(np.mean(tr.num_steps)),
                   **status_fractions(tr.status))  # fmt: skip
        rows.append(row)
        checkpoint(res)
        print(f"  basis={basis:5s} b={b} ({row['columns']} columns): set-up "
              f"{row['setup_per_problem_ms']:.3f} ms/problem, solve {row['solve_s']:.2f} s, "
              f"end to end {row['end_to_end_traj_per_s']:.0f} traj/s, steps "
              f"{row['steps_mean']:.0f}, converged {row['converged']:.1%}", flush=True)  # fmt: skip
        del probs, tr
    big = dict(d=10**9, k=K, m=cfg.m, n=cfg.n, feature_error=0.5, basis="small")
    mk = jax.jit(lambda kk: lf.make_problem(kk, **big))
    p, t_mk = timed(mk, jax.random.key(23))
    v0 = jax.random.normal(jax.random.key(24), (K,))
    tr, t_ft = timed(lambda p, v: lf.fine_tune(p, v, check=False), p, v0)
    res["setup_billion"] = dict(
        **big, make_problem_s=t_mk["run_s"], make_problem_compile_s=t_mk["compile_s"],
        solve_s=t_ft["run_s"], solve_compile_s=t_ft["compile_s"],
        total_s=t_mk["run_s"] + t_ft["run_s"], steps=int(tr.num_steps), status=int(tr.status),
    )  # fmt: skip
    print(f"  d = 1e9 (basis small): make_problem {t_mk['run_s'] * 1e3:.2f} ms + fine_tune "
          f"{t_ft['run_s'] * 1e3:.1f} ms (compiles {t_mk['compile_s']:.1f} s + "
          f"{t_ft['compile_s']:.1f} s), status {int(tr.status)}", flush=True)  # fmt: skip


# --------------------------------------------------------------------------- gradient sweeps


def section_grad(res, cfg: Config):
    """Cost of value + `jax.grad` of a batch-mean OOD error against the value alone, for two
    knobs: the problem's `feature_error` (through `make_problem` and FT) and WiSE-FT's alpha
    with L2-SP's lambda (through the zoo's `combined_ft`, as in the `zoo` experiment's tuning)."""
    from linfeat import methods as LM

    b = cfg.compile_batch * 4
    keys = jax.random.split(jax.random.key(31), b)
    v0s = jax.random.normal(jax.random.key(32), (b, K))
    shape = dict(d=cfg.d, k=K, m=cfg.m, n=cfg.n)

    def eps_loss(eps):
        def one(kk, v):
            p = lf.make_problem(kk, **shape, feature_error=eps)
            return lf.fine_tune(p, v, check=False).final_metrics.ood_error

        return jnp.mean(jax.vmap(one)(keys, v0s))

    probs, _, _ = small_workload(cfg, b, seed=33)

    def zoo_loss(u):
        def one(p, v):
            tr = LM.combined_ft(p, v, alpha=u[0], lam=jnp.exp(u[1]), lam_v=jnp.exp(u[1]),
                                tau=0.0, eta_B=1.0, mu=0.0, check=False)  # fmt: skip
            return tr.final_metrics.ood_error

        return jnp.mean(jax.vmap(one)(probs, v0s))

    rows = res.setdefault("grad", [])
    for name, fn, x in (("feature_error (make_problem + FT)", eps_loss, jnp.asarray(0.3)),
                        ("alpha, log lambda (WiSE-FT + L2-SP)", zoo_loss,
                         jnp.asarray([0.7, jnp.log(0.05)]))):  # fmt: skip
        val, t_f = timed(jax.jit(fn), x)
        (val2, g), t_g = timed(jax.jit(jax.value_and_grad(fn)), x)
        row = dict(knob=name, batch=b, forward_s=t_f["run_s"], value_and_grad_s=t_g["run_s"],
                   ratio=t_g["run_s"] / t_f["run_s"], forward_compile_s=t_f["compile_s"],
                   grad_compile_s=t_g["compile_s"],
                   grad_finite=bool(np.all(np.isfinite(np.asarray(g)))),
                   value_match=rel(val2, val))  # fmt: skip
        rows.append(row)
        print(f"  {name:38s} b={b}: forward {row['forward_s']:.2f} s, value+grad "
              f"{row['value_and_grad_s']:.2f} s ({row['ratio']:.2f}x), gradient finite "
              f"{row['grad_finite']}", flush=True)  # fmt: skip


# --------------------------------------------------------------------------- FLOP/s


def _xla_cost(fn, *args) -> dict:
    """XLA's cost analysis of `jax.jit(fn)(*args)`: flops and bytes accessed of one call (a
    loop body counts once, so `fn` must be loop-free)."""
    ca = jax.jit(fn).lower(*args).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return dict(flops=float(ca.get("flops", 0.0)), bytes=float(ca.get("bytes accessed", 0.0)))


def bare_step(reds, v0s):
    """(step, y0, data, h): one Rodas5P step of the FT flow on a batch's reduced problems from
    their initial state, with a step of the size the solver takes early on (vmap it)."""
    from linfeat._flows import FineTune
    from linfeat._rodas5p import Rodas5P

    flow = FineTune()

    def step(y, data, h):
        y1, _, _, _, _ = Rodas5P(flow).step(None, 0.0, h, y, data, flow.field(y, data), False)
        return y1

    return step, (v0s, reds.A0), reds.flow_data, 1e-3 / jnp.max(reds.sigma2, axis=-1)


def step_tangent(step):
    """(y, d, h) -> the JVP of one `bare_step` step at y in the direction y."""
    return lambda y, d, h: jax.jvp(lambda y: step(y, d, h), (y,), (y,))[1]


def step_cotangent(step):
    """(y, d, h) -> the VJP of one `bare_step` step at y with cotangent y (the state's part)."""

    def vjp(y, d, h):
        _, pull = jax.vjp(lambda y: step(y, d, h), y)
        return pull(y)[0]

    return vjp


def bare_step_timer(reds, v0s, reps: int = 64, derivative=None):
    """A function timing `reps` bare steps in a `fori_loop` (so dispatch is amortised) under
    `jit(vmap)`, compiled once here: each call returns seconds per lane-step of one run.
    With `derivative` (`step_tangent` or `step_cotangent`: step -> (y, d, h) -> a tree like
    y), each iteration also computes it and nudges the state by 1e-12 times it, so the loop
    carries the derivative's cost."""
    step, y0, data, h = bare_step(reds, v0s)
    body = step
    if derivative is not None:
        deriv = derivative(step)

        def body(y, d, h):
            return jax.tree.map(lambda a, t: a + 1e-12 * t, y, deriv(y, d, h))

    loop = jax.jit(
        jax.vmap(lambda y, d, h: jax.lax.fori_loop(0, reps, lambda i, y: body(y, d, h), y))
    )
    jax.block_until_ready(loop(y0, data, h))
    lanes = v0s.shape[0]

    def once() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(loop(y0, data, h))
        return (time.perf_counter() - t0) / (reps * lanes)

    return once


def section_flops(res, cfg: Config):
    """FLOP per lane-step (XLA's cost analysis of one vmapped Rodas5P step of the FT flow on a
    CPU chunk of `small` lanes) and per metrics evaluation, the bare step's measured time, and
    the achieved FLOP/s of the `natural_vs_batch` solves they imply, against the roofline."""
    from linfeat._metrics import reduced_metrics

    # one chunk of `fine_tune_batch`: CPU_LANES, or the accelerator mode's chunk
    b = 8 if cfg.name == "tiny" else cfg.flops_chunk or bt.CPU_LANES
    probs, v0s, _ = small_workload(cfg, b, seed=41)
    reds = jax.jit(jax.vmap(lf.reduce))(probs)
    step, y0, data, h = bare_step(reds, v0s)

    def metrics(red, v, A, v0):
        return reduced_metrics(red, v, A, v0)

    c_step = _xla_cost(jax.vmap(step), y0, data, h)
    c_met = _xla_cost(jax.vmap(metrics), reds, v0s, reds.A0, v0s)
    timer = bare_step_timer(reds, v0s)
    step_s = min(timer() for _ in range(3))
    out = res["flops"] = dict(
        chunk=b, flop_per_lane_step=c_step["flops"] / b, bytes_per_lane_step=c_step["bytes"] / b,
        flop_per_metrics_eval=c_met["flops"] / b, bytes_per_metrics_eval=c_met["bytes"] / b,
        bare_step_s=step_s, bare_step_flops=c_step["flops"] / b / step_s,
        note="XLA HloCostAnalysis counts (an elementwise op is one flop per element); the "
             "metrics count has each loop's body once (the Newton-Schulz polar factor's while "
             "loop, 6-30 steps, and the bisections' 64 halvings), so it is a lower bound",
    )  # fmt: skip
    solves = []
    for r in res.get("natural_vs_batch", []):
        if r["workload"] != "small":
            continue
        evals = 65 if r["with_metrics"] else 0  # 64 saves and the stop
        flop = r["batch"] * (r["steps_mean"] * out["flop_per_lane_step"]
                             + evals * out["flop_per_metrics_eval"])  # fmt: skip
        solves.append(dict(batch=r["batch"], path=r["path"], with_metrics=r["with_metrics"],
                           useful_flops=flop / r["run_s"]))  # fmt: skip
    out["solves"] = solves
    print(f"  {out['flop_per_lane_step']:.0f} flop and {out['bytes_per_lane_step'] / 1e3:.0f} kB "
          f"per lane-step; bare step {step_s * 1e6:.2f} us per lane = "
          f"{out['bare_step_flops'] / 1e9:.2f} GFLOP/s; metrics >= "
          f"{out['flop_per_metrics_eval']:.0f} flop per evaluation", flush=True)  # fmt: skip
    for r in solves:
        print(f"  small b={r['batch']} {r['path']} metrics={r['with_metrics']}: "
              f"{r['useful_flops'] / 1e9:.2f} GFLOP/s useful", flush=True)  # fmt: skip


# --------------------------------------------------------------------------- driver


def _print(r):
    print(
        f"  {r['workload']:12s} b={r['batch']:<5d} {r['path']:8s} "
        f"metrics={str(r['with_metrics']):5s} run {r['run_s']:8.3f} s  "
        f"compile {r['compile_s']:6.2f} s ({r['compile_events_s']:.2f})"
        f"  {r['traj_per_s']:8.1f} traj/s  steps {r['steps_mean']:.0f} / {r['steps_max']}"
        f"  converged {r['converged']:.1%}",
        flush=True,
    )


SECTIONS = ("compile", "natural_vs_batch", "previous_release", "accuracy", "baselines",
            "dscaling", "memory", "methods", "setup", "grad", "flops")  # fmt: skip


def run_all(*, mode: str = "full", skip=frozenset(), out=None) -> dict:
    cfg = CONFIGS[mode]
    STATE.clear()
    _REFS.clear()
    rtol, atol, gscale = default_tolerances(jnp.float64)
    res = {
        "mode": mode, "quick": mode == "quick", "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "protocol": dict(
            k=K, acc=ACC, reference=dict(**REF_TOL, solver="lf.fine_tune (Rodas5P)"),
            defaults=dict(rtol=rtol, atol=atol, grad_scale=gscale),
            previous_commit=PREV_COMMIT, baseline_ladder=list(LADDER),
        ),
    }  # fmt: skip
    m = res["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, load {m['load_avg_1_5_15']}, peak "
          f"{m['peak_flops_measured'] / 1e9:.1f} GFLOP/s (matmul), DRAM "
          f"{m['dram_bandwidth_measured'] / 1e9:.1f} GB/s (triad); mode {mode}")  # fmt: skip
    if "accelerator" in m:
        a = m["accelerator"]
        print(f"accelerator: {a['device_kind']} x {a['count']}, f64 matmul "
              f"{a['peak_flops_f64'] / 1e12:.1f} TFLOP/s, copy {a['bandwidth'] / 1e9:.0f} GB/s "
              "(read + write)", flush=True)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="linfeat_bench_"))  # workload arrays for the children
    STATE["out_dir"], STATE["out"] = str(tmp), out
    fns = {
        "compile": lambda: section_compile(res, cfg),
        "natural_vs_batch": lambda: section_natural_vs_batch(res, cfg),
        "previous_release": lambda: section_previous_release(res, cfg, tmp),
        "accuracy": lambda: section_accuracy(res, cfg),
        "baselines": lambda: section_baselines(res, cfg),
        "dscaling": lambda: section_dscaling(res, cfg),
        "memory": lambda: section_memory(res, cfg),
        "methods": lambda: section_methods(res, cfg),
        "setup": lambda: section_setup(res, cfg),
        "grad": lambda: section_grad(res, cfg),
        "flops": lambda: section_flops(res, cfg),
    }
    for name in cfg.order or SECTIONS:
        if name in skip:
            continue
        print(f"\n== {name} ==", flush=True)
        t = time.perf_counter()
        fns[name]()
        res.setdefault("section_s", {})[name] = time.perf_counter() - t
        release_compiled_programs()  # XLA:CPU maps pages per kernel (linfeat/_runtime.py)
        checkpoint(res)  # keep what is measured even if a later section fails
    shutil.rmtree(tmp, ignore_errors=True)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    res["load_avg_end"] = list(os.getloadavg())
    return res
