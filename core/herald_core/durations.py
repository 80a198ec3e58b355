"""Durations as operators write them (``5s``, ``1h30m``, ``90``), the way SPIRE's CLI reads TTLs."""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# ASCII digits only: ``\d`` would also take other scripts' digits, which no operator means.
_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
# Longer than any TTL, timeout or interval herald takes; each field then applies its own
# bound. Without one, a 20-digit value overflows timedelta.
LONGEST: Final = dt.timedelta(days=3650)


class DurationError(ValueError):
    """A duration that cannot be read; the message shows the accepted forms."""


def parse_duration(text: str) -> dt.timedelta:
    """Read ``1h``, ``1h30m``, ``500ms``, ``2d`` or a bare number of seconds."""
    raw = text.strip()
    if not raw:
        raise DurationError("duration is empty; write e.g. '30s', '5m', '1h30m' or '3600'")
    total = float(raw) if raw.isascii() and raw.isdigit() else _sum_of_parts(text, raw)
    # float() of a long digit string is inf, never an error: the comparison catches it too.
    if not total <= LONGEST.total_seconds():
        raise DurationError(
            f"duration {_shown(text)} is longer than {format_duration(LONGEST.total_seconds())}, "
            "the longest herald takes"
        )
    return dt.timedelta(seconds=total)


def _sum_of_parts(text: str, raw: str) -> float:
    pos = 0
    total = 0.0
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(raw) or pos == 0:
        raise DurationError(
            f"cannot read duration {_shown(text)}; write e.g. '30s', '5m', '1h30m', '500ms' "
            "or '3600'"
        )
    return total


def _shown(text: str) -> str:
    """The text as an error quotes it: at most 40 characters, so a huge value stays one line."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + f" ({len(text)} characters)"


def parse_ttl(text: str, *, field: str) -> int:
    """A TTL in whole seconds, at least 1 s; the error names ``field``."""
    try:
        seconds = parse_duration(text).total_seconds()
    except DurationError as exc:
        raise DurationError(f"{field}: {exc}") from exc
    if seconds < 1 or seconds != int(seconds):
        raise DurationError(f"{field}: TTL must be a whole number of seconds >= 1, got {text!r}")
    return int(seconds)


def format_duration(seconds: float) -> str:
    """``3600`` → ``1h``, ``5400`` → ``1h30m``, ``5`` → ``5s``: the inverse of parse_duration."""
    if seconds <= 0:
        return "0s"
    whole = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    millis = round((seconds - int(seconds)) * 1000)
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts)
