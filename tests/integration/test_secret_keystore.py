"""The CA state in a Kubernetes Secret on the real API, as the server's ServiceAccount: optimistic
writes and watches; API errors on cue from the fault proxy, watch expiry from etcd compaction."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

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
from herald_server.kube import kube_client_factory
from tests.k8s.api import Kube
from tests.k8s.controlplane import ControlPlane
from tests.k8s.faults import FaultProxy
from tests.k8s.install import HeraldRelease
from tests.unit.test_keystore import NOW, TD, make_state

WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")


@dataclass
class Site:
    """Where the Secret lives, and the server's view of the API (possibly through a proxy)."""

    kube: Kube
    namespace: str
    name: str
    kubeconfig: Path

    def store(self) -> SecretKeyStore:
        return SecretKeyStore(kube_client_factory(self.kubeconfig), self.namespace, self.name)

    def secret(self) -> dict[str, Any]:
        secret = self.kube.get("v1", "Secret", self.name, self.namespace)
        assert secret is not None
        return secret

    def patch(self, data: dict[str, Any]) -> None:
        self.kube.patch("v1", "Secret", self.name, self.namespace, {"data": data})

    @property
    def where(self) -> str:
        return f"Secret {self.namespace}/{self.name}"


@pytest.fixture
def site(kube: Kube, release: HeraldRelease) -> Site:
    return Site(kube, release.namespace, release.names["caSecret"], release.kubeconfigs["server"])


@pytest.fixture
def faults(own_control_plane: ControlPlane) -> Iterator[FaultProxy]:
    proxy = FaultProxy(own_control_plane).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied(site: Site, faults: FaultProxy) -> Site:
    return replace(site, kubeconfig=faults.kubeconfig(site.kubeconfig))


async def test_an_absent_secret_means_nothing_stored(site: Site) -> None:
    assert await site.store().load() is None


async def test_save_creates_the_secret_and_load_reads_it_back(site: Site) -> None:
    store = site.store()
    state = make_state()
    version = await store.save(state, version=None)
    secret = site.secret()
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


async def test_writes_based_on_a_stale_version_conflict(site: Site) -> None:
    store = site.store()
    first = await store.save(make_state(1), version=None)
    with pytest.raises(KeyStoreConflict, match=rf"{site.where} changed since version"):
        await store.save(make_state(2), version=None)
    second = await store.save(make_state(2), version=first)
    assert second != first
    with pytest.raises(KeyStoreConflict, match="HTTP 409"):
        await store.save(make_state(3), version=first)
    loaded = await store.load()
    assert loaded is not None
    assert loaded[0].revision == 2


async def test_an_update_of_a_deleted_secret_conflicts(site: Site) -> None:
    store = site.store()
    version = await store.save(make_state(1), version=None)
    site.kube.delete("v1", "Secret", site.name, site.namespace)
    with pytest.raises(KeyStoreConflict, match="HTTP 404"):
        await store.save(make_state(2), version=version)


async def test_corrupt_secret_content_is_named(site: Site) -> None:
    store = site.store()
    await store.save(make_state(), version=None)
    doc = json.loads(make_state().to_json())
    del doc["jwt_slots"][0]["kid"]
    site.patch({STATE_FILE: base64.b64encode(json.dumps(doc).encode()).decode()})
    with pytest.raises(KeyStoreError) as info:
        await store.load()
    assert str(info.value) == (
        f"{site.where} data key 'ca-state.json': state.jwt_slots[0].kid is missing"
    )
    site.patch({STATE_FILE: None, "x": "eA=="})
    with pytest.raises(KeyStoreError, match=f"{site.where} has no data key 'ca-state"):
        await store.load()


def _secret_path(site: Site) -> str:
    return f"/api/v1/namespaces/{site.namespace}/secrets/{site.name}"


async def test_api_errors_are_reported_with_the_secret(proxied: Site, faults: FaultProxy) -> None:
    faults.fail("GET", _secret_path(proxied), 503)
    with pytest.raises(KeyStoreError, match=f"cannot read {proxied.where}: HTTP 503"):
        await proxied.store().load()


async def test_a_failed_catch_up_leaves_the_manager_unstarted(
    proxied: Site, faults: FaultProxy
) -> None:
    clock = FakeClock(NOW)
    await CAManager(CASettings(TD), proxied.store(), clock).start()
    faults.fail("PUT", _secret_path(proxied), 503)
    clock.advance(timedelta(hours=8))  # the next CA is due: start must save
    ca = CAManager(CASettings(TD), proxied.store(), clock)
    for _ in range(2):  # retried, start fails for the same reason, not "already started"
        with pytest.raises(CAError, match=r"cannot save the CA state: .*HTTP 503"):
            await ca.start()
        with pytest.raises(CAError, match="not started"):
            ca.bundle()


async def test_watch_sends_the_current_state_then_changes_and_survives_expiry(
    proxied: Site, faults: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="herald_server.keystore")
    store = proxied.store()
    first = await store.save(make_state(1), version=None)
    watch = store.watch()
    try:
        state, version = await asyncio.wait_for(anext(watch), 10)
        assert (state.revision, version) == (1, first)
        second = await store.save(make_state(2), version=first)
        state, version = await asyncio.wait_for(anext(watch), 10)
        assert (state.revision, version) == (2, second)
        # The watch resumes from a resourceVersion the API server no longer has (a real 410
        # Gone) and the store must relist.
        await asyncio.to_thread(faults.expire_watches)
        state, version = await asyncio.wait_for(anext(watch), 10)
        assert (state.revision, version) == (2, second)
        assert any("expired, relisting" in r.getMessage() for r in caplog.records)
        third = await store.save(make_state(3), version=second)
        state, version = await asyncio.wait_for(anext(watch), 10)
        assert (state.revision, version) == (3, third)
    finally:
        await watch.aclose()


async def test_watch_skips_unreadable_content_and_delivers_the_next_good_write(
    site: Site,
) -> None:
    store = site.store()
    version = await store.save(make_state(1), version=None)
    watch = store.watch()
    try:
        await asyncio.wait_for(anext(watch), 10)
        site.patch({STATE_FILE: base64.b64encode(b"{nope").decode()})
        version = site.secret()["metadata"]["resourceVersion"]
        newest = await store.save(make_state(4), version=version)
        state, seen = await asyncio.wait_for(anext(watch), 10)
        assert (state.revision, seen) == (4, newest)
    finally:
        await watch.aclose()


async def test_leader_and_follower_share_the_ca_through_the_secret(site: Site) -> None:
    clock = FakeClock(NOW)
    settings = CASettings(TD, ca_ttl=timedelta(hours=24))
    leader = CAManager(settings, site.store(), clock)
    follower = CAManager(settings, site.store(), clock)
    waiting = asyncio.create_task(follower.start(leader=False))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # a follower waits for the leader to create the CA
    await leader.start()
    await asyncio.wait_for(waiting, 10)
    assert follower.bundle() == leader.bundle()

    watch = site.store().watch()
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
    saved = await site.store().load()
    assert saved is not None
    assert isinstance(saved[0], CAState)
    assert saved[0].sequence == 2
