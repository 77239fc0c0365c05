r"""Synthetic ID/OOD subspace problems with every knob of the theory (docs/theory.md, section 1).

`make_problem` is a pure function of an explicit key and numeric knobs: vmap it over keys and
over `feature_error`, `v_star_norm`, `ood_shift`, `ood_rank_scale` (shapes and the OOD kind are
static). It never builds a d x d matrix unless `ood="random_spd"`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import _validate as V
from ._closed_form import linear_probe
from ._cov import SubspaceCov
from ._linalg import polar
from ._metrics import aligned_head
from ._problem import Problem

OOD_KINDS = ("isotropic", "perp", "mixture", "inside", "random_spd")
HEAD_KINDS = ("zero", "gaussian", "given", "lp", "aligned")


def _gaussians(keys, shapes, dtype) -> list[Float[Array, "..."]]:
    """`jax.random.normal(key, shape, dtype)` for each (key, shape), from one vectorised draw.

    Why: XLA:CPU compiles every random-number call site separately, at ~0.7 s each (threefry
    is unrolled into one large kernel), and `make_problem` drew four Gaussians: most of its
    compile time. One `vmap`-ed draw of the longest length, sliced, is one call site. Under
    JAX's default counter-based threefry (`jax_threefry_partitionable`, the default since
    JAX 0.5) element i of a draw depends only on (key, i), so each slice equals the separate
    draw exactly (tests/test_problem.py); the draw allocates len(keys) x the longest length.
    """
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    flat = jax.vmap(lambda key: jax.random.normal(key, (max(sizes),), dtype))(jnp.stack(keys))
    return [flat[i, :size].reshape(s) for i, (size, s) in enumerate(zip(sizes, shapes))]


def _orthonormal_columns(key, d: int, c: int, dtype) -> Float[Array, "d c"]:
    """A Haar-random d x c matrix with orthonormal columns: the polar factor of a Gaussian.

    $Z(Z^TZ)^{-1/2}$ is exactly Haar on the Stiefel manifold (it is equivariant under
    left-orthogonal maps), and avoids a slow tall QR (see `linfeat._linalg`). The polar factor
    is unique, so a key gives the same matrix batched or not; an eigenvector basis of
    $Z^TZ$ would depend on the eigensolver's sign and order conventions, which differ between
    a vmapped and a single call.
    """
    return polar(jax.random.normal(key, (d, c), dtype))


def features_at_distance(
    key: PRNGKeyArray, d: int, k: int, feature_error, dtype=None
) -> tuple[Float[Array, "k d"], Float[Array, "k d"]]:
    r"""$(B^*, B_0)$ with orthonormal rows at Procrustes distance exactly `feature_error`.

    Every principal angle is $\theta = 2\arcsin(\varepsilon/2)$: $B_0 = \cos\theta\,B^* +
    \sin\theta\,U_\perp$ with $U_\perp$ orthonormal and orthogonal to rowspace($B^*$), so
    $B_0 B^{*T} = \cos\theta\,I$, the aligning rotation is I and
    $\|B_0 - B^*\|_2 = 2\sin(\theta/2) = \varepsilon$ (docs/theory.md, section 1). Needs $2k \le d$.

    Raises:
        ValueError: `d`, `k` not positive ints, $2k > d$, `feature_error` outside
            $[0, \sqrt 2]$ or not real (checked entrywise when concrete; skipped for traced
            values, where an out-of-range value gives NaN), `dtype` not a float dtype.
    """
    d = V.check_int("d", d, min=1)
    k = V.check_int("k", k, min=1)
    if 2 * k > d:
        raise ValueError(
            f"need 2k <= d to place B0 at a chosen distance from B_star, got k = {k}, d = {d}; "
            f"use fewer features or more dimensions."
        )
    _check_feature_error(feature_error)
    dtype = jnp.result_type(float) if dtype is None else V.check_float_dtype("dtype", dtype)
    return _features_at_distance(key, d, k, feature_error, dtype)


def _features_at_distance(key, d, k, feature_error, dtype):
    return _features_from(jax.random.normal(key, (d, 2 * k), dtype), k, feature_error, dtype)


def _features_from(Z, k, feature_error, dtype):
    O = polar(Z)
    B_star, U_perp = O[:, :k].T, O[:, k:].T
    theta = 2.0 * jnp.arcsin(jnp.asarray(feature_error, dtype) / 2.0)
    return B_star, jnp.cos(theta) * B_star + jnp.sin(theta) * U_perp


def _check_feature_error(feature_error) -> None:
    V.check_in_range(
        "feature_error",
        feature_error,
        0.0,
        V.SQRT2 + 1e-12,
        interval="[0, sqrt(2)]",
        fix="it is the Procrustes distance d(B0, B*) between orthonormal row spaces, at most "
        "sqrt(2) (all principal angles pi/2).",
    )


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
    basis: str = "full",
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
        v_star_norm: $\|v^*\| = \|w^*\| > 0$ (docs/theory.md assumes $v^* \ne 0$; build a zero
            target with `problem_from_arrays(..., w_star=np.zeros(d))`).
        id_spectrum: (m,) positive variances of the ID inputs along Q.
        ood, ood_shift, ood_rank, ood_rank_scale: the OOD second moment (above);
            `ood_shift` $\rho \in [0, 1]$ (checked for every `ood`), `ood_rank` in [0, d],
            `ood_rank_scale` $\ge 0$.
        dtype: floating dtype; default the JAX default float.
        basis: "full" draws every direction in $R^d$ (cost $O(d\,(m + k)^2)$; the problem's
            arrays have d columns). "small" draws the same problem directly in a basis of the
            $c = m + 2k + $ `ood_rank` dimensions it occupies (`bartlett_embedding`): its
            arrays have c columns, and every rotation-invariant quantity (errors, distances,
            angles, trajectories of the flows) has exactly the law it has in $R^d$
            (docs/theory.md, section 1.7), at $O(c^3)$ cost whatever d is
            (`make_problem(key, d=10**9, ..., basis="small")` takes milliseconds). Not for
            `ood="random_spd"` (a dense d x d moment), nor for methods that draw their own
            random d-vectors (LoRA's `A0`, a depth-3 middle layer): there use "full".

    Returns:
        A `Problem` with `B_star` and `v_star` set. Vmap over `key` and the numeric knobs.

    Raises:
        ValueError: naming the argument, before any random draw: dimensions that are not
            Python ints (bools and floats rejected) or break the constraints above, an
            unknown `ood`, a non-floating `dtype`, a missing `key`, and numeric knobs that are
            complex, bool, integer arrays, NaN/inf or out of range. Knobs are checked
            entrywise when concrete (a batch of knobs is checked entry by entry); under
            `jit`/`vmap` traced knobs are not checked (an out-of-range traced
            `feature_error` gives NaN features), so validate a sweep's grid before vmapping.
    """
    if key is None:
        raise ValueError("`key` is required: pass a PRNG key, e.g. jax.random.key(0).")
    d, k, m = (V.check_int(name, x, min=1) for name, x in (("d", d), ("k", k), ("m", m)))
    n = 2 * m if n is None else V.check_int("n", n, min=1)
    ood_rank = V.check_int("ood_rank", ood_rank, min=0)
    _check_dims(d=d, k=k, m=m, n=n, ood=ood, ood_rank=ood_rank)
    _check_basis(basis, d=d, k=k, m=m, n=n, ood=ood, ood_rank=ood_rank)
    _check_feature_error(feature_error)
    V.check_positive(
        "v_star_norm",
        v_star_norm,
        fix="docs/theory.md (section 1) assumes v* != 0; for a zero target build the "
        "problem with problem_from_arrays(..., w_star=np.zeros(d)).",
    )
    if id_spectrum is not None:
        V.check_spectrum("id_spectrum", id_spectrum, m, what="variances (the ID spectrum on S)")
    V.check_fraction(
        "ood_shift",
        ood_shift,
        fix="for ood='mixture' it is rho, the OOD variance per direction off S (1 - rho on S).",
    )
    V.check_nonneg(
        "ood_rank_scale",
        ood_rank_scale,
        fix="it scales the low-rank OOD term L L^T (0 switches it off).",
    )
    dtype = jnp.result_type(float) if dtype is None else V.check_float_dtype("dtype", dtype)
    return _build(
        key, feature_error, v_star_norm, id_spectrum, ood_shift, ood_rank_scale,
        d=d, k=k, m=m, n=n, ood=ood, ood_rank=ood_rank, dtype=jnp.dtype(dtype), basis=basis,
    )  # fmt: skip


