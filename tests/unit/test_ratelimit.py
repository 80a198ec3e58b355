"""Per-agent token buckets."""

from __future__ import annotations

import pytest

from herald_core.clock import FakeClock
from herald_server.ratelimit import RateLimiter


def test_burst_then_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 20, clock=clock)
    assert limiter.allow("a", 20)
    assert not limiter.allow("a", 1)
    clock.advance(0.5)
    assert limiter.allow("a", 5)
    assert not limiter.allow("a", 1)
    clock.advance(100)
    assert not limiter.allow("a", 21), "never more than the burst"
    assert limiter.allow("a", 20)


def test_keys_are_independent_and_refusal_takes_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 5, clock=clock)
    assert limiter.allow("a", 5)
    assert limiter.allow("b", 5)
    assert not limiter.allow("a", 2)
    clock.advance(2)
    assert limiter.allow("a", 2)


def test_forgets_least_recently_used() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 2, clock=clock, max_keys=2)
    assert limiter.allow("a", 2)
    assert limiter.allow("b", 2)
    assert limiter.allow("c", 2)  # evicts "a"
    assert limiter.allow("a", 2), "an evicted key starts with a full bucket"


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="rate must be"):
        RateLimiter(0, 10)
