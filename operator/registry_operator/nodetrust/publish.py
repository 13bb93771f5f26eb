"""The operator's half of node trust: one ConfigMap per trusting Registry in the node agent's namespace.

Why a ConfigMap there and not files written by the operator: writing a node's disk needs a hostPath pod, which
Pod Security `restricted` (every Registry's namespace) refuses; the agent's namespace is the one place that
admits it (manifests/node-trust/). The ConfigMap holds only public material (the CA certificate, host names).

It lives in another namespace, so no owner reference: the UID label (`LABEL_NODE_TRUST_OF`) is what makes it
ours (an object without it is never written or deleted), and the finalizer `NODE_TRUST_FINALIZER` removes it
when the Registry goes, as `pullsecrets` does. The CA follows `material`: a rotated CA (both CAs while the old
one is still trusted) changes the ConfigMap, which the agents write at once.

Whether anyone applies it is read from the agent's DaemonSet (its Ready pods); without one the `NodeTrust`
condition says so and the Registry is read again a minute later (reads only: the status does not change).

A host another Registry's ConfigMap published first stays that Registry's (`claims`): nodes never trust two CAs
for one host, and a newer Registry cannot take a host over; it is said, and looked at again likewise.

Decisions are pure (`hosts`, `config_map`, `claims`, `agent_problem`, `status`); `sync` and `remove_all` do
the I/O.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, operators
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import ConfigMap, Namespace
from lightkube.types import PatchType

from .. import metrics
from ..apply import refused_for_good, up_to_date, with_intent_hash
from ..material import Problem
from ..names import (
    ANNOTATION_REGISTRY,
    FIELD_MANAGER,
    LABEL_MANAGED_BY,
    LABEL_NODE_TRUST_OF,
    MANAGED_BY,
    NODE_AGENT,
    node_trust_name,
)
from ..pullsecrets import endpoints
from ..spec import RegistrySpec
from . import DATA_CA, DATA_HOSTS, DATA_MIRROR_OF, seniority

Obj = dict[str, Any]
AGENT_RECHECK_SECONDS = 60.0  # how soon a Registry waiting for the agent, or for a taken host, looks again


def hosts(spec: RegistrySpec, cluster_domain: str, service: Mapping[str, Any] | None) -> list[str]:
    """The host:port names nodes trust: those pull Secrets name (Service DNS names, tls.dnsNames and
    tls.ipAddresses on the Service port), and on the NodePort the API server allocated. All are in the
    server certificate (`material` puts the Service names and tls.* into its SANs). Left out: a wildcard DNS
    name (a certs.d directory names one host), and with a NodePort Service the tls.* names on the Service
    port, where nothing listens on a node (and which every NodePort Registry naming a node would claim)."""
    ports = ((service or {}).get("spec") or {}).get("ports") or [{}]
    own = f"{spec.name}.{spec.namespace}.svc"
    return [h for h in endpoints(spec, cluster_domain, ports[0].get("nodePort")) if not h.startswith("*") and not (
        spec.service.type == "NodePort" and h.endswith(f":{spec.service.port}") and not h.startswith(own))]


def mirror_of(spec: RegistrySpec) -> str | None:
    """The upstream of a pull-through cache as image names spell its host (the certs.d directory containerd
    looks up): `host` or `host:port`, and Docker Hub's `registry-1.docker.io` as `docker.io`."""
    if spec.proxy is None:
        return None
    host = urllib.parse.urlsplit(spec.proxy.remote_url).netloc.rpartition("@")[2].removesuffix(":443")
    return "docker.io" if host in ("registry-1.docker.io", "index.docker.io") else host


def config_map(spec: RegistrySpec, uid: str, namespace: str, ca_pem: bytes | None, names: list[str]) -> Obj:
    """The ConfigMap the agents read (with the intent hash, so a settled Registry costs no write)."""
    data = {DATA_HOSTS: "".join(f"{h}\n" for h in names)}
    if ca_pem:
        data[DATA_CA] = ca_pem.decode()
    mirror = mirror_of(spec)
    if mirror and names:
        data[DATA_MIRROR_OF] = mirror
    return with_intent_hash({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": node_trust_name(spec.name, spec.namespace),
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_NODE_TRUST_OF: uid},
            "annotations": {ANNOTATION_REGISTRY: f"{spec.namespace}/{spec.name}"},
        },
        "data": data,
    })


