"""Following the many objects whose events only name a Registry to wake: its children, labelled Secrets and
ServiceAccounts.

kopf gives every object it watches a memory and a worker task of its own, and at a restart it starts a worker for
every listed object at once. That is the right model for a Registry, but a Registry has ten children, and all an
event of theirs has to do is name the Registry to reconcile. Measured with 8000 labelled ConfigMaps and no
Registry: kopf held 33 MiB for them and took 20 s of CPU to take in the listing. So these kinds are followed
here instead: one chunked list, then a watch from the list's resourceVersion; each event goes to a plain
function and is forgotten, and nothing is kept per object.

A watch that breaks resumes from the last version it saw. When that version is too old (410 Gone), lightkube
restarts it without one, and the API server replays every object as ADDED: the functions then wake every
Registry concerned, as after any gap in the events. A failed listing is retried with backoff, logged once per
streak of failures.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lightkube import AsyncClient
from lightkube.core.selector import build_selector
from lightkube.types import OnErrorAction, OnErrorResult

log = logging.getLogger(__name__)

CHUNK = 500  # objects per page of the initial listing
SERVER_TIMEOUT = 300  # seconds the API server keeps one watch request open
MAX_BACKOFF = 60.0

# What a function gets: the event type (None: the object was in the listing at start) and the object's metadata.
Handler = Callable[[str | None, Any], None]


@dataclass(frozen=True)
class Watch:
    resource: type  # a lightkube resource class
    handler: Handler
    labels: dict[str, str] | None = None  # a server-side label selector


def _backoff(failures: int) -> float:
    return min(2.0 ** (failures - 1), MAX_BACKOFF)


def _on_error(what: str) -> Callable[[Exception, int], OnErrorResult]:
    """lightkube's error policy for a running watch: retry from the last version (lightkube drops the version
    on 410 itself), with backoff, saying so once per streak."""

    def on_error(exc: Exception, failures: int) -> OnErrorResult:
        if failures == 1:
            log.warning("watching %s: %s: %s; retrying", what, type(exc).__name__, exc)
        return OnErrorResult(OnErrorAction.RETRY, sleep=_backoff(failures) if failures > 1 else 0.0)

    return on_error


async def follow(client: AsyncClient, watch: Watch, namespace: str, match: Callable[[str], bool]) -> None:
    """List `watch.resource` in `namespace` ("*": all), then watch it, forever. `match` filters by namespace
    (globs need a cluster-wide watch)."""
    what = f"{watch.resource.__name__}s" + ("" if namespace == "*" else f" in {namespace}")
    failures, initial = 0, True
    while True:
        try:
            listing = client.list(watch.resource, namespace=namespace, labels=watch.labels, chunk_size=CHUNK)
            async for obj in listing:
                if match(obj.metadata.namespace):
                    # After a gap (not at start), what is listed may have changed unseen.
                    watch.handler(None if initial else "ADDED", obj.metadata)
            if failures:
                log.info("watching %s again", what)
            failures, initial = 0, False
            async for type_, obj in _watch(client, watch, namespace, listing.resourceVersion, _on_error(what)):
                if type_ != "BOOKMARK" and match(obj.metadata.namespace):
                    watch.handler(type_, obj.metadata)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the API may be unreachable for a while: list again later
            failures += 1
            if failures == 1:
                log.warning("watching %s: %s: %s; listing again with backoff", what, type(exc).__name__, exc)
            await asyncio.sleep(_backoff(failures))


def _watch(
    client: AsyncClient, watch: Watch, namespace: str, version: str, on_error: Callable[[Exception, int], OnErrorResult]
) -> AsyncIterator[tuple[str, Any]]:
    """`AsyncClient.watch` with bookmarks: they keep the version a quiet watch resumes from recent, so a
    reconnect after an idle `SERVER_TIMEOUT` is not refused as too old (which would replay every object). The
    public method has no parameter for them, so this builds the same request through lightkube's own client."""
    params = {"timeoutSeconds": SERVER_TIMEOUT, "resourceVersion": version, "allowWatchBookmarks": "true",
              "labelSelector": build_selector(watch.labels) if watch.labels else None}
    request = client._client.prepare_request("list", res=watch.resource, namespace=namespace, watch=True,
                                             params=params)  # fmt: skip
    return client._client.watch(request, on_error=on_error)


def start(client: AsyncClient, watches: Sequence[Watch], namespaces: Sequence[str]) -> list[asyncio.Task[None]]:
    """One task per watch and namespace: `namespaces` as the operator takes them (exact names are watched one
    by one, which namespaced RBAC allows; globs or nothing mean a cluster-wide watch)."""
    if namespaces and not any(set(ns) & set("*?[") for ns in namespaces):
        scopes = [(ns, _everything) for ns in namespaces]
    else:
        patterns = tuple(namespaces)
        scopes = [("*", (lambda ns: any(fnmatch.fnmatchcase(ns, p) for p in patterns)) if patterns else _everything)]
    return [asyncio.create_task(follow(client, w, ns, match)) for w in watches for ns, match in scopes]


def _everything(_: str) -> bool:
    return True
