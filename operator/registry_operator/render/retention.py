"""The retention Job (`spec.retention`) and its ConfigMap: `python -m registry_operator.prune` from the
operator's image, against the registry's Service, before a collection's read-only switch.

The ConfigMap carries everything the run decides on, as data: the registry's URL, the rules, and the image
references workloads in the cluster hold (listed by the operator, see `inuse`), so the Job needs no access to
the API server. The credential is the operator's retention robot (`robot.RETENTION_USER`), read from the
one key of the private `-http-secret` that holds it; the CA from the public `-ca` ConfigMap. Both are created
together, once per collection, and deleted with the GC Job when the collection ends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .. import names
from ..material import RETENTION_KEY
from ..names import COMPONENT_RETENTION, ChildNames
from ..prune import PASSWORD_ENV, USER_ENV
from ..retention import Protected
from ..robot import RETENTION_USER
from ..spec import RegistrySpec, Retention
from .common import Obj, metadata
from .pod import container_security_context, pod_security_context

DEADLINE_SECONDS = 3600  # one manifest GET per tag: generous for thousands of tags
CONFIG_DIR, CA_DIR = "/etc/retention", "/etc/retention-ca"
RESOURCES = {"requests": {"cpu": "10m", "memory": "48Mi"}, "limits": {"memory": "128Mi"}}


def rules(retention: Retention) -> dict[str, Any]:
    """spec.retention as written (what `spec.parse_retention` reads back in the Job)."""
    out: dict[str, Any] = {"repositories": list(retention.repositories), "keepTags": list(retention.keep_tags),
                           "dryRun": retention.dry_run}
    if retention.keep_newest is not None:
        out["keepNewest"] = retention.keep_newest
    if retention.keep_younger_than is not None:
        out["keepYoungerThan"] = f"{retention.keep_younger_than}s"
    return out


def url(spec: RegistrySpec) -> str:
    """The registry's Service, by the name its certificate carries."""
    scheme = "https" if spec.tls_enabled else "http"
    return f"{scheme}://{ChildNames(spec.name).service}.{spec.namespace}.svc:{spec.service.port}"


def config_map(spec: RegistrySpec, owner: Mapping[str, Any], protected: Protected) -> Obj:
    assert spec.retention is not None
    config = {
        "registry": url(spec),
        "retention": rules(spec.retention),
        "protected": {"tags": sorted(f"{r}:{t}" for r, t in protected.tags),
                      "digests": sorted(f"{r}@{d}" for r, d in protected.digests)},
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ChildNames(spec.name).retention, owner, COMPONENT_RETENTION),
        "data": {"config.json": json.dumps(config, indent=1, sort_keys=True)},
    }


def job(spec: RegistrySpec, owner: Mapping[str, Any], request: str | None, scheduled: str | None,
        operator_image: str, ca_bundle: bool) -> Obj:
    """`request`/`scheduled`: the collection it is the first step of, kept on it as on the GC Job. `ca_bundle`:
    the `-ca` ConfigMap exists. It does not with `tls.mode: Secret` and a certificate Secret without `ca.crt`
    (a publicly trusted certificate): the Job then trusts the system's roots, as any client must, instead of
    mounting a ConfigMap that is not there (its pod would never start)."""
    names_ = ChildNames(spec.name)
    annotations = {k: v for k, v in ((names.GC_JOB_REQUEST, request), (names.GC_JOB_SCHEDULED, scheduled)) if v}
    args = ["--config", f"{CONFIG_DIR}/config.json", "--summary", "/dev/termination-log"]
    volumes: list[Obj] = [{"name": "config", "configMap": {"name": names_.retention}}]
    mounts: list[Obj] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    if spec.tls_enabled and ca_bundle:
        args += ["--ca", f"{CA_DIR}/ca.crt"]
        volumes.append({"name": "ca", "configMap": {"name": names_.ca}})
        mounts.append({"name": "ca", "mountPath": CA_DIR, "readOnly": True})
    container: Obj = {
        "name": "retention",
        "image": operator_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "registry_operator.prune"],
        "args": args,
        "terminationMessagePolicy": "FallbackToLogsOnError",  # a failure's last line, for status
        "resources": RESOURCES,
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    if spec.auth.mode != "none":
        container["env"] = [
            {"name": USER_ENV, "value": RETENTION_USER},
            {"name": PASSWORD_ENV, "valueFrom": {"secretKeyRef": {"name": names_.http_secret, "key": RETENTION_KEY}}},
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(names_.retention, owner, COMPONENT_RETENTION, annotations=annotations),
        "spec": {
            "backoffLimit": 0,  # a second attempt would decide again on a half-pruned registry: the next run does
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "template": {
                "metadata": {"labels": names.labels(spec.name, COMPONENT_RETENTION)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
