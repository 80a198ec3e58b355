"""Identity objects (ClusterSPIFFEID, SPIFFEID) read, checked and compiled into ``Identity`` values.

``parse_identity(obj)`` takes the object as the API returns it and either returns an
``Identity`` (templates compiled, selectors parsed, TTLs in seconds) or raises ``IdentityError``
whose message names the object and the field: that message is what the object's ``Ready``
condition (reason ``InvalidSpec``) and its Event show. Everything that can be checked without a
pod is checked here, once per generation; what depends on the pod is checked when rendering.

``class_matches`` is the className rule, spire-controller-manager's: an operator acts on an
object whose ``className`` equals its own class, and on objects without a ``className`` only
when it watches classless objects, or when it has no class itself (empty equals empty).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from herald_core.durations import DurationError, parse_duration
from herald_core.entry import MAX_HINT_LENGTH, MAX_TTL_SECONDS, EntryError, check_dns_name
from herald_core.selector import Selector, SelectorError
from herald_core.spiffeid import SpiffeIdError, TrustDomain
from herald_operator.selection import EVERYTHING, LabelSelector, LabelSelectorError
from herald_operator.templates import Template, TemplateError, compile_template

CLUSTER_SPIFFEID: Final = "ClusterSPIFFEID"
SPIFFEID: Final = "SPIFFEID"
IDENTITY_KINDS: Final = (CLUSTER_SPIFFEID, SPIFFEID)
_SPEC_FIELDS: Final = frozenset(
    {
        "spiffeIDTemplate",
        "podSelector",
        "namespaceSelector",
        "workloadSelectorTemplates",
        "dnsNameTemplates",
        "autoPopulateDNSNames",
        "ttl",
        "jwtTtl",
        "federatesWith",
        "hint",
        "admin",
        "downstream",
        "fallback",
        "className",
    }
)
_SCHEME: Final = "spiffe://"


class IdentityError(ValueError):
    """An identity object herald will not act on; the message names the object and the field."""


@dataclass(frozen=True)
class Identity:
    """One ClusterSPIFFEID or SPIFFEID, validated; ``namespace`` is None for a ClusterSPIFFEID."""

    kind: str
    name: str
    namespace: str | None
    uid: str
    generation: int
    created: str  # metadata.creationTimestamp (RFC 3339, UTC): orders identities by age
    spiffe_id_template: Template
    workload_selector_templates: tuple[Template, ...] = ()
    dns_name_templates: tuple[Template, ...] = ()
    pod_selector: LabelSelector = EVERYTHING
    namespace_selector: LabelSelector = EVERYTHING
    x509_svid_ttl: int = 0
    jwt_svid_ttl: int = 0
    federates_with: tuple[TrustDomain, ...] = ()
    hint: str = ""
    admin: bool = False
    downstream: bool = False
    fallback: bool = False
    class_name: str = ""
    auto_populate_dns_names: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, namespace or "", name): unique among identities."""
        return (self.kind, self.namespace or "", self.name)

    @property
    def label(self) -> str:
        """How messages name the object: ``ClusterSPIFFEID web``, ``SPIFFEID shop/checkout``."""
        return f"{self.kind} {_object_name(self.namespace, self.name)}"


def class_matches(object_class: str, operator_class: str, *, watch_classless: bool = False) -> bool:
    """Whether an operator of ``operator_class`` acts on an object of ``object_class``."""
    return object_class == operator_class or (not object_class and watch_classless)


def parse_identity(obj: Mapping[str, Any]) -> Identity:
    """The Identity an API object declares; IdentityError naming the field if it is invalid."""
    kind = obj.get("kind")
    if kind not in IDENTITY_KINDS:
        raise IdentityError(f"kind: expected ClusterSPIFFEID or SPIFFEID, got {kind!r}")
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    namespace = meta.get("namespace") if kind == SPIFFEID else None
    label = f"{kind} {_object_name(namespace, name)}"
    if not name:
        raise IdentityError(f"{label}: metadata.name: required")
    if kind == SPIFFEID and not namespace:
        raise IdentityError(f"{label}: metadata.namespace: required for a SPIFFEID")
    try:
        return _parse(obj, kind, name, namespace, label)
    except TemplateError as exc:
        # Template names already carry the label: "ClusterSPIFFEID web: spiffeIDTemplate".
        raise IdentityError(str(exc)) from exc
    except LabelSelectorError as exc:
        raise IdentityError(f"{label}: {exc}") from exc


