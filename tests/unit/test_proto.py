"""Tests for the .proto definitions and their generated code in herald_core.proto.

py-spiffe's ``spiffe`` package must never be imported in this process: its vendored
Workload API messages have the same package-less names as ours, and the default
descriptor pool rejects the duplicates. Comparisons against py-spiffe run in a
subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from herald_core.proto.herald.admin.v1 import admin_pb2, admin_pb2_grpc
from herald_core.proto.herald.agent.v1 import agent_pb2, agent_pb2_grpc
from herald_core.proto.herald.types.v1 import types_pb2
from herald_core.proto.spiffe.workload import workload_pb2, workload_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
GEN_PROTO = REPO_ROOT / "scripts" / "gen_proto.py"

_TYPE_NAMES = {
    getattr(FieldDescriptor, name): name.removeprefix("TYPE_").lower()
    for name in dir(FieldDescriptor)
    if name.startswith("TYPE_")
}


def _type_name(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    return _TYPE_NAMES[field.type]


def _describe(field: FieldDescriptor) -> str:
    """Proto-syntax type of a field: ``bytes``, ``repeated string``, ``map<string, bytes>``."""
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key, value = message.fields_by_name["key"], message.fields_by_name["value"]
        return f"map<{_type_name(key)}, {_type_name(value)}>"
    if field.is_repeated:
        return f"repeated {_type_name(field)}"
    return _type_name(field)


def _fields(message: Descriptor) -> dict[str, tuple[int, str]]:
    return {f.name: (f.number, _describe(f)) for f in message.fields}


# The SPIFFE Workload API as in the spec's standards/workloadapi.proto.
WORKLOAD_MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "X509SVIDRequest": {},
    "X509SVIDResponse": {
        "svids": (1, "repeated X509SVID"),
        "crl": (2, "repeated bytes"),
        "federated_bundles": (3, "map<string, bytes>"),
    },
    "X509SVID": {
        "spiffe_id": (1, "string"),
        "x509_svid": (2, "bytes"),
        "x509_svid_key": (3, "bytes"),
        "bundle": (4, "bytes"),
        "hint": (5, "string"),
    },
    "X509BundlesRequest": {},
    "X509BundlesResponse": {
        "crl": (1, "repeated bytes"),
        "bundles": (2, "map<string, bytes>"),
    },
    "JWTSVIDRequest": {
        "audience": (1, "repeated string"),
        "spiffe_id": (2, "string"),
    },
    "JWTSVIDResponse": {"svids": (1, "repeated JWTSVID")},
    "JWTSVID": {
        "spiffe_id": (1, "string"),
        "svid": (2, "string"),
        "hint": (3, "string"),
    },
    "JWTBundlesRequest": {},
    "JWTBundlesResponse": {"bundles": (1, "map<string, bytes>")},
    "ValidateJWTSVIDRequest": {
        "audience": (1, "string"),
        "svid": (2, "string"),
    },
    "ValidateJWTSVIDResponse": {
        "spiffe_id": (1, "string"),
        "claims": (2, "google.protobuf.Struct"),
    },
    "WITSVIDRequest": {"spiffe_id": (1, "string")},
    "WITSVIDResponse": {"svids": (1, "repeated WITSVID")},
    "WITSVID": {
        "spiffe_id": (1, "string"),
        "wit_svid": (2, "string"),
        "wit_svid_key": (3, "string"),
        "hint": (4, "string"),
    },
    "WITBundlesRequest": {},
    "WITBundlesResponse": {"bundles": (1, "map<string, string>")},
}

# method -> (input, output, server streaming)
WORKLOAD_METHODS: dict[str, tuple[str, str, bool]] = {
    "FetchX509SVID": ("X509SVIDRequest", "X509SVIDResponse", True),
    "FetchX509Bundles": ("X509BundlesRequest", "X509BundlesResponse", True),
    "FetchJWTSVID": ("JWTSVIDRequest", "JWTSVIDResponse", False),
    "FetchJWTBundles": ("JWTBundlesRequest", "JWTBundlesResponse", True),
    "ValidateJWTSVID": ("ValidateJWTSVIDRequest", "ValidateJWTSVIDResponse", False),
    "FetchWITSVID": ("WITSVIDRequest", "WITSVIDResponse", True),
    "FetchWITBundles": ("WITBundlesRequest", "WITBundlesResponse", True),
}

AGENT_METHODS: dict[str, tuple[str, str, bool]] = {
    "RenewAgent": ("RenewAgentRequest", "RenewAgentResponse", False),
    "SyncEntries": ("SyncEntriesRequest", "SyncEntriesResponse", True),
    "BatchSignX509SVID": ("BatchSignX509SVIDRequest", "BatchSignX509SVIDResponse", False),
    "SignJWTSVID": ("SignJWTSVIDRequest", "SignJWTSVIDResponse", False),
    "GetBundle": ("GetBundleRequest", "GetBundleResponse", False),
}

ADMIN_METHODS = {
    "CreateEntry": ("CreateEntryRequest", "Entry", False),
    "UpdateEntry": ("UpdateEntryRequest", "Entry", False),
    "GetEntry": ("GetEntryRequest", "Entry", False),
    "ListEntries": ("ListEntriesRequest", "ListEntriesResponse", False),
    "DeleteEntry": ("DeleteEntryRequest", "DeleteEntryResponse", False),
    "CreateJoinToken": ("CreateJoinTokenRequest", "JoinToken", False),
    "GetBundle": ("GetBundleRequest", "GetBundleResponse", False),
}


class _RecordingChannel:
    """Stands in for grpc.Channel; records the method paths a stub registers."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def _record(self, kind: str) -> Any:
        def register(path: str, *args: Any, **kwargs: Any) -> object:
            self.paths[path] = kind
            return object()

        return register

    def __getattr__(self, kind: str) -> Any:
        if kind in {"unary_unary", "unary_stream", "stream_unary", "stream_stream"}:
            return self._record(kind)
        raise AttributeError(kind)


