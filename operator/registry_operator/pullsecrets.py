"""Image pull Secrets where workloads are: a `kubernetes.io/dockerconfigjson` Secret (plus `ca.crt`) in every
namespace `spec.pullSecrets` selects, and its name in the `imagePullSecrets` of the ServiceAccounts it names.

Why here and not in `render`/`apply`: these objects live in other namespaces, so they cannot carry an owner
reference (garbage collection would never delete them, and a finalizer must), their set depends on which
namespaces exist, and ServiceAccounts belong to others: we only ever append or remove our own entry, never
rewrite the list. Ownership is the label `LABEL_PULL_SECRET_OF` holding the Registry's UID: an object without
it is never written or deleted, whatever its name.

The credential is the robot's current one (`robot`, decided in `material`): in token mode a rule lets it pull
every repository and nothing else; htpasswd has no per-action rules, so there it can push too.

Everything that decides is pure (`endpoints`, `docker_config`, `matches`, `wanted`, `secret`, `*_ops`);
`sync` and `remove_all` do the I/O, and a settled Registry costs them reads only.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Namespace, Secret, ServiceAccount
from lightkube.types import PatchType

from . import metrics
from .apply import refused_for_good, up_to_date, with_intent_hash
from .material import Material, Problem
from .names import (
    ANNOTATION_REGISTRY,
    FIELD_MANAGER,
    LABEL_MANAGED_BY,
    LABEL_PULL_SECRET_OF,
    LABEL_WATCH,
    MANAGED_BY,
    pull_secret_name,
)
from .render.common import b64
from .robot import Credential
from .spec import PullSecrets, RegistrySpec

Obj = dict[str, Any]
NAMES_SHOWN = 10  # status lists the namespaces by name up to this many, else only counts them


def endpoints(spec: RegistrySpec, cluster_domain: str, node_port: int | None = None) -> list[str]:
    """Every host:port a workload may pull from: the Service's DNS names, and the certificate's extra names
    and addresses on the Service port and, when published, on the NodePort (`node_port`: the one the API
    server allocated, when the spec names none)."""
    port = spec.service.port
    service = f"{spec.name}.{spec.namespace}.svc"
    out = [f"{service}:{port}", f"{service}.{cluster_domain}:{port}"]
    node_port = spec.service.node_port or node_port
    ports = [port] + ([node_port] if node_port and spec.service.type != "ClusterIP" else [])
    for host in (*spec.tls.dns_names, *spec.tls.ip_addresses):
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address
        out += [f"{shown}:{p}" for p in ports]
    return list(dict.fromkeys(out))


def docker_config(hosts: Iterable[str], credential: Credential | None) -> bytes:
    """`.dockerconfigjson` for `hosts` with the robot's credential (none when the Registry has no auth)."""
    entry = {"auth": b64(f"{credential.user}:{credential.password}")} if credential is not None else {}
    return json.dumps({"auths": {host: entry for host in hosts}}, sort_keys=True).encode()


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a Kubernetes LabelSelector selects `labels` (an empty selector selects everything)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], expr.get("values") or ()
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }.get(op, False)
        if not ok:
            return False
    return True


def wanted(
    ps: PullSecrets, namespaces: Sequence[Obj], allowed: Callable[[str], bool] = lambda _: True
) -> tuple[list[str], list[Problem]]:
    """(namespaces that get the Secret, problems): named ones that exist plus those the selector selects, if
    the operator's settings allow them; namespaces being deleted are left alone (nothing can be created there)."""
    live = {ns["metadata"]["name"]: ns for ns in namespaces}
    problems = []
    missing = [n for n in ps.namespaces if n not in live]
    if missing:
        problems.append(Problem("NamespaceNotFound", f"pullSecrets.namespaces names {', '.join(missing)}, "
                                                     "which do not exist (yet)"))
    selected = [
        name for name, ns in sorted(live.items())
        if (name in ps.namespaces or (ps.selector is not None and matches(ps.selector, _labels(ns))))
        and (ns.get("status") or {}).get("phase") != "Terminating"
    ]
    refused = [name for name in selected if not allowed(name)]
    if refused:
        shown = ", ".join(refused[:NAMES_SHOWN]) + (" and more" if len(refused) > NAMES_SHOWN else "")
        problems.append(Problem("NamespaceNotAllowed", f"pull Secrets may not go to {shown} "
                                                       "(REGISTRY_OPERATOR_PULL_SECRET_NAMESPACES)"))
    if not selected and not missing:
        problems.append(Problem("NoNamespaceSelected", "pullSecrets selects no namespace"))
    return [name for name in selected if name not in refused], problems


def concerned(
    targets: Mapping[tuple[str, str], PullSecrets], namespace: str, account: str | None = None
) -> list[tuple[str, str]]:
    """Registries a change of Namespace `namespace` (or a new ServiceAccount `account` there) may concern:
    those naming it, and those with a selector (its labels may have started or stopped matching)."""
    return [key for key, ps in targets.items()
            if (namespace in ps.namespaces or ps.selector is not None)
            and (account is None or account in ps.service_accounts)]


