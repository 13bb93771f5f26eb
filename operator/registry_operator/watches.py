"""Following the many objects whose events only name a Registry to wake: its children, labelled Secrets and
ServiceAccounts.

kopf gives every object it watches a memory and a worker task of its own, and at a restart it starts a worker for
every listed object at once. That is the right model for a Registry, but a Registry has ten children, and all an
event of theirs has to do is name the Registry to reconcile. Measured with 8000 labelled ConfigMaps and no
Registry: kopf held 33 MiB for them and took 20 s of CPU to take in the listing. So these kinds are followed
here instead: a chunked list, then a watch from the list's resourceVersion; each event's metadata goes to a
plain function and is forgotten, and nothing is kept per object.

Only metadata is asked for (the API server's PartialObjectMetadata): a Secret's data or a Deployment's spec never
reaches the operator this way, and bookmarks keep the version a quiet watch resumes from recent. A version the
server no longer has (410 Gone) means events may have been missed: the kind is listed again and every listed
object handed over as ADDED, so every Registry concerned is woken. Other failures are retried with backoff and
logged once per streak.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec
from lightkube import AsyncClient
from lightkube.core.selector import build_selector
from lightkube.models.meta_v1 import ListMeta, ObjectMeta

log = logging.getLogger(__name__)

CHUNK = 500  # objects per page of a listing
SERVER_TIMEOUT = 300  # seconds the API server keeps one watch request open
MAX_BACKOFF = 60.0
_METADATA = "application/json;as=PartialObjectMetadata{};g=meta.k8s.io;v=v1,application/json"

# What a function gets: the event type (None: the object was in the listing at start) and the object's metadata.
Handler = Callable[[str | None, ObjectMeta], None]


@dataclass(frozen=True)
class Watch:
    resource: type  # a lightkube resource class: where to list and watch
    handler: Handler
    labels: dict[str, str] | None = None  # a server-side label selector


class _Object(msgspec.Struct):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)


class _Page(msgspec.Struct):
    metadata: ListMeta = msgspec.field(default_factory=ListMeta)
    items: list[_Object] | None = None  # null in an empty PartialObjectMetadataList


class _Event(msgspec.Struct):
    type: str
    object: msgspec.Raw


class _Gone(Exception):
    """The version to resume from is too old: list again."""


def parse_event(line: str | bytes) -> tuple[str, ObjectMeta]:
    """(type, metadata) of one line of a watch; an ERROR event raises (`_Gone` for 410)."""
    event = msgspec.json.decode(line, type=_Event)
    if event.type == "ERROR":
        status = msgspec.json.decode(event.object)
        if status.get("code") == 410:
            raise _Gone
        raise RuntimeError(f"{status.get('reason')}: {status.get('message')}")
    return event.type, msgspec.json.decode(event.object, type=_Object).metadata


def _backoff(failures: int) -> float:
    return min(2.0 ** (failures - 1), MAX_BACKOFF)


class _Follower:
    def __init__(self, client: AsyncClient, watch: Watch, namespace: str, match: Callable[[str], bool],
                 listed: Callable[[], None]) -> None:
        self.http = client._client  # lightkube's own HTTP layer: its public methods decode whole typed objects
        self.watch, self.namespace, self.match, self.listed = watch, namespace, match, listed
        self.what = f"{watch.resource.__name__}s" + ("" if namespace == "*" else f" in {namespace}")
        self.version: str | None = None

    async def _send(self, params: dict[str, object], watching: bool):  # -> httpx response, streamed if watching
        labels = build_selector(self.watch.labels) if self.watch.labels else None
        request = self.http.prepare_request(
            "list", res=self.watch.resource, namespace=self.namespace, watch=watching,
            params={"labelSelector": labels, **params},
            headers={"Accept": _METADATA.format("" if watching else "List")},
        )  # fmt: skip
        if watching:
            request.timeout = self.http._watch_timeout  # no read timeout: a quiet watch is not a dead one
        response = await self.http.send(self.http.build_adapter_request(request), stream=watching)
        if response.status_code == 410:
            await response.aclose()
            raise _Gone
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
        response.raise_for_status()
        return response

    def _hand(self, type_: str | None, meta: ObjectMeta) -> None:
        if self.match(meta.namespace or ""):
            self.watch.handler(type_, meta)

    async def list(self, initial: bool) -> None:
        """Hand over every object; after a gap (not at start) as ADDED, since they may have changed unseen."""
        page = {}
        while True:
            response = await self._send({"limit": CHUNK, **page}, watching=False)
            listing = msgspec.json.decode(response.content, type=_Page)
            for item in listing.items or ():
                self._hand(None if initial else "ADDED", item.metadata)
            if not listing.metadata.continue_:
                self.version = listing.metadata.resourceVersion
                return
            page = {"continue": listing.metadata.continue_}

    async def follow(self) -> None:
        """Until the server ends the request (its timeout), or raise."""
        params = {"resourceVersion": self.version, "allowWatchBookmarks": "true", "timeoutSeconds": SERVER_TIMEOUT}
        response = await self._send(params, watching=True)
        try:
            async for line in response.aiter_lines():
                if line:
                    type_, meta = parse_event(line)
                    self.version = meta.resourceVersion
                    if type_ != "BOOKMARK":
                        self._hand(type_, meta)
        finally:
            await response.aclose()

    async def run(self) -> None:
        failures, initial = 0, True
        while True:
            try:
                if self.version is None:
                    await self.list(initial)
                    if initial:
                        self.listed()
                    initial = False
                await self.follow()
                if failures:
                    log.info("watching %s again", self.what)
                failures = 0
            except asyncio.CancelledError:
                raise
            except _Gone:
                self.version = None
            except Exception as exc:  # noqa: BLE001 - the API may be unreachable for a while: try again later
                failures += 1
                if failures == 1:
                    log.warning("watching %s: %s: %s; trying again with backoff", self.what, type(exc).__name__, exc)
                await asyncio.sleep(_backoff(failures))


async def follow(
    client: AsyncClient, watch: Watch, namespace: str, match: Callable[[str], bool], listed: Callable[[], None]
) -> None:
    """List `watch.resource` in `namespace` ("*": all), then watch it, forever. `match` filters by namespace
    (globs need a cluster-wide watch); `listed` is called once the listing at start has been handed over."""
    await _Follower(client, watch, namespace, match, listed).run()


def start(
    client: AsyncClient, watches: Sequence[Watch], namespaces: Sequence[str], listed: Callable[[], None]
) -> list[asyncio.Task[None]]:
    """One task per watch and namespace: `namespaces` as the operator takes them (exact names are watched one
    by one, which namespaced RBAC allows; globs or nothing mean a cluster-wide watch). `listed` is called once
    per task, when its listing at start has been handed over."""
    if namespaces and not any(set(ns) & set("*?[") for ns in namespaces):
        scopes = [(ns, _everything) for ns in namespaces]
    else:
        patterns = tuple(namespaces)
        scopes = [("*", (lambda ns: any(fnmatch.fnmatchcase(ns, p) for p in patterns)) if patterns else _everything)]
    return [asyncio.create_task(follow(client, w, ns, match, listed)) for w in watches for ns, match in scopes]


def _everything(_: str) -> bool:
    return True
