"""spec.redis on the real API server: what the schema refuses, what the operator renders from it, a missing
password Secret reported as Degraded until it appears, and an unreachable Redis in the `Redis` condition (a
closed loopback port: never DNS)."""

from __future__ import annotations

import base64
import socket

import pytest
import yaml
from registries import condition, get, is_ready, manifest, registry
from test_safe_writes import run

from registry_operator.reconcile import reconcile

USERS = {"auth": {"users": [{"name": "alice"}]}}
CLAIM = {"storage": {"persistentVolumeClaim": {"size": "1Gi"}}}


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]


REDIS = {"address": f"127.0.0.1:{_closed_port()}", "db": 2, "passwordSecretRef": {"name": "redis-auth", "key": "pw"}}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"redis": {"address": "redis:6379"}, **USERS},
         "spec.redis: Invalid value: redis needs storage.persistentVolumeClaim"),
        ({"redis": {"address": "redis"}, **CLAIM, **USERS}, "spec.redis.address: Invalid value"),
        ({"redis": {"address": "redis:6379/0"}, **CLAIM, **USERS}, "spec.redis.address: Invalid value"),
        ({"redis": {"address": "redis:6379", "db": -1}, **CLAIM, **USERS}, "spec.redis.db: Invalid value"),
        ({"redis": {"db": 1}, **CLAIM, **USERS}, "spec.redis.address: Required value"),
    ],
    ids=["emptyDir", "no-port", "path", "negative-db", "no-address"],
)
def test_invalid_redis_is_rejected_by_the_api_server(cluster, namespace, spec, message):
    result = cluster.kubectl("apply", "-f", "-", input=manifest("bad", namespace, spec), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_redis_cache_rendered_and_a_missing_password_secret_reported(
    cluster, kube_client, namespace, operator, wait_for
):
    cluster.apply(manifest("reg", namespace, {**USERS, **CLAIM, "redis": REDIS}))
    degraded = wait_for(lambda: (c := condition(kube_client, "reg", namespace, "Degraded")) and c["status"] == "True"
                        and c, timeout=60, what="Degraded while the password Secret is missing")  # fmt: skip
    assert degraded["reason"] == "RedisPasswordSecretNotFound", degraded
    config = yaml.safe_load(get(kube_client, "ConfigMap", "reg-config", namespace)["data"]["config.yml"])
    assert config["redis"]["addrs"] == [REDIS["address"]] and config["redis"]["db"] == 2
    assert config["storage"]["cache"]["blobdescriptor"] == "redis" and "password" not in config["redis"]
    pod = get(kube_client, "Deployment", "reg", namespace)["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["REGISTRY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "pw"}

    password = base64.b64encode(b"redis-password").decode()
    cluster.apply(f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: redis-auth\n  namespace: {namespace}\n"
                  f"  labels: {{registry.operator.dev/watch: 'true'}}\ndata:\n  pw: {password}\n")  # fmt: skip
    wait_for(lambda: is_ready(kube_client, "reg", namespace)
             and condition(kube_client, "reg", namespace, "Degraded")["status"] == "False",
             timeout=60, what="Ready and no longer Degraded once the Secret exists")  # fmt: skip
    redis = condition(kube_client, "reg", namespace, "Redis")
    assert (redis["status"], redis["reason"]) == ("False", "RedisUnreachable"), redis  # Ready all the same
    assert "redis-password" not in str(registry(kube_client, "reg", namespace))


def test_replicas_with_redis_settle_with_no_writes(cluster, kube_client, kubeconfig, namespace, wait_for):
    """Spread constraints, the password's secretKeyRef and the probe's condition add nothing to rewrite."""
    password = base64.b64encode(b"redis-password").decode()
    cluster.apply(f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: redis-auth\n  namespace: {namespace}\n"
                  f"data:\n  pw: {password}\n")  # fmt: skip
    shared = {"storage": {"persistentVolumeClaim": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}}
    cluster.apply(manifest("reg", namespace, {**USERS, **shared, "replicas": 2, "redis": REDIS}))
    first = run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    assert ("Deployment", "reg") in first.written
    wait_for(lambda: (get(kube_client, "Deployment", "reg", namespace).get("status") or {}).get("availableReplicas")
             == 2, what="two replicas available")  # fmt: skip
    run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))  # status catches up with the rollout
    settled = run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    assert settled.written == [] and not settled.status_written
    assert condition(kube_client, "reg", namespace, "Redis")["reason"] == "RedisUnreachable"
