"""Helpers for integration tests that create Registries and read what the operator made of them."""

from __future__ import annotations

from typing import Any

import yaml
from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, PersistentVolumeClaim, Secret, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.policy_v1 import PodDisruptionBudget

from registry_operator.kinds import Registry

KINDS = {"Secret": Secret, "ConfigMap": ConfigMap, "Service": Service, "Deployment": Deployment,
         "PersistentVolumeClaim": PersistentVolumeClaim, "NetworkPolicy": NetworkPolicy,
         "PodDisruptionBudget": PodDisruptionBudget}


def manifest(name: str, namespace: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": "registry.operator.dev/v1alpha1", "kind": "Registry",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def registry(client: Client, name: str, namespace: str) -> dict[str, Any]:
    return client.get(Registry, name, namespace=namespace).to_dict()


def condition(client: Client, name: str, namespace: str, type_: str) -> dict[str, Any] | None:
    for c in (registry(client, name, namespace).get("status") or {}).get("conditions") or ():
        if c["type"] == type_:
            return c
    return None


def is_ready(client: Client, name: str, namespace: str) -> bool:
    c = condition(client, name, namespace, "Ready")
    body = registry(client, name, namespace)
    return bool(c and c["status"] == "True"
                and body["status"].get("observedGeneration") == body["metadata"]["generation"])


def get(client: Client, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        return client.get(KINDS[kind], name, namespace=namespace).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def owned(client: Client, namespace: str, registry_name: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> resourceVersion of every object labelled as this Registry's."""
    out = {}
    for kind, res in KINDS.items():
        for obj in client.list(res, namespace=namespace,
                               labels={"app.kubernetes.io/instance": registry_name,
                                       "app.kubernetes.io/managed-by": "registry-operator"}):
            out[(kind, obj.metadata.name)] = obj.metadata.resourceVersion
    return out
