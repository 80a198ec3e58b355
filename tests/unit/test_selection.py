"""Label selectors with every operator, the API server's edge cases, and Service selectors."""

from __future__ import annotations

from typing import Any

import pytest

from herald_operator.selection import (
    EVERYTHING,
    LabelSelector,
    LabelSelectorError,
    service_selects,
)

WEB = {"app": "web", "tier": "front", "herald.dev/opt-out": ""}


def _selector(obj: Any) -> LabelSelector:
    return LabelSelector.parse(obj, "spec.podSelector")


@pytest.mark.parametrize("obj", [None, {}, {"matchLabels": {}, "matchExpressions": []}])
def test_an_empty_or_unset_selector_matches_everything(obj: Any) -> None:
    selector = _selector(obj)
    assert selector.is_everything
    assert selector.matches({})
    assert selector.matches(WEB)
    assert EVERYTHING.matches(WEB)


def test_match_labels_requires_every_pair() -> None:
    selector = _selector({"matchLabels": {"app": "web", "tier": "front"}})
    assert selector.matches(WEB)
    assert not selector.matches({"app": "web"})
    assert not selector.matches({"app": "web", "tier": "back"})


@pytest.mark.parametrize(
    ("expression", "labels", "expected"),
    [
        ({"key": "app", "operator": "In", "values": ["web", "api"]}, {"app": "api"}, True),
        ({"key": "app", "operator": "In", "values": ["web", "api"]}, {"app": "db"}, False),
        ({"key": "app", "operator": "In", "values": ["web"]}, {}, False),
        ({"key": "app", "operator": "NotIn", "values": ["web"]}, {"app": "db"}, True),
        ({"key": "app", "operator": "NotIn", "values": ["web"]}, {"app": "web"}, False),
        # The API server's rule: NotIn holds when the label is absent.
        ({"key": "app", "operator": "NotIn", "values": ["web"]}, {}, True),
        ({"key": "app", "operator": "Exists"}, {"app": ""}, True),
        ({"key": "app", "operator": "Exists"}, {"tier": "x"}, False),
        ({"key": "app", "operator": "DoesNotExist"}, {"tier": "x"}, True),
        ({"key": "app", "operator": "DoesNotExist", "values": []}, {"app": ""}, False),
    ],
)
def test_match_expressions_operators(
    expression: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert _selector({"matchExpressions": [expression]}).matches(labels) is expected


def test_match_labels_and_expressions_are_anded() -> None:
    selector = _selector(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "herald.dev/opt-out", "operator": "DoesNotExist"}],
        }
    )
    assert selector.matches({"app": "web"})
    assert not selector.matches(WEB)
    assert not selector.matches({"app": "api"})


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("app=web", "spec.podSelector: expected an object"),
        ({"matchLabel": {"app": "web"}}, "spec.podSelector.matchLabel: unknown field"),
        ({"matchLabels": ["app"]}, "spec.podSelector.matchLabels: expected a map"),
        ({"matchLabels": {"app": 3}}, "spec.podSelector.matchLabels['app']: 3 is not a valid"),
        ({"matchLabels": {"-bad": "x"}}, "matchLabels['-bad']: '-bad' is not a valid label key"),
        ({"matchLabels": {"a" * 64: "x"}}, "is not a valid label key"),
        ({"matchLabels": {"Bad_Prefix/app": "x"}}, "is not a valid label key"),
        ({"matchLabels": {"app": "x" * 64}}, "is not a valid label value"),
        ({"matchExpressions": {"key": "app"}}, "podSelector.matchExpressions: expected a list"),
        ({"matchExpressions": ["app"]}, "spec.podSelector.matchExpressions[0]: expected an object"),
        (
            {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["x"]}]},
            "spec.podSelector.matchExpressions[0].operator: 'Equals' is not one of In, NotIn",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "In"}]},
            "matchExpressions[0].values: required (non-empty) for In",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": []}]},
            "matchExpressions[0].values: required (non-empty) for NotIn",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]},
            "matchExpressions[0].values: must be empty for Exists",
        ),
        (
            {"matchExpressions": [{"operator": "Exists"}]},
            "matchExpressions[0].key: a label key must be a non-empty string",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "value": "x"}]},
            "matchExpressions[0].value: unknown field",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]},
            "matchExpressions[0].values: expected a list of strings",
        ),
    ],
)
def test_invalid_selectors_are_refused_naming_the_field(obj: Any, message: str) -> None:
    with pytest.raises(LabelSelectorError) as info:
        _selector(obj)
    assert message in str(info.value)


def test_prefixed_keys_and_empty_values_are_valid() -> None:
    selector = _selector({"matchLabels": {"app.kubernetes.io/name": "", "example.com/x": "a.b"}})
    assert selector.matches({"app.kubernetes.io/name": "", "example.com/x": "a.b"})
    assert not selector.matches({"app.kubernetes.io/name": "x", "example.com/x": "a.b"})


def _pod(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": namespace, "labels": labels}}


def _service(namespace: str, selector: dict[str, str] | None) -> dict[str, Any]:
    spec = {} if selector is None else {"selector": selector}
    return {"metadata": {"name": "s", "namespace": namespace}, "spec": spec}


def test_service_selects_pods_of_its_namespace_with_all_its_labels() -> None:
    pod = _pod("shop", WEB)
    assert service_selects(_service("shop", {"app": "web"}), pod)
    assert service_selects(_service("shop", {"app": "web", "tier": "front"}), pod)
    assert not service_selects(_service("shop", {"app": "web", "tier": "back"}), pod)
    assert not service_selects(_service("other", {"app": "web"}), pod)


@pytest.mark.parametrize("selector", [None, {}])
def test_a_service_without_selector_selects_no_pod(selector: dict[str, str] | None) -> None:
    assert not service_selects(_service("shop", selector), _pod("shop", WEB))
