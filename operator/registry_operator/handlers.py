"""kopf glue: which events lead to a reconcile of which Registry. No logic lives here.

- A Registry appeared (also kopf's initial listing: a restart re-verifies every Registry) or its spec changed
  (its generation is ahead of status.observedGeneration), or its rotate-pull-credential annotation changed:
  reconcile it now, even if it was waiting to retry.
  These are plain event handlers, not kopf's create/update handlers: those keep the whole spec in an
  annotation (a spec near the 256 KiB annotation limit then fails kopf's own patch) and write it back after
  each change; level-based reconciles need neither.
- A child (labelled as ours) changed or vanished: reconcile the Registry named in its instance label, which
  restores a deleted or hand-edited child and refreshes status from Deployment progress. An event of a
  Deployment is a light trigger: its status alone may be all that changed (`progress`). A node-trust
  ConfigMap of ours (in the node agent's namespace) likewise: reconcile the Registry its annotation names.
- A Secret that some Registry refers to (a password, a user TLS certificate) appeared or changed: reconcile
  every Registry that refers to it. Only Secrets with the watch label are watched (ours, and referenced
  ones users labelled); the others are polled by name (`references`).
- A user asked for a garbage collection (a new gc-requested annotation value, which changes no generation).
- A Namespace appeared, changed its labels or went away, or a ServiceAccount appeared: reconcile the
  Registries whose spec.pullSecrets may select it (`pullsecrets.concerned`), so a new namespace gets its pull
  Secret within seconds. A pull Secret of ours in another namespace changed: reconcile its Registry (named in
  its annotation), which restores it.
- A RegistryIndex changed, or one of its children or Secrets did: reconcile it (its own coalescer), and
  every Registry that joined it (`joins`), so a new realm or a rotated signing key reaches them and a deleted
  index turns them Degraded. A Registry joining or leaving an index triggers that index.
- Children, labelled Secrets and ServiceAccounts are followed by `watches` (plain functions below), not by
  kopf: there are ten of them per Registry, and kopf would keep a memory and a worker for each.
- Periodically: every Registry and RegistryIndex, so certificates get renewed without any event; and each
  Registry again when its reconcile says something falls due (a garbage-collection schedule tick or timeout,
  the moment a rotated pull credential may be handed out).
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret, ServiceAccount

from . import (
    allocator,
    garbage_collection,
    kubeclient,
    metrics,
    monitoring,
    names,
    progress,
    pullsecrets,
    resync,
    robot,
    verified,
    watches,
)
from .coalesce import Coalescer
from .config import Config
from .joins import Joins
from .kinds import FOLLOWED, RegistryIndex
from .observe import referenced_secrets
from .reconcile import Context, reconcile, reconcile_index, refresh
from .references import References
from .spec import RegistrySpec, parse, parse_index

REGISTRY = (names.GROUP, names.VERSION, names.PLURAL)
INDEX = (names.GROUP, names.VERSION, names.INDEX_PLURAL)
OURS = {names.LABEL_MANAGED_BY: names.MANAGED_BY}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: Config = memo.get("config") or Config()
    # Our own prefix, in case kopf ever stores state on our objects.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    settings.watching.chunk_size = 500  # initial listings in pages, not one response of everything
    settings.queueing.idle_timeout = 1.0  # a per-object worker holds its last body until it exits (default 5 s)
    if config.namespaces and not any(set(ns) & set("*?[") for ns in config.namespaces):
        # Exact names need no namespace list: without this kopf tries to list namespaces first, and under
        # namespaced RBAC it idles for about a minute of 403 retries before falling back to the names.
        settings.scanning.disabled = True

    client = kubeclient.client(names.FIELD_MANAGER)
    listing = verified.Listing()  # what the watches list at start spares the first reconciles their reads
    ctx = Context(client=client, config=config, pod_monitors=await monitoring.pod_monitors(client), listing=listing)
    limit = asyncio.Semaphore(config.max_concurrent)

    async def run(key: Any) -> None:
        async with limit:
            with metrics.reconciling():
                outcome = await reconcile(ctx, *key)
        if outcome.wake_after is not None:
            memo.coalescer.trigger_later(key, outcome.wake_after)
        if outcome.missed:  # as their events would have: only Deployments changed is a light trigger
            memo.coalescer.trigger(key, light=progress.light(kind for kind, _ in outcome.missed))

    async def run_refresh(key: Any) -> bool:
        # Not under `limit`: two reads, and a Registry whose pods just became ready does not wait behind the
        # full reconciles of a burst to say so.
        with metrics.reconciling():
            return await refresh(ctx, *key)

    async def run_index(key: Any) -> None:
        async with limit:
            outcome = await reconcile_index(ctx, *key)
        if outcome.missed:
            memo.indexes.trigger(key)

    memo.ctx = ctx
    trimmer = allocator.Trimmer()  # a restart's or a burst's peak is not kept for good
    memo.coalescer = Coalescer(run, config.retry_base_seconds, config.retry_max_seconds, drained=trimmer.request,
                               refresh=run_refresh)
    memo.indexes = Coalescer(run_index, config.retry_base_seconds, config.retry_max_seconds, kind=names.INDEX_KIND,
                             drained=trimmer.request)
    memo.references = References(memo.coalescer.trigger)
    memo.pull_targets = {}  # (namespace, name) -> spec.pullSecrets of the Registries that have one
    memo.accounts = {}  # (namespace, name) -> storage.s3.serviceAccountName of the Registries that name one
    memo.rotations = {}  # (namespace, name) -> value of the rotate-pull-credential annotation last seen
    memo.index_references = References(memo.indexes.trigger)  # password Secrets an index's users refer to
    memo.joins = Joins()
    namespaces = list(config.namespaces) or None
    followers = watches.start(client, _owners(memo), config.namespaces, listing.finished)
    listing.expect(len(followers))
    memo.tasks = [
        asyncio.create_task(resync.forever(ctx.client, namespaces, config.resync_seconds, memo.coalescer.trigger)),
        asyncio.create_task(resync.forever(
            ctx.client, namespaces, config.resync_seconds, memo.indexes.trigger, RegistryIndex)),
        asyncio.create_task(memo.references.forever(ctx.client, config.reference_poll_seconds)),
        asyncio.create_task(memo.index_references.forever(ctx.client, config.reference_poll_seconds)),
        *followers,
    ]


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.tasks:
        task.cancel()
    await memo.coalescer.close()
    await memo.indexes.close()
    await memo.ctx.client.close()


@kopf.on.event(*REGISTRY)
async def registry_changed(
    namespace: str, name: str, type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    spec = None if type == "DELETED" else _parse(name, namespace, body)
    memo.references.track(namespace, name, referenced_secrets(spec) if spec else ())
    if spec is not None and spec.pull_secrets is not None:
        memo.pull_targets[(namespace, name)] = spec.pull_secrets
    else:
        memo.pull_targets.pop((namespace, name), None)
    account = spec.storage.s3.service_account if spec is not None and spec.storage.s3 else None
    if account:
        memo.accounts[(namespace, name)] = account
    else:
        memo.accounts.pop((namespace, name), None)
    indexes = memo.joins.track(namespace, name, spec.auth.index if spec and spec.auth.mode == "token" else None)
    generation = body.metadata.get("generation")
    observed = (body.get("status") or {}).get("observedGeneration")
    deleting = body.metadata.get("deletionTimestamp") is not None  # our finalizer waits for us
    rotation = body.metadata.annotations.get(robot.ROTATE_ANNOTATION)
    rotate = rotation != memo.rotations.get((namespace, name))
    if rotation is None or type == "DELETED":
        memo.rotations.pop((namespace, name), None)
    else:
        memo.rotations[(namespace, name)] = rotation
    if type in (None, "ADDED", "DELETED") or generation != observed or deleting or rotate:  # not our status write
        memo.coalescer.trigger((namespace, name), urgent=True)
        for index in indexes:
            memo.indexes.trigger((namespace, index))
    elif garbage_collection.pending_request(body.metadata.get("annotations"), body.get("status")):
        memo.coalescer.trigger((namespace, name), urgent=True)  # `kubectl annotate ... gc-requested=...`


def _parse(name: str, namespace: str, body: kopf.Body) -> RegistrySpec | None:
    try:
        return parse(name, namespace, dict(body.get("spec") or {}))
    except (ValueError, KeyError, TypeError):
        return None


@kopf.on.event(*INDEX)
async def index_changed(
    namespace: str, name: str, type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    memo.index_references.track(namespace, name, () if type == "DELETED" else _index_references(name, namespace, body))
    generation = body.metadata.get("generation")
    observed = (body.get("status") or {}).get("observedGeneration")
    if type in (None, "ADDED", "DELETED") or generation != observed:  # not our own status write
        memo.indexes.trigger((namespace, name), urgent=True)
        if type is not None:  # kopf's initial listing: every Registry is reconciled anyway
            _trigger_joined(memo, namespace, name)


def _index_references(name: str, namespace: str, body: kopf.Body) -> set[str]:
    try:
        return referenced_secrets(parse_index(name, namespace, dict(body.get("spec") or {})))
    except (ValueError, KeyError, TypeError):
        return set()


async def namespace_changed(name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if type is not None:  # None: kopf's initial listing, when every Registry is reconciled anyway
        for key in pullsecrets.concerned(memo.pull_targets, name):
            memo.coalescer.trigger(key)


def watch_namespaces() -> None:
    """Watch Namespaces (for pull Secrets in new ones): registered only by an operator that may list them, as
    an install scoped to named namespaces may not (a watch kopf keeps retrying on 403 would be all it does)."""
    kopf.on.event("", "v1", "namespaces")(namespace_changed)


def _owners(memo: kopf.Memo) -> list[watches.Watch]:
    """The kinds followed by `watches` rather than kopf (it would keep a memory and a worker per object), each
    with the function that names whom an event of theirs wakes."""
    children = [watches.Watch(kind, lambda type_, meta, kind=kind.__name__: _child_changed(memo, kind, type_, meta),
                              OURS) for kind in FOLLOWED]  # fmt: skip
    return [
        *children,  # filtered by the API server: we never receive other controllers' objects
        watches.Watch(Secret, lambda type_, meta: _secret_changed(memo, type_, meta), {names.LABEL_WATCH: "true"}),
        watches.Watch(ServiceAccount, lambda type_, meta: _service_account_changed(memo, type_, meta)),
    ]


def _service_account_changed(memo: kopf.Memo, type_: str | None, meta: ObjectMeta) -> None:
    if type_ == "ADDED":  # one a pull Secret waits for (it appears just after its namespace), or an S3 pod's
        for key in pullsecrets.concerned(memo.pull_targets, meta.namespace, meta.name):
            memo.coalescer.trigger(key)
        for (namespace, registry), account in memo.accounts.items():
            if namespace == meta.namespace and account == meta.name:
                memo.coalescer.trigger((namespace, registry))


def _trigger_joined(memo: kopf.Memo, namespace: str, index: str) -> None:
    for registry in memo.joins.registries(namespace, index):
        memo.coalescer.trigger((namespace, registry))


def _index_owner(meta: ObjectMeta) -> str | None:
    """The RegistryIndex controlling this child, if one does (else it is a Registry's)."""
    for ref in meta.ownerReferences or ():
        if ref.controller and ref.kind == names.INDEX_KIND:
            return ref.name
    return None


def _echo(memo: kopf.Memo, owner: tuple[str, ...], kind: str, type_: str, meta: ObjectMeta) -> bool:
    """Whether the event only reports a write of the reconcile of `owner` (see `echoes`)."""
    memory = memo.ctx.memories.get(owner)
    return memory is not None and memory.echoes.echo((kind, meta.name), type_, meta.resourceVersion)


def _child_changed(memo: kopf.Memo, kind: str, type_: str | None, meta: ObjectMeta) -> None:
    if type_ is None:  # listed at start, when everything is reconciled anyway
        memo.ctx.listing.listed(kind, meta)
        return
    memo.ctx.listing.changed(meta)
    labels, owner = meta.labels or {}, (meta.annotations or {}).get(names.ANNOTATION_REGISTRY, "")
    if labels.get(names.LABEL_NODE_TRUST_OF) and owner.count("/") == 1:  # a node-trust ConfigMap of ours
        memo.coalescer.trigger(tuple(owner.split("/")))
        return
    registry = labels.get(names.LABEL_INSTANCE)
    if not registry:
        return
    index = _index_owner(meta)
    if index is None:
        if not _echo(memo, (meta.namespace, registry), kind, type_, meta):
            memo.coalescer.trigger((meta.namespace, registry), light=progress.light([kind]))
    elif not _echo(memo, (meta.namespace, index, names.INDEX_KIND), kind, type_, meta):
        memo.indexes.trigger((meta.namespace, index))


def _secret_changed(memo: kopf.Memo, type_: str | None, meta: ObjectMeta) -> None:
    namespace, name = meta.namespace, meta.name
    labels, annotations = meta.labels or {}, meta.annotations or {}
    refs: References = memo.references
    labelled = type_ != "DELETED" and labels.get(names.LABEL_WATCH) == "true"
    refs.watched(namespace, name, labelled)
    memo.index_references.watched(namespace, name, labelled)
    if type_ is None:  # listed at start, when every Registry is reconciled anyway
        memo.ctx.listing.listed("Secret", meta)
        return
    memo.ctx.listing.changed(meta)
    for referring in memo.index_references.registries(namespace, name):
        memo.indexes.trigger((namespace, referring))
    targets = {(namespace, registry) for registry in refs.registries(namespace, name)}
    index = _index_owner(meta)
    if index is not None:  # its signing key or CA: the Registries that joined it trust them
        memo.indexes.trigger((namespace, index))
        targets |= {(namespace, registry) for registry in memo.joins.registries(namespace, index)}
    elif labels.get(names.LABEL_MANAGED_BY) == names.MANAGED_BY and labels.get(names.LABEL_INSTANCE):
        owner_key = (namespace, labels[names.LABEL_INSTANCE])
        if not _echo(memo, owner_key, "Secret", type_, meta):  # (an index's are never: joined ones must hear)
            targets.add(owner_key)
    owner = annotations.get(names.ANNOTATION_REGISTRY, "")
    if labels.get(names.LABEL_PULL_SECRET_OF) and owner.count("/") == 1:  # a pull Secret of ours elsewhere
        targets.add(tuple(owner.split("/")))
    for key in targets:
        memo.coalescer.trigger(key)
