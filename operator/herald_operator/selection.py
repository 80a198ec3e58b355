"""Kubernetes label selectors (``metav1.LabelSelector``) and Service selectors, matched in Python.

An identity's ``podSelector`` and ``namespaceSelector`` are label selectors: ``matchLabels`` and
``matchExpressions`` (operators ``In``, ``NotIn``, ``Exists``, ``DoesNotExist``), every
requirement must hold, and an unset or empty selector matches everything. The semantics are the
API server's (``k8s.io/apimachinery/pkg/labels``): ``NotIn`` and ``DoesNotExist`` also hold when
the label is absent.

A Service's ``spec.selector`` is a plain map with a different rule: a Service without a selector
selects no pods (its endpoints are managed by hand).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

_OPERATORS: Final = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})
_WITH_VALUES: Final = frozenset({"In", "NotIn"})
_SELECTOR_FIELDS: Final = frozenset({"matchLabels", "matchExpressions"})
_REQUIREMENT_FIELDS: Final = frozenset({"key", "operator", "values"})
# A label key: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_PREFIX_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_VALUE_RE: Final = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?\Z")


class LabelSelectorError(ValueError):
    """A label selector the API server would refuse; the message names the field."""


@dataclass(frozen=True)
class Requirement:
    """One requirement: ``key`` ``operator`` ``values``."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values


@dataclass(frozen=True)
class LabelSelector:
    """A parsed ``metav1.LabelSelector``: the conjunction of its requirements."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, obj: object, field: str) -> LabelSelector:
        """Read a selector as the API returns it (None = unset); ``field`` heads errors."""
        if obj is None:
            return cls()
        if not isinstance(obj, Mapping):
            raise LabelSelectorError(f"{field}: expected an object, got {obj!r}")
        unknown = sorted(set(obj) - _SELECTOR_FIELDS)
        if unknown:
            raise LabelSelectorError(
                f"{field}.{unknown[0]}: unknown field; a label selector has matchLabels and "
                "matchExpressions"
            )
        requirements = [*_match_labels(obj.get("matchLabels"), f"{field}.matchLabels")]
        expressions = obj.get("matchExpressions")
        if expressions is not None:
            if not isinstance(expressions, list):
                raise LabelSelectorError(f"{field}.matchExpressions: expected a list")
            for index, item in enumerate(expressions):
                requirements.append(_requirement(item, f"{field}.matchExpressions[{index}]"))
        return cls(tuple(requirements))

    @property
    def is_everything(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)


EVERYTHING: Final = LabelSelector()


def service_selects(service: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether ``service`` sends traffic to ``pod``: same namespace and a non-empty selector."""
    pod_meta = pod.get("metadata") or {}
    service_meta = service.get("metadata") or {}
    if service_meta.get("namespace") != pod_meta.get("namespace"):
        return False
    selector = (service.get("spec") or {}).get("selector") or {}
    labels = pod_meta.get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _match_labels(obj: object, field: str) -> list[Requirement]:
    if obj is None:
        return []
    if not isinstance(obj, Mapping):
        raise LabelSelectorError(f"{field}: expected a map of label keys to values")
    requirements = []
    for key, value in obj.items():
        _check_key(key, f"{field}[{key!r}]")
        _check_value(value, f"{field}[{key!r}]")
        requirements.append(Requirement(key, "In", frozenset({value})))
    return requirements


def _requirement(item: object, field: str) -> Requirement:
    if not isinstance(item, Mapping):
        raise LabelSelectorError(f"{field}: expected an object with key, operator and values")
    unknown = sorted(set(item) - _REQUIREMENT_FIELDS)
    if unknown:
        raise LabelSelectorError(f"{field}.{unknown[0]}: unknown field")
    key = item.get("key")
    _check_key(key, f"{field}.key")
    operator = item.get("operator")
    if operator not in _OPERATORS:
        raise LabelSelectorError(
            f"{field}.operator: {operator!r} is not one of In, NotIn, Exists, DoesNotExist"
        )
    values = item.get("values") or []
    if not isinstance(values, list):
        raise LabelSelectorError(f"{field}.values: expected a list of strings")
    if operator in _WITH_VALUES and not values:
        raise LabelSelectorError(f"{field}.values: required (non-empty) for {operator}")
    if operator not in _WITH_VALUES and values:
        raise LabelSelectorError(f"{field}.values: must be empty for {operator}")
    for index, value in enumerate(values):
        _check_value(value, f"{field}.values[{index}]")
    assert isinstance(key, str)  # _check_key refused anything else
    return Requirement(key, operator, frozenset(values))


def _check_key(key: object, field: str) -> None:
    if not isinstance(key, str) or not key:
        raise LabelSelectorError(f"{field}: a label key must be a non-empty string")
    prefix, slash, name = key.rpartition("/")
    valid_prefix = not slash or (0 < len(prefix) <= 253 and _PREFIX_RE.match(prefix))
    if not valid_prefix or not _NAME_RE.match(name):
        raise LabelSelectorError(
            f"{field}: {key!r} is not a valid label key (an optional DNS prefix and '/', then "
            "at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric)"
        )


def _check_value(value: object, field: str) -> None:
    if not isinstance(value, str) or not _VALUE_RE.match(value):
        raise LabelSelectorError(
            f"{field}: {value!r} is not a valid label value (at most 63 letters, digits, '-', "
            "'_' or '.', starting and ending alphanumeric, or empty)"
        )