# --------------------------------------------------------------------------- (a)


@pytest.mark.timeout(120)
def test_generated_code_is_up_to_date() -> None:
    """Fails when scripts/gen_proto.py would change the committed generated code."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) is needed to regenerate")
    result = subprocess.run(
        [sys.executable, str(GEN_PROTO), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=110,
    )
    assert result.returncode == 0, (
        "generated protobuf code is stale; run .venv/bin/python scripts/gen_proto.py\n"
        f"{result.stdout}{result.stderr}"
    )


# --------------------------------------------------------------------------- (b)


def test_workload_api_has_no_package() -> None:
    assert workload_pb2.DESCRIPTOR.package == ""
    service = workload_pb2.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"]
    assert service.full_name == "SpiffeWorkloadAPI"


def test_workload_api_methods() -> None:
    service = workload_pb2.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"]
    actual = {
        m.name: (m.input_type.full_name, m.output_type.full_name, m.server_streaming)
        for m in service.methods
    }
    assert actual == WORKLOAD_METHODS
    assert not any(m.client_streaming for m in service.methods)


def test_workload_api_method_paths() -> None:
    channel = _RecordingChannel()
    stub: Any = workload_pb2_grpc.SpiffeWorkloadAPIStub  # the generated _grpc code is untyped
    stub(channel)
    assert channel.paths == {
        f"/SpiffeWorkloadAPI/{name}": "unary_stream" if streaming else "unary_unary"
        for name, (_, _, streaming) in WORKLOAD_METHODS.items()
    }


def test_workload_api_messages() -> None:
    messages = workload_pb2.DESCRIPTOR.message_types_by_name
    assert set(messages) == set(WORKLOAD_MESSAGES)
    for name, expected in WORKLOAD_MESSAGES.items():
        assert messages[name].full_name == name
        assert _fields(messages[name]) == expected, name


# --------------------------------------------------------------------------- (c)


def test_x509_svid_response_round_trip() -> None:
    response = workload_pb2.X509SVIDResponse(
        svids=[
            workload_pb2.X509SVID(
                spiffe_id="spiffe://example.org/ns/default/sa/web",
                x509_svid=b"\x30\x82leaf\x30\x82intermediate",
                x509_svid_key=b"\x30\x81pkcs8",
                bundle=b"\x30\x82root",
                hint="internal",
            )
        ],
        crl=[b"\x30\x82crl"],
        federated_bundles={
            "spiffe://other.org": b"\x30\x82other-root",
            "spiffe://third.org": b"",
        },
    )
    wire = response.SerializeToString(deterministic=True)
    parsed = workload_pb2.X509SVIDResponse.FromString(wire)
    assert parsed == response
    assert dict(parsed.federated_bundles) == {
        "spiffe://other.org": b"\x30\x82other-root",
        "spiffe://third.org": b"",
    }
    assert parsed.svids[0].hint == "internal"
    assert parsed.SerializeToString(deterministic=True) == wire
    # Field 3 (federated_bundles) is length-delimited: tag byte 0x1a.
    assert b"\x1a" in wire


def test_validate_jwt_svid_response_claims() -> None:
    claims = struct_pb2.Struct()
    claims.update({"sub": "spiffe://example.org/web", "aud": ["a", "b"], "exp": 1700000000})
    response = workload_pb2.ValidateJWTSVIDResponse(spiffe_id="spiffe://example.org/web")
    response.claims.CopyFrom(claims)
    parsed = workload_pb2.ValidateJWTSVIDResponse.FromString(response.SerializeToString())
    assert parsed.claims["sub"] == "spiffe://example.org/web"
    assert parsed.claims.fields["aud"].list_value == struct_pb2.ListValue(
        values=[struct_pb2.Value(string_value="a"), struct_pb2.Value(string_value="b")]
    )


# --------------------------------------------------------------------------- (d)


@pytest.mark.parametrize(
    ("module", "grpc_module", "service_name", "methods"),
    [
        (agent_pb2, agent_pb2_grpc, "AgentAPI", AGENT_METHODS),
        (
            agent_pb2,
            agent_pb2_grpc,
            "NodeAttestation",
            {"AttestAgent": ("AttestAgentRequest", "AttestAgentResponse", False)},
        ),
        (admin_pb2, admin_pb2_grpc, "AdminAPI", ADMIN_METHODS),
    ],
)
def test_herald_services(
    module: Any, grpc_module: Any, service_name: str, methods: dict[str, tuple[str, str, bool]]
) -> None:
    package = module.DESCRIPTOR.package
    assert package.startswith("herald.") and package.endswith(".v1")
    service = module.DESCRIPTOR.services_by_name[service_name]
    assert service.full_name == f"{package}.{service_name}"
    actual = {
        m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in service.methods
    }
    assert actual == methods
    assert not any(m.client_streaming for m in service.methods)

    channel = _RecordingChannel()
    getattr(grpc_module, f"{service_name}Stub")(channel)
    assert set(channel.paths) == {f"/{package}.{service_name}/{name}" for name in methods}
    assert hasattr(grpc_module, f"{service_name}Servicer")
    assert hasattr(grpc_module, f"add_{service_name}Servicer_to_server")


def test_agent_api_messages_round_trip() -> None:
    request = agent_pb2.AttestAgentRequest(
        k8s_psat=agent_pb2.K8sPsatParams(cluster="prod", token="tok"), csr=b"csr"
    )
    assert request.WhichOneof("params") == "k8s_psat"
    assert agent_pb2.AttestAgentRequest.FromString(request.SerializeToString()) == request

    sync = agent_pb2.SyncEntriesResponse(
        full=False,
        entries=[
            types_pb2.Entry(
                id="e1",
                spiffe_id="spiffe://example.org/web",
                selectors=[types_pb2.Selector(type="k8s", value="ns:default")],
                revision=7,
            )
        ],
        removed_entry_ids=["e0"],
        bundle=types_pb2.Bundle(
            trust_domain="example.org",
            x509_authorities=[b"root"],
            jwt_authorities=[types_pb2.JWTKey(key_id="k1", public_key=b"spki", expires_at=1)],
            sequence_number=2**63,
        ),
    )
    assert agent_pb2.SyncEntriesResponse.FromString(sync.SerializeToString()) == sync

    result = agent_pb2.X509SVIDResult(
        entry_id="e1", status=types_pb2.Status(code=3, message="bad csr")
    )
    assert result.status.code == 3
    assert not result.cert_chain


# --------------------------------------------------------------------------- (e)

_PY_SPIFFE_DUMP = """
import json
from spiffe._proto import workload_pb2

