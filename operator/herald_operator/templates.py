"""The Go-template subset identity templates are written in, compiled once and rendered safely.

ClusterSPIFFEID and SPIFFEID users write ``spiffeIDTemplate``, ``workloadSelectorTemplates`` and
``dnsNameTemplates`` as Go templates (the way spire-controller-manager reads them). herald accepts
only the actions those templates need:

- a field: ``{{ .TrustDomain }}``, ``{{ .ClusterName }}``, ``{{ .ClusterDomain }}``,
  ``{{ .PodMeta.Name }}``, ``{{ .PodMeta.Namespace }}``, ``{{ .PodMeta.UID }}``,
  ``{{ .PodSpec.ServiceAccountName }}``, ``{{ .PodSpec.NodeName }}``, ``{{ .NodeMeta.Name }}``,
  ``{{ .NodeMeta.UID }}``;
- a label or annotation: ``{{ index .PodMeta.Labels "app" }}``,
  ``{{ index .PodMeta.Annotations "key" }}`` (or Go's ``{{ .PodMeta.Labels.app }}`` for keys
  that are identifiers);
- Go's whitespace trim markers ``{{-`` and ``-}}``.

Anything else (pipelines, other functions, variables, comments, unknown fields, a ``}}`` outside
an action) is refused when the template is compiled, with an error naming the template, the
column and what was wrong. There is no ``eval`` and no general template engine: a template is a
list of literal strings and field lookups.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

_OPEN: Final = "{{"
_CLOSE: Final = "}}"
_SPACE: Final = " \t\r\n"
# Go's lexer: a field is one or more '.Identifier' parts with nothing between them.
_FIELD_RE: Final = re.compile(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRING_RE: Final = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`')
_ESCAPES: Final = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}

# Template path → the TemplateContext attribute holding its value.
SCALAR_FIELDS: Final[Mapping[str, str]] = {
    ".TrustDomain": "trust_domain",
    ".ClusterName": "cluster_name",
    ".ClusterDomain": "cluster_domain",
    ".PodMeta.Name": "pod_name",
    ".PodMeta.Namespace": "pod_namespace",
    ".PodMeta.UID": "pod_uid",
    ".PodSpec.ServiceAccountName": "service_account_name",
    ".PodSpec.NodeName": "node_name",
    ".NodeMeta.Name": "node_name",
    ".NodeMeta.UID": "node_uid",
}
MAP_FIELDS: Final[Mapping[str, str]] = {
    ".PodMeta.Labels": "pod_labels",
    ".PodMeta.Annotations": "pod_annotations",
}
_MAP_NOUN: Final = {".PodMeta.Labels": "label", ".PodMeta.Annotations": "annotation"}
_KNOWN: Final = ", ".join([*SCALAR_FIELDS, *(f'index {m} "key"' for m in MAP_FIELDS)])


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered; the message names the template and why."""


@dataclass(frozen=True)
class TemplateContext:
    """The values a template may read for one pod.

    ``node_uid`` is None while the pod's Node is not known: a template that reads it then fails
    to render instead of producing an ID with an empty segment.
    """

    trust_domain: str
    cluster_name: str
    cluster_domain: str
    pod_name: str
    pod_namespace: str
    pod_uid: str
    service_account_name: str
    node_name: str
    node_uid: str | None = None
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def for_pod(
        cls,
        pod: Mapping[str, Any],
        node: Mapping[str, Any] | None,
        *,
        trust_domain: str,
        cluster_name: str,
        cluster_domain: str,
    ) -> TemplateContext:
        """The context of a Pod object (and its Node object, if known) as the API returns them."""
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        node_meta = (node or {}).get("metadata") or {}
        return cls(
            trust_domain=trust_domain,
            cluster_name=cluster_name,
            cluster_domain=cluster_domain,
            pod_name=str(meta.get("name", "")),
            pod_namespace=str(meta.get("namespace", "")),
            pod_uid=str(meta.get("uid", "")),
            service_account_name=str(spec.get("serviceAccountName") or "default"),
            node_name=str(spec.get("nodeName", "")),
            node_uid=str(node_meta["uid"]) if node_meta.get("uid") else None,
            pod_labels=dict(meta.get("labels") or {}),
            pod_annotations=dict(meta.get("annotations") or {}),
        )


