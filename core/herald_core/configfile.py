"""Reading a herald process's YAML configuration field by field, with errors that name the field.

Each process (server, agent) describes its configuration as frozen dataclasses and reads the
parsed document through `Section`, one mapping at a time: unknown fields are refused with a
suggestion, so a typo never silently leaves a default in place, and every wrong value is a
`ConfigError` naming the field's dotted path and why (``ca.ttl: cannot read duration 'soon'``).
Relative paths in a file are relative to the file's directory.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

from herald_core.durations import DurationError, format_duration, parse_duration

# sun_path is 108 bytes on Linux, one of them the terminating NUL.
MAX_SOCKET_PATH_BYTES: Final = 107
MAX_DURATION: Final = timedelta(days=366)

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A configuration the process will not run with; the message names the field and why."""


@dataclass(frozen=True)
class Address:
    """A ``host:port`` address; ``str()`` gives the form grpc and aiohttp take."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Section:
    """One mapping of the raw document, checked against its dataclass and read field by field."""

    def __init__(self, raw: Mapping[str, Any], path: str, base_dir: Path, schema: type) -> None:
        self._raw = raw
        self._path = path
        self._base_dir = base_dir
        # Unknown fields are refused before any value is read, so a misspelt field is
        # reported as such and not as the required field it was meant to be.
        known = [f.name for f in fields(schema)]
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {self.where(close[0])!r}?" if close else ""
                raise ConfigError(f"unknown field {self.where(str(key))!r}{hint}")

    def where(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def has(self, name: str) -> bool:
        return self._raw.get(name) is not None

    def present(self, name: str) -> bool:
        """The field is written, even with no value (``unix:`` switches on an attestor)."""
        return name in self._raw

    def _take(self, name: str) -> Any:
        return self._raw.get(name)

    def error(self, name: str, why: str) -> ConfigError:
        return ConfigError(f"{self.where(name)}: {why}")

    def string(self, name: str, default: str) -> str:
        value = self._take(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {describe(value)}")
        if not value.strip():
            raise self.error(name, "cannot be empty")
        return value

    def choice(self, name: str, choices: tuple[_T, ...], default: _T) -> _T:
        text = self.string(name, str(default)).strip().lower()
        for option in choices:
            if text == str(option):
                return option
        raise self.error(
            name,
            f"{text!r} is not one of " + ", ".join(repr(str(c)) for c in choices),
        )

    def boolean(self, name: str, default: bool) -> bool:
        value = self._take(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {describe(value)}")
        return value

    def duration(self, name: str, default: timedelta) -> timedelta:
        value = self._take(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.error(name, f"expected a duration such as '1h', got {describe(value)}")
        try:
            found = parse_duration(str(value))
        except DurationError as exc:
            raise self.error(name, str(exc)) from exc
        if found < timedelta(seconds=1) or found.microseconds:
            raise self.error(name, f"must be a whole number of seconds, at least 1s; got {value!r}")
        if found > MAX_DURATION:
            raise self.error(
                name, f"must be at most {format_duration(MAX_DURATION.total_seconds())}"
            )
        return found

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self._take(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected a whole number, got {describe(value)}")
        if not minimum <= value <= maximum:
            raise self.error(name, f"must be between {minimum} and {maximum}, got {_digits(value)}")
        return value

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        value = self._take(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number, got {describe(value)}")
        # Compared before float(): a 400-digit int would overflow it. NaN fails both tests.
        if not minimum <= value <= maximum:
            raise self.error(
                name, f"must be between {minimum:g} and {maximum:g}, got {_digits(value)}"
            )
        return float(value)

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._take(name)
        if value is None:
            return default
        if not isinstance(value, list):
            raise self.error(name, f"expected a list of strings, got {describe(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(f"{name}[{index}]", f"expected a string, got {describe(item)}")
        if len(set(value)) != len(value):
            raise self.error(name, "lists a value twice")
        return tuple(value)

    def path(self, name: str) -> Path | None:
        value = self._take(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f"expected a path, got {describe(value)}")
        return self._base_dir / Path(value).expanduser()

    def address(self, name: str, default: Address) -> Address:
        value = self._take(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(name, f"expected host:port, e.g. '{default}', got {describe(value)}")
        return parse_address(value, self.where(name), default)

    def section(self, name: str, schema: type) -> Section:
        value = self._take(name)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.error(name, f"expected a mapping of fields, got {describe(value)}")
        return Section(value, self.where(name), self._base_dir, schema)


def _digits(value: float) -> str:
    """A number as an error quotes it: a 400-digit one is cut, so the message stays one line."""
    text = str(value)
    return text if len(text) <= 30 else f"{text[:12]}… ({len(text)} digits)"


def describe(value: object) -> str:
    """A short, type-revealing rendering of a value for an error message."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return f"a number ({_digits(value)})"
    return repr(value)


def parse_address(text: str, where: str, example: Address) -> Address:
    """``host:port`` or ``[v6]:port``; ``where`` names the field in the error."""
    raw = text.strip()
    if raw.startswith("["):
        host, bracket, rest = raw[1:].partition("]")
        port_text = rest[1:] if bracket and rest.startswith(":") else ""
    else:
        host, _, port_text = raw.rpartition(":")
    bad_host = (
        not host or (":" in host and not raw.startswith("[")) or any(c.isspace() for c in host)
    )
    if bad_host or not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError(f"{where}: expected host:port, e.g. '{example}', got {text!r}")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"{where}: port {port} is out of range 0-65535")
    return Address(host, port)


def check_socket_path(where: str, path: Path) -> None:
    """Refuse a Unix socket path the kernel cannot bind."""
    size = len(str(path).encode())
    if size > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"{where}: {path} is {size} bytes long; a Unix socket path can be at most "
            f"{MAX_SOCKET_PATH_BYTES}"
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping (PyYAML keeps the
    last, so a second ``ttl:`` further down would silently win over the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merges are YAML's own way to override, and stay allowed
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r}: set on line {first.start_mark.line + 1} and again "
                    f"on line {key_node.start_mark.line + 1}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, except that a key written twice in a mapping is a YAML error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_file(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty for an empty file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from exc
    try:
        doc = load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top, got {describe(doc)}")
    return doc


def apply_overrides(doc: dict[str, Any], overrides: Mapping[str, object] | None) -> None:
    """Set each ``overrides`` value (keyed by dotted field path) in ``doc``; None is skipped.

    A Path value is made absolute, since a flag's relative path is relative to the current
    directory, not to the file's.
    """
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, last = dotted.split(".")
        target = doc
        for name in parents:
            child = target.get(name)
            if not isinstance(child, dict):
                child = {}
                target[name] = child
            target = child
        target[last] = str(value.absolute()) if isinstance(value, Path) else value


def load_document(
    path: Path | None, overrides: Mapping[str, object] | None = None
) -> tuple[dict[str, Any], Path]:
    """The document at ``path`` (or an empty one) with ``overrides`` applied, and its base
    directory for relative paths (the file's directory, else the current one)."""
    doc = read_yaml_file(path) if path is not None else {}
    apply_overrides(doc, overrides)
    base_dir = path.parent.resolve() if path is not None else Path.cwd()
    return doc, base_dir
