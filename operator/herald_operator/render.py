"""Rendering one identity for one pod into the WorkloadEntry it asks for.

``render_for_pod`` decides whether an identity selects a pod and, if so, renders its templates
and checks the result the way herald-server will read it (``herald_server.k8s_entries``): a
SPIFFE ID in the trust domain, not under the reserved ``spiffe://<td>/herald/``, and for a
SPIFFEID under ``spiffe://<td>/ns/<its namespace>/`` (tenant confinement); selectors herald's
attestors produce; valid DNS names. A failure is a ``Failure`` (reason and message for the
identity's status and Event), never an exception.

A ``DesiredEntry`` holds everything the WorkloadEntry object needs: a deterministic name, the
pod's namespace, herald's labels, the ownerReference to the pod and the spec;
``DesiredEntry.to_object()`` is the object to create or patch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from herald_core.entry import RESERVED_PATH, EntryError, check_dns_name, is_reserved_id
from herald_core.selector import Selector, SelectorError
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from herald_operator.crds import API_VERSION
from herald_operator.identities import CLUSTER_SPIFFEID, SPIFFEID, Identity
from herald_operator.selection import service_selects
from herald_operator.templates import TemplateContext, TemplateError

WORKLOAD_ENTRY: Final = "WorkloadEntry"
MAX_NAME_LENGTH: Final = 191  # + "." + a 63-character namespace = the server's 255-character ID
LABEL_NODE: Final = "herald.dev/node"
LABEL_POD: Final = "herald.dev/pod"
LABEL_POD_UID: Final = "herald.dev/pod-uid"
LABEL_SOURCE_KIND: Final = "herald.dev/source-kind"
LABEL_SOURCE_NAME: Final = "herald.dev/source-name"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "herald-operator"
HERALD_LABELS: Final = (
    LABEL_NODE,
    LABEL_POD,
    LABEL_POD_UID,
    LABEL_SOURCE_KIND,
    LABEL_SOURCE_NAME,
    LABEL_MANAGED_BY,
)
# RenderFailed: a template or its result is unusable for this pod; OutsideNamespace: a SPIFFEID
# rendered an ID outside its namespace (docs/crds.md names both reasons).
RENDER_FAILED: Final = "RenderFailed"
OUTSIDE_NAMESPACE: Final = "OutsideNamespace"
_KIND_PREFIX: Final = {CLUSTER_SPIFFEID: "cspiffeid", SPIFFEID: "sid"}
_FINISHED_PHASES: Final = frozenset({"Succeeded", "Failed"})
_HASH_LENGTH: Final = 10
_MAX_LABEL_VALUE: Final = 63
_MAX_SELECTORS: Final = 64
_MAX_DNS_NAMES: Final = 128
_NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Failure:
    """Why an identity that selects a pod gives it no entry."""

    reason: str
    message: str


@dataclass(frozen=True)
class DesiredEntry:
    """One WorkloadEntry the operator wants to exist."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    owner: Mapping[str, Any]
    spec: Mapping[str, Any]
    source: Identity

    @property
    def entry_id(self) -> str:
        """The entry's ID in herald-server: ``<namespace>.<name>``."""
        return f"{self.namespace}.{self.name}"

    @property
    def identity_key(self) -> tuple[str, frozenset[str]]:
        """(SPIFFE ID, selectors): two entries with the same key are duplicates."""
        return (str(self.spec["spiffeID"]), frozenset(self.spec["selectors"]))

    def to_object(self) -> dict[str, Any]:
        """The WorkloadEntry object as the API takes it."""
        return {
            "apiVersion": API_VERSION,
            "kind": WORKLOAD_ENTRY,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": dict(self.labels),
                "ownerReferences": [dict(self.owner)],
            },
            "spec": _copy_spec(self.spec),
        }


@dataclass(frozen=True)
class RenderResult:
    """One identity against one pod: not selected, an entry, or a failure."""

    identity: Identity
    selected: bool
    entry: DesiredEntry | None = None
    failure: Failure | None = None


def render_for_pod(
    identity: Identity,
    pod: Mapping[str, Any],
    namespace_obj: Mapping[str, Any] | None,
    node_obj: Mapping[str, Any] | None,
    *,
    trust_domain: str,
    cluster_name: str,
    cluster_domain: str,
    services: Iterable[Mapping[str, Any]] = (),
) -> RenderResult:
    """Whether ``identity`` selects ``pod`` and, if it does, the entry it renders or why not.

    ``namespace_obj`` is the pod's Namespace (None if not known yet: a ClusterSPIFFEID then
    selects only with an empty namespaceSelector); ``node_obj`` its Node (templates reading
    ``.NodeMeta.UID`` fail until it is known); ``services`` the Services of the pod's namespace,
    read only with ``autoPopulateDNSNames``.
    """
    if not selects(identity, pod, namespace_obj):
        return RenderResult(identity, selected=False)
    context = TemplateContext.for_pod(
        pod,
        node_obj,
        trust_domain=trust_domain,
        cluster_name=cluster_name,
        cluster_domain=cluster_domain,
    )
    try:
        entry = _render(identity, pod, context, services)
    except _Refused as exc:
        return RenderResult(identity, selected=True, failure=exc.failure)
    return RenderResult(identity, selected=True, entry=entry)


