"""storage.s3 on a real control plane: the schema's refusals, the objects rendered for a bucket, the status, and
the credentials Secret: reported while missing, its keys only ever referenced, a rotation rolling the pods."""

from __future__ import annotations

import base64
import time

import pytest
from lightkube.resources.core_v1 import Secret, ServiceAccount
from lightkube.types import PatchType
from registries import condition, get, is_ready, manifest, owned, registry

USERS = {"auth": {"users": [{"name": "alice"}]}}
S3 = {"bucket": "images", "endpoint": "https://s3.example:9000", "forcePathStyle": True,
      "credentialsSecretRef": {"name": "s3-creds"}}
SECRET_KEY = "wJalrXUtnFEMI-integration-secret"


def credentials(namespace: str, secret_key: str = SECRET_KEY) -> str:
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    return (f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: s3-creds\n  namespace: {namespace}\n"
            f"data:\n  accessKeyId: {b64('AKIDINTEGRATION')}\n  secretAccessKey: {b64(secret_key)}\n")


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"s3": S3, "persistentVolumeClaim": {}}, "set only one of storage.emptyDir, storage.persistentVolumeClaim"),
        ({"s3": S3, "emptyDir": {}}, "set only one of storage.emptyDir, storage.persistentVolumeClaim"),
        ({"s3": {"region": "eu-west-1"}}, "spec.storage.s3.bucket: Required value"),
        ({"s3": {"bucket": "Images_Upper"}}, "spec.storage.s3.bucket: Invalid value"),
        ({"s3": {"bucket": "images", "endpoint": "ftp://s3.example"}}, "spec.storage.s3.endpoint: Invalid value"),
        ({"s3": {"bucket": "images", "credentialsSecretRef": {"name": "a/../b"}}},
         "spec.storage.s3.credentialsSecretRef.name: Invalid value"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_schema_refuses(cluster, namespace, storage, message):
    result = cluster.kubectl("apply", "-f", "-", input=manifest("bad", namespace, {**USERS, "storage": storage}),
                             check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_a_bucket_allows_replicas_and_garbage_collection(cluster, namespace):
    spec = {**USERS, "replicas": 2, "storage": {"s3": S3}, "garbageCollection": {"schedule": "0 3 * * 0"}}
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest("ok", namespace, spec),
                             check=False)
    assert result.returncode == 0, result.stderr


def test_bucket_registry_objects_status_and_credentials(cluster, kube_client, namespace, operator, wait_for):
    # Workload identity as a user sets it up: their own ServiceAccount, bound to a cloud role by annotation.
    cluster.apply(f"apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: registry-s3\n  namespace: {namespace}\n"
                  "  annotations: {eks.amazonaws.com/role-arn: 'arn:aws:iam::111122223333:role/registry'}\n")
    account_rv = kube_client.get(ServiceAccount, "registry-s3", namespace=namespace).metadata.resourceVersion
    s3 = {**S3, "serviceAccountName": "registry-s3"}
    cluster.apply(manifest("reg", namespace, {**USERS, "replicas": 2, "storage": {"s3": s3}}))

    # The credentials Secret does not exist yet: said, with its name, and nothing about keys.
    c = wait_for(lambda: (d := condition(kube_client, "reg", namespace, "Degraded")) and d["status"] == "True" and d,
                 timeout=30, what="Degraded")
    assert c["reason"] == "S3CredentialsNotFound" and "s3-creds" in c["message"]

    cluster.apply(credentials(namespace))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Ready once the Secret exists")
    status = registry(kube_client, "reg", namespace)["status"]
    assert status["storage"] == "S3" and status["replicas"] == 2
    assert status["unwatchedSecrets"] == ["s3-creds"]  # unlabelled: polled
    assert not [k for k in owned(kube_client, namespace, "reg") if k[0] == "PersistentVolumeClaim"]
    assert get(kube_client, "PersistentVolumeClaim", "reg-data", namespace) is None

    deployment = get(kube_client, "Deployment", "reg", namespace)
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["REGISTRY_STORAGE_S3_SECRETKEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds",
                                                                                  "key": "secretAccessKey"}
    assert "data" not in {v["name"] for v in pod["volumes"]}
    assert pod["serviceAccountName"] == "registry-s3" and pod["automountServiceAccountToken"] is False
    # The operator runs pods as the user's ServiceAccount and never writes it.
    assert kube_client.get(ServiceAccount, "registry-s3", namespace=namespace).metadata.resourceVersion == account_rv
    config = get(kube_client, "ConfigMap", "reg-config", namespace)["data"]["config.yml"]
    assert "regionendpoint: https://s3.example:9000" in config and "bucket: images" in config
    assert SECRET_KEY not in config and SECRET_KEY not in str(status) and SECRET_KEY not in operator.log()
    assert "AKIDINTEGRATION" not in config and "AKIDINTEGRATION" not in operator.log()

    out = cluster.kubectl("get", "registries", "-n", namespace).stdout
    assert "STORAGE" in out and " S3 " in out

    # At rest, the polled Secret costs reads only: nothing is written across a poll or two.
    time.sleep(2)  # let the last child events settle, as test_registry's no-op test does
    before_rest = owned(kube_client, namespace, "reg"), registry(kube_client, "reg", namespace)["metadata"]
    time.sleep(12)  # the operator reads unlabelled referenced Secrets every 10 s
    assert owned(kube_client, namespace, "reg") == before_rest[0]
    after = registry(kube_client, "reg", namespace)["metadata"]
    assert after["resourceVersion"] == before_rest[1]["resourceVersion"]

    # Rotating the key in the Secret (the operator polls it) rolls the registry's pods.
    before = deployment["spec"]["template"]["metadata"]["annotations"]["registry.operator.dev/inputs-hash"]
    kube_client.patch(Secret, "s3-creds", {"data": {"secretAccessKey": base64.b64encode(b"rotated").decode()}},
                      namespace=namespace, patch_type=PatchType.MERGE)

    def rolled():
        d = get(kube_client, "Deployment", "reg", namespace)
        return d["spec"]["template"]["metadata"]["annotations"]["registry.operator.dev/inputs-hash"] != before

    wait_for(rolled, timeout=40, what="the pod template to change with the rotated key")


def test_a_missing_service_account_is_said_and_its_arrival_noticed(cluster, kube_client, namespace, operator,
                                                                   wait_for):
    # Without the account the ReplicaSet controller creates no pod: the rollout alone would wait forever, silent.
    cluster.apply(credentials(namespace))
    s3 = {**S3, "serviceAccountName": "registry-s3"}
    cluster.apply(manifest("reg", namespace, {**USERS, "storage": {"s3": s3}}))
    c = wait_for(lambda: (d := condition(kube_client, "reg", namespace, "Degraded")) and d["status"] == "True" and d,
                 timeout=30, what="Degraded")
    assert c["reason"] == "ServiceAccountNotFound" and "registry-s3" in c["message"]

    cluster.apply(f"apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: registry-s3\n  namespace: {namespace}\n")
    wait_for(lambda: condition(kube_client, "reg", namespace, "Degraded")["status"] == "False", timeout=30,
             what="Degraded cleared once the ServiceAccount exists")
