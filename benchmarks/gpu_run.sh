#!/usr/bin/env bash
# The run behind BENCHMARKS.md's GPU section: `python -m benchmarks --accelerator` on a GPU
# host, from the repository root, using the host's own JAX (with its CUDA plugin).
#
#   bash benchmarks/gpu_run.sh [OUT_DIR] [SECONDS] [RUNNER ARGS...]
#
# OUT_DIR (default benchmarks/partial_runs) receives results_gpu.json and gpu.log; SECONDS
# (default 540) bounds the benchmark: it is then interrupted, and the rows finished so far are
# in the JSON (the suite writes it after every row of its long sections). If linfeat does not
# run on the host's diffrax / equinox, pure-Python wheels of the versions pyproject.toml names,
# placed in .whl/, are installed into /tmp/site and used instead. RUNNER ARGS go to the runner
# after --accelerator, e.g. `--skip setup,natural_vs_batch,flops` for a lease that should
# measure the gradient and accuracy rows first (a 500 s run on an H200 ended in `grad`).
set -uo pipefail
out=${1:-benchmarks/partial_runs}
limit=${2:-540}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

nvidia-smi -L || true
smoke() {
    "$PY" - <<'EOF'
import importlib, jax
jax.config.update("jax_enable_x64", True)
import linfeat as lf
for mod in ("jax", "jaxlib", "diffrax", "equinox", "lineax", "numpy", "scipy"):
    print(mod, importlib.import_module(mod).__version__)
print("devices", jax.devices())
p = lf.make_problem(jax.random.key(0), d=40, k=2, m=4, n=4, feature_error=0.5)
tr = lf.fine_tune(p, jax.numpy.ones(2))
print("smoke: fine_tune status", int(tr.status), "steps", int(tr.num_steps))
assert int(tr.status) == 0
EOF
}
if ! smoke; then
    echo "linfeat does not run on this host's packages; trying the wheels in .whl/" >&2
    [ -d .whl ] || exit 3
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
    smoke || exit 3
fi
timeout -s INT "$limit" "$PY" -m benchmarks --accelerator --out "$out/results_gpu.json" "${@:3}" 2>&1 \
    | tee "$out/gpu.log"
echo "benchmark exit status ${PIPESTATUS[0]}"