@dataclass(frozen=True)
class _Lookup:
    """One action: a scalar field, or one key of a map field."""

    path: str
    column: str  # "column N" or "line L, column N", for render errors
    key: str | None = None

    def value(self, context: TemplateContext, where: str) -> str:
        if self.key is None:
            value: str | None = getattr(context, SCALAR_FIELDS[self.path])
            if value is None:
                raise TemplateError(f"{where}: {self.path} at {self.column} has no value yet")
            return value
        values: Mapping[str, str] = getattr(context, MAP_FIELDS[self.path])
        if self.key not in values:
            # Go's text/template would render "<no value>" here (spire-controller-manager does).
            # An ID or selector with "<no value>" in it is a silent bug: it never matches what
            # the author meant. Refusing makes it a visible render failure in the status.
            raise TemplateError(
                f"{where}: the pod has no {_MAP_NOUN[self.path]} {self.key!r} "
                f"(index {self.path} at {self.column})"
            )
        return values[self.key]


@dataclass(frozen=True)
class Template:
    """A compiled template: literal text and lookups, in order."""

    name: str
    text: str
    parts: tuple[str | _Lookup, ...]

    @property
    def has_actions(self) -> bool:
        return any(isinstance(part, _Lookup) for part in self.parts)

    def render(self, context: TemplateContext) -> str:
        """The template's text with every action replaced; TemplateError if a value is missing."""
        return "".join(
            part if isinstance(part, str) else part.value(context, self.name) for part in self.parts
        )


@functools.lru_cache(maxsize=4096)
def compile_template(text: str, name: str) -> Template:
    """Parse ``text``; ``name`` (e.g. "ClusterSPIFFEID web: spiffeIDTemplate") heads errors.

    Results are cached: the registrar compiles the same few templates for every pod.
    """
    return Template(name=name, text=text, parts=tuple(_Parser(text, name).parse()))


def render(text: str, name: str, context: TemplateContext) -> str:
    """Compile (cached) and render in one call."""
    return compile_template(text, name).render(context)


@dataclass(frozen=True)
class _Token:
    kind: str  # "field", "ident", "string" or "other"
    text: str
    pos: int


