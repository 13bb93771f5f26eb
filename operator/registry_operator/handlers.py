"""kopf glue: which events lead to a reconcile of which Registry. No logic lives here.

- Registry created, resumed, or its spec changed: reconcile it.
- A child (labelled as ours) changed or vanished: reconcile the Registry named in its instance label, which
  restores a deleted or hand-edited child and refreshes status from Deployment progress.
- A Secret that some Registry refers to (a password, a user TLS certificate) appeared or changed: reconcile
  every Registry that refers to it, found through a kopf index instead of a cluster-wide lookup.
- Periodically: every Registry, so certificates get renewed without any event.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf
from lightkube import AsyncClient

from . import names, resync
from .coalesce import Coalescer
from .observe import referenced_secrets
from .reconcile import Context, reconcile
from .spec import parse

log = logging.getLogger(__name__)

REGISTRY = (names.GROUP, names.VERSION, names.PLURAL)
CHILDREN = ["deployments", "services", "configmaps", "persistentvolumeclaims"]
OURS = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
OURS_SELECTOR = f"{names.LABEL_MANAGED_BY}={names.MANAGED_BY}"

MAX_CONCURRENT = int(os.environ.get("REGISTRY_OPERATOR_MAX_CONCURRENT", "16"))
RESYNC_SECONDS = float(os.environ.get("REGISTRY_OPERATOR_RESYNC_SECONDS", "3600"))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our own prefix from day one: changing where kopf keeps its state later would re-trigger every handler.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    for plural in CHILDREN:  # filtered by the API server: we never receive other controllers' objects
        settings.watching.label_selectors[plural] = OURS_SELECTOR

    client = AsyncClient(field_manager=names.FIELD_MANAGER)
    ctx = Context(
        client=client,
        operator_image=os.environ.get("REGISTRY_OPERATOR_IMAGE", "registry-operator:0.1.0"),
        cluster_domain=os.environ.get("REGISTRY_OPERATOR_CLUSTER_DOMAIN", "cluster.local"),
    )
    limit = asyncio.Semaphore(MAX_CONCURRENT)

    async def run(key: Any) -> None:
        async with limit:
            await reconcile(ctx, *key)

    memo.ctx = ctx
    memo.coalescer = Coalescer(run)
    namespaces = [ns for ns in os.environ.get("REGISTRY_OPERATOR_NAMESPACES", "").split(",") if ns] or None
    memo.resync = asyncio.create_task(resync.forever(client, namespaces, RESYNC_SECONDS, memo.coalescer.trigger))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.resync.cancel()
    await memo.ctx.client.close()


@kopf.on.resume(*REGISTRY)
@kopf.on.create(*REGISTRY)
@kopf.on.update(*REGISTRY, field="spec")
async def registry_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        await memo.coalescer.trigger((namespace, name))
    except Exception as exc:  # API trouble: let kopf retry soon instead of after its default minute
        raise kopf.TemporaryError(f"reconcile failed: {type(exc).__name__}: {exc}", delay=10) from exc


@kopf.index(*REGISTRY)
def secret_refs(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str]:
    """(namespace, Secret name) -> Registry name, for every Secret a Registry's spec refers to."""
    try:
        refs = referenced_secrets(parse(name, namespace, dict(spec)))
    except (ValueError, KeyError, TypeError):
        return {}
    return {(namespace, secret): name for secret in refs}


@kopf.on.event("apps", "v1", "deployments", labels=OURS)
@kopf.on.event("", "v1", "services", labels=OURS)
@kopf.on.event("", "v1", "configmaps", labels=OURS)
@kopf.on.event("", "v1", "persistentvolumeclaims", labels=OURS)
async def child_changed(
    namespace: str, labels: kopf.Labels, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    registry = labels.get(names.LABEL_INSTANCE)
    if registry and type is not None:  # None: kopf's initial listing, when resume reconciles every Registry
        await memo.coalescer.trigger((namespace, registry))


@kopf.on.event("", "v1", "secrets")
async def secret_changed(
    namespace: str, name: str, labels: kopf.Labels, type: str | None, secret_refs: kopf.Index, memo: kopf.Memo,
    **_: Any,
) -> None:
    if type is None:  # kopf's initial listing: resume reconciles every Registry anyway
        return
    targets = set(secret_refs.get((namespace, name), ()))
    if labels.get(names.LABEL_MANAGED_BY) == names.MANAGED_BY and labels.get(names.LABEL_INSTANCE):
        targets.add(labels[names.LABEL_INSTANCE])
    for registry in targets:
        await memo.coalescer.trigger((namespace, registry))
