"""Process logging for herald: one line per event, key=value text or JSON, secrets redacted.

Structured fields ride on a record as ``extra={"fields": {...}}`` (or through ``log_event``).
A filter on the handler redacts the value of every field whose name looks like a secret
(token, key, secret, password, jwt, ...) and blanks JWTs and PEM private keys wherever they
appear in a message or traceback, so that a key or token cannot reach the logs by accident.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final, Literal, TextIO

LogFormat = Literal["text", "json"]

LOG_LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("text", "json")
REDACTED: Final = "[redacted]"

# A field is secret when any word of its name is one of these ("join_token", "privateKey").
_SECRET_WORDS: Final = frozenset(
    {
        "token",
        "tokens",
        "key",
        "keys",
        "secret",
        "secrets",
        "password",
        "passwd",
        "jwt",
        "pem",
        "credential",
        "credentials",
        "authorization",
        "cookie",
    }
)
# ...unless its last word says it is a public handle on the secret, not the secret itself.
_PUBLIC_LAST_WORDS: Final = frozenset({"id", "ids", "type", "ttl", "count", "path", "file"})
_WORD: Final = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# A compact JWS (JWT-SVIDs, service account tokens) and a PEM private key block.
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PEM_PRIVATE_KEY: Final = re.compile(
    r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL
)
# Marks the handler setup_logging installed, so that calling it again replaces that one only.
_HANDLER_MARK: Final = "_herald_handler"


class LogConfigError(ValueError):
    """An unknown log level or format; the message lists the accepted ones."""


def is_secret_name(name: str) -> bool:
    """True when a field called ``name`` may hold a secret and its value must not be logged."""
    words = [w.lower() for w in _WORD.findall(name)]
    if not words or words[-1] in _PUBLIC_LAST_WORDS:
        return False
    return any(w in _SECRET_WORDS for w in words)


def scrub_text(text: str) -> str:
    """``text`` with every JWT and PEM private key replaced by a marker."""
    text = _JWT.sub(REDACTED, text)
    return _PEM_PRIVATE_KEY.sub(REDACTED, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact_fields(value)
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    return value


def redact_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``fields`` with secret-named values replaced, nested values included."""
    return {
        name: REDACTED if is_secret_name(str(name)) else _redact_value(value)
        for name, value in fields.items()
    }


class RedactingFilter(logging.Filter):
    """Redacts fields, message and traceback of every record before any formatter sees it."""

    _tracebacks = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            record.fields = redact_fields(fields)
        # Render the message once, so an argument holding a token is scrubbed too.
        record.msg = scrub_text(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._tracebacks.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _level_name(record: logging.LogRecord) -> str:
    return record.levelname.lower()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, Mapping) else {}


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = str(value)
    if not text or any(ch.isspace() or ch in '"=\\' for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


class TextFormatter(logging.Formatter):
    """``time level logger msg key=value ...``; values with spaces are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record),
            _level_name(record),
            record.name,
            _one_line(record.getMessage()),
        ]
        fields = _fields(record)
        if record.exc_text:
            fields["exc"] = record.exc_text
        parts += [f"{name}={_text_value(value)}" for name, value in fields.items()]
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, then the fields."""

    _RESERVED = ("time", "level", "logger", "msg", "exc")

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _timestamp(record),
            "level": _level_name(record),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in _fields(record).items():
            # A field may not overwrite the event's own members; it keeps a prefixed name.
            doc[f"field.{name}" if name in self._RESERVED else name] = value
        if record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False, default=str)


def parse_level(level: str) -> int:
    """The logging level named ``level`` (case-insensitive; SPIRE's ``WARN`` too)."""
    found = LOG_LEVELS.get(level.strip().lower())
    if found is None:
        raise LogConfigError(f"unknown log level {level!r}; use one of: debug, info, warn, error")
    return found


def make_handler(fmt: LogFormat = "text", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler with herald's formatter and the redacting filter."""
    if fmt not in LOG_FORMATS:
        raise LogConfigError(f"unknown log format {fmt!r}; use 'text' or 'json'")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    handler.addFilter(RedactingFilter())
    setattr(handler, _HANDLER_MARK, True)
    return handler


def setup_logging(
    level: str = "info", fmt: LogFormat = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Send every logger's records to ``stream`` (stderr) in ``fmt`` from ``level`` up.

    Calling it again replaces the handler it installed before, so a process can switch
    format once its configuration is read.
    """
    numeric = parse_level(level)
    handler = make_handler(fmt, stream)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler


def log_event(logger: logging.Logger, level: int | str, msg: str, /, **fields: Any) -> None:
    """Log ``msg`` with structured ``fields``: ``log_event(log, "info", "signed", n=3)``."""
    numeric = parse_level(level) if isinstance(level, str) else level
    # stacklevel=2: the record names the caller's line, not this helper's.
    logger.log(numeric, msg, extra={"fields": fields}, stacklevel=2)


class RepeatLimiter:
    """At most one log line per key (a caller, say) every ``interval`` seconds.

    `allow` answers None while a key's lines are being left out, else how many were left out
    since its last line, for that line to say so: a caller repeating a failure in a loop costs
    one line a minute, not one per attempt. At most ``max_keys`` keys are remembered; past that
    the memory starts over, which can only let a line through early.
    """

    def __init__(
        self,
        interval: float = 60.0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._keys: dict[Hashable, tuple[float, int]] = {}

    def allow(self, key: Hashable) -> int | None:
        now = self._clock()
        held = self._keys.get(key)
        if held is not None and now - held[0] < self._interval:
            self._keys[key] = (held[0], held[1] + 1)
            return None
        if held is None and len(self._keys) >= self._max_keys:
            self._keys.clear()
        self._keys[key] = (now, 0)
        return 0 if held is None else held[1]
