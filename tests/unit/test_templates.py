"""The identity-template subset: every supported action, and every way a template is refused."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald_operator.templates import (
    SCALAR_FIELDS,
    Template,
    TemplateContext,
    TemplateError,
    compile_template,
    render,
)

NAME = "ClusterSPIFFEID web: spiffeIDTemplate"
CONTEXT = TemplateContext(
    trust_domain="example.org",
    cluster_name="prod-eu",
    cluster_domain="cluster.local",
    pod_name="web-0",
    pod_namespace="shop",
    pod_uid="0b5c3c1e-uid",
    service_account_name="web-sa",
    node_name="node-a",
    node_uid="9f1d-node-uid",
    pod_labels={"app": "web", "app.kubernetes.io/name": "storefront", "empty": ""},
    pod_annotations={"herald.dev/role": "frontend"},
)


def _render(text: str, context: TemplateContext = CONTEXT) -> str:
    return render(text, NAME, context)


def _error(text: str, context: TemplateContext = CONTEXT) -> str:
    with pytest.raises(TemplateError) as info:
        _render(text, context)
    message = str(info.value)
    assert message.startswith(f"{NAME}: "), message
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ .TrustDomain }}", "example.org"),
        ("{{ .ClusterName }}", "prod-eu"),
        ("{{ .ClusterDomain }}", "cluster.local"),
        ("{{ .PodMeta.Name }}", "web-0"),
        ("{{ .PodMeta.Namespace }}", "shop"),
        ("{{ .PodMeta.UID }}", "0b5c3c1e-uid"),
        ('{{ index .PodMeta.Labels "app" }}', "web"),
        ('{{ index .PodMeta.Labels "app.kubernetes.io/name" }}', "storefront"),
        ('{{ index .PodMeta.Labels "empty" }}', ""),
        ("{{ index .PodMeta.Labels `app` }}", "web"),
        ('{{ index .PodMeta.Annotations "herald.dev/role" }}', "frontend"),
        ("{{ .PodMeta.Labels.app }}", "web"),
        ("{{ .PodSpec.ServiceAccountName }}", "web-sa"),
        ("{{ .PodSpec.NodeName }}", "node-a"),
        ("{{ .NodeMeta.Name }}", "node-a"),
        ("{{ .NodeMeta.UID }}", "9f1d-node-uid"),
    ],
)
def test_every_supported_action(text: str, expected: str) -> None:
    assert _render(text) == expected


def test_every_scalar_field_is_covered_above() -> None:
    # A field added to the table without a test would otherwise go unnoticed.
    tested = {".TrustDomain", ".ClusterName", ".ClusterDomain", ".PodMeta.Name"}
    tested |= {".PodMeta.Namespace", ".PodMeta.UID", ".PodSpec.ServiceAccountName"}
    tested |= {".PodSpec.NodeName", ".NodeMeta.Name", ".NodeMeta.UID"}
    assert set(SCALAR_FIELDS) == tested


def test_classic_service_account_id() -> None:
    text = (
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}"
        "/sa/{{ .PodSpec.ServiceAccountName }}"
    )
    assert _render(text) == "spiffe://example.org/ns/shop/sa/web-sa"


@pytest.mark.parametrize(
    "text",
    [
        "{{.PodMeta.Name}}",
        "{{ .PodMeta.Name}}",
        "{{.PodMeta.Name }}",
        "{{   .PodMeta.Name\t}}",
        "{{\n.PodMeta.Name\n}}",
    ],
)
def test_whitespace_inside_the_braces_does_not_matter(text: str) -> None:
    assert _render(text) == "web-0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a  {{- .PodMeta.Name }}  b", "aweb-0  b"),
        ("a  {{ .PodMeta.Name -}}  b", "a  web-0b"),
        ("a \n {{- .PodMeta.Name -}} \n b", "aweb-0b"),
        ('x/ {{- index .PodMeta.Labels "app" -}} /y', "x/web/y"),
    ],
)
def test_trim_markers_remove_the_whitespace_beside_them(text: str, expected: str) -> None:
    assert _render(text) == expected


def test_literal_text_and_several_actions() -> None:
    text = 'k8s:pod-label:app:{{ index .PodMeta.Labels "app" }}@{{.NodeMeta.Name}}-{{.PodMeta.UID}}'
    assert _render(text) == "k8s:pod-label:app:web@node-a-0b5c3c1e-uid"


def test_compiled_once_and_reused() -> None:
    first = compile_template("{{ .PodMeta.Name }}", NAME)
    assert compile_template("{{ .PodMeta.Name }}", NAME) is first
    assert first.has_actions
    assert first.render(CONTEXT) == "web-0"
    other = TemplateContext(**{**CONTEXT.__dict__, "pod_name": "web-1"})
    assert first.render(other) == "web-1"


def test_unknown_field_names_template_column_field_and_known_fields() -> None:
    message = _error("spiffe://{{ .TrustDomain }}/{{ .PodMeta.Nmae }}")
    assert "unknown field .PodMeta.Nmae at column 32" in message
    assert "known: .TrustDomain" in message and ".PodSpec.ServiceAccountName" in message


def test_error_position_names_the_line_in_multiline_text() -> None:
    assert "unknown field .Nope at line 2, column 6" in _error("a\nb {{ .Nope }}")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("spiffe://x/{{ .PodMeta.Name", "'{{' is never closed with '}}' at column 12"),
        ("spiffe://x/{{ .PodMeta.Name }", "never closed"),
        ("spiffe://x/.PodMeta.Name }}", "'}}' without a matching '{{' at column 26"),
        ("{{ .PodMeta.Name }} }}", "'}}' without a matching '{{' at column 21"),
        ("{{ .PodMeta.Name | printf }}", "pipelines not supported at column 18"),
        ('{{ printf "%s" .PodMeta.Name }}', "function 'printf' not supported at column 4"),
        ("{{ lower .PodMeta.Name }}", "function 'lower' not supported"),
        ("{{ $x := .PodMeta.Name }}", "'$' not supported"),
        ("{{/* comment */}}", "'/' not supported"),
        ("{{ . }}", "'.' not supported"),
        ("{{ }}", "empty action"),
        ("{{ .PodMeta.Name .PodMeta.UID }}", "unexpected '.PodMeta.UID' after .PodMeta.Name"),
        ('{{ "literal" }}', "unexpected '\"literal\"'"),
        ("{{ .PodMeta.Labels }}", ".PodMeta.Labels is a map"),
        ("{{ .PodMeta.Labels.app.x }}", "unknown field .PodMeta.Labels.app.x"),
        ("{{ .PodMeta }}", "unknown field .PodMeta"),
        ("{{ .NodeSpec.PodCIDR }}", "unknown field .NodeSpec.PodCIDR"),
        ('{{ index .PodMeta.Name "a" }}', "index needs .PodMeta.Labels or .PodMeta.Annotations"),
        ("{{ index .PodMeta.Labels }}", "index takes a map and one string key"),
        ('{{ index .PodMeta.Labels "a" "b" }}', "index takes a map and one string key"),
        ("{{ index .PodMeta.Labels app }}", "index takes a map and one string key"),
        ('{{ index .PodMeta.Labels "app }}', "unterminated string"),
        ('{{ index .PodMeta.Labels "a\\qb" }}', "unsupported escape"),
        ("{{-.PodMeta.Name}}", "'-' not supported"),
        ("{{ .PodMeta.Name-}}", "'-' not supported"),
    ],
)
def test_refused_at_compile_time(text: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(text, NAME)
    assert str(info.value).startswith(f"{NAME}: ")
    assert fragment in str(info.value)


def test_missing_label_is_a_render_error_not_no_value() -> None:
    template = compile_template('spiffe://x/{{ index .PodMeta.Labels "version" }}', NAME)
    with pytest.raises(TemplateError) as info:
        template.render(CONTEXT)
    assert "the pod has no label 'version'" in str(info.value)
    assert "column 21" in str(info.value)


def test_missing_annotation_and_map_field_form_are_render_errors() -> None:
    assert "no annotation 'x'" in _error('{{ index .PodMeta.Annotations "x" }}')
    assert "no label 'version'" in _error("{{ .PodMeta.Labels.version }}")


def test_unknown_node_uid_is_a_render_error() -> None:
    context = TemplateContext(**{**CONTEXT.__dict__, "node_uid": None})
    assert ".NodeMeta.UID at column 4 has no value yet" in _error("{{ .NodeMeta.UID }}", context)


def test_escaped_quote_in_index_key() -> None:
    context = TemplateContext(**{**CONTEXT.__dict__, "pod_labels": {'a"b': "q"}})
    assert _render('{{ index .PodMeta.Labels "a\\"b" }}', context) == "q"


def test_context_from_pod_and_node_objects() -> None:
    pod = {
        "metadata": {
            "name": "web-0",
            "namespace": "shop",
            "uid": "u-1",
            "labels": {"app": "web"},
            "annotations": {"k": "v"},
        },
        "spec": {"serviceAccountName": "web-sa", "nodeName": "node-a"},
    }
    node = {"metadata": {"name": "node-a", "uid": "n-1"}}
    context = TemplateContext.for_pod(
        pod, node, trust_domain="example.org", cluster_name="c", cluster_domain="cluster.local"
    )
    text = (
        "{{.PodMeta.Name}} {{.PodMeta.Namespace}} {{.PodMeta.UID}} {{.PodSpec.ServiceAccountName}}"
        ' {{.NodeMeta.Name}} {{.NodeMeta.UID}} {{index .PodMeta.Labels "app"}}'
        ' {{index .PodMeta.Annotations "k"}}'
    )
    assert _render(text, context) == "web-0 shop u-1 web-sa node-a n-1 web v"
    bare = TemplateContext.for_pod(
        {"metadata": {"name": "p"}, "spec": {}},
        None,
        trust_domain="example.org",
        cluster_name="c",
        cluster_domain="cluster.local",
    )
    assert bare.service_account_name == "default"
    assert bare.node_uid is None


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_arbitrary_text_raises_only_template_error(text: str) -> None:
    with contextlib.suppress(TemplateError):
        compile_template(text, NAME).render(CONTEXT)


_ACTION_BITS = st.sampled_from(
    ["{{", "}}", "{{-", "-}}", " ", ".PodMeta", ".Name", "index", '"app"', "`k`", "|", "\\", "."]
)


@given(st.lists(st.one_of(_ACTION_BITS, st.text(max_size=3)), max_size=12).map("".join))
def test_template_like_text_raises_only_template_error(text: str) -> None:
    with contextlib.suppress(TemplateError):
        _render(text)


@given(st.text(max_size=80).filter(lambda t: "{{" not in t and "}}" not in t))
def test_text_without_actions_renders_to_itself(text: str) -> None:
    template = compile_template(text, NAME)
    assert isinstance(template, Template)
    assert not template.has_actions
    assert template.render(CONTEXT) == text
