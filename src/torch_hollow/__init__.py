"""torch-hollow: weight entries held at exactly zero (a hollow diagonal), at their values, or
inside constraints, through training."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "AuditRow",
    "HollowError",
    "HollowLinear",
    "HollowWarning",
    "__version__",
    "audit",
    "constrain_",
    "constraints",
    "convert",
    "freeze_",
    "from_prune",
    "hollow_",
    "hollow_masks_",
    "is_hollow",
    "keep_zeros_",
    "remove",
    "rules_of",
    "unfreeze",
    "zero_diagonal_",
]

from . import constraints
from .audit import AuditRow, audit
from .constrain import convert, hollow_, is_hollow, remove, rules_of
from .constraints import constrain_
from .errors import HollowError, HollowWarning
from .freeze import freeze_, unfreeze
from .functional import zero_diagonal_
from .nn import HollowLinear
from .prune import from_prune, hollow_masks_, keep_zeros_
