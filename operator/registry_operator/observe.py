"""Reading what exists: the Registry's children and every Secret its spec refers to.

All reads of one reconcile happen here, concurrently, by name (a GET is cheap and needs no cache; a missing
object is simply None). The rest of the pipeline works on the plain dicts this returns.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Pod, ServiceAccount

from .kinds import RegistryIndex, resource
from .material import Problem, Secrets
from .names import COMPONENT_GC, COMPONENT_REGISTRY, COMPONENT_RETENTION, LABEL_WATCH, ChildNames, selector
from .render.garbage_collection import USAGE_CONTAINER
from .spec import IndexSpec, RegistrySpec

GC_LINE_LIMIT = 300  # of a failed GC's last log line, in status and its Event

Obj = dict[str, Any]
Key = tuple[str, str]


@dataclass(frozen=True)
class Observed:
    children: Mapping[Key, Obj | None]  # (kind, name) -> live object, for every child this spec may have
    secrets: Secrets  # name -> decoded data of our Secrets and the referenced ones, for material decisions
    unwatched: tuple[str, ...] = ()  # referenced Secrets without the watch label: noticed by polling only


def referenced_secrets(spec: RegistrySpec | IndexSpec) -> set[str]:
    """Secrets the user's spec names (not ours): password Secrets, a user-supplied TLS Secret, the S3
    credentials and the Redis password's."""
    refs = {u.password_ref.name for u in spec.auth.users if u.password_ref}
    if isinstance(spec, RegistrySpec) and spec.redis and spec.redis.password_ref:
        refs.add(spec.redis.password_ref.name)
    if spec.tls.mode == "Secret" and spec.tls.secret_name:
        refs.add(spec.tls.secret_name)
    if isinstance(spec, RegistrySpec) and spec.proxy is not None:
        refs |= {name for name in (spec.proxy.credentials_secret, spec.proxy.ca_secret) if name}
    if isinstance(spec, RegistrySpec) and spec.storage.s3 and spec.storage.s3.credentials:
        refs.add(spec.storage.s3.credentials.name)
    return refs


def candidates(
    spec: RegistrySpec, token_was_on: bool, pod_monitor: bool = False, upstream_was_on: bool = False
) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of every child this spec can render (to compare before applying) and of the
    token service's workload and a former cache's upstream Secret while they may still exist (to delete them).
    Tests check that every rendered child is among these. `pod_monitor`: the cluster serves PodMonitors (see
    render.desired)."""
    n = ChildNames(spec.name)
    token = spec.auth.own_token_service
    secrets = {n.http_secret}
    if spec.auth.mode != "none":
        secrets.add(n.htpasswd)
    if any(u.password_ref is None for u in spec.auth.users):
        secrets.add(n.passwords)
    if spec.tls_enabled:
        secrets |= {n.ca, n.tls}
    if spec.tls.mode == "SelfSigned" or (token and spec.tls_enabled):
        secrets.add(n.ca_key)
    if token:
        secrets |= {n.token_signing, n.token_tls}
    if spec.proxy is not None or upstream_was_on:
        secrets.add(n.upstream)
    out = [("v1", "Secret", name) for name in sorted(secrets)]
    out += [("v1", "ConfigMap", n.config), ("apps/v1", "Deployment", n.deployment), ("v1", "Service", n.service)]
    if spec.tls_enabled:
        out.append(("v1", "ConfigMap", n.ca))
    # Policies are observed whether or not they are wanted, so that a disabled one can be deleted.
    out.append(("networking.k8s.io/v1", "NetworkPolicy", n.deployment))
    if token or token_was_on:
        out += [("apps/v1", "Deployment", n.token), ("v1", "Service", n.token), ("v1", "ConfigMap", n.token),
                ("networking.k8s.io/v1", "NetworkPolicy", n.token)]
    if spec.storage.claim is not None:
        out.append(("v1", "PersistentVolumeClaim", n.claim))
    if spec.storage.collectable:
        out += [("batch/v1", "Job", n.gc), ("batch/v1", "Job", n.retention), ("v1", "ConfigMap", n.retention)]
    if spec.storage.shared:  # more than one replica: disruption budgets (render/disruption)
        out += [("policy/v1", "PodDisruptionBudget", n.deployment), ("policy/v1", "PodDisruptionBudget", n.token)]
    if pod_monitor:
        out.append(("monitoring.coreos.com/v1", "PodMonitor", n.pod_monitor))
    return out


def index_candidates(spec: IndexSpec) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of every child a RegistryIndex can render (see `candidates`)."""
    n = ChildNames(spec.name)
    secrets = {n.http_secret, n.htpasswd, n.ca, n.ca_key, n.token_signing, n.token_tls}
    if any(u.password_ref is None for u in spec.auth.users):
        secrets.add(n.passwords)
    out = [("v1", "Secret", name) for name in sorted(secrets)]
    return out + [("v1", "ConfigMap", n.ca), ("v1", "ConfigMap", n.token), ("apps/v1", "Deployment", n.token),
                  ("v1", "Service", n.token), ("networking.k8s.io/v1", "NetworkPolicy", n.token)]


