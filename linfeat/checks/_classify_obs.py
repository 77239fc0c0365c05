r"""Classification observations C4-C6 (docs/theory.md, section 11.4), on the records of
`_classify.collect_cls`: reported, never asserted.

- C4: FT vs LP OOD accuracy for good features and a large shift (R5/R8 analogue);
- C5: LP-FT vs LP OOD accuracy (R13 analogue);
- C6: the head norm after LP and the feature change of the following FT, logistic vs squared
  loss (Tomihari and Sato, arXiv:2405.16747).
"""

from __future__ import annotations

import numpy as np

from ._classify import EPS_GRID, FIXED_T, SHIFTS, _nonconv, _ranges
from ._config import OBSERVATION, CheckResult, Sub, _max


def _pts(x):
    return 100.0 * np.asarray(x, float)


def _summary(diff) -> dict:
    diff = np.asarray(diff, float)
    if not diff.size:
        return {}
    return {
        "mean": float(diff.mean()),
        "min": float(diff.min()),
        "max": float(diff.max()),
        "fraction < 0": float(np.mean(diff < 0)),
    }


def _obs(name, label, rule, n, exceed, nonconv, worst_name, worst) -> Sub:
    return Sub(name, label, OBSERVATION, rule, n, exceed, nonconv, worst_name, worst)


def check_c4(data, extra) -> CheckResult:
    kn, acc = data["knobs"], data["acc"]
    diff = _pts(acc["ft"].ood - acc["lp"].ood)  # FT - LP, accuracy points
    good_large = (kn["eps"] <= 0.1) & (kn["s_S"] == 0.0)
    nc = _nonconv(data["ft"], data["lp"])
    subs = [
        _obs(
            "good features (eps <= 0.1), OOD off S: OOD accuracy FT - LP (points)",
            "[observed]",
            "report only: count of instances where FT's OOD accuracy exceeds LP's",
            int(good_large.sum()),
            int(np.sum(diff[good_large] > 0)),
            nc,
            "max FT - LP",
            _max(diff[good_large]),
        )
    ]
    by_cell = {}
    for e in EPS_GRID:
        for a, b in SHIFTS:
            m = (kn["eps"] == e) & (kn["s_S"] == a) & (kn["s_perp"] == b)
            by_cell[f"eps={e:g}, Sigma=({a:g}, {b:g})"] = _summary(diff[m])
    id_diff = _pts(acc["ft"].id - acc["lp"].id)
    return CheckResult(
        "C4",
        "Logistic: FT vs LP out of distribution (R5/R8 analogue)",
        "With good features and a large shift, FT's OOD accuracy stays below LP's "
        "(observation; the squared-loss R5/R8 do not cover the logistic loss).",
        "[observed]",
        _ranges(data),
        subs,
        numbers={
            "OOD accuracy FT - LP (points), good features, OOD off S": _summary(diff[good_large]),
            "OOD accuracy FT - LP (points) by cell": by_cell,
            "ID accuracy FT - LP (points), all instances": _summary(id_diff),
        },
    )


def check_c5(data, extra) -> CheckResult:
    kn, acc = data["knobs"], data["acc"]
    diff = _pts(acc["lpft"].ood - acc["lp"].ood)
    vs_ft = _pts(acc["lpft"].ood - acc["ft"].ood)
    subs = [
        _obs(
            "OOD accuracy LP-FT - LP (points), all instances",
            "[observed]",
            "report only: count of instances where LP-FT loses more than 1 point to LP",
            len(diff),
            int(np.sum(diff < -1.0)),
            _nonconv(data["lpft"], data["lp"]),
            "min LP-FT - LP",
            float(np.min(diff)),
        )
    ]
    by_eps = {f"eps={e:g}": _summary(diff[kn["eps"] == e]) for e in EPS_GRID}
    return CheckResult(
        "C5",
        "Logistic: LP-FT keeps LP's OOD accuracy (R13 analogue)",
        "LP-FT's OOD accuracy stays near LP's (observation).",
        "[observed]",
        _ranges(data),
        subs,
        numbers={
            "OOD accuracy LP-FT - LP (points) by eps": by_eps,
            "OOD accuracy LP-FT - FT (points), all instances": _summary(vs_ft),
            "ID accuracy LP-FT - FT (points), all instances": _summary(
                _pts(acc["lpft"].id - acc["ft"].id)
            ),
        },
    )


def check_c6(data, extra) -> CheckResult:
    red, lp, sq = data["red"], data["lp"], data["sq"]
    head_log = np.linalg.norm(lp.y_final[0], axis=1)
    head_sq = sq["head_norm"]
    ratio_head = head_log / np.maximum(head_sq, 1e-300)

    def change(sol):
        return np.linalg.norm(sol.y_final[1] - red.A0, axis=(1, 2))

    feat = {
        "own stop": (change(data["lpft"]), change(sq["stop"])),
        f"fixed time {FIXED_T:g} / lam_max": (change(data["lpft_fixed"]), change(sq["fixed"])),
    }
    subs = [
        _obs(
            "head norm after LP: logistic / squared (same +-1 labels)",
            "[observed]",
            "report only: count of instances where the logistic head is larger",
            len(ratio_head),
            int(np.sum(ratio_head > 1)),
            _nonconv(lp),
            "median ratio",
            float(np.median(ratio_head)),
        )
    ]
    for name, (f_log, f_sq) in feat.items():
        ratio = f_log / np.maximum(f_sq, 1e-300)
        subs.append(
            _obs(
                f"feature change ||B - B0||_F of the FT after LP ({name}): logistic / squared",
                "[observed]",
                "report only: count of instances where the logistic FT moves the features less",
                len(ratio),
                int(np.sum(ratio < 1)),
                0,
                "median ratio",
                float(np.median(ratio)),
            )
        )
    q = lambda x: [float(v) for v in np.quantile(x, [0.1, 0.5, 0.9])]  # noqa: E731
    numbers = {
        "head norm after LP, logistic (10/50/90%)": q(head_log),
        "head norm after LP, squared (10/50/90%)": q(head_sq),
    }
    for name, (f_log, f_sq) in feat.items():
        numbers[f"feature change, {name}, logistic (10/50/90%)"] = q(f_log)
        numbers[f"feature change, {name}, squared (10/50/90%)"] = q(f_sq)
    numbers["LP-FT runs whose FT stage stopped at once (the probe met the loss threshold)"] = int(
        np.sum(data["lpft"].num_steps == 0)
    )
    numbers["non-converged: LP-FT logistic, squared FT"] = [
        _nonconv(data["lpft"]),
        _nonconv(sq["stop"]),
    ]
    return CheckResult(
        "C6",
        "Head norm during LP and feature change in FT: logistic vs squared loss",
        "Tomihari and Sato (arXiv:2405.16747): under cross-entropy the head norm grows during "
        "LP, which reduces the feature change of the following FT; under squared loss the LP "
        "head is the bounded least-squares solution (observation).",
        "[observed]",
        _ranges(data),
        subs,
        numbers=numbers,
        notes=[
            "Own stop: the logistic FT stops at the loss threshold 1e-2 n log 2 (or the "
            "gradient test), the squared FT at the gradient test. Fixed time: both FT stages "
            f"run for t = {FIXED_T:g} / lam_max(X^T X) (no loss test), the same clock."
        ],
    )


CHECKS = {"C4": check_c4, "C5": check_c5, "C6": check_c6}
