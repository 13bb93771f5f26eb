"""spec.retention on a real control plane: what the schema refuses, and a requested collection that runs the
retention Job first (read-write, with the in-use references of workloads listed under the operator's own RBAC),
then the GC Job, and records both.

kwok completes the Jobs' pods without running them (prune against the real registry is tests/e2e/
test_retention_clients.py), so the retention record here is the one of a run that printed no summary.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import yaml
from lightkube import ApiError
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event
from registries import get, is_ready, manifest, registry

from registry_operator import inuse
from registry_operator.names import GC_REQUESTED

USERS = {"auth": {"users": [{"name": "alice"}]}}
STORAGE = {"storage": {"persistentVolumeClaim": {"size": "1Gi"}, "deleteEnabled": True}}
SPEC = {**USERS, **STORAGE, "garbageCollection": {}, "retention": {"keepNewest": 2, "keepTags": ["latest"]}}
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**SPEC, "retention": {"keepTags": ["x"]}}, "spec.retention: Invalid value"),
        ({**SPEC, "retention": {"keepNewest": 0}}, "spec.retention.keepNewest: Invalid value"),
        ({**SPEC, "retention": {"keepYoungerThan": "30d"}}, "spec.retention.keepYoungerThan: Invalid value"),
        ({**SPEC, "retention": {"keepYoungerThan": "30m"}}, "keepYoungerThan must be at least 1h"),
        ({**SPEC, "retention": {"keepNewest": 1, "repositories": ["Team/*"]}},
         "spec.retention.repositories[0]: Invalid value"),
        ({**USERS, **STORAGE, "retention": {"keepNewest": 1}}, "retention needs garbageCollection"),
        ({**SPEC, "storage": {"persistentVolumeClaim": {"size": "1Gi"}}}, "retention needs storage.deleteEnabled"),
        ({**SPEC, "proxy": {"remoteURL": "https://upstream.example"}}, "retention does not apply to a pull-through"),
        ({**SPEC, "auth": {"mode": "token", "indexRef": {"name": "idx"}}}, "joined to a RegistryIndex"),
    ],
    ids=["no-keep-rule", "keep-zero", "days", "too-short", "uppercase-glob", "no-gc", "no-delete", "proxy",
         "joined"],
)
def test_invalid_retention_is_rejected_by_the_api_server(cluster, namespace, spec, message):
    result = cluster.kubectl("apply", "-f", "-", input=manifest("bad", namespace, spec), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def _job(client, name: str, namespace: str) -> dict | None:
    try:
        return client.get(Job, name, namespace=namespace).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def _read_only(client, namespace: str) -> bool:
    config = yaml.safe_load(get(client, "ConfigMap", "reg-config", namespace)["data"]["config.yml"])
    return config["storage"]["maintenance"]["readonly"]["enabled"]


def _workloads(namespace: str) -> str:
    """A Deployment scaled to zero and a suspended CronJob: they name images without running anything."""
    host = f"reg.{namespace}.svc"
    return f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: uses-app, namespace: {namespace}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: uses-app}}}}
  template:
    metadata: {{labels: {{app: uses-app}}}}
    spec: {{containers: [{{name: app, image: "{host}:5000/team/app:v1"}}]}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: uses-base, namespace: {namespace}}}
spec:
  schedule: "0 0 1 1 *"
  suspend: true
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{{name: base, image: "{host}.cluster.local:5000/base@{DIGEST}"}}]
          initContainers: [{{name: other, image: "elsewhere.example:5000/team/app:v2"}}]
"""


def test_requested_collection_applies_retention_read_write_first(
        cluster, kube_client, namespace, operator_with_rbac, wait_for):
    cluster.apply(_workloads(namespace))
    cluster.apply(manifest("reg", namespace, SPEC))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")

    started = time.monotonic()
    cluster.kubectl("annotate", "registry", "reg", "-n", namespace, f"{GC_REQUESTED}=1", "--overwrite")
    first = wait_for(lambda: _job(kube_client, "reg-retention", namespace), timeout=30, what="the retention Job")
    # The retention step runs against the read-write registry, before any GC Job exists.
    assert not _read_only(kube_client, namespace) and _job(kube_client, "reg-gc", namespace) is None
    config = json.loads(get(kube_client, "ConfigMap", "reg-retention", namespace)["data"]["config.json"])
    assert config["registry"] == f"https://reg.{namespace}.svc:5000"
    assert config["retention"] == {"repositories": ["*"], "keepNewest": 2, "keepTags": ["latest"], "dryRun": False}
    assert "team/app:v1" in config["protected"]["tags"] and f"base@{DIGEST}" in config["protected"]["digests"]
    assert "team/app:v2" not in config["protected"]["tags"]  # another registry's image
    pod = first["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["python", "-m", "registry_operator.prune"]
    assert first["metadata"]["annotations"]["registry.operator.dev/gc-request"] == "1"

    # kwok completes the retention pod: only then the GC Job, read-only.
    wait_for(lambda: _job(kube_client, "reg-gc", namespace), timeout=60, what="the GC Job after retention")
    assert _read_only(kube_client, namespace)
    status = wait_for(lambda: (s := (registry(kube_client, "reg", namespace).get("status") or {}).get(
        "garbageCollection") or {}).get("lastResult") and s, timeout=90, what="the collection's result")
    print(f"request -> result recorded (retention, then GC): {time.monotonic() - started:.2f}s")
    assert status["lastResult"] == "Succeeded" and status["lastRetention"]["result"] == "Succeeded"
    wait_for(lambda: _job(kube_client, "reg-retention", namespace) is None
             and get(kube_client, "ConfigMap", "reg-retention", namespace) is None, timeout=30,
             what="the retention Job and ConfigMap deleted with the GC Job")
    said = [e.reason for e in kube_client.list(Event, namespace=namespace) if e.involvedObject.kind == "Registry"]
    # (their order is the one asserted above: Events of the same second list in no particular order)
    assert [said.count(r) for r in ("RetentionStarted", "RetentionApplied", "GarbageCollectionStarted")] == [1, 1, 1]
    assert "Traceback" not in operator_with_rbac.log()  # retention's Events are not a collection's end

    # At rest: nothing is written, the record stays.
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready again")
    time.sleep(2)
    rv = registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"]
    cluster.kubectl("annotate", "registry", "reg", "-n", namespace, "unrelated=1")
    rv_after_annotate = registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"]
    time.sleep(3)
    assert rv_after_annotate != rv
    assert registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"] == rv_after_annotate
    assert _job(kube_client, "reg-retention", namespace) is None


def test_images_in_use_are_listed_in_pages(namespace, async_kube_client) -> None:
    """Every page of a paged list is read: five Deployments listed two at a time all count."""

    async def main() -> list[str]:
        for i in range(5):
            await async_kube_client.create(Deployment.from_dict({
                "metadata": {"name": f"app-{i}", "namespace": namespace},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": f"a{i}"}},
                         "template": {"metadata": {"labels": {"app": f"a{i}"}},
                                      "spec": {"containers": [{"name": "c", "image": f"reg.example/app:{i}"}]}}},
            }))
        return await inuse.workload_images(async_kube_client, [namespace], page=2)

    assert sorted(asyncio.run(main())) == [f"reg.example/app:{i}" for i in range(5)]
