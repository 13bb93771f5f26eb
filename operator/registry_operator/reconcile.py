"""One level-based, idempotent reconcile of one Registry: the pipeline from `architecture.md`.

    read Registry -> spec -> observe -> material -> render -> apply -> conditions -> status (only if changed)

Only `observe`, `apply`, the status write and Events touch the cluster (and `upstream`, a pull-through
cache's upstream, with one bounded request); everything between is pure. Calling this any number of times for
a settled Registry performs reads only.

A failure that may pass (throttling, a server error, the network, a missing permission) raises `Retry` after
status says what failed; the coalescer runs the Registry again with backoff. Bad input (an invalid spec, a
name conflict, an object the API server refuses) is said once in status and then costs no writes.

Material that was decided but could not be stored is remembered for the Registry (by UID) and reused by the
next attempt: a refused write never makes a new CA, certificate, key or password, nor rolls a pod.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.types import PatchType

from . import (
    conditions,
    events,
    garbage_collection,
    index,
    inuse,
    material,
    metrics,
    pki,
    progress,
    pullsecrets,
    redisprobe,
    render,
    robot,
    upstream,
    verified,
)
from .apply import Applied, Key, apply_all, conflicts, delete_all
from .coalesce import Retry
from .config import Config
from .echoes import Echoes
from .kinds import Registry, RegistryIndex
from .names import (
    INDEX_KIND,
    LABEL_PULL_SECRET_OF,
    NODE_TRUST_FINALIZER,
    PULL_SECRETS_FINALIZER,
    ChildNames,
    invalid_name,
    node_trust_name,
    password_key,
)
from .nodetrust import publish as node_trust
from .observe import (
    candidates,
    gc_failure_line,
    gc_usage_message,
    index_candidates,
    joined_index,
    missing_service_account,
    observe,
    observe_index,
    observe_workloads,
    registry_node,
    retention_message,
)
from .render import garbage_collection as gc_render
from .render import retention as retention_render
from .render import token as token_render
from .spec import RegistrySpec, parse, parse_index

log = logging.getLogger(__name__)

Event = tuple[str, str, str]  # (type, reason, message)

# A deleted Registry keeps trying to remove its pull Secrets and node-trust ConfigMap from other namespaces this
# long, then lets go (and says so in the log): a finalizer must never block a deletion forever.
RELEASE_AFTER = dt.timedelta(minutes=5)


@dataclass
class Memory:
    """What one Registry's reconciles carry over in this process: never state the cluster already holds."""

    uid: str
    pending: dict[str, dict[str, bytes]] = field(default_factory=dict)  # Secret -> decided data not yet stored
    unsent: list[Event] = field(default_factory=list)  # Events whose post failed
    refused: dict[Key, tuple[str, material.Problem]] = field(default_factory=dict)  # see Applied.refused
    echoes: Echoes = field(default_factory=Echoes)  # which watch events of children report our own writes
    progress: progress.Progress | None = None  # what `refresh` needs, from the last clean full reconcile


@dataclass
class Context:
    """What every reconcile shares for the life of the operator process."""

    client: AsyncClient
    config: Config = field(default_factory=Config)
    memories: dict[tuple[str, ...], Memory] = field(default_factory=dict)  # (namespace, name[, INDEX_KIND])
    pod_monitors: bool = False  # the cluster serves PodMonitor (monitoring.pod_monitors, asked at startup)
    listing: verified.Listing | None = None  # children listed at start (`verified`); None: read everything
    stamp: str = field(init=False)  # this operator's code and settings (`verified.stamp`)

    def __post_init__(self) -> None:
        self.stamp = verified.stamp(self.config)

    def memory(self, key: tuple[str, ...], uid: str) -> Memory:
        memory = self.memories.get(key)
        if memory is None or memory.uid != uid:  # a new Registry with an old name starts afresh
            memory = self.memories[key] = Memory(uid)
        return memory


@dataclass
class Outcome:
    written: list[Key] = field(default_factory=list)
    deleted: list[Key] = field(default_factory=list)
    status_written: bool = False
    wake_after: float | None = None  # reconcile again after this many seconds even without an event
    missed: frozenset[Key] = frozenset()  # children changed while written: reconcile again (`Echoes.missed`)


