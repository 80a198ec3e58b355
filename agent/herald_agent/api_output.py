"""What herald-agent's ``api`` commands make of Workload API answers: the checked SVIDs, the text
spire-agent prints for them, JSON, and the PEM files ``fetch x509 -write`` leaves behind.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import click
from cryptography import x509
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from herald_core.keys import private_key_to_pem
from herald_core.proto.spiffe.workload import workload_pb2
from herald_core.spiffeid import SpiffeId, SpiffeIdError
from herald_core.spirecli import timestamp
from herald_core.x509svid import (
    X509Svid,
    X509SvidError,
    certs_to_pem,
    parse_der_chain,
    verify_chain,
)

_PUBLIC_MODE: Final = 0o644
_PRIVATE_MODE: Final = 0o600


@dataclass(frozen=True)
class FetchedSvid:
    """One X509-SVID of a response, parsed and verified against its bundle."""

    svid: X509Svid
    hint: str
    bundle: list[x509.Certificate]
    federated: dict[str, list[x509.Certificate]]


def parse_x509_response(response: workload_pb2.X509SVIDResponse) -> list[FetchedSvid]:
    """The response's SVIDs; anything malformed is a ClickException naming the part."""
    if not response.svids:
        raise click.ClickException("the agent's response contains no SVIDs")
    federated = {
        key: _certs(der, f"federated bundle {key}")
        for key, der in sorted(response.federated_bundles.items())
    }
    return [_parse_svid(position, svid, federated) for position, svid in enumerate(response.svids)]


def _certs(der: bytes, what: str) -> list[x509.Certificate]:
    try:
        return parse_der_chain(der)
    except X509SvidError as exc:
        raise click.ClickException(f"the agent sent a malformed {what}: {exc}") from None


def _parse_svid(
    position: int, message: workload_pb2.X509SVID, federated: dict[str, list[x509.Certificate]]
) -> FetchedSvid:
    what = f"SVID #{position} ({message.spiffe_id})"
    try:
        svid = X509Svid.parse(message.x509_svid, message.x509_svid_key)
        if SpiffeId.parse(message.spiffe_id) != svid.spiffe_id:
            raise X509SvidError(f"its certificate is for {svid.spiffe_id}")
        bundle = _certs(message.bundle, f"bundle of {what}")
        trust_domain = svid.spiffe_id.trust_domain
        verify_chain(svid.cert_chain, bundle, trust_domain=trust_domain, now=datetime.now(UTC))
    except (X509SvidError, SpiffeIdError) as exc:
        raise click.ClickException(f"{what} failed verification: {exc}") from None
    return FetchedSvid(svid=svid, hint=message.hint, bundle=bundle, federated=federated)


def _validity_lines(label: str, cert: x509.Certificate) -> list[str]:
    return [
        f"{label} Valid After:\t{timestamp(cert.not_valid_before_utc)}",
        f"{label} Valid Until:\t{timestamp(cert.not_valid_after_utc)}",
    ]


def _ca_lines(certs: Sequence[x509.Certificate], prefix: str = "") -> list[str]:
    lines: list[str] = []
    for number, cert in enumerate(certs, start=1):
        lines += _validity_lines(f"{prefix}CA #{number}", cert)
    return lines


def svid_lines(fetched: FetchedSvid) -> list[str]:
    """One SVID as spire-agent prints it: ID, hint, validity, then each authority's."""
    lines = [f"SPIFFE ID:\t\t{fetched.svid.spiffe_id}"]
    if fetched.hint:
        lines.append(f"Hint:\t\t\t{fetched.hint}")
    leaf, *intermediates = fetched.svid.cert_chain
    lines += _validity_lines("SVID", leaf)
    for number, cert in enumerate(intermediates, start=1):
        lines += _validity_lines(f"Intermediate #{number}", cert)
    lines += _ca_lines(fetched.bundle)
    for key, certs in fetched.federated.items():
        lines += _ca_lines(certs, prefix=f"[{key}] ")
    return lines


def received_line(count: int, noun: str, elapsed_seconds: float) -> str:
    """``Received 2 svids after 3.412ms``."""
    plural = "" if count == 1 else "s"
    return f"Received {count} {noun}{plural} after {elapsed_seconds * 1000:.3f}ms"


def x509_text(svids: Sequence[FetchedSvid], elapsed_seconds: float) -> str:
    blocks = [received_line(len(svids), "svid", elapsed_seconds)]
    blocks += ["\n".join(svid_lines(fetched)) for fetched in svids]
    return "\n\n".join(blocks) + "\n"


def x509_bundles_text(bundles: Mapping[str, bytes], elapsed_seconds: float) -> str:
    blocks = [received_line(len(bundles), "bundle", elapsed_seconds)]
    for key, der in sorted(bundles.items()):
        lines = [f"Trust domain:\t\t{key}", *_ca_lines(_certs(der, f"bundle {key}"))]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def jwt_bundles_text(bundles: Mapping[str, bytes]) -> str:
    return "".join(f"bundle({key}):\n\t{jwks.decode()}\n" for key, jwks in sorted(bundles.items()))


def jwt_svids_text(response: workload_pb2.JWTSVIDResponse) -> str:
    return "".join(f"token({svid.spiffe_id}):\n\t{svid.svid}\n" for svid in response.svids)


def _plain_numbers(value: Any) -> Any:
    """A Struct's numbers are all doubles; show ``exp`` as 1764318000, not 1764318000.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain_numbers(item) for key, item in value.items()}
    return value


def claims_json(claims: struct_pb2.Struct) -> str:
    doc = _plain_numbers(json_format.MessageToDict(claims))
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def validation_text(response: workload_pb2.ValidateJWTSVIDResponse) -> str:
    return (
        "SVID is valid.\n"
        f"SPIFFE ID : {response.spiffe_id}\n"
        f"Claims    : {claims_json(response.claims)}\n"
    )


def message_json(message: Message) -> Any:
    """A message as protojson with the proto's field names (bytes in base64), as SPIRE prints."""
    return _plain_numbers(json_format.MessageToDict(message, preserving_proto_field_name=True))


def write_x509(directory: Path, svids: Sequence[FetchedSvid]) -> list[str]:
    """Write spire-agent's file set for each SVID; return the lines saying what went where."""
    said: list[str] = []
    for i, fetched in enumerate(svids):
        svid_path = directory / f"svid.{i}.pem"
        key_path = directory / f"svid.{i}.key"
        bundle_path = directory / f"bundle.{i}.pem"
        said.append(f"Writing SVID #{i} to file {svid_path}.")
        _write(svid_path, certs_to_pem(fetched.svid.cert_chain), _PUBLIC_MODE)
        said.append(f"Writing key #{i} to file {key_path}.")
        _write(key_path, private_key_to_pem(fetched.svid.private_key), _PRIVATE_MODE)
        said.append(f"Writing bundle #{i} to file {bundle_path}.")
        _write(bundle_path, certs_to_pem(fetched.bundle), _PUBLIC_MODE)
        for j, (key, certs) in enumerate(fetched.federated.items()):
            path = directory / f"federated_bundle.{i}.{j}.pem"
            said.append(f"Writing federated bundle #{j} for trust domain {key} to file {path}.")
            _write(path, certs_to_pem(certs), _PUBLIC_MODE)
    return said


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically: a reader sees the old file or the new one, never half.

    The file is created with its final mode, so a key is never readable by others, even briefly.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask filtered os.open's mode
            handle.write(data)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
