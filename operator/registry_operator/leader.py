"""One writer: a coordination.k8s.io Lease that only its holder may act under.

kopf's own peering pauses operators by priority and freezes all of them at equal priority; it is not leader
election. So, like controller-runtime: before any handler runs, the process takes the Lease (or waits until
the holder lets it expire), renews it every third of its duration, and stops the operator when it cannot
renew in time, so that two replicas never write at once. The replica that stops exits non-zero and is
restarted by its Deployment, to wait for the Lease again.

Updates carry the Lease's resourceVersion: of two candidates racing for an expired Lease, one gets 409.
Renewals are the only writes this adds at rest (one every `lease_seconds / 3`), which is why it is opt-in for
single-process runs and on in `manifests/`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from .config import Config

log = logging.getLogger(__name__)


class Elector:
    def __init__(self, client: AsyncClient, config: Config) -> None:
        self._client = client
        self._config = config
        self._duration = config.lease_seconds
        self._renewed: float | None = None  # monotonic time of the last successful acquire/renew

    async def _try(self) -> bool:
        """One attempt to take or renew the Lease; True while we hold it."""
        cfg = self._config
        now = dt.datetime.now(dt.UTC)
        try:
            lease = await self._client.get(Lease, cfg.leader_election_name, namespace=cfg.leader_election_namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            spec = LeaseSpec(holderIdentity=cfg.identity, leaseDurationSeconds=int(self._duration),
                             acquireTime=now, renewTime=now, leaseTransitions=0)
            meta = ObjectMeta(name=cfg.leader_election_name, namespace=cfg.leader_election_namespace)
            await self._client.create(Lease(metadata=meta, spec=spec))
            return True
        spec = lease.spec or LeaseSpec()
        mine = spec.holderIdentity == cfg.identity
        renewed = spec.renewTime or spec.acquireTime
        expired = renewed is None or now > renewed + dt.timedelta(seconds=spec.leaseDurationSeconds or self._duration)
        if not (mine or expired or not spec.holderIdentity):
            return False
        if not mine:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
            spec.holderIdentity = cfg.identity
        spec.renewTime = now
        spec.leaseDurationSeconds = int(self._duration)
        lease.spec = spec
        await self._client.replace(lease)  # carries resourceVersion: a concurrent taker gets 409
        return True

    async def _attempt(self) -> bool:
        try:
            held = await self._try()
        except (ApiError, httpx2.HTTPError) as exc:
            log.warning("leader election: %s", exc if isinstance(exc, ApiError) else type(exc).__name__)
            return False
        if held:
            self._renewed = asyncio.get_running_loop().time()
        return held

    async def acquire(self) -> None:
        """Return once this process holds the Lease."""
        cfg = self._config
        log.info("leader election: waiting for Lease %s/%s as %s", cfg.leader_election_namespace,
                 cfg.leader_election_name, cfg.identity)
        while not await self._attempt():
            await asyncio.sleep(self._duration / 3)
        log.info("leader election: acquired Lease %s/%s", cfg.leader_election_namespace, cfg.leader_election_name)

    async def hold(self, lost: asyncio.Event) -> None:
        """Renew until a renewal fails for longer than the Lease lasts (or another holder took it): then set
        `lost`, early enough that no other replica can have started writing."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._duration / 3)
            held = await self._attempt()
            assert self._renewed is not None
            # Stop before the Lease could expire in others' eyes (they see it expire `duration` after renewal).
            if not held and loop.time() - self._renewed > self._duration * 2 / 3:
                log.error("leader election: lost Lease %s/%s; stopping", self._config.leader_election_namespace,
                          self._config.leader_election_name)
                lost.set()
                return
