r"""Fine-tuning methods that followed LP-FT, on the one engine (docs/theory.md, section 9).

Each method is a function `method(problem, v0, *, <knobs>, ts=None, t_max=None, num_save=64,
rtol=None, atol=None, max_steps=100_000, check=True)` written for one instance: its knobs are
array arguments (vmap over them; `jax.grad` with respect to them runs through the solver), it
integrates a new vector field on the exact reduced state with `linfeat._engine.solve`, and it
returns a `Trajectory` whose metrics are those of the effective (v, B). WiSE-FT is also
available as a post-processing of any FT trajectory. `linfeat check` sections M1-M4, M7.
"""

from ._methods import combined_ft as combined_ft
from ._methods import l2_sp as l2_sp
from ._methods import layerwise_ft as layerwise_ft
from ._methods import partial_lp_ft as partial_lp_ft
from ._methods import weight_decay_ft as weight_decay_ft
from ._methods_run import WeightDecayTrajectory as WeightDecayTrajectory
from ._methods_wise import EnsembleErrors as EnsembleErrors
from ._methods_wise import WiseFTPolynomials as WiseFTPolynomials
from ._methods_wise import output_ensemble as output_ensemble
from ._methods_wise import wise_ft as wise_ft
from ._methods_wise import wise_ft_metrics as wise_ft_metrics
from ._methods_wise import wise_ft_ood_polynomials as wise_ft_ood_polynomials

__all__ = [
    "wise_ft", "wise_ft_metrics", "output_ensemble", "wise_ft_ood_polynomials",
    "WiseFTPolynomials", "EnsembleErrors",
    "l2_sp", "layerwise_ft", "partial_lp_ft", "weight_decay_ft", "WeightDecayTrajectory",
    "combined_ft",
]  # fmt: skip
