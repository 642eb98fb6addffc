"""torch-hollow: weight entries held at exactly zero (a hollow diagonal), or at their values,
through training."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "AuditRow",
    "HollowError",
    "HollowLinear",
    "HollowWarning",
    "__version__",
    "audit",
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

from .audit import AuditRow, audit
from .constrain import convert, hollow_, is_hollow, remove, rules_of
from .errors import HollowError, HollowWarning
from .freeze import freeze_, unfreeze
from .functional import zero_diagonal_
from .nn import HollowLinear
from .prune import from_prune, hollow_masks_, keep_zeros_
