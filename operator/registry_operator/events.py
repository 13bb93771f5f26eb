"""Kubernetes Events on a Registry, posted directly through the API.

Posting ourselves (rather than through kopf's event queue) works from any task, including the periodic
resync. Messages come from `conditions`, which never contain secret material.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

from . import names

COMPONENT = "registry-operator"


async def post(client: AsyncClient, registry: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    meta = registry["metadata"]
    now = dt.datetime.now(dt.UTC)
    event = Event(
        metadata=ObjectMeta(generateName=f"{meta['name']}.", namespace=meta["namespace"]),
        involvedObject=ObjectReference(
            apiVersion=names.API_VERSION, kind=names.KIND, name=meta["name"],
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
    try:
        await client.create(event, namespace=meta["namespace"])
    except ApiError:
        pass  # an Event is best effort: never fail a reconcile for one
