"""A periodic full resync: reconcile every Registry now and then, even when nothing announced a change.

Watches tell us about changes, but not about time passing: a certificate due for renewal changes nothing in
the API. A settled Registry costs only reads here, so the resync is cheap even for many Registries.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable

from lightkube import AsyncClient

from .kinds import Registry

log = logging.getLogger(__name__)

RETRY_SECONDS = 30.0


async def list_all(
    client: AsyncClient, namespaces: list[str] | None, kind: type = Registry
) -> list[tuple[str, str]]:
    """(namespace, name) of every Registry (or `kind`) in `namespaces`: names or globs as kopf takes them
    (None: all).

    Plain names are listed one namespace at a time, which namespaced RBAC allows; globs need a cluster-wide
    list."""
    if namespaces and not any(set(ns) & set("*?[") for ns in namespaces):
        return [(ns, reg.metadata.name) for ns in namespaces async for reg in client.list(kind, namespace=ns)]
    out = []
    async for reg in client.list(kind, namespace="*"):
        ns = reg.metadata.namespace
        if namespaces is None or any(fnmatch.fnmatchcase(ns, pattern) for pattern in namespaces):
            out.append((ns, reg.metadata.name))
    return out


async def forever(
    client: AsyncClient,
    namespaces: list[str] | None,
    interval: float,
    trigger: Callable[[tuple[str, str]], None],
    kind: type = Registry,
) -> None:
    """Every `interval`, trigger every Registry. Failures of those reconciles are retried and logged by the
    coalescer; a failed listing is logged here and tried again after `RETRY_SECONDS`."""
    wait = interval
    while True:
        await asyncio.sleep(wait)
        try:
            keys = await list_all(client, namespaces, kind)
        except Exception as exc:  # noqa: BLE001 - the API may be briefly unreachable: try again soon
            wait = min(interval, RETRY_SECONDS)
            log.warning("resync: listing %s objects failed (%s: %s); next try in %.0fs", kind.__name__,
                        type(exc).__name__, exc, wait)
            continue
        wait = interval
        for key in keys:
            trigger(key)
        log.info("resync: %d %s objects triggered", len(keys), kind.__name__)
