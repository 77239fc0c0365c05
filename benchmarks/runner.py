"""The benchmark runner: command line, machine description, and the subprocess helpers.

Usage: `python -m benchmarks [--quick] [--devices N] [--skip a,b] [--out PATH]` (or
`linfeat bench ...`). `--devices N` (default 1) splits the host CPU into N XLA devices
(set before JAX starts); the memory sweep's child process uses as many. A hidden `--tiny`
flag (or `LINFEAT_BENCH_TINY=1`) shrinks every workload to a few lanes at d = 40 and skips
the big sweep: a smoke test of the suite itself, not a measurement.

`--accelerator` is the run on a GPU or TPU host (`benchmarks/gpu_run.sh` wraps it): the
library's accelerator chunk (4096 lanes), batches up to 65,536, the #14 target sections first
(set-up, natural vs batch, FLOP/s, gradients, accuracy; each row is written to the JSON as it
finishes, so a run cut short keeps them), the CPU-only sections skipped, the device's own f64
matmul rate and copy bandwidth as the roofline, and `benchmarks/results_gpu.json` as the
default output. `--accelerator --tiny` runs the same order at the tiny sizes on CPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).with_name("results.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="smaller batches and sweep (about 3 minutes)"
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="host CPU devices (default 1); N > 1 adds a `fine_tune_batch(devices=N)` "
        "row on `small` (the memory sweep's child always uses one device per core)",
    )
    parser.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="JSON output path (default benchmarks/results.json; results_gpu.json with "
        "--accelerator)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated sections to skip (compile, natural_vs_batch, previous_release, "
        "accuracy, baselines, dscaling, memory, methods, setup, grad, flops)",
    )
    parser.add_argument(
        "--accelerator",
        action="store_true",
        help="a GPU/TPU host: 4096-lane chunks and batches up to 65,536, the #14 target "
        f"sections first, CPU-only sections skipped ({', '.join(ACCELERATOR_SKIP)})",
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)


# Sections the accelerator mode skips: SciPy baselines and host RSS measure the CPU; the previous
# release needs a git worktree; compile, d-scaling and the zoo are covered by the CPU run.
ACCELERATOR_SKIP = ("compile", "previous_release", "baselines", "dscaling", "memory", "methods")


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
    accel = getattr(args, "accelerator", False)
    if accel:
        skip |= set(ACCELERATOR_SKIP)
    unknown = skip - set(suite.SECTIONS)
    if unknown:
        raise SystemExit(f"--skip: unknown section(s) {sorted(unknown)}; known: {suite.SECTIONS}")
    tiny = getattr(args, "tiny", False) or os.environ.get("LINFEAT_BENCH_TINY", "") not in ("", "0")
    quick = getattr(args, "quick", False)
    mode = "accelerator" if accel else "quick" if quick else "full"
    if tiny:
        mode = "tiny-accelerator" if accel else "tiny"
    elif accel and jax.default_backend() == "cpu":
        raise SystemExit(
            "--accelerator: JAX sees no accelerator (backend cpu); install JAX with its CUDA or "
            "TPU plugin, or run without --accelerator (add --tiny for a CPU smoke test)"
        )
    if accel and not tiny and Path(args.out) == DEFAULT_OUT:  # keep the CPU run's results
        args.out = str(DEFAULT_OUT.with_name("results_gpu.json"))
    if tiny and Path(args.out) == DEFAULT_OUT:  # a smoke test: keep the results
        args.out = str(Path(tempfile.gettempdir()) / "linfeat_bench_tiny.json")
    res = suite.run_all(mode=mode, skip=skip, out=Path(args.out))
    Path(args.out).write_text(json.dumps(res, indent=1, default=float))
    print(f"\nwrote {args.out}")
    from . import report

    print("\n" + report.targets(res))
    bad = [c for c in res.get("accuracy", []) if not c["ok"]]
    bad += [c for c in res.get("baselines", {}).get("rows", []) if not c["ok"]]
    if bad:
        print(f"ACCURACY CHECK FAILED for {len(bad)} method(s): {[c['method'] for c in bad]}")
        return 1
    return 0


def git_revision() -> str | None:
    """The checkout's commit, with "+dirty" if tracked files differ from it (None: no git)."""
    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    try:
        run = functools.partial(subprocess.run, capture_output=True, text=True, check=True)
        rev = run([*git, "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = run([*git, "status", "--porcelain", "--untracked-files=no"]).stdout
    except Exception:
        return None
    return rev + ("+dirty" if dirty.strip() else "")


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
    info["git"] = git_revision()
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
    accel = accelerator_roofline()
    if accel is not None:
        info["accelerator"] = accel
    return info


def accelerator_roofline() -> dict | None:
    """The JAX default device's f64 matmul rate and copy bandwidth (None on a CPU backend)."""
    import jax
    import jax.numpy as jnp

    dev = jax.devices()
    if dev[0].platform == "cpu":
        return None
    out = dict(device_kind=dev[0].device_kind, count=len(dev), platform=dev[0].platform)
    n = 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float64)
    mm = jax.jit(lambda a: a @ a)
    jax.block_until_ready(mm(a))
    t = time.perf_counter()
    for _ in range(5):
        r = mm(a)
    jax.block_until_ready(r)
    out["peak_flops_f64"] = 5 * 2 * n**3 / (time.perf_counter() - t)
    x = jnp.ones(2**28)  # 2 GB: out of every cache
    cp = jax.jit(lambda x: x * 2.0)
    jax.block_until_ready(cp(x))
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(cp(x))
        best = max(best, 2 * 8 * x.size / (time.perf_counter() - t))  # read + write
    out["bandwidth"] = best
    return out


def rss_of_sweep(n: int, batch_size: int, devices: int, *, d: int = 200, m: int = 20) -> dict:
    """Peak resident memory of a fresh process running an n-instance `small` sweep."""
    code = (
        "import resource, time, jax, json;"
        "jax.config.update('jax_enable_x64', True);"
        "from benchmarks import suite;"
        f"t=time.perf_counter(); out=suite.memory_sweep({n}, {batch_size}, d={d}, m={m});"
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


PREV_DIR = Path("/tmp/linfeat_prev")


def previous_checkout(commit: str) -> Path:
    """A git worktree of the previous release at `commit` (created once, then reused)."""
    root = Path(__file__).resolve().parents[1]
    if not (PREV_DIR / "linfeat" / "__init__.py").is_file():
        subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", str(PREV_DIR), commit],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    head = subprocess.run(
        ["git", "-C", str(PREV_DIR), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if not head.startswith(commit):
        raise RuntimeError(f"{PREV_DIR} is at {head}, not {commit}: remove it and rerun")
    return PREV_DIR


def previous_release(commit, npz, setting, batches, lanes, second_max_b, *, timeout) -> dict:
    """Runs `benchmarks/previous.py` with the release at `commit` on the path (fresh process,
    one per setting, so a hang of the old code costs `timeout` seconds, not the run)."""
    try:
        prev = previous_checkout(commit)
    except Exception as e:  # no git, no network-free checkout: report, do not fail the run
        return {"error": f"no checkout of {commit}: {e}"}
    out = Path(npz).with_suffix(f".{setting}.json")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(prev)  # the old package first (before any editable install)
    env.pop("XLA_FLAGS", None)
    script = Path(__file__).with_name("previous.py")
    cmd = [sys.executable, str(script), str(npz), setting, str(out),
           ",".join(map(str, batches)), str(lanes), str(second_max_b)]  # fmt: skip
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=prev, env=env,
                              timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "setting": setting}
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not out.is_file():
        return {"error": proc.stderr[-2000:], "setting": setting}
    res = json.loads(out.read_text())
    out.unlink()
    if not res["linfeat_file"].startswith(str(prev)):
        return {"error": f"imported {res['linfeat_file']}, not the previous release"}
    res["wall_s"] = wall
    return res


class LineChild:
    """A fresh Python process (repository root on the path) that answers each request with
    one `RESULT{json}` line on stdout, with a deadline per answer: code that may deadlock
    (batched LAPACK kernels on a 2-thread CPU pool, docs/solvers.md) costs a timeout, not
    the run. stderr goes to a temporary file (a full pipe would block the child)."""

    def __init__(self, code: str):
        self._err = tempfile.TemporaryFile()
        self._buf = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._err, cwd=Path(__file__).resolve().parents[1], bufsize=0,
        )  # fmt: skip

    def ask(self, request: dict | None, timeout: float) -> dict:
        """Sends `request` (None: only wait for the next answer) and returns the answer."""
        if request is not None:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if line.startswith(b"RESULT"):
                    return json.loads(line[6:])
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise TimeoutError(f"no answer within {timeout:.0f} s (killed)")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    self.close()
                    raise RuntimeError(f"child exited: {self.stderr_tail()}")
                self._buf += chunk

    def stderr_tail(self, n: int = 2000) -> str:
        self._err.seek(0)
        return self._err.read()[-n:].decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