def pod_is_eligible(pod: Mapping[str, Any]) -> bool:
    """Scheduled, not finished, not being deleted: the pods that may get entries."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    return (
        bool(spec.get("nodeName"))
        and status.get("phase") not in _FINISHED_PHASES
        and not meta.get("deletionTimestamp")
    )


def selects(
    identity: Identity, pod: Mapping[str, Any], namespace_obj: Mapping[str, Any] | None
) -> bool:
    """Whether ``identity`` applies to ``pod`` (before any template is rendered)."""
    if not pod_is_eligible(pod):
        return False
    meta = pod.get("metadata") or {}
    namespace = meta.get("namespace")
    if identity.kind == SPIFFEID and namespace != identity.namespace:
        return False
    if not identity.namespace_selector.is_everything:
        if namespace_obj is None:
            return False
        if not identity.namespace_selector.matches(_namespace_labels(namespace_obj)):
            return False
    return identity.pod_selector.matches(meta.get("labels") or {})


def entry_name(identity: Identity, pod_uid: str) -> str:
    """``<cspiffeid|sid>-<identity name>-<hash>``: stable per (identity, pod), DNS-1123.

    The hash covers the kind, the identity's full name and the pod UID, so a name shortened to
    fit stays unique.
    """
    digest = _hash(identity.kind, identity.namespace or "", identity.name, pod_uid)
    prefix = _KIND_PREFIX[identity.kind]
    room = MAX_NAME_LENGTH - len(prefix) - len(digest) - 2
    # A cut may end on '.' or '-', which may not precede the '-' that follows.
    middle = identity.name[:room].rstrip(".-")
    return f"{prefix}-{middle}-{digest}" if middle else f"{prefix}-{digest}"


def label_value(text: str) -> str:
    """``text`` as a label value: itself when it fits (≤ 63), else a prefix and a hash."""
    if len(text) <= _MAX_LABEL_VALUE:
        return text
    digest = _hash(text)
    head = text[: _MAX_LABEL_VALUE - len(digest) - 1].rstrip("-_.")
    return f"{head}-{digest}"


class _Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.failure = Failure(reason, message)


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:_HASH_LENGTH]


def _namespace_labels(namespace_obj: Mapping[str, Any]) -> Mapping[str, str]:
    meta = namespace_obj.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    # The API server sets this label on every namespace; an object read from elsewhere (a
    # cache, a test) may lack it, and selectors on namespace names must still work.
    labels.setdefault(_NAMESPACE_NAME_LABEL, str(meta.get("name", "")))
    return labels


def _render(
    identity: Identity,
    pod: Mapping[str, Any],
    context: TemplateContext,
    services: Iterable[Mapping[str, Any]],
) -> DesiredEntry:
    trust_domain = TrustDomain.parse(context.trust_domain)
    spiffe_id = _spiffe_id(identity, context, trust_domain)
    spec: dict[str, Any] = {
        "spiffeID": str(spiffe_id),
        "nodeName": context.node_name,
        "selectors": _selectors(identity, context),
    }
    dns_names = _dns_names(identity, context, pod, services)
    if dns_names:
        spec["dnsNames"] = dns_names
    spec.update(_copied_fields(identity, trust_domain))
    meta = pod.get("metadata") or {}
    return DesiredEntry(
        name=entry_name(identity, context.pod_uid),
        namespace=context.pod_namespace,
        labels=_labels(identity, context),
        owner={
            "apiVersion": "v1",
            "kind": "Pod",
            "name": str(meta.get("name", "")),
            "uid": context.pod_uid,
            "controller": True,
        },
        spec=spec,
        source=identity,
    )


def _spiffe_id(identity: Identity, context: TemplateContext, trust_domain: TrustDomain) -> SpiffeId:
    field = f"{identity.label}: spiffeIDTemplate"
    text = _expand(identity.spiffe_id_template.render, context)
    try:
        spiffe_id = SpiffeId.parse(text)
    except SpiffeIdError as exc:
        message = f"{field}: rendered {text!r}, not a SPIFFE ID: {exc}"
        raise _Refused(RENDER_FAILED, message) from exc
    if not spiffe_id.is_member_of(trust_domain):
        raise _Refused(
            RENDER_FAILED, f"{field}: rendered {text!r}, outside trust domain {trust_domain}"
        )
    if spiffe_id.is_root:
        raise _Refused(RENDER_FAILED, f"{field}: rendered {text!r}, which has no path")
    if is_reserved_id(spiffe_id):
        raise _Refused(
            RENDER_FAILED,
            f"{field}: rendered {text!r}, under {trust_domain.id}{RESERVED_PATH}/, which is "
            "reserved for herald's own agents and server",
        )
    if identity.kind == SPIFFEID:
        confined = SpiffeId.from_segments(trust_domain, "ns", str(identity.namespace))
        if spiffe_id == confined or not spiffe_id.is_under(confined):
            raise _Refused(
                OUTSIDE_NAMESPACE,
                f"{field}: rendered {text!r}; a SPIFFEID in namespace {identity.namespace} may "
                f"only give IDs under {confined}/",
            )
    return spiffe_id


def _expand(render: Callable[[TemplateContext], str], context: TemplateContext) -> str:
    try:
        return render(context)
    except TemplateError as exc:
        raise _Refused(RENDER_FAILED, str(exc)) from exc


def _selectors(identity: Identity, context: TemplateContext) -> list[str]:
    selectors = [f"k8s:pod-uid:{context.pod_uid}"]
    for template in identity.workload_selector_templates:
        text = _expand(template.render, context)
        try:
            Selector.parse(text)
        except SelectorError as exc:
            raise _Refused(RENDER_FAILED, f"{template.name}: rendered {text!r}: {exc}") from exc
        if text not in selectors:
            selectors.append(text)
    if len(selectors) > _MAX_SELECTORS:
        raise _Refused(
            RENDER_FAILED,
            f"{identity.label}: spec.workloadSelectorTemplates: {len(selectors)} selectors with "
            f"k8s:pod-uid; at most {_MAX_SELECTORS}",
        )
    return selectors


def _dns_names(
    identity: Identity,
    context: TemplateContext,
    pod: Mapping[str, Any],
    services: Iterable[Mapping[str, Any]],
) -> list[str]:
    names: list[str] = []
    for template in identity.dns_name_templates:
        names.append(_dns_name(_expand(template.render, context), template.name))
    if identity.auto_populate_dns_names:
        field = f"{identity.label}: autoPopulateDNSNames"
        for service in services:
            if service_selects(service, pod):
                for name in _service_names(service, context.cluster_domain):
                    names.append(_dns_name(name, field))
    unique = list(dict.fromkeys(names))
    if identity.namespace is not None:
        for name in unique:
            _confine_dns_name(name, identity, context.cluster_domain)
    if len(unique) > _MAX_DNS_NAMES:
        raise _Refused(
            RENDER_FAILED, f"{identity.label}: {len(unique)} DNS names; at most {_MAX_DNS_NAMES}"
        )
    return unique


def _confine_dns_name(name: str, identity: Identity, cluster_domain: str) -> None:
    """A SPIFFEID may only name its own namespace's services in an SVID.

    Otherwise a tenant could mint a certificate for another namespace's service (or any outside
    host) that a client verifying host names would accept.
    """
    namespace = identity.namespace
    suffixes = [f".{namespace}", f".{namespace}.svc"]
    if cluster_domain:
        suffixes.append(f".{namespace}.svc.{cluster_domain}")
    # A single label resolves through the pod's own namespace search path.
    if "." not in name or any(name.endswith(suffix) for suffix in suffixes):
        return
    raise _Refused(
        OUTSIDE_NAMESPACE,
        f"{identity.label}: DNS name {name!r} is outside namespace {namespace}; a SPIFFEID may "
        f"only use names ending in {', '.join(suffixes)} or a single label",
    )


def _service_names(service: Mapping[str, Any], cluster_domain: str) -> list[str]:
    meta = service.get("metadata") or {}
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc"] + (
        [f"{name}.{namespace}.svc.{cluster_domain}"] if cluster_domain else []
    )


def _dns_name(text: str, field: str) -> str:
    try:
        check_dns_name(text)
    except EntryError as exc:
        raise _Refused(RENDER_FAILED, f"{field}: rendered {text!r}: {exc}") from exc
    return text


def _copied_fields(identity: Identity, trust_domain: TrustDomain) -> dict[str, Any]:
    """The fields copied from the identity, only when set (unset = the server's default)."""
    if trust_domain in identity.federates_with:
        raise _Refused(
            RENDER_FAILED,
            f"{identity.label}: spec.federatesWith: lists {trust_domain}, "
            "herald's own trust domain",
        )
    values: dict[str, Any] = {
        "x509SVIDTTL": identity.x509_svid_ttl,
        "jwtSVIDTTL": identity.jwt_svid_ttl,
        "federatesWith": [td.name for td in identity.federates_with],
        "hint": identity.hint,
        "admin": identity.admin,
        "downstream": identity.downstream,
    }
    return {key: value for key, value in values.items() if value}


def _labels(identity: Identity, context: TemplateContext) -> dict[str, str]:
    return {
        LABEL_NODE: label_value(context.node_name),
        LABEL_POD: label_value(context.pod_name),
        LABEL_POD_UID: label_value(context.pod_uid),
        LABEL_SOURCE_KIND: identity.kind,
        LABEL_SOURCE_NAME: label_value(identity.name),
        LABEL_MANAGED_BY: MANAGER,
    }


def _copy_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, list) else value for key, value in spec.items()}