# One compiled program per shape and OOD kind (an eager call would dispatch, and compile,
# each of the eigensolver's operations separately: measured 8 s against 5 s).
@functools.partial(
    jax.jit, static_argnames=("d", "k", "m", "n", "ood", "ood_rank", "dtype", "basis")
)
def _build(key, feature_error, v_star_norm, id_spectrum, ood_shift, ood_rank_scale, *,
           d, k, m, n, ood, ood_rank, dtype, basis="full") -> Problem:  # fmt: skip
    kS, kF, kv, kG, kO = jax.random.split(key, 5)
    u, G = _gaussians((kv, kG), ((k,), (n, m)), dtype)
    if basis == "small":
        # One Bartlett factor for all the random directions at once: columns [S | F | L]. Where
        # they outnumber d, R^d itself is the small basis: a plain Gaussian d x c draw.
        c = m + 2 * k + ood_rank
        Z = bartlett_embedding(kS, d, c, dtype) if c < d else jax.random.normal(kS, (d, c), dtype)
        ZS, ZF, ZL = Z[:, :m], Z[:, m : m + 2 * k], Z[:, m + 2 * k :]
    else:
        # The same draws as jax.random.normal on each key, in two call sites (`_gaussians`).
        ZS, ZF = _gaussians((kS, kF), ((d, m), (d, 2 * k)), dtype)
        ZL = None if ood == "random_spd" else _ood_directions(kO, d, ood_rank, dtype)
    return _assemble(
        ZS, ZF, ZL, u, G, feature_error, v_star_norm, id_spectrum, ood_shift, ood_rank_scale,
        kO, ood=ood, dtype=dtype,
    )  # fmt: skip


