"""When the agent renews a credential, and how long it waits after a failure: pure functions.

Rotation follows SPIRE's rotationutil: renew once half the lifetime has passed, moved by a random
±10% so that thousands of SVIDs minted together do not all come back to the server together.
Retries back off exponentially up to a cap, also jittered, for the same reason.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Final

ROTATION_JITTER: Final = 0.1


def random_jitter(rng: random.Random, spread: float = ROTATION_JITTER) -> float:
    """A jitter fraction in [-spread, spread], drawn once per credential so decisions are stable."""
    return rng.uniform(-spread, spread)


def rotation_time(not_before: dt.datetime, not_after: dt.datetime, jitter: float) -> dt.datetime:
    """The moment a credential valid from ``not_before`` to ``not_after`` should be renewed.

    ``jitter`` in (-1, 1) scales the half life that must remain: 0.1 renews when 55% of the
    lifetime remains, -0.1 when 45% remains (the convention of herald_core.jwtsvid.needs_refresh).
    """
    if not -1.0 < jitter < 1.0:
        raise ValueError(f"jitter must be between -1 and 1, not {jitter}")
    lifetime = max(not_after - not_before, dt.timedelta(0))
    return not_after - lifetime / 2 * (1.0 + jitter)


def rotation_due(
    not_before: dt.datetime, not_after: dt.datetime, jitter: float, now: dt.datetime
) -> bool:
    """True once the credential should be renewed (always true once it has expired)."""
    return now >= not_after or now >= rotation_time(not_before, not_after, jitter)


def backoff_delay(
    attempt: int, *, base: float = 1.0, cap: float = 60.0, rand: float = 1.0
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    ``base * 2**attempt`` capped at ``cap``, then scaled by ``rand`` in [0, 1] into the upper
    half of that range: never more than the cap, never less than half of it, so retries spread
    out without collapsing to zero.
    """
    if attempt < 0:
        raise ValueError(f"attempt cannot be negative, not {attempt}")
    if not 0.0 <= rand <= 1.0:
        raise ValueError(f"rand must be between 0 and 1, not {rand}")
    # Cap the exponent first: 2**attempt for a long outage would overflow a float.
    ceiling = min(cap, base * 2.0 ** min(attempt, 62))
    return ceiling * (0.5 + 0.5 * rand)


class Backoff:
    """Consecutive-failure counter producing jittered, capped exponential delays."""

    def __init__(
        self, *, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy

    def next_delay(self) -> float:
        """The delay before the next retry; each call counts one more failure."""
        delay = backoff_delay(self.attempt, base=self.base, cap=self.cap, rand=self._rng.random())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
