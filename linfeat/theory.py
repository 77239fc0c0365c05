r"""Public namespace of the analytic side: every bound and closed form of docs/theory.md.

Each function is written for one instance, is pure `jax.numpy` and jits/vmaps; docstrings
state the formula and its label ([paper], [derived], [unsure]). Scalar formulas take plain
numbers; the problem-level wrappers (`problem_constants`, `r5_bounds`, `r7_bounds`,
`r8_threshold`) take a `linfeat.Problem`. `linfeat check` (paper_checks.md) tests them all.
"""

from ._theory import ProblemConstants as ProblemConstants
from ._theory import R5Bounds as R5Bounds
from ._theory import head_alignment_error as head_alignment_error
from ._theory import kappa as kappa
from ._theory import numerical_rank as numerical_rank
from ._theory import principal_angle_distance as principal_angle_distance
from ._theory import problem_constants as problem_constants
from ._theory import procrustes as procrustes
from ._theory import r5_bounds as r5_bounds
from ._theory import r5_delta0 as r5_delta0
from ._theory import r5_perp_bound as r5_perp_bound
from ._theory import r5_printed_bound as r5_printed_bound
from ._theory import r5_rigorous_bound as r5_rigorous_bound
from ._theory import r5_rigorous_error_bound as r5_rigorous_error_bound
from ._theory import r6_anticoncentration as r6_anticoncentration
from ._theory import r6_phi_cdf_mc as r6_phi_cdf_mc
from ._theory import r6_sigma_max as r6_sigma_max
from ._theory import r7_bounds as r7_bounds
from ._theory import r7_lp_error_bound as r7_lp_error_bound
from ._theory import r7_lp_ood_bound as r7_lp_ood_bound
from ._theory import r8_eps_threshold as r8_eps_threshold
from ._theory import r8_threshold as r8_threshold
from ._theory import r12_ft_wins as r12_ft_wins
from ._theory import r12_toy_errors as r12_toy_errors

__all__ = [name for name in dir() if not name.startswith("_")]
