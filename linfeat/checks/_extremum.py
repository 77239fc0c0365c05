r"""Extrema over continuous time from saved values and exact time derivatives (docs/theory.md,
section 7).

The "for all t" statements (R5, R8, R10, R11, R13) need $\min_t$ (or $\max_t$) of a curve
$f(t)$ such as $L_{ood}(t)$ along a flow. The flows save $f$ and, exactly, $f'$ (from the vector
field at the saved state, `linfeat.checks._sampling._rates`) at 498 times; on each interval
between saves the cubic Hermite interpolant of $(f, f')$ matches $f$ to
$h^4 \max|f''''| / 384$, so its extremum (a root of a quadratic) is the continuous one up to
that error. `hermite_extremum` (cubic in log t) returns it per instance; `extremum_report`
says how far it falls below (above) the sampled extremum and estimates its own error from the
same construction on the 8 times coarser 64-save grid (the error shrinks like $h^4$: coarse
gap / $8^4$).
"""

from __future__ import annotations

import numpy as np

from ._config import COARSE, SUBDIV


def hermite_extremum(ts, f, df, mode: str = "min", log_time: bool = True):
    r"""Per row, the extremum over [ts[0], ts[-1]] of the cubic Hermite interpolant of (f, df).

    With `log_time` (the default) the interpolant is cubic in $\log t$ on every interval with
    $t_i > 0$ (derivative $t f'(t)$): a flow's curves are sums of exponentials $e^{-t/\tau}$,
    smooth on the log scale of the saves, while an interval much longer than $\tau$ would
    make a cubic in $t$ overshoot by orders of magnitude. An interval starting at $t = 0$ is
    cubic in $t$.

    Args:
        ts: save times (N, T), increasing along the last axis.
        f, df: values and exact time derivatives at `ts` (N, T).
        mode: "min" or "max".
        log_time: interpolate in log t where t > 0 (else in t).

    Returns:
        (N,) extrema; never above (below, for "max") the sampled extremum, which the
        interpolant passes through.
    """
    sign = 1.0 if mode == "min" else -1.0
    ts, f, df = (np.asarray(x, float) for x in (ts, f, df))
    f, df = sign * f, sign * df
    t0, t1 = ts[..., :-1], ts[..., 1:]
    p0, p1 = f[..., :-1], f[..., 1:]
    if log_time:
        pos = t0 > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            hl = np.where(pos, np.log(np.where(pos, t1 / np.where(pos, t0, 1.0), 1.0)), 0.0)
        m0 = np.where(pos, hl * t0 * df[..., :-1], (t1 - t0) * df[..., :-1])
        m1 = np.where(pos, hl * t1 * df[..., 1:], (t1 - t0) * df[..., 1:])
    else:
        m0, m1 = (t1 - t0) * df[..., :-1], (t1 - t0) * df[..., 1:]
    # H(s) = a s^3 + b s^2 + c s + p0 on s in [0, 1]; H'(s) = 3a s^2 + 2b s + c
    a = 2.0 * p0 - 2.0 * p1 + m0 + m1
    b = -3.0 * p0 + 3.0 * p1 - 2.0 * m0 - m1
    c = m0
    disc = np.maximum(b * b - 3.0 * a * c, 0.0)
    real = b * b - 3.0 * a * c >= 0.0
    # stable roots of 3a s^2 + 2b s + c: q = -(b + sign(b) sqrt(disc)), s = q / 3a and c / q
    q = -(b + np.where(b >= 0, 1.0, -1.0) * np.sqrt(disc))
    with np.errstate(divide="ignore", invalid="ignore"):
        roots = [np.where(a != 0, q / (3.0 * a), np.where(b != 0, -c / (2.0 * b), np.nan))]
        roots.append(np.where(q != 0, c / q, np.nan))
    best = np.min(f, axis=-1)
    for s in roots:
        ok = real & np.isfinite(s) & (s > 0.0) & (s < 1.0)
        s = np.where(ok, s, 0.0)
        val = ((a * s + b) * s + c) * s + p0
        best = np.minimum(best, np.min(np.where(ok, val, np.inf), axis=-1))
    return sign * best


def extremum_report(ts, f, df, mode: str = "min", scale=None, rec=None) -> dict:
    """How the continuous extremum compares with the sampled ones, relative to `scale` (default
    the curve's size, max over t of |f|; pass the problem's scale for curves that may stay near
    0, e.g. LP-FT with perfect features): the largest gap to the 498-save extremum, and the
    estimated error of the continuous value (Hermite on the 64-save grid against the 498-save
    one, / 8^4). With the flow record `rec`, instances that `_sampling._refine_extrema`
    re-solved on a finer grid are left out of these statistics and counted instead."""
    counts = {}
    if rec is not None and "refined" in rec:
        keep = ~np.asarray(rec["refined"])
        counts = {
            "instances re-solved on a refined grid (extrema from it)": int(np.sum(~keep)),
            "... of which still unresolved": int(np.sum(rec["unresolved"])),
            "largest estimated error of a refined extremum (relative to the curve's size)": (
                float(np.max(rec["refine_err"])) if "refine_err" in rec else 0.0
            ),
        }
        ts, f, df = (np.asarray(x)[keep] for x in (ts, f, df))
        scale = None if scale is None else np.asarray(scale)[keep]
    f = np.asarray(f, float)
    scale = np.max(np.abs(f), axis=1) if scale is None else np.asarray(scale, float)
    scale = np.maximum(scale, 1e-300)
    ext = np.min if mode == "min" else np.max
    cont = hermite_extremum(ts, f, df, mode)
    coarse = hermite_extremum(
        np.asarray(ts)[:, COARSE], f[:, COARSE], np.asarray(df)[:, COARSE], mode
    )
    gap = np.abs(ext(f, axis=1) - cont) / scale
    err = np.abs(coarse - cont) / scale / SUBDIV**4
    return {
        "largest gap to the sampled extremum": float(np.max(gap)) if gap.size else None,
        "median gap": float(np.median(gap)) if gap.size else None,
        "largest estimated error of the continuous value": float(np.max(err)) if err.size else None,
        **counts,
    }
