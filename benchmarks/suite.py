"""Workloads and measurements of the benchmark suite (see `benchmarks.runner`)."""

from __future__ import annotations

import json
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import linfeat as lf
from linfeat import _batched as bt
from linfeat._sharding import batch_mesh

from . import baselines
from .runner import machine, rss_of_sweep

K = 10
ACC = 1e-8  # final w within 1e-8 (relative) of the tight reference


def make_batch(seed: int, b: int, *, d: int, m: int, n: int):
    """b random problems (feature error 0.5, isotropic OOD) and Gaussian heads."""
    key = jax.random.key(seed)
    keys = jax.random.split(key, b)
    # lax.map: jit(vmap(make_problem)) hung at d = 1000, b = 8 on this CPU (jax 0.10.2)
    build = jax.jit(
        lambda ks: jax.lax.map(
            lambda kk: lf.make_problem(kk, d=d, k=K, m=m, n=n, feature_error=0.5), ks
        )
    )  # noqa: E501
    probs = build(keys)
    v0s = jax.random.normal(jax.random.fold_in(key, 1), (b, K))
    return jax.block_until_ready((probs, v0s))


def take(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def timed(fn, *args, **kwargs):
    """(result, first-call seconds, second-call seconds)."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    first = time.perf_counter() - t
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, first, time.perf_counter() - t


def linfeat_batch(probs, v0s, mesh=None, **kw):
    kw.setdefault("with_metrics", False)
    return bt.fine_tune_batch(probs, v0s, mesh=mesh, batch_size=4096, **kw)


def w_of(tr, i=None):
    if i is None:
        return baselines.w_final(tr)
    Bf = np.asarray(tr.B_coords_final[i]) @ np.asarray(tr.basis[i]).T
    return Bf.T @ np.asarray(tr.v_final[i])


def reference(p, v0):
    """Tight reference: diffrax Dopri8 on the reduced state, rtol 1e-13, atol 1e-15."""
    tr = lf.fine_tune(p, v0, solver=diffrax.Dopri8(), rtol=1e-13, atol=1e-15, check=False)
    return np.asarray(baselines.w_final(tr))


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def flops_bytes_per_step(k: int, r: int, solver: str = "dopri8"):
    """Arithmetic and compulsory memory traffic of one batched step of one lane."""
    tab = bt._tableau(solver)
    S, state = len(tab.a), k + k * r
    nnz = [sum(1 for w in row if w) for row in tab.a]
    ne = sum(1 for w in tab.e if w)
    flops = sum(2 * z * state for z in nnz) + S * (6 * k * r + 2 * r) + (2 * ne + 8) * state
    words = sum((z + 2) * state for z in nnz) + S * 2 * state + (ne + 6) * state
    return flops, 8 * words


def section_small(res, quick, mesh):
    rows = res.setdefault("throughput", [])
    acc = res.setdefault("accuracy", [])
    for n, batches in (
        (40, [1, 64, 1024] if quick else [1, 64, 1024, 4096, 16384]),
        (20, [64] if quick else [64, 1024]),
    ):
        name = f"small d=200 k=10 m=20 n={n}"
        probs_all, v0_all = make_batch(0, max(batches), d=200, m=20, n=n)
        for b in batches:
            probs, v0s = take(probs_all, slice(0, b)), v0_all[:b]
            for label, msh in (
                ("linfeat batched", None),
                (f"linfeat batched, {mesh.size} devices", mesh),
            ):
                tr, first, second = timed(linfeat_batch, probs, v0s, msh)
                steps = np.asarray(tr.num_steps)
                fl, by = flops_bytes_per_step(K, 20)
                lane_steps = float(steps.sum())
                rows.append(dict(
                    workload=name, batch=b, method=label, run_s=second, compile_s=max(first - second, 0.0),  # noqa: E501
                    traj_per_s=b / second, steps_mean=float(steps.mean()), steps_max=int(steps.max()),  # noqa: E501
                    converged=float(np.mean(np.asarray(tr.status) == 0)),
                    gflops=fl * lane_steps / second / 1e9, gbytes=by * lane_steps / second / 1e9,
                ))  # fmt: skip
                _print_row(rows[-1])
        # baselines on a subset, same instances, and accuracy on the first few
        n_sub = (8 if quick else 32) if n == 40 else 2  # n = m is stiff: 1e4-1e5 steps each
        sub_p, sub_v = take(probs_all, slice(0, n_sub)), v0_all[:n_sub]
        # Baselines stop on the same gradient test; their horizon is capped at 1.5x the time
        # linfeat converged at (their own error control can leave a gradient floor above the
        # test, and they would then integrate to t = 1e6 / lambda_max).
        tr_l = linfeat_batch(sub_p, sub_v)
        horizon = 1.5 * np.asarray(tr_l.t_final)
        t = time.perf_counter()
        w_a = [
            baselines.scipy_dop853(take(sub_p, i), sub_v[i], t_max=horizon[i])[0]
            for i in range(n_sub)
        ]  # noqa: E501
        t_a = time.perf_counter() - t
        rows.append(
            dict(
                workload=name,
                batch=n_sub,
                method="(a) scipy DOP853 full state, loop",
                run_s=t_a,
                compile_s=0.0,
                traj_per_s=n_sub / t_a,
            )
        )  # noqa: E501
        _print_row(rows[-1])
        full = jax.jit(lambda p, v, tm: baselines.diffrax_full(p, v, t_max=tm))
        hz = jnp.asarray(horizon)
        _, first, _ = timed(full, take(sub_p, 0), sub_v[0], hz[0])
        t = time.perf_counter()
        w_b = [
            np.asarray(
                baselines.w_final(jax.block_until_ready(full(take(sub_p, i), sub_v[i], hz[i])))
            )
            for i in range(n_sub)
        ]  # noqa: E501
        t_b = time.perf_counter() - t
        rows.append(
            dict(
                workload=name,
                batch=n_sub,
                method="(b) diffrax Tsit5 full state, loop",
                run_s=t_b,
                compile_s=first,
                traj_per_s=n_sub / t_b,
            )
        )  # noqa: E501
        _print_row(rows[-1])
        vfull = jax.jit(jax.vmap(lambda p, v, tm: baselines.diffrax_full(p, v, t_max=tm)))
        trv, first, second = timed(vfull, sub_p, sub_v, hz)
        rows.append(
            dict(
                workload=name,
                batch=n_sub,
                method="(b) diffrax Tsit5 full state, vmap",
                run_s=second,
                compile_s=first - second,
                traj_per_s=n_sub / second,
            )
        )  # noqa: E501
        _print_row(rows[-1])
        core = jax.jit(jax.vmap(lambda p, v: lf.fine_tune(p, v, check=False)))
        _, first, second = timed(core, sub_p, sub_v)
        rows.append(
            dict(
                workload=name,
                batch=n_sub,
                method="lf.fine_tune (diffrax, reduced), vmap",
                run_s=second,
                compile_s=first - second,
                traj_per_s=n_sub / second,
            )
        )  # noqa: E501
        _print_row(rows[-1])
        for i in range(min(4, n_sub)):
            w_ref = reference(take(sub_p, i), sub_v[i])
            for method, w in (
                ("linfeat batched", w_of(tr_l, i)),
                ("(a) scipy DOP853", w_a[i]),
                ("(b) diffrax full, loop", w_b[i]),
                ("(b) diffrax full, vmap", np.asarray(baselines.w_final(take(trv, i)))),
            ):
                e = rel(w, w_ref)
                acc.append(
                    dict(workload=name, instance=i, method=method, rel_err_w=e, ok=bool(e < ACC))
                )
        worst = {}
        for c in acc:
            if c["workload"] == name:
                worst[c["method"]] = max(worst.get(c["method"], 0.0), c["rel_err_w"])
        for mth, e in worst.items():
            print(
                f"  accuracy {name:28s} {mth:26s} max rel err of w: {e:.2e}  {'OK' if e < ACC else 'FAIL'}"  # noqa: E501
            )


def section_gd(res, quick):
    probs, v0s = make_batch(0, 1, d=200, m=20, n=40)
    p, v0 = take(probs, 0), v0s[0]
    w_ref = reference(p, v0)
    tr = lf.fine_tune(p, v0)
    etas = [1e-3, 3e-4] if quick else [1e-3, 3e-4, 1e-4]
    rows = baselines.gd_error_and_cost(p, v0, w_ref, etas, t_final=float(tr.t_final))
    # error is first order in eta: eta_needed = eta * ACC / err (from the smallest eta run)
    last = rows[-1]
    eta_need = last["eta"] * ACC / last["rel_err_w"]
    steps_need = 3.0 * float(tr.t_final) / eta_need
    res["gd"] = dict(
        rows=rows,
        eta_needed=eta_need,
        steps_needed=steps_need,
        est_s_per_traj=steps_need * last["s_per_step"],
    )
    for r in rows:
        print(
            f"  (c) optax GD eta={r['eta']:.0e}: {r['steps']} steps, rel err of w {r['rel_err_w']:.2e}, {r['run_s']:.3f} s"  # noqa: E501
        )
    print(
        f"  (c) step needed for 1e-8: eta ~ {eta_need:.1e} -> {steps_need:.2e} steps ~ {res['gd']['est_s_per_traj']:.0f} s per trajectory (extrapolated)"  # noqa: E501
    )


def section_medium(res, quick, mesh):
    rows = res.setdefault("throughput", [])
    name = "medium d=1000 k=10 m=50 n=100"
    bs = [64] if quick else [64, 1024]
    probs_all, v0_all = make_batch(1, max(bs), d=1000, m=50, n=100)
    for b in bs:
        tr, first, second = timed(linfeat_batch, take(probs_all, slice(0, b)), v0_all[:b], mesh)
        steps = np.asarray(tr.num_steps)
        rows.append(
            dict(
                workload=name,
                batch=b,
                method=f"linfeat batched, {mesh.size} devices",
                run_s=second,
                compile_s=first - second,
                traj_per_s=b / second,
                steps_mean=float(steps.mean()),
                converged=float(np.mean(np.asarray(tr.status) == 0)),
            )
        )
        _print_row(rows[-1])
    n_sub = 4
    hz = 1.5 * np.asarray(tr.t_final)
    t = time.perf_counter()
    for i in range(n_sub):
        baselines.scipy_dop853(take(probs_all, i), v0_all[i], t_max=hz[i])
    t_a = time.perf_counter() - t
    rows.append(
        dict(
            workload=name,
            batch=n_sub,
            method="(a) scipy DOP853 full state, loop",
            run_s=t_a,
            compile_s=0.0,
            traj_per_s=n_sub / t_a,
        )
    )
    _print_row(rows[-1])


def _pieces(probs, v0s, mesh=None):
    """linfeat batched solve split into setup (reduction) and solve, both after compilation."""
    ops = bt._ops(
        mesh,
        num_save=64,
        train_features=True,
        lp_init=False,
        outputs="full",
        with_metrics=False,
        solver="dopri8",
        segment=64,
    )
    dt = probs.X.dtype
    args = (
        probs,
        v0s,
        None,
        None,
        jnp.asarray(1e-12, dt),
        jnp.asarray(1e-14, dt),
        jnp.asarray(1e-9, dt),
    )

    def setup():
        return ops.setup(*args)

    def solve(su):
        s = bt.integrate_reduced(ops, su.v0, su.A0, su.consts, max_steps=100_000)
        return ops.trajectory(su, ops.finish(s))._replace(basis=su.red.basis)

    su, f1, setup_s = timed(setup)
    tr, f2, solve_s = timed(solve, su)
    return tr, setup_s, solve_s, (f1 - setup_s) + (f2 - solve_s)


def section_dscaling(res, quick):
    rows = res.setdefault("dscaling", [])
    ds = [1000, 10_000, 100_000] if quick else [1000, 10_000, 100_000, 1_000_000]
    for d in ds:
        probs, v0s = make_batch(2, 1, d=d, m=50, n=100)
        tr, setup_s, solve_s, compile_s = _pieces(probs, v0s)
        row = dict(
            d=d,
            batch=1,
            setup_s=setup_s,
            solve_s=solve_s,
            compile_s=compile_s,
            steps=int(tr.num_steps[0]),
            status=int(tr.status[0]),
        )
        if d == 10_000:
            full = jax.jit(lambda p, v, tm: baselines.diffrax_full_raw(p, v, tm))
            hz = 1.5 * tr.t_final[0]
            (w_b, nb), first, second = timed(full, take(probs, 0), v0s[0], hz)
            row.update(
                diffrax_full_s=second,
                diffrax_full_compile_s=first - second,
                diffrax_full_steps=int(nb),
            )  # noqa: E501
            w_ref = reference(take(probs, 0), v0s[0])
            row.update(
                rel_err_linfeat=rel(w_of(tr, 0), w_ref), rel_err_diffrax_full=rel(w_b, w_ref)
            )  # noqa: E501
        rows.append(row)
        print(
            "  d-scaling "
            + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            ),
            flush=True,
        )
        del probs, v0s, tr


def section_convergence(res, quick, mesh):
    """Time to convergence with the issue's gradient test 1e-10 (64 saved points)."""
    b = 64 if quick else 1024
    probs, v0s = make_batch(3, b, d=200, m=20, n=40)
    out = []
    for gtol in (1e-9, 1e-10):
        tr, first, second = timed(linfeat_batch, probs, v0s, mesh, grad_tol=gtol)
        st = np.asarray(tr.status)
        out.append(
            dict(
                grad_tol=gtol,
                batch=b,
                run_s=second,
                converged=float(np.mean(st == 0)),
                steps_mean=float(np.mean(tr.num_steps)),
                t_final_median=float(np.median(tr.t_final)),
            )
        )
        print(
            f"  grad_tol={gtol:.0e}: {out[-1]['converged']:.1%} converged, mean steps {out[-1]['steps_mean']:.0f}, {second:.2f} s for {b}"  # noqa: E501
        )
    res["convergence"] = out


def section_compile(res, mesh):
    """Second call with equal shapes: no new compilation (jit cache sizes unchanged)."""
    probs, v0s = make_batch(4, 64, d=200, m=20, n=40)
    bt._ops.cache_clear()
    t = time.perf_counter()
    jax.block_until_ready(linfeat_batch(probs, v0s))
    first = time.perf_counter() - t
    ops = bt._ops(
        None,
        num_save=64,
        train_features=True,
        lp_init=False,
        outputs="full",
        with_metrics=False,
        solver="dopri8",
        segment=64,
    )
    sizes = [
        f._cache_size() for f in (ops.setup, ops.init, ops.advance, ops.finish, ops.trajectory)
    ]
    t = time.perf_counter()
    jax.block_until_ready(linfeat_batch(probs, v0s))
    second = time.perf_counter() - t
    sizes2 = [
        f._cache_size() for f in (ops.setup, ops.init, ops.advance, ops.finish, ops.trajectory)
    ]
    res["compile"] = dict(
        first_call_s=first,
        second_call_s=second,
        compile_s=first - second,
        recompiled=sizes != sizes2,
    )
    print(
        f"  compile: first {first:.2f} s, second {second:.2f} s -> compile {first - second:.2f} s; recompiled on 2nd call: {sizes != sizes2}"  # noqa: E501
    )


def memory_sweep(n: int, batch_size: int) -> dict:
    """n `small` instances built and solved chunk by chunk (run in a fresh process)."""
    mesh = batch_mesh()

    def instance(key):
        p = lf.make_problem(key, d=200, k=K, m=20, n=40, feature_error=0.5)
        return p, jax.random.normal(jax.random.fold_in(key, 1), (K,))

    keys = jax.random.split(jax.random.key(5), n)
    tr = bt.sweep(
        instance, keys, batch_size=batch_size, progress=False, with_metrics=False, mesh=mesh
    )
    return dict(
        n=n, batch_size=batch_size, converged=float(np.mean(tr.status == 0)), devices=mesh.size
    )


def section_memory(res, quick):
    n = 8192 if quick else 100_000
    out = rss_of_sweep(n, 4096, len(jax.devices()))
    res["memory"] = out
    print(f"  memory: {out}")


def _print_row(r):
    extra = ""
    if "steps_mean" in r:
        extra = f" steps mean {r['steps_mean']:.0f}" + (
            f" max {r['steps_max']}" if "steps_max" in r else ""
        )
    print(
        f"  {r['workload']:30s} b={r['batch']:<6d} {r['method']:42s} run {r['run_s']:8.3f} s  compile {r['compile_s']:6.2f} s  {r['traj_per_s']:9.1f} traj/s{extra}",  # noqa: E501
        flush=True,
    )


def run_all(*, quick: bool, skip=frozenset(), out=None) -> dict:
    res = {"quick": quick, "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    m = res["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, load {m['load_avg_1_5_15']}, peak {m['peak_flops_measured'] / 1e9:.1f} GFLOP/s (matmul), DRAM {m['dram_bandwidth_measured'] / 1e9:.1f} GB/s (triad)"  # noqa: E501
    )
    mesh = batch_mesh()
    res["accuracy"] = []
    sections = [
        ("compile", lambda: section_compile(res, mesh)),
        ("small", lambda: section_small(res, quick, mesh)),
        ("gd", lambda: section_gd(res, quick)),
        ("medium", lambda: section_medium(res, quick, mesh)),
        ("dscaling", lambda: section_dscaling(res, quick)),
        ("convergence", lambda: section_convergence(res, quick, mesh)),
        ("memory", lambda: section_memory(res, quick)),
    ]
    for name, fn in sections:
        if name in skip:
            continue
        print(f"\n== {name} ==", flush=True)
        t = time.perf_counter()
        fn()
        res.setdefault("section_s", {})[name] = time.perf_counter() - t
        if out is not None:  # keep what is measured even if a later section fails
            out.write_text(json.dumps(res, indent=1, default=float))
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    res["load_avg_end"] = list(__import__("os").getloadavg())
    return res