def _object_name(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _parse(
    obj: Mapping[str, Any], kind: str, name: str, namespace: str | None, label: str
) -> Identity:
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise IdentityError(f"{label}: spec: missing or not an object")
    reader = _SpecReader(spec, label)
    unknown = sorted(set(spec) - _SPEC_FIELDS)
    if unknown:
        reader.fail(unknown[0], "unknown field")
    if kind == SPIFFEID and "namespaceSelector" in spec:
        reader.fail(
            "namespaceSelector",
            "not allowed in a SPIFFEID, which selects pods only in its own namespace "
            "(use a ClusterSPIFFEID to select namespaces)",
        )
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    return Identity(
        kind=kind,
        name=name,
        namespace=namespace,
        uid=str(meta.get("uid") or ""),
        generation=generation if isinstance(generation, int) else 0,
        created=str(meta.get("creationTimestamp") or ""),
        spiffe_id_template=reader.spiffe_id_template(),
        workload_selector_templates=reader.selector_templates(),
        dns_name_templates=reader.dns_name_templates(),
        pod_selector=LabelSelector.parse(spec.get("podSelector"), "spec.podSelector"),
        namespace_selector=LabelSelector.parse(
            spec.get("namespaceSelector"), "spec.namespaceSelector"
        ),
        x509_svid_ttl=reader.ttl("ttl"),
        jwt_svid_ttl=reader.ttl("jwtTtl"),
        federates_with=reader.federates_with(),
        hint=reader.hint(),
        admin=reader.boolean("admin"),
        downstream=reader.boolean("downstream"),
        fallback=reader.boolean("fallback"),
        class_name=reader.string("className"),
        auto_populate_dns_names=reader.boolean("autoPopulateDNSNames"),
    )


class _SpecReader:
    """Typed reads of one spec; every error names ``<label>: spec.<field>``."""

    def __init__(self, spec: Mapping[str, Any], label: str) -> None:
        self.spec = spec
        self.label = label

    def fail(self, field: str, message: str) -> NoReturn:
        raise IdentityError(f"{self.label}: spec.{field}: {message}")

    def string(self, field: str) -> str:
        value = self.spec.get(field, "")
        if not isinstance(value, str):
            self.fail(field, f"expected a string, got {value!r}")
        return str(value)

    def boolean(self, field: str) -> bool:
        value = self.spec.get(field, False)
        if not isinstance(value, bool):
            self.fail(field, f"expected a boolean, got {value!r}")
        return bool(value)

    def strings(self, field: str) -> list[str]:
        values = self.spec.get(field, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            self.fail(field, "expected a list of strings")
        return list(values)

    def template(self, text: str, field: str) -> Template:
        return compile_template(text, f"{self.label}: {field}")

    def spiffe_id_template(self) -> Template:
        text = self.string("spiffeIDTemplate")
        if not text:
            self.fail("spiffeIDTemplate", "required")
        if not text.startswith(_SCHEME):
            self.fail("spiffeIDTemplate", f"must start with {_SCHEME}, got {text!r}")
        return self.template(text, "spiffeIDTemplate")

    def selector_templates(self) -> tuple[Template, ...]:
        templates = []
        for index, text in enumerate(self.strings("workloadSelectorTemplates")):
            field = f"workloadSelectorTemplates[{index}]"
            template = self.template(text, field)
            if not template.has_actions:
                # A literal selector can be checked now rather than failing on every pod.
                try:
                    Selector.parse(text)
                except SelectorError as exc:
                    self.fail(field, str(exc))
            templates.append(template)
        return tuple(templates)

    def dns_name_templates(self) -> tuple[Template, ...]:
        templates = []
        for index, text in enumerate(self.strings("dnsNameTemplates")):
            field = f"dnsNameTemplates[{index}]"
            template = self.template(text, field)
            if not template.has_actions:
                try:
                    check_dns_name(text)
                except EntryError as exc:
                    self.fail(field, str(exc))
            templates.append(template)
        return tuple(templates)

    def ttl(self, field: str) -> int:
        text = self.string(field)
        if not text:
            return 0
        try:
            seconds = parse_duration(text).total_seconds()
        except DurationError as exc:
            self.fail(field, str(exc))
        if seconds != int(seconds):
            self.fail(field, f"must be whole seconds, got {text!r}")
        if seconds > MAX_TTL_SECONDS:
            self.fail(field, f"at most {MAX_TTL_SECONDS} seconds (366 days), got {text!r}")
        return int(seconds)

    def federates_with(self) -> tuple[TrustDomain, ...]:
        domains: list[TrustDomain] = []
        for text in self.strings("federatesWith"):
            try:
                domain = TrustDomain.parse(text)
            except SpiffeIdError as exc:
                self.fail("federatesWith", f"{text!r}: {exc}")
            if domain in domains:
                self.fail("federatesWith", f"{domain} is listed twice")
            domains.append(domain)
        return tuple(domains)

    def hint(self) -> str:
        hint = self.string("hint")
        if len(hint.encode()) > MAX_HINT_LENGTH:
            self.fail("hint", f"at most {MAX_HINT_LENGTH} bytes")
        return hint
