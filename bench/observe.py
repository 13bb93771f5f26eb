"""Watch one namespace and record when things happen: first sight of each object, Registry Ready for its
current generation, Deployment available. Times are `time.monotonic()` at arrival in this process, so the
operator and the floor are timed by the same clock and the same watch latency."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

from lightkube import AsyncClient
from lightkube.types import OnErrorAction, OnErrorResult

from registry_operator.kinds import CHILD_KINDS, Registry

Key = tuple[str, str]  # (kind, name)
KINDS = {**{kind: res for (_, kind), res in CHILD_KINDS.items()}, "Registry": Registry}


def _retry(exc: Exception, count: int) -> OnErrorResult:
    return OnErrorResult(OnErrorAction.RETRY, sleep=min(0.1 * count, 2))


def registry_ready(obj: dict[str, Any]) -> bool:
    """Ready=True, observed for the object's current generation."""
    generation = obj["metadata"].get("generation", 1)
    status = obj.get("status") or {}
    if status.get("observedGeneration") != generation:
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" and c.get("observedGeneration", generation) == generation
        for c in status.get("conditions") or ()
    )


def deployment_available(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    want = (obj.get("spec") or {}).get("replicas", 1)
    return (
        status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 1)
        and status.get("updatedReplicas", 0) >= want
        and status.get("availableReplicas", 0) >= want
    )


class Observer:
    """Background watches of one namespace; `wait_for` blocks until a predicate over the records holds."""

    def __init__(self, client: AsyncClient, namespace: str, kinds: Iterable[str] | None = None) -> None:
        """`kinds`: default, those of the bench Registries' children (whatever the renderer makes) and Registry."""
        from .workload import children

        self.client = client
        self.namespace = namespace
        self.kinds = list(kinds) if kinds is not None else sorted({kind for kind, _ in children("x")} | {"Registry"})
        self.seen: dict[Key, float] = {}
        self.ready: dict[str, float] = {}  # Registry name -> first time Ready for its generation
        self.available: dict[str, float] = {}  # Deployment name -> first time available
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Observer:
        started = [asyncio.get_running_loop().create_future() for _ in self.kinds]
        self._tasks = [asyncio.create_task(self._watch(k, f)) for k, f in zip(self.kinds, started, strict=True)]
        await asyncio.gather(*started)
        await asyncio.sleep(0.3)  # let the watch requests reach the server before anyone starts a clock
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def forget(self, names: Iterable[str]) -> None:
        """Drop the Registry/Deployment records of `names` (a re-created object starts afresh)."""
        for name in names:
            self.ready.pop(name, None)
            self.available.pop(name, None)

    def _record(self, kind: str, obj: dict[str, Any], deleted: bool) -> None:
        now = time.monotonic()
        name = obj["metadata"]["name"]
        if deleted:
            self.seen.pop((kind, name), None)
            if kind == "Registry":
                self.ready.pop(name, None)
            if kind == "Deployment":
                self.available.pop(name, None)
        else:
            self.seen.setdefault((kind, name), now)
            if kind == "Registry" and registry_ready(obj):
                self.ready.setdefault(name, now)
            if kind == "Deployment" and deployment_available(obj):
                self.available.setdefault(name, now)
        self._changed.set()

    async def _watch(self, kind: str, started: asyncio.Future[None]) -> None:
        res = KINDS[kind]
        listing = self.client.list(res, namespace=self.namespace)
        async for obj in listing:
            self._record(kind, obj.to_dict(), False)
        rv = listing.resourceVersion
        started.set_result(None)
        async for op, obj in self.client.watch(res, namespace=self.namespace, resource_version=rv, on_error=_retry):
            self._record(kind, obj.to_dict(), op == "DELETED")

    async def wait_for(self, predicate: Any, timeout: float) -> float:
        """Wait until `predicate()` is true; returns `time.monotonic()` when it was checked true."""
        deadline = time.monotonic() + timeout
        while not predicate():
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not reached")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))
        return time.monotonic()

    def last_seen(self, keys: Iterable[Key]) -> float | None:
        times = [self.seen.get(k) for k in keys]
        return None if any(t is None for t in times) else max(times)  # type: ignore[type-var]
