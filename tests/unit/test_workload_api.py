"""The Workload API servicer's pure helpers: the security header, hints, claims, error mapping."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from herald_agent.svid_manager import Identity, SvidManagerError
from herald_agent.workload_api import (
    _jwt_error,
    bundle_key,
    claims_struct,
    dedupe_hints,
    has_security_header,
)
from herald_core.entry import Entry
from herald_core.selector import parse_selectors
from herald_core.spiffeid import SpiffeId, TrustDomain

AGENT = SpiffeId.parse("spiffe://example.org/herald/agent/x")


class Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...] | None) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> Any:
        return self.metadata


def identity(entry_id: str, hint: str = "", created_at: int = 0) -> Identity:
    entry = Entry(
        id=entry_id,
        spiffe_id=SpiffeId.parse(f"spiffe://example.org/{entry_id}"),
        parent_id=AGENT,
        selectors=parse_selectors(["unix:uid:0"]),
        hint=hint,
        created_at=created_at,
    )
    return Identity(entry, None)


def test_the_security_header_needs_exactly_one_true() -> None:
    good = (("workload.spiffe.io", "true"), ("other", "x"))
    assert has_security_header(Context(good))  # type: ignore[arg-type]
    for bad in [
        None,
        (),
        (("workload.spiffe.io", "True"),),
        (("workload.spiffe.io", "true "),),
        (("workload.spiffe.io", "true"), ("workload.spiffe.io", "true")),
        (("workload.spiffe.io", "true"), ("workload.spiffe.io", "false")),
    ]:
        assert not has_security_header(Context(bad)), bad  # type: ignore[arg-type]


def test_hint_duplicates_keep_the_oldest_entry_then_the_smallest_id() -> None:
    ids = [
        identity("a", hint="h", created_at=20),
        identity("b", hint="h", created_at=10),
        identity("c"),
        identity("d"),
        identity("e", hint="g", created_at=5),
        identity("f", hint="g", created_at=5),
    ]
    hidden: list[tuple[str, str]] = []
    kept = dedupe_hints(ids, lambda gone, won: hidden.append((gone.entry.id, won.entry.id)))
    assert [i.entry.id for i in kept] == ["b", "c", "d", "e"]
    assert hidden == [("a", "b"), ("f", "e")]
    assert dedupe_hints([]) == []


def test_claims_carry_aud_as_a_list_and_numbers_as_doubles() -> None:
    struct = claims_struct({"sub": "spiffe://example.org/w", "aud": "x", "exp": 1700000000})
    assert json_format.MessageToDict(struct) == {
        "sub": "spiffe://example.org/w",
        "aud": ["x"],
        "exp": 1700000000.0,
    }
    assert json_format.MessageToDict(claims_struct({"aud": ["a", "b"]})) == {"aud": ["a", "b"]}


def test_claims_a_struct_cannot_carry_raise() -> None:
    with pytest.raises(OverflowError):
        claims_struct({"big": 10**400})


def test_bundle_keys_are_trust_domain_ids() -> None:
    assert bundle_key(TrustDomain("example.org")) == "spiffe://example.org"


def test_jwt_errors_map_to_workload_api_codes() -> None:
    assert _jwt_error(SvidManagerError(grpc.StatusCode.PERMISSION_DENIED, "gone")) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "no identity issued",
    )
    assert _jwt_error(
        SvidManagerError(grpc.StatusCode.INVALID_ARGUMENT, "audience is required")
    ) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "audience is required",
    )
    assert _jwt_error(SvidManagerError(grpc.StatusCode.UNAVAILABLE, "server away")) == (
        grpc.StatusCode.UNAVAILABLE,
        "could not fetch JWT-SVID: server away",
    )