def _assemble(ZS, ZF, ZL, u, G, feature_error, v_star_norm, id_spectrum, ood_shift,
              ood_rank_scale, kO, *, ood, dtype) -> Problem:  # fmt: skip
    r"""The problem built from its Gaussian direction matrices (one law for both bases).

    Every direction in the problem is a polar factor of a column block of $Z = [Z_S, Z_F, Z_L]$
    (S, the features, the low-rank OOD term); everything else is drawn independently of Z.
    """
    D, m = ZS.shape
    Q = polar(ZS)
    B_star, B0 = _features_from(ZF, ZF.shape[1] // 2, feature_error, dtype)
    v_star = jnp.asarray(v_star_norm, dtype) * u / jnp.linalg.norm(u)
    w_star = B_star.T @ v_star
    lam = jnp.ones((m,), dtype) if id_spectrum is None else jnp.asarray(id_spectrum, dtype)
    L_id = Q * jnp.sqrt(lam)
    X = G @ L_id.T
    if ood == "random_spd":
        ood_cov = _random_spd(kO, D, dtype)
    else:
        L = jnp.asarray(ood_rank_scale, dtype) * polar(ZL) if ZL.shape[1] else ZL
        ood_cov = _subspace_ood(ood, ood_shift, L, dtype)
    return Problem(
        X=X,
        Y=X @ w_star,
        B0=B0,
        w_star=w_star,
        B_star=B_star,
        v_star=v_star,
        id_cov=SubspaceCov(jnp.zeros((), dtype), jnp.zeros((), dtype), L_id),
        ood_cov=ood_cov,
    )


def bartlett_embedding(key: PRNGKeyArray, d: int, c: int, dtype) -> Float[Array, "c c"]:
    r"""A c x c matrix $Z'$ with $Z'^TZ'$ distributed as $Z^TZ$ for a d x c standard Gaussian Z.

    Bartlett's decomposition (docs/theory.md, section 1.7): $Z^TZ \sim W_c(d, I)$ has the
    Cholesky factor $T$ (lower triangular) with independent entries $T_{ii}^2 \sim
    \chi^2_{d-i}$ (i = 0, ..., c - 1) and $T_{ij} \sim N(0, 1)$ below the diagonal, and
    $Z = E\,T^T$ for an isometry $E: R^c \to R^d$. Everything linfeat computes from Z is
    equivariant under left-isometries, so $Z' = T^T$ gives the same problem in the coordinates
    of E, at $O(c^3)$ cost whatever d is. Needs $c \le d$.
    """
    kd, ko = jax.random.split(key)
    df = d - jnp.arange(c, dtype=dtype)
    # chi^2_nu = 2 Gamma(nu / 2): jax.random.gamma is exact in law for any shape, also 5e8.
    diag = jnp.sqrt(2.0 * jax.random.gamma(kd, df / 2.0, dtype=dtype))
    below = jnp.tril(jax.random.normal(ko, (c, c), dtype), -1)
    return (below + jnp.diag(diag)).T


def _ood_directions(key, d, rank, dtype):
    """The Gaussian matrix whose polar factor spans the low-rank OOD term (full basis)."""
    kL, _ = jax.random.split(key)
    return jax.random.normal(kL, (d, rank), dtype)


def _random_spd(key, d, dtype):
    _, kV = jax.random.split(key)
    Vm = _orthonormal_columns(kV, d, d, dtype)
    mu = jax.random.uniform(kV, (d,), dtype, 0.5, 2.0)
    return (Vm * mu) @ Vm.T


def _subspace_ood(ood, shift, L, dtype):
    one, zero = jnp.ones((), dtype), jnp.zeros((), dtype)
    rho = jnp.asarray(shift, dtype)
    a, b = {
        "isotropic": (one, one),
        "perp": (zero, one),
        "mixture": (1 - rho, rho),
        "inside": (one, zero),
    }[ood]
    return SubspaceCov(a, b, L)


BASIS_KINDS = ("full", "small")
_FULL_BYTES_MAX = 2**34  # 16 GiB of float64 arrays: past this "full" cannot be what was meant


def _check_basis(basis, *, d, k, m, n, ood, ood_rank):
    V.check_choice("basis", basis, BASIS_KINDS)
    if basis == "small" and ood == "random_spd":
        raise ValueError(
            "`ood='random_spd'` is a dense d x d second moment, which has no small basis; use "
            "basis='full' (small d), or a SubspaceCov kind with basis='small'."
        )
    if basis == "full" and 8 * d * (n + m + 4 * k + ood_rank) > _FULL_BYTES_MAX:
        raise ValueError(
            f"basis='full' with d = {d} needs about "
            f"{8 * d * (n + m + 4 * k + ood_rank) / 2**30:.0f} GiB of d-vectors; pass "
            f"basis='small' to draw the same problem (equal in law for every rotation-"
            f"invariant quantity, docs/theory.md section 1.7) in {m + 2 * k + ood_rank} "
            f"dimensions."
        )


def _check_dims(*, d, k, m, n, ood, ood_rank):
    V.check_choice("ood", ood, OOD_KINDS)
    if k > m:
        raise ValueError(
            f"need k <= m (features no more than ID dimensions), got k = {k} > m = {m}; use "
            f"fewer features or a larger ID subspace."
        )
    if m >= d:
        raise ValueError(
            f"need m < d (overparameterised: S a proper subspace), got m = {m}, d = {d}; "
            f"lower m or raise d."
        )
    if 2 * k > d:
        raise ValueError(
            f"need 2k <= d to place B0 at a chosen distance from B_star, got k = {k}, d = {d}."
        )
    if n < m:
        raise ValueError(
            f"need n >= m training inputs to span S, got n = {n} < m = {m}; raise `n` (default "
            f"2m) or lower `m`."
        )
    if ood_rank > d:
        raise ValueError(
            f"`ood_rank` must be <= d = {d} (the columns of L are orthonormal), got {ood_rank}."
        )
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

    Raises:
        ValueError: an unknown `kind`; "gaussian" without `key` or with `scale` not finite and
            > 0 (use "zero" for a zero head; checked entrywise when concrete, skipped when
            traced); "given" without `v`, or `v` not a finite real (k,) array; "aligned" on a
            problem without `B_star`/`v_star`.
    """
    V.check_choice("kind", kind, HEAD_KINDS)
    k, dtype = problem.B0.shape[-2], problem.B0.dtype
    if kind == "zero":
        return jnp.zeros((k,), dtype)
    if kind == "gaussian":
        if key is None:
            raise ValueError("`init_head(kind='gaussian')` needs an explicit PRNG `key`.")
        V.check_positive(
            "scale",
            scale,
            fix="it is the standard deviation sigma of the Gaussian head; use kind='zero' for a "
            "zero head.",
        )
        return jnp.asarray(scale, dtype) * jax.random.normal(key, (k,), dtype)
    if kind == "given":
        if v is None:
            raise ValueError("`init_head(kind='given')` needs the head `v`.")
        V.check_real_float("v", v)
        if np.shape(v) != (k,):
            raise ValueError(f"`v` must have shape (k,) = ({k},), got {np.shape(v)}.")
        V.check_finite("v", v)
        return jnp.asarray(v, dtype)
    if kind == "lp":
        return linear_probe(problem)
    # kind == "aligned"
    if problem.B_star is None or problem.v_star is None:
        raise ValueError(
            "`init_head(kind='aligned')` needs the true features and head: build the problem "
            "with make_problem, or problem_from_arrays(..., B_star=..., v_star=...)."
        )
    return aligned_head(problem)