class _Parser:
    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name

    def parse(self) -> list[str | _Lookup]:
        parts: list[str | _Lookup] = []
        pos = 0
        trim_next = False
        while True:
            start = self.text.find(_OPEN, pos)
            literal = self.text[pos:] if start < 0 else self.text[pos:start]
            stray = literal.find(_CLOSE)
            if stray >= 0:
                self.fail(pos + stray, "'}}' without a matching '{{'")
            if trim_next:
                literal = literal.lstrip(_SPACE)
            if start < 0:
                _append(parts, literal)
                return parts
            trim_left, body_start = self._left_trim(start)
            _append(parts, literal.rstrip(_SPACE) if trim_left else literal)
            tokens, trim_next, pos = self._lex_action(start, body_start)
            parts.append(self._action(tokens, start))

    def _left_trim(self, start: int) -> tuple[bool, int]:
        after = start + len(_OPEN)
        # Go: "{{-" trims only when the dash is followed by a space ("{{-3}}" is a number).
        marker = self.text[after : after + 2]
        if len(marker) == 2 and marker[0] == "-" and marker[1] in _SPACE:
            return True, after + 1
        return False, after

    def _lex_action(self, start: int, pos: int) -> tuple[list[_Token], bool, int]:
        """The action's tokens, whether it ends with "-}}", and the position after "}}"."""
        tokens: list[_Token] = []
        text = self.text
        while pos < len(text):
            char = text[pos]
            if char in _SPACE:
                end = pos
                while end < len(text) and text[end] in _SPACE:
                    end += 1
                if text.startswith("-" + _CLOSE, end):
                    return tokens, True, end + 1 + len(_CLOSE)
                pos = end
            elif text.startswith(_CLOSE, pos):
                return tokens, False, pos + len(_CLOSE)
            else:
                token = self._token(pos)
                tokens.append(token)
                pos += len(token.text)
        self.fail(start, "'{{' is never closed with '}}'")

    def _token(self, pos: int) -> _Token:
        for kind, pattern in (("field", _FIELD_RE), ("ident", _IDENT_RE), ("string", _STRING_RE)):
            match = pattern.match(self.text, pos)
            if match:
                return _Token(kind, match.group(), pos)
        if self.text[pos] in '"`':
            self.fail(pos, "unterminated string")
        return _Token("other", self.text[pos], pos)

    def _action(self, tokens: list[_Token], start: int) -> _Lookup:
        if not tokens:
            self.fail(start, "empty action '{{ }}'")
        for token in tokens:
            if token.kind == "other":
                what = "pipelines" if token.text == "|" else f"{token.text!r}"
                self.fail(token.pos, f"{what} not supported", _SUPPORTED)
        first = tokens[0]
        if first.kind == "field" and len(tokens) == 1:
            return self._field(first)
        if first.kind == "ident" and first.text == "index":
            return self._index(tokens)
        if first.kind == "ident":
            self.fail(first.pos, f"function {first.text!r} not supported", _SUPPORTED)
        if first.kind == "field":
            self.fail(tokens[1].pos, f"unexpected {tokens[1].text!r} after {first.text}")
        self.fail(first.pos, f"unexpected {first.text!r}", _SUPPORTED)

    def _field(self, token: _Token) -> _Lookup:
        path = token.text
        if path in SCALAR_FIELDS:
            return _Lookup(path, self.column(token.pos))
        head, _, key = path.rpartition(".")
        # Go also reads a map key written as a field: .PodMeta.Labels.app.
        if head in MAP_FIELDS:
            return _Lookup(head, self.column(token.pos), key)
        if path in MAP_FIELDS:
            self.fail(token.pos, f"{path} is a map", f'write index {path} "key"')
        self.fail(token.pos, f"unknown field {path}", f"known: {_KNOWN}")

    def _index(self, tokens: list[_Token]) -> _Lookup:
        if len(tokens) != 3 or tokens[1].kind != "field" or tokens[2].kind != "string":
            self.fail(
                tokens[0].pos, "index takes a map and one string key", f"e.g. {_INDEX_EXAMPLE}"
            )
        target, key = tokens[1], tokens[2]
        if target.text not in MAP_FIELDS:
            maps = " or ".join(MAP_FIELDS)
            self.fail(target.pos, f"index needs {maps}, not {target.text}")
        return _Lookup(target.text, self.column(target.pos), self._unquote(key))

    def _unquote(self, token: _Token) -> str:
        body = token.text[1:-1]
        if token.text.startswith("`"):
            return body
        out: list[str] = []
        chars = iter(enumerate(body))
        for offset, char in chars:
            if char != "\\":
                out.append(char)
                continue
            _, escaped = next(chars)  # the string pattern guarantees a character follows
            if escaped not in _ESCAPES:
                self.fail(token.pos + 1 + offset, f"unsupported escape '\\{escaped}' in string")
            out.append(_ESCAPES[escaped])
        return "".join(out)

    def column(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos)
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"line {line + 1}, column {column}" if "\n" in self.text else f"column {column}"

    def fail(self, pos: int, message: str, hint: str = "") -> NoReturn:
        suffix = f"; {hint}" if hint else ""
        raise TemplateError(f"{self.name}: {message} at {self.column(pos)}{suffix}")


_INDEX_EXAMPLE: Final = 'index .PodMeta.Labels "app"'
_SUPPORTED: Final = f"only fields and {_INDEX_EXAMPLE} are supported"


def _append(parts: list[str | _Lookup], literal: str) -> None:
    if literal:
        parts.append(literal)
