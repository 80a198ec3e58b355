"""Rotation timing and retry backoff of the agent (herald_agent.rotation)."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from herald_agent.rotation import (
    Backoff,
    backoff_delay,
    random_jitter,
    rotation_due,
    rotation_time,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("jitter", "now_s", "due"),
    [
        (0.0, 0, False),
        (0.0, 1799, False),
        (0.0, 1800, True),  # exactly half life
        (0.1, 1619, False),  # +10%: renew when 55% remains, at 45% of the life
        (0.1, 1620, True),
        (-0.1, 1979, False),  # -10%: renew when 45% remains, at 55% of the life
        (-0.1, 1980, True),
        (0.0, 3600, True),  # expired
        (-0.1, 7200, True),
        (0.0, -5, False),  # before notBefore
    ],
)
def test_rotation_due(jitter: float, now_s: float, due: bool) -> None:
    assert rotation_due(T0, T0 + HOUR, jitter, at(now_s)) is due


def test_rotation_time_of_a_degenerate_lifetime_is_its_end() -> None:
    assert rotation_time(T0, T0, 0.0) == T0
    assert rotation_due(at(10), T0, 0.0, at(5)) is True, "notAfter before notBefore: renew"


@pytest.mark.parametrize("jitter", [-1.0, 1.0, 2.5])
def test_rotation_refuses_jitter_outside_the_open_unit_interval(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        rotation_time(T0, T0 + HOUR, jitter)


def test_random_jitter_stays_within_ten_percent() -> None:
    rng = random.Random(7)
    values = [random_jitter(rng) for _ in range(1000)]
    assert all(-0.1 <= v <= 0.1 for v in values)
    assert min(values) < -0.09 and max(values) > 0.09, "the whole range is used"


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 1.0, 1.0),
        (0, 0.0, 0.5),
        (1, 1.0, 2.0),
        (3, 1.0, 8.0),
        (5, 1.0, 32.0),
        (6, 1.0, 60.0),  # 64 capped at 60
        (6, 0.0, 30.0),
        (10_000, 1.0, 60.0),  # a long outage neither overflows nor exceeds the cap
    ],
)
def test_backoff_delay(attempt: int, rand: float, expected: float) -> None:
    assert backoff_delay(attempt, base=1.0, cap=60.0, rand=rand) == pytest.approx(expected)


@pytest.mark.parametrize(("attempt", "rand"), [(-1, 0.5), (0, -0.1), (0, 1.5)])
def test_backoff_delay_refuses_bad_arguments(attempt: int, rand: float) -> None:
    with pytest.raises(ValueError, match=r"attempt|rand"):
        backoff_delay(attempt, rand=rand)


def test_backoff_grows_to_the_cap_and_resets() -> None:
    backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert backoff.next_delay() <= 0.5
