r"""Fine-tuning methods beyond FT, LP and LP-FT (the method zoo, docs/theory.md sections 9-10).

Each method is a function of one problem and an initial head (vmap it for batches),
integrated by the same solver core as `linfeat.fine_tune`, with the update rule and its
source paper (arXiv id) in its docstring. Methods that change the parametrisation (surgical
FT, LoRA, depth 3) return the metrics of the effective linear model, so that every method
can be compared with FT on the same footing.
"""

from ._methods_arch import DeepTrajectory as DeepTrajectory
from ._methods_arch import LoRATrajectory as LoRATrajectory
from ._methods_arch import depth3_fine_tune as depth3_fine_tune
from ._methods_arch import lora_fine_tune as lora_fine_tune
from ._methods_arch import lora_init as lora_init
from ._methods_surgical import SurgicalExact as SurgicalExact
from ._methods_surgical import surgical_exact as surgical_exact
from ._methods_surgical import surgical_fine_tune as surgical_fine_tune

__all__ = [name for name in dir() if not name.startswith("_")]