def secret(spec: RegistrySpec, uid: str, namespace: str, mat: Material, cluster_domain: str) -> Obj:
    credential = mat.robot.current if mat.robot else None
    data = {".dockerconfigjson": docker_config(endpoints(spec, cluster_domain), credential)}
    if mat.client_ca_pem:
        data["ca.crt"] = mat.client_ca_pem
    return with_intent_hash({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": pull_secret_name(spec.name, spec.namespace),
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_PULL_SECRET_OF: uid, LABEL_WATCH: "true"},
            "annotations": {ANNOTATION_REGISTRY: f"{spec.namespace}/{spec.name}"},
        },
        "type": "kubernetes.io/dockerconfigjson",
        "data": {k: b64(v) for k, v in data.items()},
    })


def append_ops(account: Obj, name: str) -> list[Obj] | None:
    """JSON patch appending `name` to the account's imagePullSecrets, None when it is there. The resourceVersion
    test makes it a read-modify-write: a concurrent change fails the patch instead of duplicating the entry."""
    entries = account.get("imagePullSecrets")
    if any(e.get("name") == name for e in entries or ()):
        return None
    test = {"op": "test", "path": "/metadata/resourceVersion", "value": account["metadata"]["resourceVersion"]}
    if entries is None:
        return [test, {"op": "add", "path": "/imagePullSecrets", "value": [{"name": name}]}]
    return [test, {"op": "add", "path": "/imagePullSecrets/-", "value": {"name": name}}]


def remove_ops(account: Obj, name: str) -> list[Obj] | None:
    """JSON patch removing only our entries (from the end, so indexes stay valid), None when there are none."""
    indexes = [i for i, e in enumerate(account.get("imagePullSecrets") or ()) if e.get("name") == name]
    if not indexes:
        return None
    test = {"op": "test", "path": "/metadata/resourceVersion", "value": account["metadata"]["resourceVersion"]}
    return [test, *({"op": "remove", "path": f"/imagePullSecrets/{i}"} for i in reversed(indexes))]


def _labels(obj: Obj) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


@dataclass
class Synced:
    """One pass over the pull Secrets: where they are current, what was written, and what went wrong."""

    namespaces: list[str] = field(default_factory=list)  # where the Secret is stored and current
    written: list[str] = field(default_factory=list)  # "Secret ns/name", "ServiceAccount ns/name"
    problems: list[Problem] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)


def _trouble(result: Synced, what: str, exc: Exception) -> None:
    """An API failure: said in status, and retried unless the API server refused the object itself (then the
    same write would only be refused again: it is sent again on the next change or resync, not in a backoff
    loop). Never quotes the API's message (it may echo a Secret)."""
    reason = f"{exc.status.code} {exc.status.reason or ''}".strip() if isinstance(exc, ApiError) else type(exc).__name__
    if refused_for_good(exc):
        result.problems.append(Problem("PullSecretRefused", f"{what}: the API server refused it: {reason}"))
        return
    result.problems.append(Problem("PullSecretWriteFailed", f"{what}: {reason}"))
    result.retry.append(f"{what}: {reason}")


# A ServiceAccount patch tests the resourceVersion it read, so another Registry's entry (or anyone's change)
# landing first fails it with 422: read again and retry that many times before leaving it to the backoff.
ACCOUNT_ATTEMPTS = 4


async def _accounts(client: AsyncClient, namespace: str) -> list[Obj]:
    return [sa.to_dict() async for sa in client.list(ServiceAccount, namespace=namespace)]


async def _account(client: AsyncClient, namespace: str, name: str) -> Obj | None:
    try:
        return (await client.get(ServiceAccount, name, namespace=namespace)).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


async def _patch_accounts(
    client: AsyncClient, namespace: str, name: str, keep: Iterable[str], result: Synced
) -> list[str]:
    """Our entry in the accounts named in `keep`, in no other; returns the `keep` accounts that do not exist."""
    keep = set(keep)
    accounts = await _accounts(client, namespace)
    for account in accounts:
        sa = account["metadata"]["name"]
        for attempt in range(ACCOUNT_ATTEMPTS):
            ops = append_ops(account, name) if sa in keep else remove_ops(account, name)
            if ops is None:
                break
            try:
                metrics.API_WRITES.labels("ServiceAccount", "patch").inc()
                await client.patch(ServiceAccount, sa, ops, namespace=namespace, patch_type=PatchType.JSON)
            except (ApiError, httpx2.HTTPError) as exc:
                code = exc.status.code if isinstance(exc, ApiError) else None
                if code == 422 and attempt + 1 < ACCOUNT_ATTEMPTS:  # the account changed since it was read
                    fresh = await _account(client, namespace, sa)
                    if fresh is not None:
                        account = fresh
                        continue
                elif code == 422:  # still changing under us: a conflict, worth a retry, never input to fix
                    what = f"ServiceAccount {namespace}/{sa}: changed while being patched"
                    result.problems.append(Problem("PullSecretWriteFailed", what))
                    result.retry.append(what)
                elif code != 404:
                    _trouble(result, f"ServiceAccount {namespace}/{sa}", exc)
                break
            result.written.append(f"ServiceAccount {namespace}/{sa}")
            break
    return sorted(keep - {a["metadata"]["name"] for a in accounts})


