"""Leader election over a Kubernetes Lease, so exactly one server replica rotates the CA.

The other replicas serve and sign with the shared CA state and pick up the leader's changes by
watching the CA Secret. A leader that cannot renew its lease within the lease duration steps
down on its own before anyone else can take over, so two leaders never act at once as long as
clocks agree to within the renew interval.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from kubernetes import client as k8s

from herald_core.clock import SYSTEM_CLOCK, Clock
from herald_server.kube import ApiClientFactory, api_session

log = logging.getLogger(__name__)


class LeaseElector:
    def __init__(
        self,
        api_client_factory: ApiClientFactory,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: dt.timedelta = dt.timedelta(seconds=15),
        renew_interval: dt.timedelta = dt.timedelta(seconds=5),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if renew_interval * 2 > lease_duration:
            raise ValueError("renew_interval must be at most half the lease duration")
        self._api = api_client_factory
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._duration = lease_duration
        self._interval = renew_interval
        self._clock = clock
        self._last_renewed: dt.datetime | None = None
        self._announced = False
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def is_leader(self) -> bool:
        """True only while a renewal succeeded less than a lease duration ago."""
        if self._last_renewed is None:
            return False
        return self._clock.now() - self._last_renewed < self._duration

    def add_listener(self, callback: Callable[[bool], None]) -> None:
        """Called with the new leadership after every change of it."""
        self._listeners.append(callback)

    async def run(self) -> None:
        """Try to acquire or renew every renew interval, until cancelled."""
        try:
            while True:
                await self.step()
                await asyncio.sleep(self._interval.total_seconds())
        finally:
            if self.is_leader:
                await asyncio.to_thread(self._release)
            self._last_renewed = None
            self._announce()

    async def step(self) -> bool:
        """One acquire-or-renew attempt; returns whether this replica leads afterwards."""
        try:
            renewed = await asyncio.to_thread(self._try_acquire)
        except k8s.ApiException as exc:
            log.warning("lease %s/%s: %s %s", self._namespace, self._name, exc.status, exc.reason)
            renewed = False
        if renewed:
            self._last_renewed = self._clock.now()
        self._announce()
        return self.is_leader

    def _announce(self) -> None:
        if self.is_leader == self._announced:
            return
        self._announced = self.is_leader
        log.info("leadership changed: identity=%s leader=%s", self.identity, self._announced)
        for callback in self._listeners:
            callback(self._announced)

    def _try_acquire(self) -> bool:
        with api_session(self._api) as api_client:
            api = k8s.CoordinationV1Api(api_client)
            now = self._clock.now()
            try:
                lease = api.read_namespaced_lease(self._name, self._namespace)
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise
                api.create_namespaced_lease(self._namespace, self._new_lease(now))
                return True
            spec = lease.spec or k8s.V1LeaseSpec()
            if spec.holder_identity != self.identity and not self._expired(spec, now):
                return False
            if spec.holder_identity != self.identity:
                spec.lease_transitions = (spec.lease_transitions or 0) + 1
                spec.acquire_time = now
            spec.holder_identity = self.identity
            spec.renew_time = now
            spec.lease_duration_seconds = int(self._duration.total_seconds())
            lease.spec = spec
            try:
                api.replace_namespaced_lease(self._name, self._namespace, lease)
            except k8s.ApiException as exc:
                if exc.status == 409:  # someone else wrote first: they win this round
                    return False
                raise
            return True

    def _expired(self, spec: k8s.V1LeaseSpec, now: dt.datetime) -> bool:
        if spec.renew_time is None or not spec.holder_identity:
            return True
        renewed = spec.renew_time
        if renewed.tzinfo is None:
            renewed = renewed.replace(tzinfo=dt.UTC)
        duration = dt.timedelta(seconds=spec.lease_duration_seconds or 0)
        return now >= renewed + duration

    def _new_lease(self, now: dt.datetime) -> k8s.V1Lease:
        return k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(name=self._name, namespace=self._namespace),
            spec=k8s.V1LeaseSpec(
                holder_identity=self.identity,
                acquire_time=now,
                renew_time=now,
                lease_duration_seconds=int(self._duration.total_seconds()),
                lease_transitions=0,
            ),
        )

    def _release(self) -> None:
        """Hand the lease back at shutdown so another replica takes over at once."""
        try:
            with api_session(self._api) as api_client:
                api = k8s.CoordinationV1Api(api_client)
                lease = api.read_namespaced_lease(self._name, self._namespace)
                if lease.spec and lease.spec.holder_identity == self.identity:
                    lease.spec.holder_identity = ""
                    lease.spec.renew_time = None
                    api.replace_namespaced_lease(self._name, self._namespace, lease)
        except k8s.ApiException as exc:
            log.warning("could not release lease: %s %s", exc.status, exc.reason)
