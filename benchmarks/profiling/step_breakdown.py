import sys
import time

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)
from benchmarks import suite
from linfeat import _batched as bt

b = int(sys.argv[1])
probs, v0s = suite.make_batch(0, b, d=200, m=20, n=20)
ops = bt._ops(
    None,
    num_save=64,
    train_features=True,
    lp_init=False,
    outputs="full",
    with_metrics=False,
    solver="rodas5p",
    segment=128,
)
dt = jnp.float64
su = ops.setup(probs, v0s, None, None, jnp.asarray(1e-8), jnp.asarray(1e-10), jnp.asarray(1e-9))
c = su.consts
s0, _ = ops.init(su.v0, su.A0, c)
h = s0.h


def bench(name, f, *args, reps=5):
    f = jax.jit(f)
    jax.block_until_ready(f(*args))
    t = time.perf_counter()
    for _ in range(reps):
        out = jax.block_until_ready(f(*args))
    dtm = (time.perf_counter() - t) / reps
    print(f"{name:30s} {dtm * 1e6 / b:8.2f} us per lane", flush=True)


N = 64


def loop(body):
    def f(s):
        return jax.lax.fori_loop(0, N, lambda i, x: body(x), s)

    return f


s = s0


def attempt(st):
    v1, A1, fv1, fA1, ev, eA, _ = bt._rosenbrock_attempt(st, c, st.h * 1e-3, bt._RODAS5P)
    return st._replace(v=v1, A=A1, fv=fv1, fA=fA1)


bench("attempt x64", loop(attempt), s)


def field(st):
    fv, fA = bt._field(st.v, st.A, c)
    return st._replace(v=st.v + 1e-9 * fv, A=st.A + 1e-9 * fA)


bench("field x64 (x9 per step)", loop(field), s)


def lin(st):
    L = bt._linearize(st.v, st.A, c, st.h)
    return st._replace(A=st.A + 1e-9 * L.At, v=st.v + 1e-9 * L.Kinv[:, 0])


bench("linearize x64", loop(lin), s)
L = bt._linearize(s.v, s.A, c, s.h)


def solve(st):
    dv, dA = bt._linear_solve(L, st.fv, st.fA)
    return st._replace(fv=dv, fA=dA)


bench("solve x64 (x8 per step)", loop(solve), s)