async def _get(client: AsyncClient, api_version: str, kind: str, name: str, namespace: str) -> Obj | None:
    try:
        obj = await client.get(resource(api_version, kind), name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    return obj.to_dict()


async def observe_workloads(client: AsyncClient, namespace: str, names: list[str]) -> dict[str, Obj | None]:
    """The Deployments named, read at once (None: missing): all that `progress` needs."""
    found = await asyncio.gather(*(_get(client, "apps/v1", "Deployment", name, namespace) for name in names))
    return dict(zip(names, found, strict=True))


def _labels(obj: Obj) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


async def registry_node(client: AsyncClient, spec: RegistrySpec) -> str | None:
    """The node a running registry pod is on (where a ReadWriteOnce claim is attached), or None.

    Read only while a garbage collection waits to start, the one time the node matters."""
    async for pod in client.list(Pod, namespace=spec.namespace, labels=selector(spec.name, COMPONENT_REGISTRY)):
        if pod.spec and pod.spec.nodeName and pod.status and pod.status.phase == "Running":
            return pod.spec.nodeName
    return None


async def gc_failure_line(client: AsyncClient, spec: RegistrySpec) -> str | None:
    """The last line a failed GC Job's container wrote (its termination message: the Job renders
    `FallbackToLogsOnError`), or None. Read only while a failed Job waits for its result to reach status, so
    the status says why instead of only the Job's `BackoffLimitExceeded`."""
    async for pod in client.list(Pod, namespace=spec.namespace, labels=selector(spec.name, COMPONENT_GC)):
        status = pod.status
        # With spec.redis, garbage-collect is an init container and the cache flush the container.
        for container in [*((status.initContainerStatuses or []) if status else []),
                          *((status.containerStatuses or []) if status else [])]:
            ended = container.state.terminated if container.state else None
            lines = [line for line in ((ended.message or "") if ended else "").splitlines() if line.strip()]
            if ended and ended.exitCode and lines:
                return lines[-1].strip()[:GC_LINE_LIMIT]
    return None


async def gc_usage_message(client: AsyncClient, spec: RegistrySpec) -> str | None:
    """The termination message of the GC Job's `usage` container (garbage_collection.report reads it), or
    None. Read only while an ended Job waits for its result to reach status."""
    async for pod in client.list(Pod, namespace=spec.namespace, labels=selector(spec.name, COMPONENT_GC)):
        for container in (pod.status.containerStatuses or []) if pod.status else []:
            ended = container.state.terminated if container.state else None
            if container.name == USAGE_CONTAINER and ended and ended.message:
                return ended.message
    return None


async def retention_message(client: AsyncClient, spec: RegistrySpec) -> str | None:
    """What a finished retention Job's container said last: prune's summary (its termination message) or, for
    a failure, its last log line (`FallbackToLogsOnError`). Read only while the finished Job exists."""
    async for pod in client.list(Pod, namespace=spec.namespace, labels=selector(spec.name, COMPONENT_RETENTION)):
        for container in (pod.status.containerStatuses or []) if pod.status else []:
            ended = container.state.terminated if container.state else None
            if ended and ended.message:  # the kubelet keeps at most 4 KiB of it
                return ended.message
    return None


async def missing_service_account(client: AsyncClient, spec: RegistrySpec) -> Problem | None:
    """A Problem when storage.s3.serviceAccountName names no ServiceAccount: the ReplicaSet controller then
    creates no pod at all, and the rollout would wait forever without saying why."""
    account = spec.storage.s3.service_account if spec.storage.s3 else None
    if account is None:
        return None
    try:
        await client.get(ServiceAccount, account, namespace=spec.namespace)
        return None
    except ApiError as exc:
        if exc.status.code != 404:
            raise
    return Problem("ServiceAccountNotFound", f"ServiceAccount {account!r} (storage.s3.serviceAccountName) does not "
                                             "exist in this namespace: no registry pod can be created until it does")


def decode(secret: Obj) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


async def observe(
    client: AsyncClient, spec: RegistrySpec, token_was_on: bool, pod_monitor: bool = False,
    upstream_was_on: bool = False,
) -> Observed:
    """Everything this reconcile reads; `token_was_on`: the last status published a token realm;
    `upstream_was_on`: it published an upstream (the Registry was a pull-through cache)."""
    return await _observe(client, spec, candidates(spec, token_was_on, pod_monitor, upstream_was_on))


async def observe_index(client: AsyncClient, spec: IndexSpec) -> Observed:
    """Everything a RegistryIndex's reconcile reads about its own children and password Secrets."""
    return await _observe(client, spec, index_candidates(spec))


async def joined_index(client: AsyncClient, spec: RegistrySpec) -> tuple[Obj | None, Secrets]:
    """The RegistryIndex a Registry joined (None: missing) and its Secrets the Registry needs (see `index`)."""
    assert spec.auth.index is not None
    n = ChildNames(spec.auth.index)
    if spec.auth.index_namespace not in (None, spec.namespace):
        return None, {}  # never read across namespaces: `index.join` says why
    index, *found = await asyncio.gather(
        _get_index(client, spec.auth.index, spec.namespace),
        *(_get(client, "v1", "Secret", name, spec.namespace) for name in (n.token_signing, n.ca)))
    # Only the public bundles: the index's signing Secret also holds its private key, which a Registry never needs.
    return index, {name: {k: v for k, v in decode(obj).items() if k == "ca.crt"} if obj else None
                   for name, obj in zip((n.token_signing, n.ca), found, strict=True)}


async def _get_index(client: AsyncClient, name: str, namespace: str) -> Obj | None:
    try:
        return (await client.get(RegistryIndex, name, namespace=namespace)).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


async def _observe(client: AsyncClient, spec: RegistrySpec | IndexSpec, wanted: list[tuple[str, str, str]]) -> Observed:
    refs = sorted(referenced_secrets(spec) - {name for _, kind, name in wanted if kind == "Secret"})
    wanted_refs = [("v1", "Secret", name) for name in refs]
    found = await asyncio.gather(
        *(_get(client, av, kind, name, spec.namespace) for av, kind, name in [*wanted, *wanted_refs]))
    children = {(kind, name): obj for (_, kind, name), obj in zip(wanted, found, strict=False)}
    everything = list(zip([*wanted, *wanted_refs], found, strict=True))
    secrets = {name: decode(obj) if obj else None for (_, kind, name), obj in everything if kind == "Secret"}
    refs = referenced_secrets(spec)
    unwatched = tuple(sorted(
        name for (_, kind, name), obj in everything
        if kind == "Secret" and name in refs and obj and _labels(obj).get(LABEL_WATCH) != "true"
    ))
    return Observed(children=children, secrets=secrets, unwatched=unwatched)
