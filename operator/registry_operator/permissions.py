"""What the operator needs from RBAC, checked once at startup, so a missing permission is one clear line.

Without the check, a missing list/watch permission shows up as kopf retrying a 403 for every watched resource
every few seconds behind a liveness endpoint that answers 200: a dead operator that looks alive. So a missing
read (get/list/watch: what the watches and the resync need) is fatal: the process names everything missing in
one log line and exits, and the pod's last log says what to grant. A missing write is logged the same way at
startup, but the operator runs: each Registry it cannot write to gets `Degraded: Forbidden` naming the refused
object, and nothing is generated again (safe writes). SelfSubjectAccessReviews are allowed to every
authenticated client; if the check itself cannot run (API server unreachable), that is said and skipped.

The list is what the code does (handlers watch, apply writes, reconcile reads and patches status); the unit
tests check it against the ClusterRole in manifests/base/rbac.yaml.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.models.authorization_v1 import ResourceAttributes, SelfSubjectAccessReviewSpec
from lightkube.resources.authorization_v1 import SelfSubjectAccessReview

from . import names
from .config import Config

log = logging.getLogger(__name__)

# (API group, resource with optional /subresource, verbs) needed in every watched namespace.
NEEDED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (names.GROUP, names.PLURAL, ("get", "list", "watch", "patch")),  # patch: the pull-secrets finalizer
    (names.GROUP, f"{names.PLURAL}/status", ("get", "patch")),
    (names.GROUP, names.INDEX_PLURAL, ("get", "list", "watch")),
    (names.GROUP, f"{names.INDEX_PLURAL}/status", ("get", "patch")),
    ("", "secrets", ("get", "list", "watch", "create", "patch", "delete")),  # delete: pull Secrets only
    ("", "serviceaccounts", ("get", "list", "watch", "patch")),  # imagePullSecrets of spec.pullSecrets
    ("", "persistentvolumeclaims", ("get", "list", "watch", "create", "patch")),
    ("", "configmaps", ("get", "list", "watch", "create", "patch", "delete")),
    ("", "services", ("get", "list", "watch", "create", "patch", "delete")),
    ("apps", "deployments", ("get", "list", "watch", "create", "patch", "delete")),
    ("networking.k8s.io", "networkpolicies", ("get", "list", "watch", "create", "patch", "delete")),
    ("policy", "poddisruptionbudgets", ("get", "list", "watch", "create", "patch", "delete")),
    ("batch", "jobs", ("get", "list", "watch", "create", "patch", "delete")),  # garbage collection
    ("", "pods", ("list",)),  # the node a GC Job must run on (a ReadWriteOnce claim)
    ("", "events", ("create",)),
)
# Needed cluster-wide when kopf scans (all namespaces, or namespace globs): it discovers resources from CRDs.
SCANNING: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
)
# Needed cluster-wide by globs (kopf finds the matching namespaces) and by an operator watching all namespaces
# (spec.pullSecrets selects namespaces and notices new ones).
GLOBS: tuple[tuple[str, str, tuple[str, ...]], ...] = (("", "namespaces", ("list", "watch")),)
LEASES: tuple[tuple[str, str, tuple[str, ...]], ...] = (("coordination.k8s.io", "leases", ("get", "create", "update")),)


def wanted(config: Config) -> list[tuple[str, str, str, str]]:
    """(group, resource, verb, namespace) to check for this configuration; namespace "" means all of them."""
    exact = [ns for ns in config.namespaces if not set(ns) & set("*?[")]
    scopes: list[tuple[Iterable[tuple[str, str, tuple[str, ...]]], str]] = []
    if config.clusterwide or len(exact) < len(config.namespaces):
        scopes += [(NEEDED, ""), (SCANNING, "")]  # globs: any matching namespace, so all of them
    if config.sees_all_namespaces:
        scopes.append((GLOBS, ""))
    if not config.clusterwide:
        scopes += [(NEEDED, ns) for ns in exact]
    if config.leader_election:
        scopes.append((LEASES, config.leader_election_namespace))
    return [(group, resource, verb, ns) for rules, ns in scopes for group, resource, verbs in rules for verb in verbs]


def describe(group: str, resource: str, verb: str, namespace: str) -> str:
    plural, _, sub = resource.partition("/")
    what = f"{plural}.{group}" if group else plural
    return f"{verb} {what}{'/' + sub if sub else ''} in {f'namespace {namespace}' if namespace else 'all namespaces'}"


READS = frozenset({"get", "list", "watch"})


async def missing(client: AsyncClient, config: Config) -> tuple[list[str], list[str]]:
    """(missing reads, missing writes) of what this process needs, as readable phrases."""

    async def allowed(group: str, resource: str, verb: str, namespace: str) -> bool:
        plural, _, sub = resource.partition("/")
        attributes = ResourceAttributes(group=group, resource=plural, subresource=sub or None, verb=verb,
                                        namespace=namespace or None)
        review = await client.create(SelfSubjectAccessReview(spec=SelfSubjectAccessReviewSpec(
            resourceAttributes=attributes)))
        return bool(review.status and review.status.allowed)

    checks = wanted(config)
    answers = await asyncio.gather(*(allowed(*check) for check in checks))
    lacking = [check for check, ok in zip(checks, answers, strict=True) if not ok]
    return ([describe(*c) for c in lacking if c[2] in READS], [describe(*c) for c in lacking if c[2] not in READS])


async def check(config: Config) -> bool:
    """Log what is missing; False when the operator cannot work at all (a read is missing)."""
    try:
        async with AsyncClient() as client:
            reads, writes = await missing(client, config)
    except (ApiError, httpx2.HTTPError) as exc:
        log.warning("could not check permissions (%s); going on", type(exc).__name__)
        return True
    if writes:
        log.error("missing permissions, Registries will be Degraded: Forbidden (grant them, see manifests/): %s",
                  "; ".join(writes))
    if reads:
        log.error("missing permissions, cannot watch (grant them, see manifests/): %s", "; ".join(reads))
    return not reads
