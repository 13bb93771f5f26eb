"""Kubernetes Events on a Registry, posted directly through the API.

Posting ourselves (rather than through kopf's event queue) works from any task, including the periodic
resync, and tells us when a post failed so that it is tried again. Messages come from `conditions` and
`material`, which never contain secret material.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

from . import metrics, names

COMPONENT = "registry-operator"


async def post(client: AsyncClient, registry: Mapping[str, Any], type_: str, reason: str, message: str) -> bool:
    """Post one Event; False when the API refused it or could not be reached (the caller retries)."""
    meta = registry["metadata"]
    now = dt.datetime.now(dt.UTC)
    event = Event(
        metadata=ObjectMeta(generateName=f"{meta['name']}.", namespace=meta["namespace"]),
        involvedObject=ObjectReference(
            apiVersion=names.API_VERSION, kind=registry.get("kind") or names.KIND, name=meta["name"],
            namespace=meta["namespace"], uid=meta.get("uid"),
        ),
        type=type_,
        reason=reason,
        message=message[:1024],
        source=EventSource(component=COMPONENT),
        firstTimestamp=now,
        lastTimestamp=now,
        count=1,
    )
    metrics.API_WRITES.labels("Event", "create").inc()
    try:
        await client.create(event, namespace=meta["namespace"])
    except (ApiError, httpx2.HTTPError):
        return False
    return True