async def _remove(client: AsyncClient, namespace: str, name: str, result: Synced) -> None:
    """Our entry from every account of `namespace`, then our Secret (which the caller knows to be ours).

    The Secret goes last: while an entry could not be removed, the labelled Secret is what finds it again."""
    failures = len(result.retry)
    try:
        await _patch_accounts(client, namespace, name, (), result)
        if len(result.retry) > failures:
            return
        metrics.API_WRITES.labels("Secret", "delete").inc()
        await client.delete(Secret, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code != 404:
            _trouble(result, f"Secret {namespace}/{name}", exc)
            return
    except httpx2.HTTPError as exc:
        _trouble(result, f"Secret {namespace}/{name}", exc)
        return
    result.written.append(f"deleted Secret {namespace}/{name}")


async def _ours(client: AsyncClient, uid: str) -> dict[str, Obj]:
    """namespace -> our pull Secret there, found by the UID label in every namespace."""
    found = client.list(Secret, namespace="*", labels={LABEL_PULL_SECRET_OF: uid})
    return {s.metadata.namespace: s.to_dict() async for s in found}


async def sync(
    client: AsyncClient, spec: RegistrySpec, uid: str, mat: Material, cluster_domain: str,
    hold: Callable[[], Awaitable[None]], allowed: Callable[[str], bool],
) -> Synced:
    """Make the pull Secrets and ServiceAccount entries what `spec.pullSecrets` asks, removing ours elsewhere.

    `hold` runs once the reads succeeded and before anything is written in another namespace (the finalizer)."""
    assert spec.pull_secrets is not None
    ps = spec.pull_secrets
    result = Synced()
    try:
        namespaces = [ns.to_dict() async for ns in client.list(Namespace)]
    except ApiError as exc:
        if exc.status.code != 403:
            raise
        # An install without cluster-wide rights (manifests/namespaced/): input to fix, not a failure to retry.
        result.problems.append(Problem("PullSecretsForbidden", "the operator may not list namespaces: pull "
                                                               "Secrets need the cluster-wide install"))
        return result
    targets, result.problems = wanted(ps, namespaces, allowed)
    existing = await _ours(client, uid)
    if targets or existing:
        await hold()
    name = pull_secret_name(spec.name, spec.namespace)
    waiting: list[str] = []
    for namespace in targets:
        desired = secret(spec, uid, namespace, mat, cluster_domain)
        current = existing.get(namespace)
        try:
            if current is None:
                try:
                    await client.get(Secret, name, namespace=namespace)
                except ApiError as exc:
                    if exc.status.code != 404:
                        raise
                else:
                    result.problems.append(Problem(
                        "PullSecretConflict", f"Secret {namespace}/{name} exists and is not this Registry's; "
                                              "delete or rename it (the operator will not take it over)"))
                    continue
            if not up_to_date(desired, current):
                metrics.API_WRITES.labels("Secret", "apply").inc()
                await client.patch(Secret, name, desired, namespace=namespace, patch_type=PatchType.APPLY,
                                   field_manager=FIELD_MANAGER, force=True)
                result.written.append(f"Secret {namespace}/{name}")
            missing = await _patch_accounts(client, namespace, name, ps.service_accounts, result)
        except (ApiError, httpx2.HTTPError) as exc:
            _trouble(result, f"Secret {namespace}/{name}", exc)
            continue
        result.namespaces.append(namespace)
        waiting += [f"{namespace}/{sa}" for sa in missing]
    if waiting:
        shown = ", ".join(waiting[:NAMES_SHOWN]) + (f" and {len(waiting) - NAMES_SHOWN} more"
                                                     if len(waiting) > NAMES_SHOWN else "")
        result.problems.append(Problem(
            "ServiceAccountNotFound", f"waiting for ServiceAccount {shown} to exist; it gets the pull Secret then"))
    for namespace in sorted(set(existing) - set(targets)):
        await _remove(client, namespace, name, result)
    return result


async def remove_all(client: AsyncClient, spec_name: str, spec_namespace: str, uid: str) -> Synced:
    """Remove every pull Secret of the Registry with `uid` and its entries (the Registry is going, or its
    spec no longer asks for pull Secrets)."""
    result = Synced()
    name = pull_secret_name(spec_name, spec_namespace)
    for namespace in sorted(await _ours(client, uid)):
        await _remove(client, namespace, name, result)
    return result


def status(spec: RegistrySpec, synced: Synced) -> Obj:
    """status.pullSecrets: the Secret's name, in how many namespaces it is current, and which (when few)."""
    out: Obj = {"secretName": pull_secret_name(spec.name, spec.namespace), "count": len(synced.namespaces)}
    if len(synced.namespaces) <= NAMES_SHOWN:
        out["namespaces"] = list(synced.namespaces)
    return out
