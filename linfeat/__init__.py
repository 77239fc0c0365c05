"""linfeat: fine-tuning vs linear probing in two-layer linear networks.

A JAX simulator of A. Kumar, A. Raghunathan, R. Jones, T. Ma, P. Liang, "Fine-Tuning can
Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022. Result ids
(R1 ... R13) refer to docs/theory.md. The library never changes global JAX configuration:
switch on float64 yourself (`jax.config.update("jax_enable_x64", True)`) for tight checks.

The public API is what this module re-exports, plus `linfeat.theory` (bounds, constants and
closed-form oracles) and `linfeat.classify` (logistic flows, accuracy); every other module is
private.
"""

from . import classify as classify
from . import methods as methods
from . import theory as theory
from ._batched import fine_tune_batch as fine_tune_batch
from ._batched import sweep as sweep
from ._closed_form import linear_probe as linear_probe
from ._cov import subspace_cov as subspace_cov
from ._discrete import DiscreteTrajectory as DiscreteTrajectory
from ._discrete import train_discrete as train_discrete
from ._flow import SolverError as SolverError
from ._flow import Status as Status
from ._flow import fine_tune as fine_tune
from ._flow import linear_probe_flow as linear_probe_flow
from ._flow import lp_ft as lp_ft
from ._generate import features_at_distance as features_at_distance
from ._generate import init_head as init_head
from ._generate import make_problem as make_problem
from ._geometry import feature_distance as feature_distance
from ._metrics import Metrics as Metrics
from ._metrics import feature_change as feature_change
from ._metrics import id_error as id_error
from ._metrics import metrics as metrics
from ._metrics import ood_error as ood_error
from ._metrics import train_loss as train_loss
from ._problem import Problem as Problem
from ._problem import orthonormalize_rows as orthonormalize_rows
from ._problem import problem_from_arrays as problem_from_arrays
from ._problem import stack_problems as stack_problems
from ._problem_batch import problems_from_arrays as problems_from_arrays
from ._reduce import Reduced as Reduced
from ._reduce import reduce as reduce
from ._trajectory import Trajectory as Trajectory
from ._validate import TheoryConditionWarning as TheoryConditionWarning

__version__ = "0.3.0"

__all__ = [
    # Problems: generated (docs/theory.md, section 3) or from your arrays
    "Problem", "make_problem", "problem_from_arrays", "subspace_cov", "orthonormalize_rows",
    "stack_problems", "problems_from_arrays", "init_head", "features_at_distance",
    # Training: one engine behind every flow (docs/solvers.md)
    "fine_tune", "lp_ft", "linear_probe", "linear_probe_flow", "fine_tune_batch", "sweep",
    "train_discrete", "reduce", "Reduced",
    # Results and errors
    "Trajectory", "DiscreteTrajectory", "Metrics", "Status", "SolverError",
    "TheoryConditionWarning",
    # Metrics of one parameter point (v, B)
    "metrics", "train_loss", "id_error", "ood_error", "feature_distance", "feature_change",
    # The analytic side: bounds, constants, closed-form oracles
    "theory",
    # More fine-tuning methods (the method zoo, docs/theory.md sections 9-10)
    "methods",

    # Classification: logistic flows and closed-form accuracy (docs/theory.md, section 11)
    "classify",
]  # fmt: skip