def _published(
    spec: RegistrySpec, mat: material.Material, unwatched: Sequence[str], joined: material.Joined | None
) -> dict[str, Any]:
    """What clients need to find and trust the registry, and referenced Secrets that lack the watch label."""
    names = ChildNames(spec.name)
    keys = {user: password_key(user) for user in mat.passwords if password_key(user) != user}
    return {
        "endpoint": f"{names.service}.{spec.namespace}.svc:{spec.service.port}",
        "storage": spec.storage.kind,
        "caSecretName": names.ca if mat.client_ca_pem else None,
        "caConfigMapName": names.ca if mat.client_ca_pem else None,
        "credentialsSecretName": names.passwords if mat.passwords else None,
        "passwordKeys": keys or None,
        "certificateNotAfter": (
            pki.not_after(mat.serving_cert_pem).strftime("%Y-%m-%dT%H:%M:%SZ") if mat.serving_cert_pem else None
        ),
        "tokenRealm": joined.realm if joined else token_render.realm(spec) if spec.auth.mode == "token" else None,
        "index": joined.index if joined else None,
        "unwatchedSecrets": list(unwatched) or None,
        "upstream": spec.proxy.remote_url if spec.proxy else None,
    }


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) from `old` to `new`: a merge patch keeps every key it does not name, so
    keys we no longer publish are nulled explicitly, in nested objects too (`garbageCollection.nextScheduleTime`
    once the schedule is gone): a key left behind would make every later reconcile see a change and write."""
    out: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        before = old.get(key)
        out[key] = merge_patch(before, value) if isinstance(value, dict) and isinstance(before, dict) else value
    return out


async def _write_status(ctx: Context, body: Mapping[str, Any], status: dict[str, Any]) -> bool:
    old = body.get("status") or {}
    if old == status:
        return False
    patch = {"status": merge_patch(old, status)}
    meta = body["metadata"]
    index_ = body.get("kind") == INDEX_KIND
    metrics.API_WRITES.labels(INDEX_KIND if index_ else "Registry", "status").inc()
    await ctx.client.patch(
        (RegistryIndex if index_ else Registry).Status, meta["name"], patch, namespace=meta["namespace"],
        patch_type=PatchType.MERGE,
    )
    return True


def _remember(memory: Memory, desired: list[dict[str, Any]], applied: Applied) -> None:
    """Keep the decided data of every Secret that could not be stored; forget what now is."""
    for obj in desired:
        if obj["kind"] != "Secret":
            continue
        name = obj["metadata"]["name"]
        if ("Secret", name) in applied.failed:
            memory.pending[name] = {k: base64.b64decode(v) for k, v in obj["data"].items()}
        else:
            memory.pending.pop(name, None)


async def reconcile(ctx: Context, namespace: str, name: str) -> Outcome:
    outcome = Outcome()
    key = (namespace, name)
    try:
        body = (await ctx.client.get(Registry, name, namespace=namespace)).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            ctx.memories.pop(key, None)
            metrics.REGISTRIES.forget(namespace, name)
            return outcome  # deleted: garbage collection removes the children
        raise
    if body["metadata"].get("deletionTimestamp"):
        ctx.memories.pop(key, None)
        metrics.REGISTRIES.forget(namespace, name)
        if {PULL_SECRETS_FINALIZER, NODE_TRUST_FINALIZER} & set(body["metadata"].get("finalizers") or ()):
            await _release(ctx, body)
        return outcome
    generation = body["metadata"].get("generation", 1)
    memory = ctx.memory(key, body["metadata"]["uid"])
    memory.progress = None  # kept again only by a clean end
    now = dt.datetime.now(dt.UTC)

    async def blocked(spec: RegistrySpec, problems: list[material.Problem]) -> Outcome:
        """Say why nothing is written (status and Events only, each once) and write nothing else."""
        status = conditions.compute(spec, generation, problems, {}, {}, body.get("status"), now)
        outcome.status_written = await _finish(ctx, memory, body, status)
        return outcome

    try:
        spec = parse(name, namespace, body.get("spec"))
    except (ValueError, KeyError, TypeError) as exc:
        problem = material.Problem("InvalidSpec", f"the spec cannot be used: {exc}")
        return await blocked(parse(name, namespace, {}), [problem])
    bad_name = invalid_name(name, spec.auth.own_token_service)
    if bad_name:
        return await blocked(spec, [material.Problem("InvalidName", f"{bad_name}; nothing is created")])
    if not ctx.config.image_allowed(spec.image):
        return await blocked(spec, [material.Problem(
            "ImageNotAllowed", f"image {spec.image!r} matches none of the operator's allowed images "
            f"({', '.join(ctx.config.allowed_images)}); nothing is created or changed")])

    uid, before = body["metadata"]["uid"], body.get("status") or {}
    annotations = body["metadata"].get("annotations")
    fast = verified.eligible(spec, annotations, before, ctx.pod_monitors)
    folded = await ctx.listing.take(uid) if ctx.listing is not None else None
    if (fast and folded is not None and before.get("observedGeneration") == generation
            and before.get(verified.STATUS_FIELD) == verified.fingerprint(ctx.stamp, uid, generation, folded)):
        metrics.REGISTRIES.record(namespace, name, before)
        log.debug("Registry %s/%s: every child is as last verified", namespace, name)
        return outcome

    joined = None
    if spec.auth.index is not None:
        found = index.join(spec, *await joined_index(ctx.client, spec))
        if isinstance(found, material.Problem):  # nothing written: the registry keeps its last configuration
            return await blocked(spec, [found])
        joined = found
    token_was_on = "tokenRealm" in before and "index" not in before  # it ran a token service of its own
    observed = await observe(ctx.client, spec, token_was_on, ctx.pod_monitors, upstream_was_on="upstream" in before)
    taken = conflicts([(kind, child) for _, kind, child in candidates(spec, False, ctx.pod_monitors)],
                      observed.children, body)
    if taken:  # decided before any material: a Registry stuck here costs no key generation either
        return await blocked(spec, taken)
    secrets = {**observed.secrets, **memory.pending}
    # Key generation and bcrypt are CPU work: keep them off the event loop that serves every Registry.
    pull_rotation = (body["metadata"].get("annotations") or {}).get(robot.ROTATE_ANNOTATION)
    propagation = dt.timedelta(seconds=ctx.config.pull_rotation_seconds)
    mat = await asyncio.to_thread(material.decide, spec, secrets, ctx.config.cluster_domain, now, pull_rotation,
                                  propagation, False, joined)
    names = ChildNames(spec.name)
    gc_job = observed.children.get(("Job", names.gc))
    gc_line = await gc_failure_line(ctx.client, spec) if gc_job and garbage_collection.failed(gc_job) else None
    measured = (garbage_collection.report(await gc_usage_message(ctx.client, spec))
                if gc_job and garbage_collection.ended(gc_job) else None)
    retention_job = observed.children.get(("Job", names.retention))
    retention_said = (await retention_message(ctx.client, spec)
                      if retention_job and garbage_collection.finished(retention_job, now) else None)
    gc = garbage_collection.plan(spec, body, gc_job, now, gc_line, measured, retention_job, retention_said)
    outcome.wake_after = gc.wake_after
    desired = render.desired(gc.effective(spec), mat, body, ctx.config.operator_image, ctx.pod_monitors, joined)
    if gc.job is not None:
        desired.append(await _gc_job(ctx, spec, body, gc.job, desired, observed.children))
    if gc.retention is not None:
        desired += await _retention(ctx, spec, body, gc.retention, mat.client_ca_pem is not None)
    memory.echoes.clear()
    applied = await apply_all(ctx.client, desired, observed.children, body, memory.refused, memory.echoes)
    memory.refused = applied.refused
    _remember(memory, desired, applied)
    outcome.written = applied.written
    if not applied.problems:
        outcome.deleted = await delete_all(ctx.client, render.obsolete(spec), observed.children, body)
    if outcome.written or outcome.deleted:  # said before the status write, which readers may be waiting on
        log.info("Registry %s/%s: applied %s, deleted %s", namespace, name, outcome.written, outcome.deleted)
    published = _published(spec, mat, observed.unwatched, joined)
    pull = await _pull_secrets(ctx, spec, body, mat) if not applied.problems else None
    if mat.robot and mat.robot.retiring and pull is not None and not pull.retry:
        # Every copy carries the current robot credential: the old one may go. Decided on what was just stored.
        just_stored = {o["metadata"]["name"]: {k: base64.b64decode(v) for k, v in o["data"].items()}
                       for o in desired if o["kind"] == "Secret"}
        mat = await asyncio.to_thread(material.decide, spec, {**secrets, **just_stored}, ctx.config.cluster_domain,
                                      now, pull_rotation, propagation, True, joined)
        jobs = [o for o in desired if o["kind"] == "Job"]  # the GC Job does not depend on the robot
        desired = render.desired(
            gc.effective(spec), mat, body, ctx.config.operator_image, ctx.pod_monitors, joined) + jobs
        retired = await apply_all(ctx.client, desired, applied.live, body, memory.refused, memory.echoes)
        _remember(memory, desired, retired)
        applied.written += [k for k in retired.written if k not in applied.written]
        applied.problems += retired.problems
        applied.retry += retired.retry
        log.info("Registry %s/%s: every pull Secret carries the new robot credential, the old one is retired",
                 namespace, name)
    switch = mat.robot.switch_at() if mat.robot else None
    if switch is not None:  # the moment the new robot credential may be handed out
        due = max(0.1, (switch + propagation - now).total_seconds())
        outcome.wake_after = min(due, outcome.wake_after) if outcome.wake_after is not None else due
    trust = await _node_trust(ctx, spec, body, mat, applied.live) if not applied.problems else None
    node_problems = None
    if trust is not None and spec.node_trust:
        published["nodeTrust"] = node_trust.status(spec, ctx.config.node_trust_namespace, trust)
        node_problems = trust.problems
        if trust.recheck:
            due = node_trust.AGENT_RECHECK_SECONDS
            outcome.wake_after = min(due, outcome.wake_after) if outcome.wake_after is not None else due
    elif spec.node_trust:
        node_problems = [material.Problem("RegistryNotApplied", "waiting until the Registry's own objects are stored")]
    pull_problems = None
    if pull is not None and spec.pull_secrets is not None:
        published["pullSecrets"] = pullsecrets.status(spec, pull)
        pull_problems = pull.problems
    elif spec.pull_secrets is not None:
        pull_problems = [material.Problem("RegistryNotApplied", "waiting until the Registry's own objects are stored")]

    upstream_problems = None
    if spec.proxy is not None and mat.upstream is not None:
        found = await upstream.probe(spec.proxy, mat.upstream, spec.version)
        upstream_problems = [found] if found else []

    redis_problems = None
    if spec.redis is not None and (spec.redis.password_ref is None or mat.redis_password is not None):
        found = await redisprobe.probe(spec.redis, mat.redis_password)
        redis_problems = [found] if found else []

    account = await missing_service_account(ctx.client, spec)
    workload_names = [names.deployment] + ([names.token] if spec.auth.own_token_service else [])
    workloads = {n: applied.live.get(("Deployment", n)) for n in workload_names}
    problems = [*mat.problems, *applied.problems, *([account] if account else [])]
    retrying = bool(applied.retry)

    def status_of(live: Mapping[str, Any], previous: Mapping[str, Any] | None, at: dt.datetime) -> dict[str, Any]:
        # Kept by `progress` for the Registry's life in this process: it must hold only these small inputs (not
        # `applied` or `observed`, with every child's whole body).
        return conditions.compute(
            spec, generation, problems, live, published, previous, at, retrying=retrying,
            pull_problems=pull_problems, upstream_problems=upstream_problems, node_problems=node_problems,
            redis_problems=redis_problems,
        )

    status = status_of(workloads, body.get("status"), now)
    if gc.status is not None:
        status["garbageCollection"] = gc.status
    used = garbage_collection.usage((body.get("status") or {}).get("usage"), measured,
                                    gc.status.get("lastEndTime") if gc.delete_job and gc.status else None)
    if used is not None:
        status["usage"] = used
    if fast and not applied.retry and not applied.problems:
        verified_now = {**observed.children, **applied.live, **{k: None for k in outcome.deleted}}
        status[verified.STATUS_FIELD] = verified.fingerprint(
            ctx.stamp, uid, generation, verified.combine(verified_now, uid))
        extra = {k: status[k] for k in ("garbageCollection", "usage") if k in status}
        memory.progress = progress.keep(body, verified_now, desired, workload_names,
                                        lambda live, previous, at: {**status_of(live, previous, at), **extra})
        if verified.STATUS_FIELD not in before and {**before, verified.STATUS_FIELD: None} == {
                **status, verified.STATUS_FIELD: None}:
            # Written alone only over an earlier one: a CRD that prunes the field (an operator upgraded before
            # its CRD) must never cost a write per reconcile. It goes along with the next change of status.
            del status[verified.STATUS_FIELD]
    stored = [r for r in mat.rotations if ("Secret", r.secret) in applied.written]
    for rotation in stored:
        log.info("Registry %s/%s: %s", namespace, name, rotation.message)
    gc_events = garbage_collection.events((body.get("status") or {}).get("garbageCollection"), gc.status)
    outcome.status_written = await _finish(
        ctx, memory, body, status, [*gc_events, *(("Normal", r.reason, r.message) for r in stored)])
    if gc.status and any(reason in garbage_collection.ENDED for _, reason, _ in gc_events):
        metrics.gc_ended(gc.status["lastResult"], gc.status.get("lastBytesFreed", 0))  # stored: said once
    retention_children = [("batch/v1", "Job", names.retention), ("v1", "ConfigMap", names.retention)]
    if gc.delete_job and not applied.problems:  # its result is in status now
        outcome.deleted += await delete_all(ctx.client, [("batch/v1", "Job", names.gc), *retention_children],
                                            observed.children, body)
    elif gc.delete_retention and not applied.problems:
        outcome.deleted += await delete_all(ctx.client, retention_children, observed.children, body)
    log.debug("Registry %s/%s reconciled: %d applied, %d deleted, status %s", namespace, name,
              len(outcome.written), len(outcome.deleted), "written" if outcome.status_written else "unchanged")
    if applied.retry:
        raise Retry("; ".join(applied.retry), next(p.reason for p in applied.problems if p.message in applied.retry))
    if pull is not None and pull.retry:
        raise Retry("; ".join(pull.retry), "PullSecretWriteFailed")
    if trust is not None and trust.retry:
        raise Retry("; ".join(trust.retry), "NodeTrustWriteFailed")
    outcome.missed = frozenset(memory.echoes.missed)
    return outcome


async def refresh(ctx: Context, namespace: str, name: str) -> bool:
    """The Registry's status from its Deployments alone, when only their progress was reported (`progress`):
    two reads instead of a dozen, and no material, rendering or comparing. False: a full reconcile must run."""
    memory = ctx.memories.get((namespace, name))
    kept = memory.progress if memory is not None else None
    if memory is None or kept is None:
        return False
    try:
        body, live = await asyncio.gather(ctx.client.get(Registry, name, namespace=namespace),
                                          observe_workloads(ctx.client, namespace, list(kept.workloads)))
    except ApiError as exc:
        if exc.status.code == 404:
            return False  # deleted: the full reconcile forgets it
        raise
    registry = body.to_dict()
    if registry["metadata"]["uid"] != memory.uid or registry["metadata"].get("deletionTimestamp"):
        return False
    status = progress.status(kept, registry, live, ctx.stamp, dt.datetime.now(dt.UTC))
    if status is None:
        log.debug("Registry %s/%s: more than its Deployments' progress changed, reconciling in full", namespace, name)
        return False
    if progress.settled(live):
        memory.progress = None  # see `progress`: nothing is kept for a settled Registry
    written = await _finish(ctx, memory, registry, status)
    log.debug("Registry %s/%s: status refreshed from its Deployments, %s", namespace, name,
              "written" if written else "unchanged")
    return True


async def _gc_job(
    ctx: Context,
    spec: RegistrySpec,
    body: Mapping[str, Any],
    run: tuple[str | None, str | None],
    desired: Sequence[Mapping[str, Any]],
    children: Mapping[Key, Any],
) -> dict[str, Any]:
    """The GC Job to create or resume: suspended until every registry pod serves the read-only config, then
    (with a ReadWriteOnce claim) pinned to the node holding the volume."""
    names = ChildNames(spec.name)
    deployment = next(o for o in desired if o["kind"] == "Deployment" and o["metadata"]["name"] == names.deployment)
    ready = garbage_collection.serves(deployment, children.get(("Deployment", names.deployment)))
    node = await registry_node(ctx.client, spec) if ready and not spec.storage.shared else None
    resume = ready and (spec.storage.shared or node is not None)
    return gc_render.job(spec, body, *run, suspend=not resume, node=node, operator_image=ctx.config.operator_image)


async def _retention(
    ctx: Context, spec: RegistrySpec, body: Mapping[str, Any], run: tuple[str | None, str | None], ca_bundle: bool
) -> list[dict[str, Any]]:
    """The retention Job of a collection and its ConfigMap, with the image references every workload in the
    cluster holds now (listed once per collection, never at rest)."""
    namespaces = ("*",) if ctx.config.sees_all_namespaces else ctx.config.namespaces
    references = await inuse.workload_images(ctx.client, namespaces)
    guard = inuse.protected(references, pullsecrets.endpoints(spec, ctx.config.cluster_domain))
    log.info("Registry %s/%s: retention before garbage collection; %d tag(s) and %d digest(s) in use are kept",
             spec.namespace, spec.name, len(guard.tags), len(guard.digests))
    return [retention_render.config_map(spec, body, guard),
            retention_render.job(spec, body, *run, operator_image=ctx.config.operator_image,
                                 ca_bundle=ca_bundle)]


async def _set_finalizer(ctx: Context, body: dict[str, Any], finalizer: str, present: bool) -> None:
    """Add or remove one of our finalizers, leaving others'. The resourceVersion makes it a read-modify-write:
    a concurrent change fails the patch (and the coalescer retries) instead of dropping someone's finalizer.
    `body` takes the patched metadata, so a second finalizer in the same reconcile builds on this one."""
    meta = body["metadata"]
    others = [f for f in meta.get("finalizers") or () if f != finalizer]
    patch = {"metadata": {"finalizers": others + ([finalizer] if present else []),
                          "resourceVersion": meta["resourceVersion"]}}
    metrics.API_WRITES.labels("Registry", "patch").inc()
    patched = await ctx.client.patch(Registry, meta["name"], patch, namespace=meta["namespace"],
                                     patch_type=PatchType.MERGE)
    meta["finalizers"] = list(patched.metadata.finalizers or [])
    meta["resourceVersion"] = patched.metadata.resourceVersion


async def _pull_secrets(
    ctx: Context, spec: RegistrySpec, body: dict[str, Any], mat: material.Material
) -> pullsecrets.Synced | None:
    """Pull Secrets in other namespaces; None when the spec asks for none and none are left to remove.

    The finalizer goes on before the first Secret is created elsewhere (owner references cannot reach there),
    and comes off once a spec without pullSecrets has removed them all."""
    meta = body["metadata"]
    held = PULL_SECRETS_FINALIZER in (meta.get("finalizers") or ())
    if spec.pull_secrets is None:
        if not held:
            return None
        synced = await pullsecrets.remove_all(ctx.client, spec.name, spec.namespace, meta["uid"])
        if not synced.retry:
            await _set_finalizer(ctx, body, PULL_SECRETS_FINALIZER, present=False)
    else:
        async def hold() -> None:
            if not held:
                await _set_finalizer(ctx, body, PULL_SECRETS_FINALIZER, present=True)

        synced = await pullsecrets.sync(ctx.client, spec, meta["uid"], mat, ctx.config.cluster_domain, hold,
                                        ctx.config.pull_secrets_allowed)
    if synced.written:
        log.info("Registry %s/%s: pull Secrets: %s", spec.namespace, spec.name, ", ".join(synced.written))
    return synced


async def _node_trust(
    ctx: Context, spec: RegistrySpec, body: dict[str, Any], mat: material.Material, live: Mapping[Key, Any]
) -> node_trust.Published | None:
    """The node-trust ConfigMap in the agent's namespace; None when the spec asks for none and none is left.

    Its finalizer goes on before the ConfigMap is first created, and comes off once it is gone again."""
    meta = body["metadata"]
    namespace = ctx.config.node_trust_namespace
    held = NODE_TRUST_FINALIZER in (meta.get("finalizers") or ())
    if not (spec.node_trust and spec.tls_enabled):
        if not held and not spec.node_trust:
            return None
        published = await node_trust.remove_all(ctx.client, namespace, meta["uid"]) if held else node_trust.Published()
        if held and not published.retry:
            await _set_finalizer(ctx, body, NODE_TRUST_FINALIZER, present=False)
        if spec.node_trust:  # the schema refuses this; a CRD installed without its rules does not
            published.problems.append(material.Problem("NodeTrustNeedsTLS", "nodeTrust needs TLS: tls.mode is "
                                                                            "Disabled, nodes are told nothing"))
    else:
        async def hold() -> None:
            if not held:
                await _set_finalizer(ctx, body, NODE_TRUST_FINALIZER, present=True)

        hosts = node_trust.hosts(spec, ctx.config.cluster_domain, live.get(("Service", ChildNames(spec.name).service)))
        published = await node_trust.sync(ctx.client, spec, meta["uid"], namespace, mat.client_ca_pem, hosts, hold)
    if published.written:
        log.info("Registry %s/%s: node trust: %s", spec.namespace, spec.name, ", ".join(published.written))
    return published


async def _release(ctx: Context, body: dict[str, Any]) -> None:
    """A deleted Registry: remove its pull Secrets and entries everywhere and its node-trust ConfigMap, then its
    finalizers. Failures retry until `RELEASE_AFTER` has passed since the deletion; then the finalizers go
    anyway, said in the log."""
    meta = body["metadata"]
    held = set(meta.get("finalizers") or ())
    retry: list[str] = []
    left: list[str] = []  # what to remove by hand if we let go
    if PULL_SECRETS_FINALIZER in held:
        try:
            synced = await pullsecrets.remove_all(ctx.client, meta["name"], meta["namespace"], meta["uid"])
        except (ApiError, httpx2.HTTPError) as exc:  # even listing them fails: counts against the same bound
            synced = pullsecrets.Synced(retry=[f"listing pull Secrets: {type(exc).__name__}"])
        if synced.written:
            log.info("Registry %s/%s: deleted, pull Secrets: %s", meta["namespace"], meta["name"],
                     ", ".join(synced.written))
        if synced.retry:
            retry += synced.retry
            left.append(f"Secrets labelled {LABEL_PULL_SECRET_OF}={meta['uid']}")
    if NODE_TRUST_FINALIZER in held:
        namespace = ctx.config.node_trust_namespace
        published = await node_trust.remove_all(ctx.client, namespace, meta["uid"])
        if published.written:
            log.info("Registry %s/%s: deleted, node trust: %s", meta["namespace"], meta["name"],
                     ", ".join(published.written))
        if published.retry:
            retry += published.retry
            left.append(f"ConfigMap {namespace}/{node_trust_name(meta['name'], meta['namespace'])}")
    if retry:
        deleted = meta["deletionTimestamp"]
        if isinstance(deleted, str):
            deleted = dt.datetime.fromisoformat(deleted.replace("Z", "+00:00"))
        since = dt.datetime.now(dt.UTC) - deleted
        if since < RELEASE_AFTER:
            raise Retry("; ".join(retry), "CleanupFailed")
        log.warning("Registry %s/%s: deleted %d s ago and what it keeps elsewhere still cannot be removed (%s); "
                    "letting go: remove %s by hand", meta["namespace"], meta["name"],
                    int(since.total_seconds()), "; ".join(retry), " and ".join(left))
    for finalizer in (PULL_SECRETS_FINALIZER, NODE_TRUST_FINALIZER):
        if finalizer in held:
            await _set_finalizer(ctx, body, finalizer, present=False)


async def reconcile_index(ctx: Context, namespace: str, name: str) -> Outcome:
    """The same pipeline for a RegistryIndex: its token service, for the Registries of its namespace that
    joined it (listed here, so the set is never stale), rendered by the Registry's own token-service code."""
    outcome = Outcome()
    key = (namespace, name, INDEX_KIND)
    try:
        body = (await ctx.client.get(RegistryIndex, name, namespace=namespace)).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            ctx.memories.pop(key, None)
            return outcome
        raise
    if body["metadata"].get("deletionTimestamp"):
        ctx.memories.pop(key, None)
        return outcome
    generation = body["metadata"].get("generation", 1)
    memory = ctx.memory(key, body["metadata"]["uid"])
    now = dt.datetime.now(dt.UTC)
    try:
        spec = parse_index(name, namespace, body.get("spec"))
    except (ValueError, KeyError, TypeError) as exc:
        problem = material.Problem("InvalidSpec", f"the spec cannot be used: {exc}")
        status = conditions.compute_index(
            parse_index(name, namespace, {}), generation, [problem], None, {}, body.get("status"), now)
        outcome.status_written = await _finish(ctx, memory, body, status)
        return outcome
    registries = [r.to_dict() async for r in ctx.client.list(Registry, namespace=namespace)]
    joined = index.members(name, namespace, registries)
    observed = await observe_index(ctx.client, spec)
    taken = conflicts([(kind, child) for _, kind, child in index_candidates(spec)], observed.children, body)
    if taken:
        status = conditions.compute_index(spec, generation, taken, None, {}, body.get("status"), now)
        outcome.status_written = await _finish(ctx, memory, body, status)
        return outcome
    secrets = {**observed.secrets, **memory.pending}
    mat = await asyncio.to_thread(material.decide_index, spec, secrets, ctx.config.cluster_domain, now)
    desired = render.index_desired(spec, mat, body, ctx.config.operator_image, sorted(joined))
    memory.echoes.clear()
    applied = await apply_all(ctx.client, desired, observed.children, body, memory.refused, memory.echoes)
    memory.refused = applied.refused
    _remember(memory, desired, applied)
    outcome.written = applied.written
    if outcome.written:
        log.info("RegistryIndex %s/%s: applied %s", namespace, name, outcome.written)
    status = conditions.compute_index(
        spec, generation, [*mat.problems, *applied.problems], applied.live.get(("Deployment", ChildNames(name).token)),
        index.published(spec, mat.passwords, joined, observed.unwatched), body.get("status"), now,
        retrying=bool(applied.retry))
    stored = [r for r in mat.rotations if ("Secret", r.secret) in applied.written]
    for rotation in stored:
        log.info("RegistryIndex %s/%s: %s", namespace, name, rotation.message)
    outcome.status_written = await _finish(
        ctx, memory, body, status, [("Normal", r.reason, r.message) for r in stored])
    log.debug("RegistryIndex %s/%s reconciled: %d applied, status %s", namespace, name, len(outcome.written),
              "written" if outcome.status_written else "unchanged")
    if applied.retry:
        raise Retry("; ".join(applied.retry))
    outcome.missed = frozenset(memory.echoes.missed)
    return outcome


