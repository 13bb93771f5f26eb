"""The garbage-collection Job: `registry garbage-collect` on the registry's own storage, image and config.

It is created suspended the moment a collection is due, so its existence alone says "a collection is under
way" (the registry is rendered read-only while it exists), and it is resumed only once every registry pod
serves read-only. With a ReadWriteOnce claim the volume is attached to the registry pod's node, so the
resumed Job is pinned there (a bucket or a ReadWriteMany claim needs no pinning); a suspended Job that never
ran may still change its scheduling fields, which is what makes pinning at resume possible.

With `spec.redis` the registry's blob-descriptor cache outlives the pods' restart, so garbage-collect runs as
an init container and the Job's container then flushes that cache (registry_operator.cacheflush, from the
operator's image): the Job only completes, and the registry only goes read-write, once both have succeeded.
A dry run deletes nothing, so it flushes nothing.

Around `garbage-collect`, registry_operator.storageusage measures the storage (from the operator's image, with
the same config, volumes and S3 keys): first into the pod's emptyDir, last as the `usage` container whose
termination message (a file on that emptyDir, which the kubelet reads whatever the exit code) is a JSON
summary: usage after the collection and what it freed. The operator puts it into status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import names
from ..names import COMPONENT_GC, ChildNames
from ..spec import RegistrySpec
from . import config as cfg
from .common import Obj, metadata
from .deployment import redis_password, volumes
from .pod import container_security_context, pod_security_context, resources, scheduling, service_account

# Longer than any collection should take; past it the Job fails and the registry returns to read-write.
DEADLINE_SECONDS = 6 * 3600
_MOUNTS = {"config", "data", "tmp"}  # the config and the storage: no TLS key, no passwords
FLUSH_RESOURCES = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}
USAGE_CONTAINER = "usage"
USAGE_BEFORE = "/tmp/usage-before.json"  # on the pod's own emptyDir: from the first step to the last
USAGE_SUMMARY = "/tmp/usage-summary.json"  # the usage container's termination message


def args(spec: RegistrySpec) -> list[str]:
    gc = spec.garbage_collection
    flags = (["--delete-untagged"] if gc.delete_untagged else []) + (["--dry-run"] if gc.dry_run else [])
    return ["garbage-collect", *flags, cfg.config_path(spec.version)]


def _pinned(spec: RegistrySpec, node: str | None) -> dict[str, Any]:
    """Scheduling from the spec; on `node` if given (a ReadWriteOnce claim), by name: the node the registry
    pod already satisfied every rule on."""
    out = scheduling(spec)
    if node is not None:
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        out["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [term]}}}
    return out


def flush_container(spec: RegistrySpec, operator_image: str) -> Obj | None:
    """The container that empties the Redis cache after a collection, if there is one to empty."""
    if spec.redis is None or spec.garbage_collection.dry_run:
        return None
    container: Obj = {
        "name": "flush-cache",
        "image": operator_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "registry_operator.cacheflush"],
        "args": ["--address", spec.redis.address, "--db", str(spec.redis.db)],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": FLUSH_RESOURCES,
        "securityContext": container_security_context(),
    }
    if password := redis_password(spec):
        container["env"] = password
    return container


def usage_container(spec: RegistrySpec, operator_image: str, mounts: list[Obj], last: bool) -> Obj:
    """registry_operator.storageusage before (`last` False: into the emptyDir) or after garbage-collect (its
    summary as the termination message); it reads the storage like the registry, so the same mounts and env."""
    step = ["--before", USAGE_BEFORE, "--termination-log", USAGE_SUMMARY] if last else ["--save", USAGE_BEFORE]
    container: Obj = {
        "name": USAGE_CONTAINER if last else "usage-before",
        "image": operator_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "registry_operator.storageusage"],
        "args": ["--config", cfg.config_path(spec.version), *step],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": FLUSH_RESOURCES,
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    if last:
        container["terminationMessagePath"] = USAGE_SUMMARY
    if cfg.env(spec):
        container["env"] = cfg.env(spec)
    return container


def job(
    spec: RegistrySpec,
    owner: Mapping[str, Any],
    request: str | None,
    scheduled: str | None,
    suspend: bool,
    node: str | None,
    operator_image: str,
) -> Obj:
    """`request`: the gc-requested value it serves; `scheduled`: the schedule tick it serves (either may be
    None); both are kept on the Job so an operator restarted mid-way knows what the run was for."""
    names_ = ChildNames(spec.name)
    all_volumes, all_mounts = volumes(spec, names_)
    annotations = {k: v for k, v in ((names.GC_JOB_REQUEST, request), (names.GC_JOB_SCHEDULED, scheduled)) if v}
    container: Obj = {
        "name": "garbage-collect",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["registry"],
        "args": args(spec),
        "terminationMessagePolicy": "FallbackToLogsOnError",  # its last line says why it failed (status)
        "resources": resources(spec),
        "securityContext": container_security_context(),
        "volumeMounts": [m for m in all_mounts if m["name"] in _MOUNTS],
    }
    if cfg.env(spec):  # an empty list is not stored, and would never compare equal
        container["env"] = cfg.env(spec)
    flush = flush_container(spec, operator_image)
    mounts = container["volumeMounts"]
    containers = {
        "initContainers": [usage_container(spec, operator_image, mounts, False), container],
        "containers": [*([flush] if flush else []), usage_container(spec, operator_image, mounts, True)],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(names_.gc, owner, COMPONENT_GC, annotations=annotations),
        "spec": {
            "suspend": suspend,
            "backoffLimit": 0,  # a second attempt would run against the same half-collected storage unseen
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "template": {
                "metadata": {"labels": names.labels(spec.name, COMPONENT_GC)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    **containers,
                    "volumes": [v for v in all_volumes if v["name"] in _MOUNTS],
                    **service_account(spec),
                    **_pinned(spec, node),
                },
            },
        },
    }
