import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
k, r = 10, 20
rng = np.random.default_rng(0)


def bench(name, f, args, b, reps=50, N=64):
    g = jax.jit(lambda *a: jax.lax.fori_loop(0, N, lambda i, x: f(x, *a[1:]), a[0]))
    jax.block_until_ready(g(*args))
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(g(*args))
    print(
        f"b={b} {name:40s} {(time.perf_counter() - t) / reps / N / b * 1e9:7.1f} ns/lane",
        flush=True,
    )


for b in [128, 256]:
    A = jnp.asarray(rng.normal(size=(b, k, r)))
    v = jnp.asarray(rng.normal(size=(b, k)))
    s2 = jnp.asarray(rng.random((b, r)))
    g = jnp.asarray(rng.normal(size=(b, r)))

    def field_bm(st, s2, g):
        v, A = st
        rho = s2 * jnp.einsum("bkr,bk->br", A, v) - g
        fv = -2.0 * jnp.einsum("bkr,br->bk", A, rho)
        fA = -2.0 * v[:, :, None] * rho[:, None, :]
        return (v + 1e-9 * fv, A + 1e-9 * fA)

    bench("batch-major einsum", field_bm, ((v, A), s2, g), b)

    def field_red(st, s2, g):
        v, A = st
        rho = s2 * jnp.sum(A * v[:, :, None], axis=1) - g
        fv = -2.0 * jnp.sum(A * rho[:, None, :], axis=2)
        fA = -2.0 * v[:, :, None] * rho[:, None, :]
        return (v + 1e-9 * fv, A + 1e-9 * fA)

    bench("batch-major reductions", field_red, ((v, A), s2, g), b)
    At = jnp.moveaxis(A, 0, -1)
    vt = v.T
    s2t = s2.T
    gt = g.T

    def field_t(st, s2, g):
        v, A = st  # (k, b), (k, r, b)
        rho = s2 * jnp.sum(A * v[:, None, :], axis=0) - g  # (r, b)
        fv = -2.0 * jnp.sum(A * rho[None], axis=1)  # (k, b)
        fA = -2.0 * v[:, None, :] * rho[None]
        return (v + 1e-9 * fv, A + 1e-9 * fA)

    bench("batch-minor reductions", field_t, ((vt, At), s2t, gt), b)

    def field_t2(st, s2, g):
        v, A = st
        rho = s2 * sum(A[i] * v[i][None] for i in range(k)) - g
        fv = (
            -2.0 * jnp.stack([sum(A[:, j] * rho[j] for j in range(r))[i] for i in range(k)])
            if False
            else -2.0 * sum(A[:, j] * rho[j][None] for j in range(r))
        )
        fA = -2.0 * v[:, None, :] * rho[None]
        return (v + 1e-9 * fv, A + 1e-9 * fA)

    bench("batch-minor unrolled", field_t2, ((vt, At), s2t, gt), b)

    def axpy7(st, *us):
        v, A = st
        return (v, A + sum(c * u for c, u in zip([0.1, 0.2, -0.3, 0.4, 0.5, 0.6, 0.7], us)))

    us = [A * (i + 1) for i in range(7)]
    bench("axpy of 7 (b,k,r) arrays", axpy7, ((v, A), *us), b)
