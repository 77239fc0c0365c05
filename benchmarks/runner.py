"""The benchmark runner: workloads, timing, accuracy checks, table and JSON.

Usage: `python -m benchmarks [--quick] [--devices N] [--out benchmarks/results.json]`.
`--devices N` (default 1) splits the host CPU into N XLA
devices so that sweeps run one shard per core (set before JAX starts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="small batches, d <= 1e5 (a few minutes)"
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="host CPU devices for the sharded rows (default 1: none; BENCHMARKS.md used 2)",
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).with_name("results.json")), help="JSON output path"
    )
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")


def _set_devices(n: int) -> None:
    flag = f"--xla_force_host_platform_device_count={n}"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + flag).strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args) -> int:
    _set_devices(args.devices)  # must precede the JAX backend start
    import jax

    jax.config.update("jax_enable_x64", True)
    from . import suite

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    res = suite.run_all(quick=args.quick, skip=skip, out=Path(args.out))
    Path(args.out).write_text(json.dumps(res, indent=1, default=float))
    print(f"\nwrote {args.out}")
    bad = [c for c in res["accuracy"] if not c["ok"]]
    if bad:
        print(f"ACCURACY CHECK FAILED for {len(bad)} method(s): {[c['method'] for c in bad]}")
        return 1
    return 0


def machine() -> dict:
    """CPU model, cores, memory and load, and a measured roofline (peak FLOP/s, bandwidth)."""
    import numpy as np

    from linfeat._cli import environment

    info = environment()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except Exception:
        cpu = platform.processor()
    info.update(cpu=cpu, cores=os.cpu_count(), load_avg_1_5_15=list(os.getloadavg()))
    try:
        info["mem_total_gb"] = int(open("/proc/meminfo").readline().split()[1]) / 2**20
    except Exception:
        pass
    a = np.random.default_rng(0).normal(size=(1500, 1500))
    a @ a
    t = time.perf_counter()
    for _ in range(3):
        a @ a
    info["peak_flops_measured"] = 3 * 2 * 1500**3 / (time.perf_counter() - t)
    x = np.ones(2**25)  # 256 MB: out of cache
    y = np.ones_like(x)
    z = np.empty_like(x)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        np.multiply(x, 2.0, out=z)
        np.add(z, y, out=z)  # triad in two passes: 5 x 8 bytes per element
        best = max(best, 5 * 8 * x.size / (time.perf_counter() - t))
    info["dram_bandwidth_measured"] = best
    return info


def rss_of_sweep(n: int, batch_size: int, devices: int) -> dict:
    """Peak resident memory of a fresh process running an n-instance `small` sweep."""
    code = (
        "import resource, time, jax, json;"
        "jax.config.update('jax_enable_x64', True);"
        "from benchmarks import suite;"
        f"t=time.perf_counter(); out=suite.memory_sweep({n}, {batch_size});"
        "out['wall_s']=time.perf_counter()-t;"
        # VmHWM (this process's own peak), not ru_maxrss: on Linux a child's ru_maxrss starts
        # from its parent's RSS at fork, which made a first run report the runner's 17 GB
        "hwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')];"
        "out['peak_rss_gb']=int(hwm[0].split()[1])/2**20 if hwm else "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20;"
        "print('RESULT'+json.dumps(out))"
    )
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        return {"error": proc.stderr[-2000:]}
    return json.loads(line[6:])
