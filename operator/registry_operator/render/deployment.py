"""The registry's Deployment and its ConfigMap.

The pod template carries a hash of everything the registry reads only at start (config, TLS certificate,
token root certificate): a renewed certificate or a config change rolls the pods, while the htpasswd file,
which the registry re-reads by itself, is left out so adding a user restarts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import htpasswd, names
from ..material import Material
from ..names import COMPONENT_REGISTRY, ChildNames
from ..spec import IndexSpec, RegistrySpec
from . import config as cfg
from . import monitoring
from .common import Obj, metadata
from .pod import (
    container_security_context,
    inputs_hash,
    pod_security_context,
    resources,
    scheduling,
    secret_volume,
    service_account,
    spread,
)

TERMINATION_GRACE_SECONDS = cfg.DRAIN_SECONDS + 15


def config_map(spec: RegistrySpec, config_text: str, owner: Mapping[str, Any]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ChildNames(spec.name).config, owner, COMPONENT_REGISTRY),
        "data": {"config.yml": config_text},
    }


def ca_bundle(spec: RegistrySpec | IndexSpec, bundle: str, owner: Mapping[str, Any]) -> Obj:
    """The CA bundle clients must trust, as a ConfigMap: workloads that only want to trust the registry need
    no permission to read Secrets."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ChildNames(spec.name).ca, owner, COMPONENT_REGISTRY),
        "data": {"ca.crt": bundle},
    }


def volumes(
    spec: RegistrySpec, names_: ChildNames, upstream: Mapping[str, bytes] | None = None
) -> tuple[list[Obj], list[Obj]]:
    """(volumes, mounts) of the registry container (also the source of the GC Job's, which must see the same)."""
    vols: list[Obj] = [{"name": "config", "configMap": {"name": names_.config}}]
    mounts: list[Obj] = [{"name": "config", "mountPath": cfg.config_dir(spec.version), "readOnly": True}]
    if spec.tls_enabled:  # our own copy also in Secret mode: see material._user_tls
        vols.append(secret_volume("tls", names_.tls, ["tls.crt", "tls.key"]))
        mounts.append({"name": "tls", "mountPath": cfg.TLS_DIR, "readOnly": True})
    if spec.auth.mode == "htpasswd":
        vols.append(secret_volume("auth", names_.htpasswd, ["htpasswd"]))
        mounts.append({"name": "auth", "mountPath": cfg.AUTH_DIR, "readOnly": True})
    elif spec.auth.mode == "token":  # the trust bundle of its own token service, or of the index it joined
        signing = ChildNames(spec.auth.index).token_signing if spec.auth.index else names_.token_signing
        vols.append(secret_volume("token", signing, ["ca.crt"]))
        mounts.append({"name": "token", "mountPath": cfg.TOKEN_DIR, "readOnly": True})
    if upstream and "ca.crt" in upstream:  # a pull-through cache's upstream CA (see config.env)
        vols.append(secret_volume("upstream", names_.upstream, ["ca.crt"]))
        mounts.append({"name": "upstream", "mountPath": cfg.UPSTREAM_DIR, "readOnly": True})
    if spec.storage.claim is not None:
        vols.append({"name": "data", "persistentVolumeClaim": {"claimName": names_.claim}})
    elif spec.storage.s3 is None:  # a bucket needs no volume
        empty: Obj = {"sizeLimit": spec.storage.empty_dir_size_limit} if spec.storage.empty_dir_size_limit else {}
        vols.append({"name": "data", "emptyDir": empty})
    if spec.storage.s3 is None:
        mounts.append({"name": "data", "mountPath": cfg.DATA_DIR})
    vols.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    return vols, mounts


def _probe(spec: RegistrySpec, period: int, failures: int) -> Obj:
    # `GET /` answers 200 without credentials unless a health check fails.
    scheme = "HTTPS" if spec.tls_enabled else "HTTP"
    return {
        "httpGet": {"path": "/", "port": "registry", "scheme": scheme},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def redis_password(spec: RegistrySpec) -> list[Obj]:
    """The Redis password, from the user's Secret through the environment (see render/config.redis)."""
    if spec.redis is None or spec.redis.password_ref is None:
        return []
    ref = spec.redis.password_ref
    return [{"name": cfg.REDIS_PASSWORD_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def _strategy(spec: RegistrySpec) -> Obj:
    if spec.storage.claim is not None and not spec.storage.shared:
        # A ReadWriteOnce claim cannot be attached to the old and the new pod at once.
        return {"type": "Recreate"}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def deployment(spec: RegistrySpec, material: Material, config_text: str, owner: Mapping[str, Any]) -> Obj:
    names_ = ChildNames(spec.name)
    volumes_, mounts = volumes(spec, names_, material.upstream)
    restart_inputs = [config_text, material.serving_cert_pem or b""]
    if material.token_trust_pem:
        restart_inputs.append(material.token_trust_pem)
    if material.upstream:
        # Read only at start (environment, Go's roots): a change must roll the pods. The credentials enter as
        # a keyed fingerprint, so the pod template never carries an unkeyed hash of a password.
        up = material.upstream
        restart_inputs += [up.get("ca.crt", b""), htpasswd.fingerprint(
            material.fingerprint_key, up.get("username", b"").decode(), up.get("password", b"").decode())]
    if material.s3_credentials_digest:
        restart_inputs.append(material.s3_credentials_digest)
    template_annotations = {**spec.pod_annotations, names.POD_INPUTS_HASH: inputs_hash(restart_inputs)}
    container: Obj = {
        "name": "registry",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["registry"],
        "args": ["serve", cfg.config_path(spec.version)],
        "env": [
            {
                "name": "REGISTRY_HTTP_SECRET",
                "valueFrom": {"secretKeyRef": {"name": names_.http_secret, "key": "secret"}},
            },
            *redis_password(spec),
            *cfg.env(spec, material.upstream),
        ],
        "ports": [
            {"name": "registry", "containerPort": cfg.PORT, "protocol": "TCP"},
            {"name": monitoring.DEBUG_PORT_NAME, "containerPort": cfg.DEBUG_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _probe(spec, period=5, failures=3),
        "livenessProbe": _probe(spec, period=10, failures=6),
        "resources": resources(spec),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    selector = names.selector(spec.name, COMPONENT_REGISTRY)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(names_.deployment, owner, COMPONENT_REGISTRY),
        "spec": {
            "replicas": spec.effective_replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "strategy": _strategy(spec),
            "template": {
                "metadata": {
                    "labels": {**spec.pod_labels, **names.labels(spec.name, COMPONENT_REGISTRY)},
                    "annotations": template_annotations,
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": volumes_,
                    **service_account(spec),
                    **scheduling(spec),
                    **spread(selector, spec.effective_replicas),
                },
            },
        },
    }
