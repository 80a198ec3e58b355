"""Where batches of workload X.509-SVIDs are signed: one server thread, or worker processes.

`cryptography` holds the GIL while it verifies and signs, so one Python process signs on one
core at a time, and parallel signing threads only fight over the lock. With
``limits.signing_workers: N`` a batch is split over N worker processes. They are the server's own
children (started through a fork server, never forked from the gRPC process) and get the issuing
CA's key over their pipe with each batch; nothing is written to disk. With 0 workers the same
code runs on one dedicated thread of the server.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.serialization import Encoding

from herald_core.csr import CsrError, check_csr
from herald_core.entry import is_reserved_id
from herald_core.keys import load_private_key
from herald_core.spiffeid import SpiffeId
from herald_core.x509svid import SvidIssuer, X509SvidError, parse_der_chain


@dataclass(frozen=True)
class LeafOrder:
    """One leaf to sign: the agent's CSR, and what the entry says the leaf must be."""

    csr: bytes
    spiffe_id: str
    dns_names: tuple[str, ...]
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class LeafResult:
    """The signed leaf (DER), or why not: ``refusal`` is for the caller, ``invalid`` tells a
    bad CSR (the agent's fault) from a failure to sign."""

    leaf: bytes = b""
    refusal: str = ""
    invalid: bool = False


# Worker processes keep the issuers they have built, so the key and CA checks run once per CA.
_ISSUERS: dict[bytes, SvidIssuer] = {}


def _issuer(cert_der: bytes, key_der: bytes) -> SvidIssuer:
    issuer = _ISSUERS.get(cert_der)
    if issuer is None:
        if len(_ISSUERS) >= 8:  # rotation retires a CA every third of its life
            _ISSUERS.clear()
        (cert,) = parse_der_chain(cert_der)
        issuer = _ISSUERS[cert_der] = SvidIssuer(cert, load_private_key(key_der))
    return issuer


def sign_leaves(cert_der: bytes, key_der: bytes, orders: Sequence[LeafOrder]) -> list[LeafResult]:
    """Check each CSR and sign its leaf; runs in a worker process or the signing thread."""
    issuer = _issuer(cert_der, key_der)
    return [_sign(issuer, order) for order in orders]


def _sign(issuer: SvidIssuer, order: LeafOrder) -> LeafResult:
    spiffe_id = SpiffeId.parse(order.spiffe_id)
    if is_reserved_id(spiffe_id):
        return LeafResult(refusal=f"{spiffe_id} is reserved for herald itself")
    try:
        csr = check_csr(order.csr, expected_spiffe_id=spiffe_id)
    except CsrError as exc:
        return LeafResult(refusal=f"csr: {exc}", invalid=True)
    try:
        leaf = issuer.leaf(
            csr.public_key,
            spiffe_id,
            not_before=order.not_before,
            not_after=order.not_after,
            dns_names=order.dns_names,
        )
    except X509SvidError as exc:
        return LeafResult(refusal=f"cannot sign: {exc}")
    return LeafResult(leaf=leaf.public_bytes(Encoding.DER))


class BatchSigner:
    """Signs batches on ``workers`` processes, or on one thread when ``workers`` is 0."""

    def __init__(self, workers: int = 0) -> None:
        if workers < 0:
            raise ValueError("workers cannot be negative")
        self.workers = workers
        self._executor: Executor = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
            if workers
            else ThreadPoolExecutor(1, thread_name_prefix="herald-sign")
        )

    async def sign(
        self, cert_der: bytes, key_der: bytes, orders: Sequence[LeafOrder]
    ) -> list[LeafResult]:
        loop = asyncio.get_running_loop()
        chunks = _split(orders, max(self.workers, 1))
        done = await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, sign_leaves, cert_der, key_der, chunk)
                for chunk in chunks
            )
        )
        return [result for chunk in done for result in chunk]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _split(orders: Sequence[LeafOrder], parts: int) -> list[Sequence[LeafOrder]]:
    size = -(-len(orders) // parts) or 1
    return [orders[i : i + size] for i in range(0, len(orders), size)]