async def _finish(
    ctx: Context, memory: Memory, body: Mapping[str, Any], status: dict[str, Any], extra: Sequence[Event] = ()
) -> bool:
    """Write status if it changed, then post the Events of its transitions (and any not posted before)."""
    meta = body["metadata"]
    if body.get("kind") != INDEX_KIND:  # the per-Registry metrics describe Registries only
        metrics.REGISTRIES.record(meta["namespace"], meta["name"], status)  # what is true now, stored or not
    written = await _write_status(ctx, body, status)
    for type_, reason, message in conditions.transitions(body.get("status"), status):
        log.log(logging.WARNING if type_ == "Warning" else logging.INFO,
                "%s %s/%s: %s: %s", body.get("kind") or "Registry", meta["namespace"], meta["name"], reason, message)
        memory.unsent.append((type_, reason, message))
    memory.unsent.extend(extra)
    unsent, memory.unsent = memory.unsent, []
    # At once: a new Registry's first reconcile says two or three things, and each one in turn cost a round trip
    # before its Deployment's progress could be reported.
    posted = await asyncio.gather(*(events.post(ctx.client, body, *event) for event in unsent))
    memory.unsent += [event for event, ok in zip(unsent, posted, strict=True) if not ok]
    if memory.unsent:
        raise Retry(f"{len(memory.unsent)} Event(s) could not be posted", "EventNotPosted")
    return written
