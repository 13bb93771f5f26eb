"""A periodic full resync: reconcile every Registry now and then, even when nothing announced a change.

Watches tell us about changes, but not about time passing: a certificate due for renewal changes nothing in
the API. A settled Registry costs only reads here, so the resync is cheap even for many Registries.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable

from lightkube import AsyncClient

from .kinds import Registry

log = logging.getLogger(__name__)


async def list_all(client: AsyncClient, namespaces: list[str] | None) -> list[tuple[str, str]]:
    """(namespace, name) of every Registry in `namespaces`: names or globs as kopf takes them (None: all)."""
    out = []
    async for reg in client.list(Registry, namespace="*"):
        ns = reg.metadata.namespace
        if namespaces is None or any(fnmatch.fnmatchcase(ns, pattern) for pattern in namespaces):
            out.append((ns, reg.metadata.name))
    return out


async def forever(
    client: AsyncClient,
    namespaces: list[str] | None,
    interval: float,
    trigger: Callable[[tuple[str, str]], Awaitable[None]],
) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            keys = await list_all(client, namespaces)
        except Exception:  # the API may be briefly unreachable: try again next round
            log.exception("resync: listing Registries failed")
            continue
        await asyncio.gather(*(trigger(k) for k in keys), return_exceptions=True)
        log.info("resync: %d Registries reconciled", len(keys))
