"""The images workloads in the cluster reference: the guard that keeps retention from deleting what runs.

As OpenShift's image pruner does, a reference from any Pod, Deployment, StatefulSet, DaemonSet, Job or
CronJob protects the image, by tag and by digest; a Pod's `imageID` (the digest it actually runs) protects
that digest too, even once its tag has moved on. References are normalised to this registry: a host that is
one of its names (`pullsecrets.endpoints`: Service names, tls.dnsNames, tls.ipAddresses) on any port counts,
which can protect an image of another registry on the same host but never loses one of this registry.

Listing needs only `list` on those kinds, cluster-wide; the operator lists, so the GC Job needs no access to
the API server and is handed the protected references as data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lightkube import AsyncClient
from lightkube.resources.apps_v1 import DaemonSet, Deployment, StatefulSet
from lightkube.resources.batch_v1 import CronJob, Job
from lightkube.resources.core_v1 import Pod

from .retention import Protected

KINDS = (Pod, Deployment, StatefulSet, DaemonSet, Job, CronJob)
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def _pod_spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec") or {}


def images(obj: Mapping[str, Any]) -> list[str]:
    """Every image reference of one workload (a dict with `kind`), and for a Pod the digests it runs."""
    spec = _pod_spec(obj)
    out = [c["image"] for key in _CONTAINER_LISTS for c in spec.get(key) or () if c.get("image")]
    if obj.get("kind") == "Pod":
        status = obj.get("status") or {}
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            out += [s["imageID"] for s in status.get(key) or () if s.get("imageID")]
    return out


def _hostname(host: str) -> str:
    """`host[:port]` without its port, lowercased; `[v6]:port` keeps its brackets."""
    if host.startswith("["):
        return host[: host.index("]") + 1].lower()
    return host.rpartition(":")[0].lower() if ":" in host else host.lower()


def parse(reference: str) -> tuple[str, str, str | None, str | None] | None:
    """(hostname, repository, tag, digest) of `host[:port]/repo[:tag][@digest]`; None without a registry host
    (a Docker Hub short name) or a repository. A runtime's `docker-pullable://` prefix is dropped."""
    ref = reference.split("://", 1)[-1]
    ref, _, digest = ref.partition("@")
    host, _, path = ref.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        return None
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
    return _hostname(host), path, tag or None, digest or None


def protected(references: Iterable[str], endpoints: Iterable[str]) -> Protected:
    """The references that point into this registry (`endpoints`: its host:port names)."""
    hosts = {_hostname(e) for e in endpoints}
    tags, digests = set(), set()
    for reference in references:
        parsed = parse(reference)
        if parsed is None or parsed[0] not in hosts:
            continue
        _, repo, tag, digest = parsed
        if digest:
            digests.add((repo, digest))
        if tag or not digest:
            tags.add((repo, tag or "latest"))
    return Protected(frozenset(tags), frozenset(digests))


PAGE = 500  # objects per list response


async def workload_images(client: AsyncClient, namespaces: Sequence[str] = ("*",), page: int = PAGE) -> list[str]:
    """Every image reference of every workload of `KINDS` in `namespaces` (`*`: the cluster), listed per kind and
    namespace in pages of `page` (a cluster's Pods in one response would be held whole in memory at once). An
    operator confined to named namespaces lists only those: it may read no others, and says so in the README."""
    out: list[str] = []
    for namespace in namespaces:
        for kind in KINDS:
            async for obj in client.list(kind, namespace=namespace, chunk_size=page):
                out += images({"kind": kind.__name__, **obj.to_dict()})
    return out
