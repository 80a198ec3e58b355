"""Settings every fuzz test shares: bounded in the suite, longer on request.

``HERALD_FUZZ_EXAMPLES`` sets how many inputs each fuzz test tries (default 200, which keeps
them to well under a minute in all); see docs/testing.md, "Fuzzing".
"""

from __future__ import annotations

import os
from typing import Final

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES: Final = int(os.environ.get("HERALD_FUZZ_EXAMPLES", "200"))

fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=False,
)
"""``@fuzz`` on a ``@given`` test: FUZZ_EXAMPLES inputs, no per-example deadline."""
