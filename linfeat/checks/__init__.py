r"""`linfeat check`: every result R1-R13 of docs/theory.md as an executable check, and T1-T3,
the engine against exact trajectories in time (docs/theory.md, section 7).

Each check samples many random instances (vmap over keys and knobs), runs the flows and
compares with the statement under a rule fixed in `_config` before any run:

- rigorous ([paper] or [derived] with proof): zero violations on every instance, with the
  slack of `TOL` (derived from the solver tolerances, rtol = 1e-12 in float64);
- observation (R13, [unsure] constants, the printed R5 constant): numbers are reported,
  never asserted.

`run(args)` writes `paper_checks.md` (and figures under `figures/checks/`, drawn with
matplotlib imported lazily by the report writer only) and returns a non-zero exit status when
a rigorous check fails. The sampling, flows and checks are pure functions of `Config` and a
seed, so every number in the report is reproducible with the command printed next to it.

Layout: `_config` (rules, configurations, records), `_sampling` (sampling and batched flows),
`_oracles` (T1, T2), `_riccati` (T3), `_invariants` (R1, R2), `_lp` (R3, R4, R7, R9),
`_lower_bound` (R5, R6),
`_search` (R5's counterexample, worst-case search and the printed constant's family),
`_comparisons` (R8, R10-R13), `_report` (Markdown, figures), `_run` (`run_checks` and the
command line) and `_mutants` (`linfeat mutate`: the mutation harness); `_classify` and
`_classify_obs`: the classification checks C1-C6 on their own instances (docs/theory.md, 11).
"""

from ._config import FULL as FULL
from ._config import OBSERVATION as OBSERVATION
from ._config import QUICK as QUICK
from ._config import RIGOROUS as RIGOROUS
from ._config import TOL as TOL
from ._config import CheckResult as CheckResult
from ._config import Config as Config
from ._config import Group as Group
from ._report import _json_default as _json_default
from ._report import write_markdown as write_markdown
from ._run import ALL_IDS as ALL_IDS
from ._run import add_arguments as add_arguments
from ._run import run as run
from ._run import run_checks as run_checks
from ._sampling import _grad_tol as _grad_tol
from ._sampling import collect as collect
from ._search import _k1_instance as _k1_instance
from ._search import counterexample_problem as counterexample_problem
from ._search import worst_case_search as worst_case_search
