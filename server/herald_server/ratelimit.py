"""Token-bucket rate limits, per agent, so one node cannot starve the signer for the others."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from herald_core.clock import SYSTEM_CLOCK, Clock


@dataclass
class TokenBucket:
    """``rate`` tokens per second up to ``burst``; a request takes as many tokens as it signs."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, count: float, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if count > self.tokens:
            return False
        self.tokens -= count
        return True


class RateLimiter:
    """One bucket per key, the least recently used forgotten past ``max_keys``.

    A forgotten key starts again with a full bucket, which is what a key that was idle long
    enough to be evicted would have anyway.
    """

    def __init__(
        self, rate: float, burst: float, *, clock: Clock = SYSTEM_CLOCK, max_keys: int = 100_000
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, key: str, count: float = 1) -> bool:
        """Take ``count`` tokens from ``key``'s bucket; False (and nothing taken) if too few."""
        now = self._clock.now().timestamp()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst, self._burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(count, now)
