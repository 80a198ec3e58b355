"""The CA state in a Kubernetes Secret, against the API emulator: optimistic writes and watches."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta

import pytest
from kubernetes.client import CoreV1Api

from herald_core.clock import FakeClock
from herald_core.jwtsvid import validate_jwt_svid
from herald_core.keys import generate_key
from herald_core.spiffeid import SpiffeId
from herald_core.x509svid import verify_chain
from herald_server.ca import CAError, CAManager, CASettings
from herald_server.keystore import (
    STATE_FILE,
    CAState,
    KeyStoreConflict,
    KeyStoreError,
    SecretKeyStore,
)
from tests.kube_emulator import KubeCluster
from tests.unit.test_keystore import NOW, TD, make_state


@pytest.fixture
def kube(kube_emulator: KubeCluster) -> KubeCluster:
    return kube_emulator


NAMESPACE = "herald"
WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")


def store_of(kube: KubeCluster) -> SecretKeyStore:
    return SecretKeyStore(kube.api_client, NAMESPACE)


def stored_secret(kube: KubeCluster) -> dict[str, object]:
    secret = kube.get("v1", "Secret", "herald-ca", NAMESPACE)
    assert secret is not None
    return secret


async def test_an_absent_secret_means_nothing_stored(kube: KubeCluster) -> None:
    assert await store_of(kube).load() is None


async def test_save_creates_the_secret_and_load_reads_it_back(kube: KubeCluster) -> None:
    store = store_of(kube)
    state = make_state()
    version = await store.save(state, version=None)
    secret = stored_secret(kube)
    metadata = secret["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["labels"] == {
        "app.kubernetes.io/name": "herald",
        "app.kubernetes.io/component": "ca",
    }
    assert metadata["resourceVersion"] == version
    assert secret["type"] == "Opaque"
    data = secret["data"]
    assert isinstance(data, dict)
    assert list(data) == [STATE_FILE]
    assert base64.b64decode(data[STATE_FILE]) == state.to_json()
    loaded = await store.load()
    assert loaded is not None
    assert loaded[0].to_json() == state.to_json()
    assert loaded[1] == version


async def test_writes_based_on_a_stale_version_conflict(kube: KubeCluster) -> None:
    store = store_of(kube)
    first = await store.save(make_state(1), version=None)
    with pytest.raises(KeyStoreConflict, match=r"Secret herald/herald-ca changed since version"):
        await store.save(make_state(2), version=None)
    second = await store.save(make_state(2), version=first)
    assert second != first
    with pytest.raises(KeyStoreConflict, match="HTTP 409"):
        await store.save(make_state(3), version=first)
    loaded = await store.load()
    assert loaded is not None
    assert loaded[0].revision == 2


async def test_an_update_of_a_deleted_secret_conflicts(kube: KubeCluster) -> None:
    store = store_of(kube)
    version = await store.save(make_state(1), version=None)
    kube.delete("v1", "Secret", "herald-ca", NAMESPACE)
    with pytest.raises(KeyStoreConflict, match="HTTP 404"):
        await store.save(make_state(2), version=version)


async def test_corrupt_secret_content_is_named(kube: KubeCluster) -> None:
    store = store_of(kube)
    await store.save(make_state(), version=None)
    doc = json.loads(make_state().to_json())
    del doc["jwt_slots"][0]["kid"]
    patched = base64.b64encode(json.dumps(doc).encode()).decode()
    kube.patch("v1", "Secret", "herald-ca", {"data": {STATE_FILE: patched}}, NAMESPACE)
    with pytest.raises(KeyStoreError) as info:
        await store.load()
    assert str(info.value) == (
        "Secret herald/herald-ca data key 'ca-state.json': state.jwt_slots[0].kid is missing"
    )
    kube.patch("v1", "Secret", "herald-ca", {"data": {STATE_FILE: None, "x": "eA=="}}, NAMESPACE)
    with pytest.raises(KeyStoreError, match="Secret herald/herald-ca has no data key 'ca-state"):
        await store.load()


async def test_api_errors_are_reported_with_the_secret(kube: KubeCluster) -> None:
    kube.emulator[f"get /api/v1/namespaces/{NAMESPACE}/secrets/herald-ca"] << 503
    with pytest.raises(KeyStoreError, match="cannot read Secret herald/herald-ca: HTTP 503"):
        await store_of(kube).load()


async def test_a_failed_catch_up_leaves_the_manager_unstarted(kube: KubeCluster) -> None:
    clock = FakeClock(NOW)
    await CAManager(CASettings(TD), store_of(kube), clock).start()
    kube.emulator[f"put /api/v1/namespaces/{NAMESPACE}/secrets/herald-ca"] << 503
    clock.advance(timedelta(hours=8))  # the next CA is due: start must save
    ca = CAManager(CASettings(TD), store_of(kube), clock)
    for _ in range(2):  # retried, start fails for the same reason, not "already started"
        with pytest.raises(CAError, match=r"cannot save the CA state: .*HTTP 503"):
            await ca.start()
        with pytest.raises(CAError, match="not started"):
            ca.bundle()


async def test_watch_sends_the_current_state_then_changes_and_survives_expiry(
    kube: KubeCluster,
) -> None:
    store = store_of(kube)
    first = await store.save(make_state(1), version=None)
    watch = store.watch()
    try:
        state, version = await asyncio.wait_for(anext(watch), 10)
        assert (state.revision, version) == (1, first)
        second = await store.save(make_state(2), version=first)
        state, version = await asyncio.wait_for(anext(watch), 10)
        assert (state.revision, version) == (2, second)
        # etcd compaction: the open watch ends with 410 and the store must relist.
        kube.expire_watches()
        state, version = await asyncio.wait_for(anext(watch), 10)
        assert (state.revision, version) == (2, second)
        third = await store.save(make_state(3), version=second)
        state, version = await asyncio.wait_for(anext(watch), 10)
        assert (state.revision, version) == (3, third)
    finally:
        await watch.aclose()


async def test_watch_skips_unreadable_content_and_delivers_the_next_good_write(
    kube: KubeCluster,
) -> None:
    store = store_of(kube)
    version = await store.save(make_state(1), version=None)
    watch = store.watch()
    try:
        await asyncio.wait_for(anext(watch), 10)
        garbage = base64.b64encode(b"{nope").decode()
        kube.patch("v1", "Secret", "herald-ca", {"data": {STATE_FILE: garbage}}, NAMESPACE)
        secret = CoreV1Api(kube.api_client()).read_namespaced_secret("herald-ca", NAMESPACE)
        assert secret.metadata is not None
        version = str(secret.metadata.resource_version)
        newest = await store.save(make_state(4), version=version)
        state, seen = await asyncio.wait_for(anext(watch), 10)
        assert (state.revision, seen) == (4, newest)
    finally:
        await watch.aclose()


async def test_leader_and_follower_share_the_ca_through_the_secret(kube: KubeCluster) -> None:
    clock = FakeClock(NOW)
    settings = CASettings(TD, ca_ttl=timedelta(hours=24))
    leader = CAManager(settings, store_of(kube), clock)
    follower = CAManager(settings, store_of(kube), clock)
    waiting = asyncio.create_task(follower.start(leader=False))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # a follower waits for the leader to create the CA
    await leader.start()
    await asyncio.wait_for(waiting, 10)
    assert follower.bundle() == leader.bundle()

    watch = store_of(kube).watch()
    try:
        clock.advance(timedelta(hours=8))
        assert await leader.rotate()
        assert leader.bundle().sequence_number == 2
        while follower.bundle().sequence_number < 2:
            state, version = await asyncio.wait_for(anext(watch), 10)
            await follower.adopt(state, version)
        assert follower.bundle() == leader.bundle()
    finally:
        await watch.aclose()

    key = generate_key()
    chain = follower.sign_x509_svid(key.public_key(), WORKLOAD)
    verify_chain(chain, leader.bundle().x509_authorities, now=clock.now())
    token, _, _ = follower.sign_jwt_svid(WORKLOAD, ["db"])
    validate_jwt_svid(token, {TD: leader.bundle()}, "db", now=clock.now())
    saved = await store_of(kube).load()
    assert saved is not None
    assert isinstance(saved[0], CAState)
    assert saved[0].sequence == 2
