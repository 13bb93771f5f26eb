"""Which Registry refers to which Secret, and noticing changes of those Secrets without watching every Secret.

The operator watches only Secrets labelled `registry.operator.dev/watch=true` (its own, and the ones users
label), so a cluster full of unrelated Secrets (ServiceAccount tokens, TLS keys of other apps) never streams
into it. A referenced Secret without the label is read by name every `interval` seconds instead and its
Registry triggered when its resourceVersion changes (or it appears or vanishes); status.unwatchedSecrets
names these, so users can label them to be noticed at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Secret

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
_UNSEEN = object()


class References:
    def __init__(self, trigger: Callable[[Key], None], concurrency: int = 8) -> None:
        self._trigger = trigger
        self._by_registry: dict[Key, frozenset[str]] = {}  # (namespace, Registry) -> Secret names
        self._watched: set[Key] = set()  # referenced Secrets the label watch already covers
        self._versions: dict[Key, object] = {}  # polled Secret -> resourceVersion (None: missing)
        self._failing: set[Key] = set()
        self._limit = asyncio.Semaphore(concurrency)

    def track(self, namespace: str, registry: str, secrets: Iterable[str]) -> None:
        """Record what a Registry refers to now (an empty set forgets it)."""
        names = frozenset(secrets)
        if names:
            self._by_registry[(namespace, registry)] = names
        else:
            self._by_registry.pop((namespace, registry), None)

    def registries(self, namespace: str, secret: str) -> set[str]:
        """Registries in `namespace` that refer to Secret `secret`."""
        return {reg for (ns, reg), names in self._by_registry.items() if ns == namespace and secret in names}

    def watched(self, namespace: str, secret: str, labelled: bool) -> None:
        """The label watch saw `secret`: while it carries the label, polling it is unnecessary."""
        (self._watched.add if labelled else self._watched.discard)((namespace, secret))

    def _polled(self) -> set[Key]:
        return {(ns, s) for (ns, _), names in self._by_registry.items() for s in names} - self._watched

    async def _read(self, client: AsyncClient, key: Key) -> None:
        async with self._limit:
            try:
                obj = await client.get(Secret, key[1], namespace=key[0])
                version: object = obj.metadata.resourceVersion
            except ApiError as exc:
                if exc.status.code != 404:
                    self._fail(key, exc.status.reason or str(exc.status.code))
                    return
                version = None
            except httpx2.HTTPError as exc:
                self._fail(key, type(exc).__name__)
                return
        self._failing.discard(key)
        before = self._versions.get(key, _UNSEEN)
        self._versions[key] = version
        if before != version:  # also on first sight: a change may have come before the first read
            for registry in self.registries(*key):
                self._trigger((key[0], registry))

    def _fail(self, key: Key, reason: str) -> None:
        if key not in self._failing:
            log.warning("reading referenced Secret %s/%s failed (%s); retrying every poll", *key, reason)
            self._failing.add(key)

    async def poll(self, client: AsyncClient) -> None:
        """Read every referenced Secret the watch does not cover, once."""
        wanted = self._polled()
        for gone in set(self._versions) - wanted:
            del self._versions[gone]
        await asyncio.gather(*(self._read(client, key) for key in wanted))

    async def forever(self, client: AsyncClient, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.poll(client)
