r"""Fine-tuning methods that followed LP-FT, on the one engine (docs/theory.md, sections 9-10).

Each training method is a function `method(problem, v0, *, <knobs>, ts=None, t_max=None,
num_save=64, rtol=None, atol=None, max_steps=100_000, check=True)` written for one instance:
its knobs are array arguments (vmap over them; `jax.grad` with respect to them runs through the
solver), it integrates a new vector field on an exact small state with the solver core of
`linfeat.fine_tune`, and its docstring gives the update rule in this model and the source
paper (arXiv id). Methods on the standard parametrisation (L2-SP, layer-wise rates, partial LP
then FT, weight decay; section 9) return a `Trajectory`; WiSE-FT and the output ensemble are
post-processing of any FT trajectory. Methods that change the parametrisation (surgical FT,
LoRA, depth 3; section 10) return the metrics of the effective linear model, so that every
method compares with FT on the same footing. `linfeat check` sections M1-M8.
"""

from ._methods import combined_ft as combined_ft
from ._methods import l2_sp as l2_sp
from ._methods import layerwise_ft as layerwise_ft
from ._methods import partial_lp_ft as partial_lp_ft
from ._methods import weight_decay_ft as weight_decay_ft
from ._methods_arch import DeepTrajectory as DeepTrajectory
from ._methods_arch import LoRATrajectory as LoRATrajectory
from ._methods_arch import depth3_fine_tune as depth3_fine_tune
from ._methods_arch import lora_fine_tune as lora_fine_tune
from ._methods_arch import lora_init as lora_init
from ._methods_run import WeightDecayTrajectory as WeightDecayTrajectory
from ._methods_surgical import SurgicalExact as SurgicalExact
from ._methods_surgical import surgical_exact as surgical_exact
from ._methods_surgical import surgical_fine_tune as surgical_fine_tune
from ._methods_wise import EnsembleErrors as EnsembleErrors
from ._methods_wise import WiseFTPolynomials as WiseFTPolynomials
from ._methods_wise import output_ensemble as output_ensemble
from ._methods_wise import wise_ft as wise_ft
from ._methods_wise import wise_ft_metrics as wise_ft_metrics
from ._methods_wise import wise_ft_ood_polynomials as wise_ft_ood_polynomials

__all__ = [
    # standard parametrisation (section 9)
    "wise_ft", "wise_ft_metrics", "output_ensemble", "wise_ft_ood_polynomials",
    "WiseFTPolynomials", "EnsembleErrors",
    "l2_sp", "layerwise_ft", "partial_lp_ft", "weight_decay_ft", "WeightDecayTrajectory",
    "combined_ft",
    # other parametrisations (section 10)
    "surgical_fine_tune", "surgical_exact", "SurgicalExact",
    "lora_fine_tune", "lora_init", "LoRATrajectory", "depth3_fine_tune", "DeepTrajectory",
]  # fmt: skip
