"""The token service ("index") of a `auth.mode: token` Registry or of a RegistryIndex: its ConfigMap and
Deployment (the Service is rendered next to them by the caller).

It runs the operator's own image with a dedicated entry point (`python -m registry_operator.token`). Users,
groups and rules reach it through mounted files that it re-reads on change, so editing them restarts nothing;
its TLS certificate and the signing certificate are part of the pod-template hash, so rotating them rolls it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .. import names
from ..material import Material
from ..names import COMPONENT_TOKEN, ChildNames
from ..robot import RETENTION_USER
from ..spec import IndexSpec, RegistrySpec
from ..token import config as token_config
from . import monitoring
from .common import Obj, metadata
from .pod import container_security_context, inputs_hash, pod_security_context, scheduling, secret_volume, spread

PORT = token_config.DEFAULT_PORT
CONFIG_DIR, AUTH_DIR, SIGNING_DIR, TLS_DIR = (
    f"{token_config.MOUNT_ROOT}/{d}" for d in ("config", "auth", "signing", "tls")
)
RESOURCES = {"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"memory": "256Mi"}}


def service_name(spec: RegistrySpec) -> str:
    """The `service` both the registry and the tokens name: the registry's in-cluster host."""
    return registry_service(spec.name, spec.namespace)


def registry_service(registry: str, namespace: str) -> str:
    """The token audience of Registry `registry` (see `service_name`), also for an index's rules naming it."""
    return f"{registry}.{namespace}.svc"


def realm(spec: RegistrySpec | IndexSpec) -> str:
    """Where clients fetch tokens: the user's override (an Ingress, a NodePort) or the in-cluster Service."""
    if spec.auth.token_realm:
        return spec.auth.token_realm
    scheme = "https" if spec.tls_enabled else "http"
    return f"{scheme}://{ChildNames(spec.name).token}.{spec.namespace}.svc:{PORT}{token_config.TOKEN_PATH}"


def service_config(spec: RegistrySpec | IndexSpec, material: Material, joined: Sequence[str] = ()) -> dict[str, Any]:
    """The token service's config file: no secrets, only where they are mounted (and the robot users' names).

    A Registry's own service issues tokens for it alone; an index's for each Registry in `joined` (names),
    and a rule's `registries` limits it to those Registries' tokens. ServiceAccount tokens must be minted for
    the realm (their audience), so a token meant for the API server or another service is worth nothing here.
    Rules naming an undefined group keep their other subjects; the Degraded condition reports the name.
    """
    groups = {name: list(members) for name, members in spec.auth.groups.items()}
    access = [
        {
            "users": list(r.users),
            "groups": [g for g in r.groups if g in groups],
            **({"serviceAccounts": list(r.service_accounts)} if r.service_accounts else {}),
            "anonymous": r.anonymous,
            "repositories": list(r.repositories),
            "catalog": r.catalog,
            "actions": list(r.actions),
            **({"services": [registry_service(n, spec.namespace) for n in r.registries]} if r.registries else {}),
        }
        for r in spec.auth.access
    ]
    if material.robot is not None:
        # First, so no rule of the user's (an anonymous one included) grants the robot more than pulls.
        access.insert(0, {"users": [c.user for c in material.robot.valid], "groups": [], "anonymous": False,
                          "repositories": ["*"], "catalog": False, "actions": ["pull"]})
    if material.retention_password is not None:
        # First too: what retention needs (the catalog, tags, manifests, deletes) and nothing else, e.g. no push.
        access.insert(0, {"users": [RETENTION_USER], "groups": [], "anonymous": False,
                          "repositories": ["*"], "catalog": True, "actions": ["pull", "delete"]})
    services = (service_name(spec) if isinstance(spec, RegistrySpec)
                else [registry_service(n, spec.namespace) for n in sorted(joined)])
    return token_config.build_config(
        services, access, groups=groups, ttl_seconds=spec.auth.token_ttl_seconds,
        algorithm=spec.auth.token_algorithm,  # type: ignore[arg-type]
        tls=spec.tls_enabled,
        service_account_audience=realm(spec) if spec.auth.service_accounts else None,
    )


def render(
    spec: RegistrySpec | IndexSpec,
    material: Material,
    owner: Mapping[str, Any],
    image: str,
    joined: Sequence[str] = (),
    replicas: int = 1,
) -> list[Obj]:
    names_ = ChildNames(spec.name)
    config_text = json.dumps(service_config(spec, material, joined), indent=2, sort_keys=True)
    volumes: list[Obj] = [
        {"name": "config", "configMap": {"name": names_.token}},
        secret_volume("auth", names_.htpasswd, ["htpasswd"]),
        secret_volume("signing", names_.token_signing, ["tls.crt", "tls.key"]),
    ]
    mounts: list[Obj] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "auth", "mountPath": AUTH_DIR, "readOnly": True},
        {"name": "signing", "mountPath": SIGNING_DIR, "readOnly": True},
    ]
    restart_inputs: list[bytes] = [material.token_signing.cert_pem if material.token_signing else b""]
    if spec.tls_enabled:
        volumes.append(secret_volume("tls", names_.token_tls, ["tls.crt", "tls.key"]))
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        restart_inputs.append(material.token_tls.cert_pem if material.token_tls else b"")
    scheme = "HTTPS" if spec.tls_enabled else "HTTP"
    probe = {"httpGet": {"path": token_config.HEALTH_PATH, "port": "https", "scheme": scheme}, "periodSeconds": 10}
    container: Obj = {
        "name": "token-service",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "registry_operator.token"],
        "args": ["--config", token_config.CONFIG_PATH],
        "ports": [
            {"name": "https", "containerPort": PORT, "protocol": "TCP"},
            # Prometheus only (render/monitoring): never on the Service
            {"name": monitoring.TOKEN_METRICS_PORT_NAME, "containerPort": token_config.METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 6},
        "resources": RESOURCES,
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    deployment: Obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(names_.token, owner, COMPONENT_TOKEN),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": names.selector(spec.name, COMPONENT_TOKEN)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": names.labels(spec.name, COMPONENT_TOKEN),
                    "annotations": {names.POD_INPUTS_HASH: inputs_hash(restart_inputs)},
                },
                "spec": {
                    # Its own token reads the cluster's public keys, only when rules name ServiceAccounts (the
                    # namespace's default account: every account may read them, see token/serviceaccounts).
                    "automountServiceAccountToken": spec.auth.service_accounts,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": volumes,
                    **scheduling(spec),
                    **spread(names.selector(spec.name, COMPONENT_TOKEN), replicas),
                },
            },
        },
    }
    config_map: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(names_.token, owner, COMPONENT_TOKEN),
        "data": {"config.json": config_text},
    }
    return [config_map, deployment]
