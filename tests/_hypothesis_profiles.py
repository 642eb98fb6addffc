"""Hypothesis profiles for local soak runs: ``--hypothesis-profile=long``.

Profiles must exist before pytest configures hypothesis, so this module is imported by the
root conftest, or loaded as a plugin: ``PYTHONPATH=tests pytest -p _hypothesis_profiles
--hypothesis-profile=long tests/test_state_machine.py``.
Without a profile, each test keeps the small budget its own ``@settings`` gives it (CI).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

LONG = "long"

settings.register_profile(
    LONG,
    max_examples=400,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def soaking() -> bool:
    """Whether the long profile is loaded (tests then take its budget instead of their own)."""
    return settings.get_current_profile_name() == LONG
