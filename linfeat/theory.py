r"""The analytic side: every bound, constant and closed-form oracle of docs/theory.md.

Each function is written for one instance, is pure `jax.numpy` and jits/vmaps; docstrings
state the formula and its label ([paper], [derived], [unsure]). Scalar formulas take plain
numbers; the problem-level functions (`problem_constants`, `r5_bounds`, `r7_bounds`,
`r8_threshold`) take a `linfeat.Problem`. The oracles (`k1_trajectory`, `toy2d_trajectory`,
`toy2d_limit`, `r12_toy`, `balanced_trajectory`) are exact trajectories and limits used to
test the solver.
`linfeat check` (paper_checks.md) tests them all.
"""

from ._accuracy import zero_one_error as zero_one_error
from ._bounds import r5_delta0 as r5_delta0
from ._bounds import r5_printed_bound as r5_printed_bound
from ._bounds import r5_rigorous_bound as r5_rigorous_bound
from ._bounds import r5_rigorous_error_bound as r5_rigorous_error_bound
from ._bounds import r6_anticoncentration as r6_anticoncentration
from ._bounds import r6_phi_cdf_mc as r6_phi_cdf_mc
from ._bounds import r6_sigma_max as r6_sigma_max
from ._bounds import r7_lp_error_bound as r7_lp_error_bound
from ._bounds import r7_lp_ood_bound as r7_lp_ood_bound
from ._bounds import r8_eps_threshold as r8_eps_threshold
from ._bounds import r12_ft_wins as r12_ft_wins
from ._bounds import r12_toy_errors as r12_toy_errors
from ._closed_form_oracles import K1Trajectory as K1Trajectory
from ._closed_form_oracles import R12Toy as R12Toy
from ._closed_form_oracles import Toy2DLimit as Toy2DLimit
from ._closed_form_oracles import Toy2DTrajectory as Toy2DTrajectory
from ._closed_form_oracles import k1_trajectory as k1_trajectory
from ._closed_form_oracles import k1_trajectory_problem_time as k1_trajectory_problem_time
from ._closed_form_oracles import r12_toy as r12_toy
from ._closed_form_oracles import toy2d_limit as toy2d_limit
from ._closed_form_oracles import toy2d_trajectory as toy2d_trajectory
from ._closed_form_riccati import BalancedTrajectory as BalancedTrajectory
from ._closed_form_riccati import balanced_trajectory as balanced_trajectory
from ._constants import ProblemConstants as ProblemConstants
from ._constants import R5Bounds as R5Bounds
from ._constants import problem_constants as problem_constants
from ._constants import r5_bounds as r5_bounds
from ._constants import r5_perp_bound as r5_perp_bound
from ._constants import r7_bounds as r7_bounds
from ._constants import r8_threshold as r8_threshold
from ._geometry import head_alignment_error as head_alignment_error
from ._geometry import kappa as kappa
from ._geometry import numerical_rank as numerical_rank
from ._geometry import principal_angle_distance as principal_angle_distance
from ._geometry import procrustes as procrustes

__all__ = [name for name in dir() if not name.startswith("_")]
