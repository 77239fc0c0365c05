"""FT, LP and LP-FT at d = 100,000 (k = 10, m = 50) on CPU; no d x d matrix is formed."""

import time

import jax

jax.config.update("jax_enable_x64", True)
import linfeat as lf  # noqa: E402

t = time.perf_counter()
p = lf.make_problem(
    jax.random.key(0), d=100_000, k=10, m=50, feature_error=0.05, ood="mixture", ood_shift=0.5
)
v0 = lf.init_head(p, "gaussian", key=jax.random.key(1), scale=0.5)
ft, lpft = lf.fine_tune(p, v0), lf.lp_ft(p)
for name, tr in (("FT", ft), ("LP-FT", lpft)):
    status = lf.Status(int(tr.status)).name
    ood = float(tr.metrics.ood_error[-1])
    print(f"{name:<6} OOD error {ood:.4g}  {status} at t = {float(tr.t_final):.3g}")
print(f"LP     OOD error {float(lf.ood_error(p, lf.linear_probe(p), p.B0)):.4g}")
print(f"wall time {time.perf_counter() - t:.1f} s (including compilation)")
