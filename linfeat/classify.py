r"""Classification: logistic-loss FT, LP and LP-FT, and closed-form Gaussian accuracy.

docs/theory.md, section 11. Binary labels $y = \mathrm{sign}(w^{*T}x)$ (optionally flipped)
and the paper's unnormalised logistic loss $\sum_i\log(1 + e^{-y_iv^TBx_i})$; the flows run on
the exact reduction with the one engine, stop at a training-loss threshold (separable data:
the norm diverges, the direction converges) or on the gradient test, and report the
direction (accuracies) and the norm apart. `accuracy` and `trajectory_accuracy` give the ID
and OOD 0-1 accuracy of any predictor, squared-loss runs included
(`linfeat.theory.zero_one_error` is the formula).

A namespace like `linfeat.theory`: `import linfeat as lf; lf.classify.fine_tune_logistic(...)`.
"""

from ._accuracy import Accuracies as Accuracies
from ._accuracy import accuracy as accuracy
from ._accuracy import trajectory_accuracy as trajectory_accuracy
from ._accuracy import zero_one_error as zero_one_error
from ._classify import ClassificationMetrics as ClassificationMetrics
from ._classify import LogisticFlow as LogisticFlow
from ._classify import classification_problem as classification_problem
from ._classify import fine_tune_logistic as fine_tune_logistic
from ._classify import linear_probe_logistic as linear_probe_logistic
from ._classify import lp_ft_logistic as lp_ft_logistic
from ._classify import predictor as predictor

__all__ = [name for name in dir() if not name.startswith("_")]
