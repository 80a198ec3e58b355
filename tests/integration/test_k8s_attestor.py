"""The k8s attestor end to end: real processes in kubelet-shaped cgroups, a local HTTPS kubelet.

Needs root and writable cgroup hierarchies (testenv §4): the cgroup2 tree at
/sys/fs/cgroup/unified and the v1 ``pids`` controller. The "kubelet" is an aiohttp server with a
certificate from a throw-away CA; it accepts one bearer token only and counts its requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp.web
import pytest

from herald_agent.attestors import AttestationError, WorkloadAttestor
from herald_agent.attestors.k8s import (
    K8sAttestor,
    RetryPolicy,
    find_container_status,
    pod_selectors,
)
from herald_agent.attestors.kubelet import KubeletClient, KubeletConfig, KubeletError
from herald_core.selector import Selector
from tests.fake_kubelet import TOKEN, FakeKubelet, KubeletWebhook, Tls, make_tls, site_port
from tests.k8s.api import Kube
from tests.k8s.install import HeraldRelease
from tests.k8s.rbac import COMPONENTS
from tests.kubelet_pods import NODE, Container, Pod, image_id, owner, pod_list
from tests.pod_cgroups import CgroupMaker, v1_pod_cgroup, v2_pod_cgroup

pytestmark = pytest.mark.root


# --- the kubelet ---------------------------------------------------------------------------------


@dataclass
class KubeletEnv:
    kubelet: FakeKubelet
    tls: Tls
    token_file: Path
    port: int
    plain_port: int

    def config(self, **changes: object) -> KubeletConfig:
        settings: dict[str, object] = {
            "port": self.port,
            "token_path": str(self.token_file),
            "ca_path": str(self.tls.ca_file),
        }
        settings.update(changes)
        return KubeletConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
async def kubelet_env(tmp_path: Path) -> AsyncIterator[KubeletEnv]:
    tls = make_tls(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    kubelet = FakeKubelet(pod_list([]))
    app = aiohttp.web.Application()
    app.router.add_get("/pods", kubelet.pods)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    secure = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server)
    plain = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await secure.start()
    await plain.start()
    try:
        yield KubeletEnv(kubelet, tls, token_file, site_port(secure), site_port(plain))
    finally:
        await runner.cleanup()


@pytest.fixture
async def client(kubelet_env: KubeletEnv) -> AsyncIterator[KubeletClient]:
    kubelet_client = KubeletClient(kubelet_env.config())
    try:
        yield kubelet_client
    finally:
        await kubelet_client.close()


# --- pods ----------------------------------------------------------------------------------------


def new_pod(container_id: str, *, runtime: str = "containerd") -> Pod:
    rng = random.Random(container_id)
    return Pod(
        name="payments-api-7d9c6b5f4-x2x9q",
        namespace="payments",
        uid=str(uuid.uuid4()),
        service_account="payments-api",
        containers=[
            Container(
                "api",
                "registry.example.com/payments/api:1.42",
                container_id,
                runtime=runtime,
                status_image="registry.example.com/payments/api:1.42.0",
            ),
            Container("envoy", "docker.io/envoyproxy/envoy:v1.32.1", f"{'e' * 63}1"),
        ],
        init_containers=[Container("migrate", "registry.example.com/payments/migrate:3", "f" * 64)],
        labels={"app": "payments-api", "pod-template-hash": "7d9c6b5f4", "empty": ""},
        owners=[owner("ReplicaSet", "payments-api-7d9c6b5f4", rng)],
    )


def expected_selectors(pod: Pod) -> frozenset[Selector]:
    owner_ref = pod.owners[0]
    envoy = pod.containers[1]
    migrate = pod.init_containers[0]
    values = [
        "ns:payments",
        "sa:payments-api",
        f"pod-name:{pod.name}",
        f"pod-uid:{pod.uid}",
        f"node-name:{NODE}",
        "container-name:api",
        "pod-label:app:payments-api",
        "pod-label:pod-template-hash:7d9c6b5f4",
        "pod-label:empty:",
        f"pod-owner:ReplicaSet:{owner_ref['name']}",
        f"pod-owner-uid:{owner_ref['uid']}",
        "container-image:registry.example.com/payments/api:1.42",
        "container-image:registry.example.com/payments/api:1.42.0",
        f"container-image:{image_id('registry.example.com/payments/api:1.42.0')}",
        "pod-image:registry.example.com/payments/api:1.42",
        "pod-image:registry.example.com/payments/api:1.42.0",
        f"pod-image:{image_id('registry.example.com/payments/api:1.42.0')}",
        f"pod-image:{envoy.image}",
        f"pod-image:{image_id(envoy.image)}",
        "pod-image-count:2",
        f"pod-init-image:{migrate.image}",
        f"pod-init-image:{image_id(migrate.image)}",
        "pod-init-image-count:1",
    ]
    return frozenset(Selector("k8s", v) for v in values)


def hex64() -> str:
    return os.urandom(32).hex()


def attestor(client: KubeletClient, attempts: int = 60, interval: float = 0.5) -> K8sAttestor:
    return K8sAttestor(client, RetryPolicy(attempts=attempts, interval=interval))


# --- the attestor --------------------------------------------------------------------------------


def test_is_a_workload_attestor(client: KubeletClient) -> None:
    k8s: WorkloadAttestor = attestor(client)
    assert k8s.name == "k8s"


async def test_v2_systemd_containerd(
    cgroups: CgroupMaker, kubelet_env: KubeletEnv, client: KubeletClient
) -> None:
    pod = new_pod(hex64())
    proc = cgroups.start_in(v2_pod_cgroup(cgroups, pod.uid, pod.containers[0].container_id))
    kubelet_env.kubelet.body = pod_list([pod])
    assert await attestor(client).attest(proc.pid) == expected_selectors(pod)
    assert kubelet_env.kubelet.requests == 1


async def test_v1_cgroupfs_docker(
    cgroups: CgroupMaker, kubelet_env: KubeletEnv, client: KubeletClient
) -> None:
    pod = new_pod(hex64(), runtime="docker")
    proc = cgroups.start_in(v1_pod_cgroup(cgroups, pod.uid, pod.containers[0].container_id))
    kubelet_env.kubelet.body = pod_list([pod])
    assert await attestor(client).attest(proc.pid) == expected_selectors(pod)


async def test_a_process_in_no_pod_gets_nothing_and_costs_no_fetch(
    kubelet_env: KubeletEnv, client: KubeletClient
) -> None:
    assert await attestor(client).attest(os.getpid()) == frozenset()
    assert kubelet_env.kubelet.requests == 0


async def test_a_container_not_yet_listed_is_retried(
    cgroups: CgroupMaker, kubelet_env: KubeletEnv, client: KubeletClient
) -> None:
    pod = new_pod(hex64())
    proc = cgroups.start_in(v2_pod_cgroup(cgroups, pod.uid, pod.containers[0].container_id))
    pod.listed_containers = {"envoy"}
    kubelet_env.kubelet.body = pod_list([pod])

    async def container_starts() -> None:
        await asyncio.sleep(1.0)
        pod.listed_containers = None
        kubelet_env.kubelet.body = pod_list([pod])

    began = time.monotonic()
    starter = asyncio.create_task(container_starts())
    selectors = await attestor(client, attempts=60, interval=0.1).attest(proc.pid)
    await starter
    assert selectors == expected_selectors(pod)
    assert time.monotonic() - began >= 1.0
    assert kubelet_env.kubelet.requests >= 2


async def test_an_unknown_pod_fails_naming_it(
    cgroups: CgroupMaker, kubelet_env: KubeletEnv, client: KubeletClient
) -> None:
    pod = new_pod(hex64())
    proc = cgroups.start_in(v2_pod_cgroup(cgroups, pod.uid, pod.containers[0].container_id))
    began = time.monotonic()
    with pytest.raises(AttestationError, match=f"pod {pod.uid} .* not in the kubelet's pod list"):
        await attestor(client, attempts=3, interval=0.05).attest(proc.pid)
    assert time.monotonic() - began < 2
    assert kubelet_env.kubelet.requests == 3


async def test_a_known_pod_without_the_container_fails_naming_both(
    cgroups: CgroupMaker, kubelet_env: KubeletEnv, client: KubeletClient
) -> None:
    pod = new_pod(hex64())
    proc = cgroups.start_in(v2_pod_cgroup(cgroups, pod.uid, hex64()))
    kubelet_env.kubelet.body = pod_list([pod])
    with pytest.raises(AttestationError, match=f"container [0-9a-f]{{64}} of pod {pod.uid}"):
        await attestor(client, attempts=2, interval=0.05).attest(proc.pid)


async def test_a_process_exiting_mid_attestation_is_refused(
    cgroups: CgroupMaker, kubelet_env: KubeletEnv, client: KubeletClient
) -> None:
    pod = new_pod(hex64())
    proc = cgroups.start_in(v2_pod_cgroup(cgroups, pod.uid, pod.containers[0].container_id))

    async def exit_soon() -> None:
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)

    began = time.monotonic()
    killer = asyncio.create_task(exit_soon())
    with pytest.raises(AttestationError, match=f"process {proc.pid} exited"):
        await attestor(client, attempts=60, interval=0.1).attest(proc.pid)
    await killer
    assert time.monotonic() - began < 2


async def test_fifty_concurrent_attestations_share_one_fetch(
    cgroups: CgroupMaker, kubelet_env: KubeletEnv, client: KubeletClient
) -> None:
    pods = [new_pod(hex64()) for _ in range(5)]
    procs = [
        cgroups.start_in(v2_pod_cgroup(cgroups, p.uid, p.containers[0].container_id)) for p in pods
    ]
    kubelet_env.kubelet.body = pod_list(pods)
    kubelet_env.kubelet.delay = 0.2
    k8s = attestor(client)
    results = await asyncio.gather(*(k8s.attest(procs[i % 5].pid) for i in range(50)))
    assert kubelet_env.kubelet.requests == 1
    for i, selectors in enumerate(results):
        assert selectors == expected_selectors(pods[i % 5])


async def test_concurrent_misses_share_one_refetch(
    cgroups: CgroupMaker, kubelet_env: KubeletEnv, client: KubeletClient
) -> None:
    pod = new_pod(hex64())
    proc = cgroups.start_in(v2_pod_cgroup(cgroups, pod.uid, pod.containers[0].container_id))
    await client.pods()  # A cached list from before the pod existed.
    kubelet_env.kubelet.body = pod_list([pod])
    k8s = attestor(client)
    results = await asyncio.gather(*(k8s.attest(proc.pid) for _ in range(20)))
    assert all(r == expected_selectors(pod) for r in results)
    assert kubelet_env.kubelet.requests == 2


# --- the kubelet client --------------------------------------------------------------------------


async def test_the_token_file_is_reread_when_it_changes(
    kubelet_env: KubeletEnv, client: KubeletClient
) -> None:
    await client.pods()
    kubelet_env.kubelet.token = "rotated-token"
    kubelet_env.token_file.write_text("rotated-token")
    pods = await client.pods(newer_than=time.monotonic())
    assert len(pods) == 110


async def test_a_wrong_token_explains_401(kubelet_env: KubeletEnv, client: KubeletClient) -> None:
    kubelet_env.kubelet.token = "another-token"
    with pytest.raises(KubeletError, match=r"HTTP 401.*authentication-token-webhook"):
        await client.pods()


async def test_403_names_the_missing_rbac(kubelet_env: KubeletEnv, client: KubeletClient) -> None:
    kubelet_env.kubelet.status = 403
    with pytest.raises(KubeletError, match=r"HTTP 403.*'nodes/pods'.*subresource=proxy"):
        await client.pods()


async def test_the_real_api_decides_who_reads_the_pod_list(
    kubelet_env: KubeletEnv, kube: Kube, release: HeraldRelease
) -> None:
    """The kubelet asks the API server (TokenReview, SubjectAccessReview), as with
    --authentication-token-webhook and --authorization-mode=Webhook: the agent's ServiceAccount
    may read the pod list under the chart's RBAC, the operator's may not."""
    kubelet_env.kubelet.webhook = KubeletWebhook(kube, NODE)
    tokens = {c: kube.token(release.namespace, release.service_account(c)) for c in COMPONENTS}
    kubelet_env.token_file.write_text(tokens["agent"])
    client = KubeletClient(kubelet_env.config())
    try:
        assert len(await client.pods()) > 0  # the pod list (filler pods) was served
    finally:
        await client.close()
    kubelet_env.token_file.write_text(tokens["operator"])
    client = KubeletClient(kubelet_env.config())
    operator = f"system:serviceaccount:{release.namespace}:{release.service_account('operator')}"
    try:
        with pytest.raises(KubeletError, match=rf"HTTP 403.*user={operator}, verb=get"):
            await client.pods()
    finally:
        await client.close()
    kubelet_env.token_file.write_text("not-a-token")
    client = KubeletClient(kubelet_env.config())
    try:
        with pytest.raises(KubeletError, match="HTTP 401"):
            await client.pods()
    finally:
        await client.close()


async def test_a_kubelet_signed_by_another_ca_is_refused(
    kubelet_env: KubeletEnv, tmp_path: Path
) -> None:
    other = make_tls(tmp_path, "other-ca")
    client = KubeletClient(kubelet_env.config(ca_path=str(other.ca_file)))
    try:
        with pytest.raises(KubeletError, match="does not verify"):
            await client.pods()
    finally:
        await client.close()
    assert kubelet_env.kubelet.requests == 0


async def test_the_certificate_must_name_the_server(kubelet_env: KubeletEnv) -> None:
    wrong = KubeletClient(kubelet_env.config(tls_server_name="other-node"))
    right = KubeletClient(kubelet_env.config(tls_server_name=NODE))
    try:
        with pytest.raises(KubeletError, match="does not verify"):
            await wrong.pods()
        assert len(await right.pods()) == 110
    finally:
        await wrong.close()
        await right.close()


async def test_skip_verify_warns_and_connects(
    kubelet_env: KubeletEnv, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        client = KubeletClient(kubelet_env.config(ca_path=None, skip_verify=True))
    try:
        assert len(await client.pods()) == 110
    finally:
        await client.close()
    assert "kubelet_tls_unverified" in caplog.text


async def test_the_read_only_port_needs_no_token(kubelet_env: KubeletEnv) -> None:
    kubelet_env.kubelet.token = None
    client = KubeletClient(
        KubeletConfig(port=kubelet_env.plain_port, read_only=True, token_path="/nonexistent")
    )
    try:
        assert len(await client.pods()) == 110
    finally:
        await client.close()


async def test_the_cached_list_is_reused_then_expires(kubelet_env: KubeletEnv) -> None:
    client = KubeletClient(kubelet_env.config(max_age=0.2))
    try:
        first = await client.pods()
        assert await client.pods() is first
        await asyncio.sleep(0.25)
        assert await client.pods() is not first
    finally:
        await client.close()
    assert kubelet_env.kubelet.requests == 2


async def test_a_failed_fetch_reaches_every_waiter(kubelet_env: KubeletEnv) -> None:
    kubelet_env.kubelet.body = b"{not json"
    kubelet_env.kubelet.delay = 0.1
    client = KubeletClient(kubelet_env.config())
    try:
        results = await asyncio.gather(*(client.pods() for _ in range(10)), return_exceptions=True)
    finally:
        await client.close()
    assert all(isinstance(r, KubeletError) and "not JSON" in str(r) for r in results)
    assert kubelet_env.kubelet.requests == 1


def test_containers_of_every_kind_are_found() -> None:
    pod = new_pod(hex64(), runtime="cri-o").manifest()
    pod["status"]["ephemeralContainerStatuses"] = [
        {"name": "debug", "containerID": f"containerd://{'d' * 64}", "image": "busybox"}
    ]

    def find(container_id: str) -> object:
        return (find_container_status(pod, container_id) or {}).get("name")

    assert find(pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]) == "api"
    assert find("f" * 64) == "migrate"
    assert find("d" * 64) == "debug"
    assert find("d" * 63) is None


def test_a_selector_too_long_is_left_out_not_fatal() -> None:
    manifest = new_pod(hex64()).manifest()
    manifest["metadata"]["labels"]["huge"] = "x" * 2000
    selectors = pod_selectors(manifest, manifest["status"]["containerStatuses"][0])
    assert Selector("k8s", "ns:payments") in selectors
    assert Selector("k8s", "pod-label:app:payments-api") in selectors
    assert not any(s.value.startswith("pod-label:huge:") for s in selectors)


@pytest.mark.parametrize(("attempts", "interval"), [(0, 0.5), (3, -1.0)])
def test_a_retry_policy_that_never_asks_is_refused(attempts: int, interval: float) -> None:
    with pytest.raises(ValueError, match="attempts >= 1"):
        RetryPolicy(attempts=attempts, interval=interval)
