"""Durations as operators write them: every accepted form, and a bound on what any field can get."""

from __future__ import annotations

import datetime as dt

import pytest

from herald_core.durations import LONGEST, DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    "text",
    [
        "99999999999999999999",
        "99999999999999999999s",
        "99999999999999999999ms",
        "9" * 400 + "h",
        "1" * 5000,
        "3651d",
        "3650d1s",
    ],
)
def test_longer_than_the_longest_is_an_error_not_an_overflow(text: str) -> None:
    with pytest.raises(DurationError, match="is longer than 3650d, the longest herald takes"):
        parse_duration(text)


def test_the_longest_is_accepted() -> None:
    assert parse_duration(format_duration(LONGEST.total_seconds())) == LONGEST
    assert parse_duration(str(int(LONGEST.total_seconds()))) == LONGEST


@pytest.mark.parametrize("text", ["\u00b2", "\u0663s", "1\u0663m", "\uff15s"])
def test_digits_of_other_scripts_are_not_read(text: str) -> None:
    with pytest.raises(DurationError, match="cannot read duration"):
        parse_duration(text)


def test_a_long_value_is_quoted_short() -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration("x" * 10_000)
    assert len(str(caught.value)) < 200
    assert "(10000 characters)" in str(caught.value)


def test_fractions_still_add_up() -> None:
    assert parse_duration("1.5h30m") == dt.timedelta(hours=2)
