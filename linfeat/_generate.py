r"""Synthetic ID/OOD subspace problems with every knob of the theory (THEORY.md section 1).

`make_problem` is a pure function of an explicit key and numeric knobs: vmap it over keys and
over `feature_error`, `v_star_norm`, `ood_shift`, `ood_rank_scale` (shapes and the OOD kind are
static). It never builds a d x d matrix unless `ood="random_spd"`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import _validate as V
from ._cov import SubspaceCov
from ._linalg import orthonormalize
from ._problem import Problem

OOD_KINDS = ("isotropic", "perp", "mixture", "inside", "random_spd")
HEAD_KINDS = ("zero", "gaussian", "given", "lp", "aligned")


def _orthonormal_columns(key, d: int, c: int, dtype) -> Float[Array, "d c"]:
    """A Haar-random d x c matrix with orthonormal columns: the polar factor of a Gaussian.

    $Z(Z^TZ)^{-1/2}$ is exactly Haar on the Stiefel manifold (it is equivariant under
    left-orthogonal maps), and avoids a slow tall QR (see `linfeat._linalg`).
    """
    return orthonormalize(jax.random.normal(key, (d, c), dtype))


def features_at_distance(
    key: PRNGKeyArray, d: int, k: int, feature_error, dtype=None
) -> tuple[Float[Array, "k d"], Float[Array, "k d"]]:
    r"""$(B^*, B_0)$ with orthonormal rows at Procrustes distance exactly `feature_error`.

    Every principal angle is $\theta = 2\arcsin(\varepsilon/2)$: $B_0 = \cos\theta\,B^* +
    \sin\theta\,U_\perp$ with $U_\perp$ orthonormal and orthogonal to rowspace($B^*$), so
    $B_0 B^{*T} = \cos\theta\,I$, the aligning rotation is I and
    $\|B_0 - B^*\|_2 = 2\sin(\theta/2) = \varepsilon$ (THEORY.md section 1). Needs $2k \le d$.
    """
    dtype = dtype or jnp.result_type(float)
    O = _orthonormal_columns(key, d, 2 * k, dtype)
    B_star, U_perp = O[:, :k].T, O[:, k:].T
    theta = 2.0 * jnp.arcsin(jnp.asarray(feature_error, dtype) / 2.0)
    return B_star, jnp.cos(theta) * B_star + jnp.sin(theta) * U_perp


def make_problem(
    key: PRNGKeyArray,
    *,
    d: int,
    k: int,
    m: int,
    n: int | None = None,
    feature_error=0.0,
    v_star_norm=1.0,
    id_spectrum: Float[Array, " m"] | None = None,
    ood: str = "isotropic",
    ood_shift=1.0,
    ood_rank: int = 0,
    ood_rank_scale=1.0,
    dtype=None,
) -> Problem:
    r"""A random problem: ID subspace S (dim m), features at distance $\varepsilon$, an OOD shift.

    - S: Haar-random m-dimensional subspace of $R^d$ with orthonormal basis Q.
    - Training inputs $X = G\,\mathrm{diag}(\sqrt{\lambda})\,Q^T$, G an n x m standard Gaussian,
      $\lambda$ = `id_spectrum` (the ID covariance on S, default all ones); $Y = X w^*$.
    - $B^*$ Haar-random orthonormal rows (generic position w.r.t. S); $B_0$ at Procrustes
      distance exactly `feature_error` (`features_at_distance`).
    - $v^*$ uniform on the sphere of radius `v_star_norm`; $w^* = B^{*T} v^*$.
    - OOD second moment $\Sigma$ (`ood`): "isotropic" $I$ (the paper's older version);
      "perp" $\Pi_{S^\perp}$ (all mass off S); "mixture" $(1-\rho)\Pi_S + \rho\Pi_{S^\perp}$ with
      $\rho$ = `ood_shift` the per-direction variance off S; "inside" $\Pi_S$ (R12a);
      "random_spd" a dense $V\mathrm{diag}(\mu)V^T$, $\mu \sim U[1/2, 2]$ (small d only).
      `ood_rank` > 0 adds $L L^T$, L = `ood_rank_scale` times random orthonormal columns.

    Args:
        key: PRNG key (split once here, never reused).
        d, k, m, n: dimensions (static); need $k \le m < d$, $2k \le d$, $n \ge m$ (default
            n = 2m: a square Gaussian X has $\kappa(X^TX) \sim m^2$, which makes the flow
            stiff; n = 2m gives $\kappa \approx 34$). The theorems also need $m + k < d$
            (warned otherwise).
        feature_error: $\varepsilon = d(B_0, B^*) \in [0, \sqrt 2]$.
        v_star_norm: $\|v^*\| = \|w^*\|$.
        id_spectrum: (m,) positive variances of the ID inputs along Q.
        ood, ood_shift, ood_rank, ood_rank_scale: the OOD second moment (above).
        dtype: floating dtype; default the JAX default float.

    Returns:
        A `Problem` with `B_star` and `v_star` set. Vmap over `key` and the numeric knobs.
    """
    n = 2 * m if n is None else n
    _check_dims(d=d, k=k, m=m, n=n, ood=ood, ood_rank=ood_rank)
    if V.is_concrete(feature_error):
        eps = np.asarray(feature_error)
        if np.any(~np.isfinite(eps)) or np.any(eps < 0) or np.any(eps > math.sqrt(2) + 1e-12):
            raise ValueError(
                f"`feature_error` must lie in [0, sqrt(2)] (the largest Procrustes distance "
                f"between orthonormal row spaces), got {eps}."
            )
    dtype = dtype or jnp.result_type(float)
    kS, kF, kv, kG, kO = jax.random.split(key, 5)
    Q = _orthonormal_columns(kS, d, m, dtype)
    B_star, B0 = features_at_distance(kF, d, k, feature_error, dtype)
    u = jax.random.normal(kv, (k,), dtype)
    v_star = jnp.asarray(v_star_norm, dtype) * u / jnp.linalg.norm(u)
    w_star = B_star.T @ v_star
    lam = jnp.ones((m,), dtype) if id_spectrum is None else jnp.asarray(id_spectrum, dtype)
    G = jax.random.normal(kG, (n, m), dtype)
    L_id = Q * jnp.sqrt(lam)
    X = G @ L_id.T
    return Problem(
        X=X,
        Y=X @ w_star,
        B0=B0,
        w_star=w_star,
        B_star=B_star,
        v_star=v_star,
        id_cov=SubspaceCov(jnp.zeros((), dtype), jnp.zeros((), dtype), L_id),
        ood_cov=_ood_cov(kO, d, ood, ood_shift, ood_rank, ood_rank_scale, dtype),
    )


def _ood_cov(key, d, ood, shift, rank, rank_scale, dtype):
    kL, kV = jax.random.split(key)
    one, zero = jnp.ones((), dtype), jnp.zeros((), dtype)
    if ood == "random_spd":
        Vm = _orthonormal_columns(kV, d, d, dtype)
        mu = jax.random.uniform(kV, (d,), dtype, 0.5, 2.0)
        return (Vm * mu) @ Vm.T
    L = (
        jnp.asarray(rank_scale, dtype) * _orthonormal_columns(kL, d, rank, dtype)
        if rank
        else jnp.zeros((d, 0), dtype)
    )
    rho = jnp.asarray(shift, dtype)
    a, b = {
        "isotropic": (one, one),
        "perp": (zero, one),
        "mixture": (1 - rho, rho),
        "inside": (one, zero),
    }[ood]
    return SubspaceCov(a, b, L)


def _check_dims(*, d, k, m, n, ood, ood_rank):
    for name, val in dict(d=d, k=k, m=m, n=n, ood_rank=ood_rank).items():
        if not isinstance(val, (int, np.integer)) or val < (0 if name == "ood_rank" else 1):
            raise ValueError(f"`{name}` must be a positive integer (static), got {val!r}.")
    if k > m:
        raise ValueError(
            f"need k <= m (features no more than ID dimensions), got k = {k} > m = {m}."
        )
    if m >= d:
        raise ValueError(
            f"need m < d (overparameterised: S a proper subspace), got m = {m}, d = {d}."
        )
    if 2 * k > d:
        raise ValueError(
            f"need 2k <= d to place B0 at a chosen distance from B_star, got k = {k}, d = {d}."
        )
    if n < m:
        raise ValueError(f"need n >= m training inputs to span S, got n = {n} < m = {m}.")
    if ood not in OOD_KINDS:
        raise ValueError(f"`ood` must be one of {OOD_KINDS}, got {ood!r}.")
    if m + k >= d:
        V.warn_theory(f"m + k = {m + k} >= d = {d}: the theorems need m + k < d.")


def init_head(
    problem: Problem,
    kind: str = "gaussian",
    *,
    key: PRNGKeyArray | None = None,
    scale=1.0,
    v=None,
) -> Float[Array, " k"]:
    r"""An initial head: "zero", "gaussian" ($N(0, \sigma^2 I)$, $\sigma$ = `scale`, needs `key`),
    "given" (`v`), "lp" (the linear-probe solution, for LP-FT) or "aligned" ($a^* = U v^*$).
    """
    k, dtype = problem.B0.shape[-2], problem.B0.dtype
    if kind == "zero":
        return jnp.zeros((k,), dtype)
    if kind == "gaussian":
        if key is None:
            raise ValueError("`init_head(kind='gaussian')` needs an explicit PRNG `key`.")
        return jnp.asarray(scale, dtype) * jax.random.normal(key, (k,), dtype)
    if kind == "given":
        if v is None:
            raise ValueError("`init_head(kind='given')` needs the head `v`.")
        if V.is_concrete(v):
            V.as_array("v", v, ndim=1, shape=(k,))
        return jnp.asarray(v, dtype)
    if kind == "lp":
        from ._closed_form import linear_probe

        return linear_probe(problem)
    if kind == "aligned":
        from ._metrics import aligned_head

        return aligned_head(problem)
    raise ValueError(f"`kind` must be one of {HEAD_KINDS}, got {kind!r}.")
