"""What every pod we run shares: a hardened security context, Secret volumes, scheduling from the spec.

Both the registry and the token service run with no privileges, a read-only root filesystem and no
service-account token: neither talks to the Kubernetes API.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from ..spec import IndexSpec, RegistrySpec

RUN_AS = 1000
SECRET_MODE = 0o440  # readable by the pod's group (fsGroup), nobody else

DEFAULT_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}
# The s3 driver buffers each upload's parts in memory: one 64 MiB layer pushed raised the registry's peak RSS from
# 44 to 84 MiB (3.1.2) and from 24 to 105 MiB (2.8.2), where a volume stays under 50 MiB. Double the default.
S3_RESOURCES = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}


def inputs_hash(parts: Iterable[str | bytes]) -> str:
    """A digest of what a process reads only at start; put on the pod template so a change rolls the pods."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        # Relabel a volume's files only when its root does not already belong to fsGroup: a large registry
        # volume would otherwise be walked (chown of every blob) on every pod start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def secret_volume(name: str, secret: str, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """A Secret mounted as a directory (never subPath: subPath mounts are not updated by the kubelet)."""
    source: dict[str, Any] = {"secretName": secret, "defaultMode": SECRET_MODE}
    if keys is not None:
        source["items"] = [{"key": k, "path": k} for k in keys]
    return {"name": name, "secret": source}


def scheduling(spec: RegistrySpec | IndexSpec) -> dict[str, Any]:
    """Pod-spec fields the user controls; empty ones are left out so the API server's defaults stay ours."""
    out: dict[str, Any] = {}
    if spec.node_selector:
        out["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        out["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.affinity:
        out["affinity"] = dict(spec.affinity)
    return out


def service_account(spec: RegistrySpec) -> dict[str, Any]:
    """The ServiceAccount a bucket's workload identity is bound to (storage.s3.serviceAccountName), for the
    registry and its GC Job. Its API token stays unmounted: cloud identity webhooks (EKS, Azure) project their
    own token, GKE answers from its metadata server, and neither program talks to Kubernetes."""
    s3 = spec.storage.s3
    return {"serviceAccountName": s3.service_account} if s3 and s3.service_account else {}


def spread(selector: dict[str, str], replicas: int) -> dict[str, Any]:
    """Several replicas are there to survive a node: ask the scheduler to put them on different nodes, but
    never to leave one pending for it (ScheduleAnyway: a one-node cluster still runs them all)."""
    if replicas <= 1:
        return {}
    return {"topologySpreadConstraints": [{
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": dict(selector)},
    }]}


def resources(spec: RegistrySpec) -> dict[str, Any]:
    """The user's resources, else a default for the storage: a bucket costs memory, a volume does not."""
    if spec.resources:
        return dict(spec.resources)
    return S3_RESOURCES if spec.storage.s3 else DEFAULT_RESOURCES
