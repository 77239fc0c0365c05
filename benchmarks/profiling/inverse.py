import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
from linfeat._flows import spd_inverse

b, k = 256, 10
X = np.random.default_rng(0).normal(size=(b, k, 30))
K = jnp.asarray(X @ X.transpose(0, 2, 1) + np.eye(k))


def bench(name, f, reps=20):
    f = jax.jit(f)
    r = jax.block_until_ready(f(K))
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(f(K))
    print(
        f"{name:20s} {(time.perf_counter() - t) / reps / b * 1e6:.3f} us/lane  err {float(jnp.max(jnp.abs(r @ K - jnp.eye(k)))):.1e}",
        flush=True,
    )


bench("gj (linfeat._flows.spd_inverse)", jax.vmap(spd_inverse))
bench("linalg.inv", jnp.linalg.inv)
bench(
    "cholesky+inv",
    lambda K: jax.scipy.linalg.cho_solve(
        (jnp.linalg.cholesky(K), True), jnp.broadcast_to(jnp.eye(k), K.shape)
    ),
)


def gj_t(K):
    # batch-minor layout: (k, k, b)
    M = jnp.moveaxis(K, 0, -1)
    for i in range(k):
        e = jnp.arange(k) == i
        p = M[i, i]
        row = jnp.where(e[:, None], 1.0, M[i]) / p
        col = jnp.where(e[:, None], 0.0, M[:, i])
        M = jnp.where(e[None, :, None], 0.0, M) - col[:, None, :] * row[None, :, :]
        M = M.at[i].set(row)
    return jnp.moveaxis(M, -1, 0)


bench("gj batch-minor", gj_t)


def gj_rows(K):
    rows = [K[:, i, :] for i in range(k)]
    eye = jnp.eye(k)
    for i in range(k):
        p = rows[i][:, i]
        ri = jnp.where(eye[i] > 0, 1.0, rows[i]) / p[:, None]
        new = []
        for j in range(k):
            if j == i:
                new.append(ri)
            else:
                f = rows[j][:, i : i + 1]
                new.append(jnp.where(eye[i] > 0, 0.0, rows[j]) - f * ri)
        rows = new
    return jnp.stack(rows, axis=1)


bench("gj rows", gj_rows)
