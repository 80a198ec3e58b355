"""Conversions between herald_core's model and herald's own protobuf messages.

Every message from the network passes through here on its way in, so a malformed one becomes a
WireError naming the field (which the gRPC layers turn into INVALID_ARGUMENT) and never a
half-built object.
"""

from __future__ import annotations

from cryptography import x509

from herald_core.bundle import Bundle, BundleError
from herald_core.entry import Entry, EntryError
from herald_core.keys import UnsupportedKeyError, load_public_key_der, public_key_to_der
from herald_core.proto.herald.types.v1 import types_pb2
from herald_core.selector import Selector, SelectorError
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from herald_core.x509svid import X509SvidError, chain_to_der, parse_der_chain


class WireError(ValueError):
    """A protobuf message that does not describe a valid herald object."""


def selector_to_proto(selector: Selector) -> types_pb2.Selector:
    return types_pb2.Selector(type=selector.type, value=selector.value)


def selector_from_proto(message: types_pb2.Selector) -> Selector:
    try:
        return Selector(message.type, message.value)
    except SelectorError as exc:
        raise WireError(f"selectors: {exc}") from exc


def entry_to_proto(entry: Entry) -> types_pb2.Entry:
    return types_pb2.Entry(
        id=entry.id,
        spiffe_id=str(entry.spiffe_id),
        parent_id=str(entry.parent_id),
        selectors=[selector_to_proto(s) for s in sorted(entry.selectors)],
        x509_svid_ttl=entry.x509_svid_ttl,
        jwt_svid_ttl=entry.jwt_svid_ttl,
        dns_names=list(entry.dns_names),
        federates_with=[td.name for td in entry.federates_with],
        hint=entry.hint,
        admin=entry.admin,
        downstream=entry.downstream,
        revision=entry.revision,
        created_at=entry.created_at,
    )


def _spiffe_id(field: str, text: str) -> SpiffeId:
    try:
        return SpiffeId.parse(text)
    except SpiffeIdError as exc:
        raise WireError(f"{field}: {exc}") from exc


def entry_from_proto(message: types_pb2.Entry) -> Entry:
    """Build and validate an Entry; WireError names the first bad field."""
    try:
        federates_with = tuple(TrustDomain.parse(name) for name in message.federates_with)
    except SpiffeIdError as exc:
        raise WireError(f"federatesWith: {exc}") from exc
    try:
        return Entry(
            id=message.id,
            spiffe_id=_spiffe_id("spiffeID", message.spiffe_id),
            parent_id=_spiffe_id("parentID", message.parent_id),
            selectors=frozenset(selector_from_proto(s) for s in message.selectors),
            x509_svid_ttl=message.x509_svid_ttl,
            jwt_svid_ttl=message.jwt_svid_ttl,
            dns_names=tuple(message.dns_names),
            federates_with=federates_with,
            hint=message.hint,
            admin=message.admin,
            downstream=message.downstream,
            revision=message.revision,
            created_at=message.created_at,
        )
    except EntryError as exc:
        raise WireError(str(exc)) from exc


def bundle_to_proto(bundle: Bundle) -> types_pb2.Bundle:
    return types_pb2.Bundle(
        trust_domain=bundle.trust_domain.name,
        x509_authorities=[chain_to_der([cert]) for cert in bundle.x509_authorities],
        jwt_authorities=[
            types_pb2.JWTKey(key_id=kid, public_key=public_key_to_der(key))
            for kid, key in sorted(bundle.jwt_authorities.items())
        ],
        refresh_hint=bundle.refresh_hint or 0,
        sequence_number=bundle.sequence_number,
    )


def bundle_from_proto(message: types_pb2.Bundle) -> Bundle:
    try:
        trust_domain = TrustDomain.parse(message.trust_domain)
        authorities: list[x509.Certificate] = []
        for der in message.x509_authorities:
            authorities.extend(parse_der_chain(der))
        keys = {k.key_id: load_public_key_der(k.public_key) for k in message.jwt_authorities}
        if len(keys) != len(message.jwt_authorities):
            raise WireError("bundle: duplicate JWT key IDs")
        return Bundle(
            trust_domain,
            tuple(authorities),
            keys,
            message.refresh_hint or None,
            message.sequence_number,
        )
    except (SpiffeIdError, X509SvidError, UnsupportedKeyError, BundleError) as exc:
        raise WireError(f"bundle: {exc}") from exc