def claims(names: list[str], ours: Mapping[str, Any] | None, others: list[Obj]) -> tuple[list[str], Problem | None]:
    """(the names this Registry may publish, a problem naming those an older node-trust ConfigMap publishes).
    By `seniority`, so two Registries naming one host never both publish it nor take it from each other."""
    mine = seniority(ours) if ours is not None else ("\uffff", "")  # not stored yet: newer than every other
    taken: dict[str, str] = {}
    for other in sorted(others, key=seniority):
        if seniority(other) < mine:
            owner = (other["metadata"].get("annotations") or {}).get(ANNOTATION_REGISTRY, other["metadata"]["name"])
            for host in (other.get("data") or {}).get(DATA_HOSTS, "").split():
                taken.setdefault(host, owner)
    lost = [h for h in names if h in taken]
    if not lost:
        return names, None
    said = ", ".join(f"{h} (Registry {taken[h]})" for h in lost)
    return [h for h in names if h not in taken], Problem(
        "NodeTrustHostTaken", f"left out, nodes already trust another Registry's CA for them: {said}")


def agent_problem(daemonset: Mapping[str, Any] | None, namespace: str) -> Problem | None:
    """Why no node applies the ConfigMap, or None when some agent pod is Ready."""
    if daemonset is None:
        return Problem("NodeAgentNotInstalled", f"no DaemonSet {namespace}/{NODE_AGENT}: no node applies the trust "
                                                "(kubectl apply -k manifests/node-trust/)")
    if not (daemonset.get("status") or {}).get("numberReady"):
        return Problem("NodeAgentNotReady", f"DaemonSet {namespace}/{NODE_AGENT} has no Ready pod: no node applies "
                                            "the trust yet")
    return None


@dataclass
class Published:
    """One pass over a Registry's node-trust ConfigMap."""

    hosts: list[str] = field(default_factory=list)  # what the stored ConfigMap publishes
    written: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)

    @property
    def recheck(self) -> bool:
        """Nobody applies the trust yet, or a host is another Registry's until that one goes: worth a read again
        later (no event of ours says when; a read, never a write, while nothing changed)."""
        return any(p.reason.startswith("NodeAgent") or p.reason == "NodeTrustHostTaken" for p in self.problems)


def _trouble(result: Published, what: str, exc: Exception) -> None:
    """An API failure: said in status; retried unless the API server refused the object, the agent's namespace
    does not exist or the operator may not touch it (input to fix: sent again on the next change, resync or agent
    check, not in a backoff loop)."""
    code = exc.status.code if isinstance(exc, ApiError) else None
    reason = f"{code} {exc.status.reason or ''}".strip() if isinstance(exc, ApiError) else type(exc).__name__
    if code == 404:  # the namespace went between our read and the write (looked for again with the agent)
        result.problems.append(_no_namespace(what))
    elif code == 403:
        result.problems.append(Problem("NodeTrustForbidden", f"{what}: the operator may not write there ({reason}): "
                                                             "node trust needs manifests/node-trust/"))
    elif refused_for_good(exc):
        result.problems.append(Problem("NodeTrustRefused", f"{what}: the API server refused it: {reason}"))
    else:
        result.problems.append(Problem("NodeTrustWriteFailed", f"{what}: {reason}"))
        result.retry.append(f"{what}: {reason}")


def _no_namespace(what: str) -> Problem:
    return Problem("NodeAgentNotInstalled", f"{what}: its namespace does not exist: no node applies the trust "
                                            "(kubectl apply -k manifests/node-trust/)")


