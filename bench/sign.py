"""Benchmark: X.509-SVIDs signed per second through herald-server's agent API, batched.

A real `herald-server run` (standalone, its own process) signs CSRs sent by an attested agent over
mTLS in batches. The baseline, measured in the same run by this script's process, is the same
per-SVID work done in-process with `cryptography` directly: load and verify the CSR, check its
URI SAN, sign a leaf with the SVID extensions. The ratio server/baseline is the figure the issue
targets (>= 80%); herald_core's own in-process rate is printed beside it.

    .venv/bin/python bench/sign.py [--seconds 3] [--rounds 5] [--batch 100] [--inflight 4]
                                   [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from herald_core.csr import check_csr, make_csr
from herald_core.keys import generate_key, private_key_to_pem
from herald_core.proto.herald.admin.v1 import admin_pb2, admin_pb2_grpc
from herald_core.proto.herald.agent.v1 import agent_pb2, agent_pb2_grpc
from herald_core.proto.herald.types.v1 import types_pb2
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.wire import bundle_from_proto
from herald_core.x509svid import (
    SvidIssuer,
    certs_to_pem,
    make_ca_certificate,
    parse_der_chain,
    svid_validity,
)

TD = TrustDomain("bench.example")
SERVER_NAME = "herald-server.bench"


def rate(work: Callable[[int], None], seconds: float) -> float:
    """Calls of ``work(i)`` per second over about ``seconds``."""
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        work(done)
        done += 1
    return done / elapsed


def baselines(csrs: list[bytes], seconds: float) -> tuple[float, float]:
    """Per-second rates of the in-process baselines: (raw cryptography, herald_core).

    raw: load the CSR, verify its signature, check its URI SAN, and sign a leaf with the same
    extensions herald's SVIDs carry, using `cryptography` directly — the floor for doing the
    job correctly. herald_core: check_csr + SvidIssuer.leaf, the library calls the server makes.
    Both end with the DER bytes, as the server does.
    """
    ca_key = generate_key()
    now = dt.datetime.now(dt.UTC)
    ca = make_ca_certificate(ca_key, TD, not_before=now, not_after=now + dt.timedelta(days=1))
    spiffe_id = SpiffeId.from_segments(TD, "w0")
    not_before, not_after = svid_validity(now, dt.timedelta(hours=1), ca.not_valid_after_utc)
    issuer = SvidIssuer(ca, ca_key)

    def herald(i: int) -> None:
        info = check_csr(csrs[i % len(csrs)], expected_spiffe_id=spiffe_id)
        leaf = issuer.leaf(info.public_key, spiffe_id, not_before=not_before, not_after=not_after)
        leaf.public_bytes(Encoding.DER)

    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE"),
        ]
    )
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    usage = x509.KeyUsage(True, False, True, False, True, False, False, False, False)
    extended = x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    uri = str(spiffe_id)

    def raw(i: int) -> None:
        request = x509.load_der_x509_csr(csrs[i % len(csrs)])
        if not request.is_signature_valid:
            raise RuntimeError("bad CSR")
        sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if sans.get_values_for_type(x509.UniformResourceIdentifier) != [uri]:
            raise RuntimeError("wrong ID")
        key = request.public_key()
        (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(aki, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(extended, critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
            .public_bytes(Encoding.DER)
        )

    return rate(raw, seconds), rate(herald, seconds)


class ServerProcess:
    """`herald-server run` in a child process, with its admin socket and ports."""

    def __init__(self, workdir: Path, workers: int) -> None:
        self.workdir = workdir
        self.ports = {"attestation": free_port(), "agent": free_port(), "health": free_port()}
        self.admin_socket = workdir / "admin.sock"
        config = {
            "trust_domain": TD.name,
            "data_dir": str(workdir / "data"),
            "admin_socket": str(self.admin_socket),
            "attestation_address": f"127.0.0.1:{self.ports['attestation']}",
            "agent_address": f"127.0.0.1:{self.ports['agent']}",
            "health_address": f"127.0.0.1:{self.ports['health']}",
            "server_dns_names": [SERVER_NAME],
            "log_level": "warning",
            "limits": {
                "sign_rate_per_agent": 1_000_000,
                "sign_burst_per_agent": 10_000_000,
                "signing_workers": workers,
            },
        }
        self.config = workdir / "server.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        exe = Path(sys.executable).parent / "herald-server"
        self.process = subprocess.Popen([str(exe), "run", "-config", str(self.config)])
        deadline = time.monotonic() + 30
        while not self.admin_socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("herald-server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)

    def cpu_seconds(self) -> float:
        """CPU time of the server and every process below it (its signing workers)."""
        assert self.process is not None
        return sum(_cpu(pid) for pid in _process_tree(self.process.pid))


def _process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        for child in children:
            pids.extend(_process_tree(int(child)))
    return pids


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def prepare_agent(server: ServerProcess, entries: int) -> tuple[Any, list[str]]:
    """Attest an agent with a join token, create ``entries`` entries for it; an mTLS stub."""
    admin_channel = grpc.aio.insecure_channel(f"unix:{server.admin_socket}")
    admin: Any = admin_pb2_grpc.AdminAPIStub(admin_channel)
    bundle = bundle_from_proto((await admin.GetBundle(admin_pb2.GetBundleRequest())).bundle)
    token = (await admin.CreateJoinToken(admin_pb2.CreateJoinTokenRequest())).value
    roots = certs_to_pem(bundle.x509_authorities)
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    key = generate_key()
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{server.ports['attestation']}",
        grpc.ssl_channel_credentials(roots),
        options=options,
    ) as channel:
        attest: Any = agent_pb2_grpc.NodeAttestationStub(channel)
        response = await attest.AttestAgent(
            agent_pb2.AttestAgentRequest(
                join_token=agent_pb2.JoinTokenParams(token=token),
                csr=make_csr(key, SpiffeId.from_segments(TD, "agent")),
            )
        )
    agent_id = response.svid.spiffe_id
    chain = [c for der in response.svid.cert_chain for c in parse_der_chain(der)]
    ids = []
    for i in range(entries):
        entry = types_pb2.Entry(
            id=f"w{i}", spiffe_id=f"spiffe://{TD.name}/w{i}", parent_id=agent_id
        )
        entry.selectors.add(type="unix", value=f"uid:{i}")
        await admin.CreateEntry(admin_pb2.CreateEntryRequest(entry=entry))
        ids.append(entry.id)
    await admin_channel.close()
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{server.ports['agent']}",
        grpc.ssl_channel_credentials(roots, private_key_to_pem(key), certs_to_pem(chain)),
        options=[*options, ("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    return agent_pb2_grpc.AgentAPIStub(channel), ids


async def server_rate(
    stub: Any, requests: list[Any], per_request: int, seconds: float, inflight: int
) -> float:
    """SVIDs per second with ``inflight`` batches always outstanding."""
    signed = 0
    stop_at = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal signed
        i = offset
        while time.perf_counter() < stop_at:
            response = await stub.BatchSignX509SVID(requests[i % len(requests)])
            bad = [r.status.message for r in response.results if r.status.code != 0]
            if bad:
                raise RuntimeError(f"signing failed: {bad[0]}")
            signed += per_request
            i += inflight

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(inflight)))
    return signed / (time.perf_counter() - start)


async def run(args: argparse.Namespace) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="herald-bench-") as tmp,
        ServerProcess(Path(tmp), args.workers) as server,
    ):
        stub, ids = await prepare_agent(server, args.batch)
        keys = [generate_key() for _ in range(args.batch)]
        csrs = [make_csr(k, SpiffeId.from_segments(TD, f"w{i}")) for i, k in enumerate(keys)]
        request = agent_pb2.BatchSignX509SVIDRequest(
            params=[
                agent_pb2.X509SVIDParams(entry_id=i, csr=c) for i, c in zip(ids, csrs, strict=True)
            ]
        )
        base_csrs = [make_csr(k, SpiffeId.from_segments(TD, "w0")) for k in keys]
        await server_rate(stub, [request], args.batch, 1.0, args.inflight)  # warm-up
        rows = []
        for _ in range(args.rounds):
            cpu_before = server.cpu_seconds()
            served = await server_rate(stub, [request], args.batch, args.seconds, args.inflight)
            cpu = (server.cpu_seconds() - cpu_before) / args.seconds
            raw, herald = baselines(base_csrs, args.seconds)
            rows.append((served, raw, herald, cpu))
            print(
                f"round: server {served:6.0f}/s (server CPU {cpu:4.2f} cores)  "
                f"raw cryptography {raw:6.0f}/s  herald_core {herald:6.0f}/s  "
                f"server/raw {served / raw:5.1%}",
                flush=True,
            )
    served, raw, herald, cpu = (statistics.median(col) for col in zip(*rows, strict=True))
    ratio = statistics.median(r[0] / r[1] for r in rows)
    ratio_core = statistics.median(r[0] / r[2] for r in rows)
    print()
    print(
        f"batch {args.batch}, {args.inflight} in flight, {args.rounds} x {args.seconds}s rounds, "
        f"signing_workers {args.workers}"
    )
    print(f"median server rate (agent API, mTLS, one server):  {served:8.0f} SVIDs/s")
    print(f"median server CPU while signing (with workers):    {cpu:8.2f} cores")
    print(f"median in-process raw cryptography verify + sign:  {raw:8.0f} SVIDs/s")
    print(f"median in-process herald_core check_csr + leaf:    {herald:8.0f} SVIDs/s")
    print(f"median ratio server / raw cryptography:            {ratio:8.1%}  (target >= 80%)")
    print(f"median ratio server / herald_core in-process:      {ratio_core:8.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--inflight", type=int, default=4)
    parser.add_argument(
        "--workers", type=int, default=2, help="the server's limits.signing_workers (0: a thread)"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