def walk(message, out):
    out[message.full_name] = {
        f.name: [f.number, f.type, f.is_repeated,
                 f.message_type.full_name if f.message_type is not None else None]
        for f in message.fields
    }
    for nested in message.nested_types:
        walk(nested, out)

messages = {}
for message in workload_pb2.DESCRIPTOR.message_types_by_name.values():
    walk(message, messages)
methods = {
    m.name: [m.input_type.full_name, m.output_type.full_name,
             m.client_streaming, m.server_streaming]
    for m in workload_pb2.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"].methods
}
print(json.dumps({"package": workload_pb2.DESCRIPTOR.package,
                  "messages": messages, "methods": methods}))
"""


def _walk(message: Descriptor, out: dict[str, dict[str, list[Any]]]) -> None:
    out[message.full_name] = {
        f.name: [
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type is not None else None,
        ]
        for f in message.fields
    }
    for nested in message.nested_types:
        _walk(nested, out)


def test_matches_py_spiffe_vendored_proto() -> None:
    if importlib.util.find_spec("spiffe") is None:  # does not import the package
        pytest.skip("py-spiffe (test extra) is not installed")
    result = subprocess.run(
        [sys.executable, "-c", _PY_SPIFFE_DUMP],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)

    ours: dict[str, dict[str, list[Any]]] = {}
    for message in workload_pb2.DESCRIPTOR.message_types_by_name.values():
        _walk(message, ours)

    assert theirs["package"] == workload_pb2.DESCRIPTOR.package == ""
    assert theirs["messages"], "py-spiffe defines no messages?"
    for name, fields in theirs["messages"].items():
        assert name in ours, f"py-spiffe message {name} missing from ours"
        assert ours[name] == fields, name

    service = workload_pb2.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"]
    our_methods = {
        m.name: [
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        ]
        for m in service.methods
    }
    for name, signature in theirs["methods"].items():
        assert our_methods.get(name) == signature, name
