"""Process logging: one line per event in both formats, and secrets never reach the output."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization

from herald_core.keys import generate_key
from herald_core.logs import (
    REDACTED,
    LogConfigError,
    LogFormat,
    RepeatLimiter,
    is_secret_name,
    log_event,
    make_handler,
    setup_logging,
)

JWT = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0"
    ".eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93ZWIifQ"
    ".MEUCIQDx3p1cO2rZ3kQyq7lmIwIgGd2qKxYz"
)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("herald.test")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    log.handlers.clear()
    log.propagate = True


def capture(log: logging.Logger, fmt: LogFormat) -> io.StringIO:
    out = io.StringIO()
    log.handlers.clear()
    log.addHandler(make_handler(fmt, out))
    return out


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_text_line_has_time_level_logger_message_and_fields(logger: logging.Logger) -> None:
    out = capture(logger, "text")
    log_event(logger, "info", "agent attested", agent="spiffe://example.org/a", batch=3, ok=True)
    [line] = lines(out)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info herald\.test agent attested "
        r"agent=spiffe://example\.org/a batch=3 ok=true",
        line,
    ), line


def test_text_values_with_spaces_or_quotes_are_quoted(logger: logging.Logger) -> None:
    out = capture(logger, "text")
    log_event(logger, logging.WARNING, "odd", reason='node "a" gone away', empty="", x=None)
    [line] = lines(out)
    assert line.endswith(' reason="node \\"a\\" gone away" empty="" x=null'), line


def test_extra_fields_work_like_log_event(logger: logging.Logger) -> None:
    out = capture(logger, "text")
    logger.info("entry %s created", "e-1", extra={"fields": {"parent": "p"}})
    assert lines(out)[0].endswith(" entry e-1 created parent=p")


def test_multiline_message_and_traceback_stay_on_one_line(logger: logging.Logger) -> None:
    out = capture(logger, "text")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception("failed\nbadly")
    [line] = lines(out)
    assert ' failed\\nbadly exc="Traceback (most recent call last):\\n' in line
    assert "RuntimeError: boom\\nsecond line" in line


def test_json_is_one_object_per_line(logger: logging.Logger) -> None:
    out = capture(logger, "json")
    log_event(logger, "error", "sign failed", kind="x509", count=2)
    logger.debug("plain")
    first, second = (json.loads(line) for line in lines(out))
    assert first["level"] == "error"
    assert first["logger"] == "herald.test"
    assert first["msg"] == "sign failed"
    assert (first["kind"], first["count"]) == ("x509", 2)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert second["msg"] == "plain"
    assert "kind" not in second


def test_json_fields_cannot_overwrite_the_event_members(logger: logging.Logger) -> None:
    out = capture(logger, "json")
    log_event(logger, "info", "real", msg="fake", level="fake")
    doc = json.loads(lines(out)[0])
    assert (doc["msg"], doc["level"]) == ("real", "info")
    assert (doc["field.msg"], doc["field.level"]) == ("fake", "fake")


def test_json_traceback_is_a_member(logger: logging.Logger) -> None:
    out = capture(logger, "json")
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("oops")
    doc = json.loads(lines(out)[0])
    assert doc["exc"].startswith("Traceback")
    assert doc["exc"].endswith("ValueError: bad")


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "join_token",
        "joinToken",
        "private_key",
        "privateKey",
        "client_secret",
        "password",
        "jwt",
        "jwt_svid",
        "key",
        "sa_token",
        "Authorization",
        "ca_key_pem",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "token_id",
        "key_id",
        "key_type",
        "jwt_svid_ttl",
        "ca_key_path",
        "spiffe_id",
        "kind",
        "monkey",
        "tokenizer",
        "node",
    ],
)
def test_public_names(name: str) -> None:
    assert not is_secret_name(name)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_fields_are_redacted(logger: logging.Logger, fmt: LogFormat) -> None:
    out = capture(logger, fmt)
    log_event(
        logger,
        "info",
        "token created",
        token="f3a9c2-very-secret",
        token_id="abc",
        nested={"password": "hunter2", "user": "u"},
    )
    text = out.getvalue()
    assert "f3a9c2-very-secret" not in text
    assert "hunter2" not in text
    assert REDACTED in text
    assert "abc" in text
    if fmt == "json":
        doc = json.loads(text)
        assert doc["token"] == REDACTED
        assert doc["nested"] == {"password": REDACTED, "user": "u"}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_jwts_and_private_keys_are_scrubbed(logger: logging.Logger, fmt: LogFormat) -> None:
    out = capture(logger, fmt)
    pem = (
        generate_key()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    logger.warning("got %s from caller", JWT, extra={"fields": {"header": f"Bearer {JWT}"}})
    log_event(logger, "info", "loaded", detail=pem, items=[JWT, "ok"])
    try:
        raise ValueError(f"cannot parse {pem}")
    except ValueError:
        logger.exception("failed")
    text = out.getvalue()
    assert JWT not in text
    assert "PRIVATE KEY" not in text
    assert "MIG" not in text  # the base64 body of the key
    assert text.count(REDACTED) >= 4
    assert len(lines(out)) == 3


def test_setup_logging_replaces_its_own_handler_and_sets_level() -> None:
    root = logging.getLogger()
    before_handlers, before_level = list(root.handlers), root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        first_handler = setup_logging("warn", "text", first)
        second_handler = setup_logging("DEBUG", "json", second)
        logging.getLogger("herald.x").debug("hello")
        assert first.getvalue() == ""
        assert json.loads(second.getvalue())["msg"] == "hello"
        assert root.level == logging.DEBUG
        assert first_handler not in root.handlers
        assert root.handlers.count(second_handler) == 1
    finally:
        for handler in list(root.handlers):
            if handler not in before_handlers:
                root.removeHandler(handler)
        root.setLevel(before_level)


def test_unknown_level_and_format_are_refused() -> None:
    with pytest.raises(LogConfigError, match="unknown log level 'loud'; use one of: debug, info"):
        setup_logging("loud")
    with pytest.raises(LogConfigError, match="unknown log format 'xml'; use 'text' or 'json'"):
        setup_logging("info", "xml")  # type: ignore[arg-type]


def test_repeats_are_one_line_per_key_and_interval_saying_how_many_were_left_out() -> None:
    now = [0.0]
    limiter = RepeatLimiter(60.0, max_keys=2, clock=lambda: now[0])
    assert [limiter.allow(1000) for _ in range(5)] == [0, None, None, None, None]
    assert limiter.allow(0) == 0, "another key has its own line"
    now[0] = 59.9
    assert limiter.allow(1000) is None
    now[0] = 60.0
    assert limiter.allow(1000) == 5, "the next line counts what was left out"
    assert limiter.allow(1000) is None
    assert limiter.allow(2) == 0, "past max_keys the memory starts over"
    assert limiter.allow(1000) == 0