async def _namespace_exists(client: AsyncClient, namespace: str) -> bool:
    """Whether the agent's namespace exists, asked with a read: an apply there would be a write the API server
    refuses (404) once a minute for as long as the agent is not installed. An install that may not read
    Namespaces (403) finds out by writing, as before."""
    try:
        await client.get(Namespace, namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return False
        if exc.status.code != 403:
            raise
    return True


async def _ours(client: AsyncClient, namespace: str, uid: str) -> list[Obj]:
    return [cm.to_dict() async for cm in client.list(ConfigMap, namespace=namespace, labels={LABEL_NODE_TRUST_OF: uid})]


async def _all(client: AsyncClient, namespace: str) -> list[Obj]:
    """Every node-trust ConfigMap there, every Registry's."""
    found = client.list(ConfigMap, namespace=namespace, labels={LABEL_NODE_TRUST_OF: operators.exists()})
    return [cm.to_dict() async for cm in found]


async def _agent(client: AsyncClient, namespace: str) -> Obj | None:
    try:
        return (await client.get(DaemonSet, NODE_AGENT, namespace=namespace)).to_dict()
    except ApiError as exc:
        if exc.status.code in (403, 404):  # 403: an install without manifests/node-trust/'s Role
            return None
        raise


async def sync(
    client: AsyncClient, spec: RegistrySpec, uid: str, namespace: str, ca_pem: bytes | None, names: list[str],
    hold: Callable[[], Awaitable[None]],
) -> Published:
    """Store our ConfigMap (the CA, and `names` but those an older one publishes) unless it is current; `hold`
    runs before it is first created (the finalizer). One of that name that is not ours is never taken over."""
    name = node_trust_name(spec.name, spec.namespace)
    what = f"ConfigMap {namespace}/{name}"
    result = Published()
    try:
        stored = await _all(client, namespace)
        current = next((cm for cm in stored if cm["metadata"]["name"] == name
                        and cm["metadata"]["labels"].get(LABEL_NODE_TRUST_OF) == uid), None)
        free, taken = claims(names, current, [cm for cm in stored if cm["metadata"]["name"] != name])
        desired = config_map(spec, uid, namespace, ca_pem, free)
        if current is None:
            try:
                await client.get(ConfigMap, name, namespace=namespace)
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
            else:
                result.problems.append(Problem("NodeTrustConflict", f"{what} exists and is not this Registry's; "
                                                                    "delete it (the operator will not take it over)"))
                return result
            if not await _namespace_exists(client, namespace):
                result.problems.append(_no_namespace(what))
                return result
            await hold()
        if not up_to_date(desired, current):
            metrics.API_WRITES.labels("ConfigMap", "apply").inc()
            await client.patch(ConfigMap, name, desired, namespace=namespace, patch_type=PatchType.APPLY,
                               field_manager=FIELD_MANAGER, force=True)
            result.written.append(what)
        problem = agent_problem(await _agent(client, namespace), namespace)
    except (ApiError, httpx2.HTTPError) as exc:
        _trouble(result, what, exc)
        return result
    result.hosts = free
    result.problems += [p for p in (taken, problem) if p is not None]
    return result


async def remove_all(client: AsyncClient, namespace: str, uid: str) -> Published:
    """Delete every node-trust ConfigMap of the Registry with `uid` (it is going, or no longer trusted)."""
    result = Published()
    try:
        found = await _ours(client, namespace, uid)
    except (ApiError, httpx2.HTTPError) as exc:
        _trouble(result, f"ConfigMaps in {namespace}", exc)
        return result
    for cm in found:
        name = cm["metadata"]["name"]
        try:
            metrics.API_WRITES.labels("ConfigMap", "delete").inc()
            await client.delete(ConfigMap, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                _trouble(result, f"ConfigMap {namespace}/{name}", exc)
                continue
        except httpx2.HTTPError as exc:
            _trouble(result, f"ConfigMap {namespace}/{name}", exc)
            continue
        result.written.append(f"deleted ConfigMap {namespace}/{name}")
    return result


def status(spec: RegistrySpec, namespace: str, published: Published) -> Obj:
    """status.nodeTrust: where the ConfigMap is and which host:port names nodes trust."""
    return {"configMap": f"{namespace}/{node_trust_name(spec.name, spec.namespace)}", "hosts": published.hosts}
