"""The operator on a real control plane: create -> children -> Ready, drift, deletion, bad input, no-op."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Secret, Service
from lightkube.types import PatchType
from registries import condition, get, is_ready, manifest, owned, registry

from registry_operator import pki

USERS = {"auth": {"users": [{"name": "alice"}, {"name": "bob", "passwordSecretRef": {"name": "bob-password"}}]}}


def password_secret(namespace: str, name: str = "bob-password", password: str = "bob-secret-pw") -> str:
    data = base64.b64encode(password.encode()).decode()
    return (f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
            f"data:\n  password: {data}\n")


def test_create_gives_children_status_and_ready(cluster, kube_client, namespace, operator, wait_for):
    cluster.apply(password_secret(namespace))
    started = time.monotonic()
    cluster.apply(manifest("reg", namespace, USERS))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    print(f"create -> Ready: {time.monotonic() - started:.2f}s")

    status = registry(kube_client, "reg", namespace)["status"]
    assert status["endpoint"] == f"reg.{namespace}.svc:5000"
    assert status["caSecretName"] == "reg-ca" and status["credentialsSecretName"] == "reg-passwords"
    assert status["readyReplicas"] == 1 and status["certificateNotAfter"]
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded", "Warning"}
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Warning"] == "EphemeralStorage"

    children = owned(kube_client, namespace, "reg")
    assert set(children) >= {("Deployment", "reg"), ("Service", "reg"), ("ConfigMap", "reg-config"),
                             ("Secret", "reg-tls"), ("Secret", "reg-ca"), ("Secret", "reg-ca-key"),
                             ("Secret", "reg-htpasswd"), ("Secret", "reg-passwords"), ("Secret", "reg-http-secret")}
    tls = get(kube_client, "Secret", "reg-tls", namespace)
    assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    leaf = pki.load_chain(base64.b64decode(tls["data"]["tls.crt"]))[0]
    assert {"reg", f"reg.{namespace}", f"reg.{namespace}.svc", f"reg.{namespace}.svc.cluster.local"} <= pki.sans(leaf)
    htpasswd = base64.b64decode(get(kube_client, "Secret", "reg-htpasswd", namespace)["data"]["htpasswd"]).decode()
    assert [line.split(":")[0] for line in htpasswd.splitlines()] == ["alice", "bob"]

    # Printer columns, as a user sees them.
    out = cluster.kubectl("get", "registries", "-n", namespace).stdout
    assert "READY" in out and "ENDPOINT" in out and f"reg.{namespace}.svc:5000" in out and "htpasswd" in out

    # Nothing secret in status or in the operator's log.
    password = base64.b64decode(get(kube_client, "Secret", "reg-passwords", namespace)["data"]["alice"]).decode()
    assert password not in str(status) and password not in operator.log()
    assert "bob-secret-pw" not in operator.log() and "PRIVATE KEY" not in operator.log()


def test_settled_registry_reconciled_again_writes_nothing(cluster, kube_client, namespace, operator_factory,
                                                          wait_for):
    first = operator_factory()
    cluster.apply(password_secret(namespace))
    cluster.apply(manifest("reg", namespace, USERS))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    time.sleep(2)  # let the last child events settle
    before = owned(kube_client, namespace, "reg")
    registry_rv = registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"]
    first.stop()

    # A restart resumes every Registry: a full reconcile of a settled one.
    second = operator_factory(args=["--all-namespaces", "--log-level", "DEBUG"])
    second.wait_for_log(rf"Registry {namespace}/reg reconciled: 0 applied, 0 deleted, status unchanged", timeout=30)
    time.sleep(2)
    assert owned(kube_client, namespace, "reg") == before
    assert registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"] == registry_rv
    assert f"Registry {namespace}/reg: applied" not in second.log()


def test_drift_is_restored(cluster, kube_client, namespace, operator, wait_for):
    cluster.apply(password_secret(namespace))
    cluster.apply(manifest("reg", namespace, USERS))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")

    uid = get(kube_client, "Service", "reg", namespace)["metadata"]["uid"]
    kube_client.delete(Service, "reg", namespace=namespace)
    wait_for(lambda: (get(kube_client, "Service", "reg", namespace) or {}).get("metadata", {}).get("uid")
             not in (None, uid), timeout=30, what="Service re-created")

    kube_client.patch(Deployment, "reg", {"spec": {"template": {"spec": {"containers": [
        {"name": "registry", "image": "evil/registry:latest"}]}}}}, namespace=namespace)
    wait_for(lambda: get(kube_client, "Deployment", "reg", namespace)["spec"]["template"]["spec"]["containers"][0]
             ["image"].startswith("registry:3."), timeout=30, what="image restored")

    kube_client.delete(Secret, "reg-htpasswd", namespace=namespace)
    wait_for(lambda: get(kube_client, "Secret", "reg-htpasswd", namespace), timeout=30, what="htpasswd re-created")


def test_deletion_garbage_collects_children_but_keeps_the_claim(cluster, kube_client, namespace, operator,
                                                                wait_for):
    spec = {**USERS, "storage": {"persistentVolumeClaim": {"size": "1Gi"}}}
    cluster.apply(password_secret(namespace))
    cluster.apply(manifest("reg", namespace, spec))
    wait_for(lambda: get(kube_client, "Deployment", "reg", namespace), timeout=30, what="Deployment")
    assert get(kube_client, "PersistentVolumeClaim", "reg-data", namespace)
    cluster.kubectl("delete", "registry", "reg", "-n", namespace, "--wait=true")
    wait_for(lambda: not [k for k in owned(kube_client, namespace, "reg") if k[0] != "PersistentVolumeClaim"],
             timeout=90, what="children garbage-collected")
    assert get(kube_client, "PersistentVolumeClaim", "reg-data", namespace)


def test_missing_secret_is_reported_and_recovers(cluster, kube_client, namespace, operator, wait_for):
    cluster.apply(manifest("reg", namespace, USERS))

    def degraded():
        c = condition(kube_client, "reg", namespace, "Degraded")
        return c if c and c["status"] == "True" else None

    c = wait_for(degraded, timeout=30, what="Degraded")
    assert c["reason"] == "PasswordSecretNotFound" and "bob-password" in c["message"]
    assert condition(kube_client, "reg", namespace, "Ready")["status"] == "False"
    wait_for(lambda: cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                     "involvedObject.kind=Registry,reason=PasswordSecretNotFound",
                                     "-o", "name").stdout.strip(), timeout=10, what="Warning Event")

    cluster.apply(password_secret(namespace))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=30, what="Ready after the Secret appeared")
    htpasswd = base64.b64decode(get(kube_client, "Secret", "reg-htpasswd", namespace)["data"]["htpasswd"]).decode()
    assert htpasswd.startswith("alice:") and "\nbob:" in htpasswd


def test_bad_user_tls_secret_is_reported(cluster, kube_client, namespace, operator, wait_for):
    ca = pki.issue_ca("user CA")
    one, two = pki.issue_server(ca, ["reg.example"]), pki.issue_server(ca, ["reg.example"])
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    cluster.apply(f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: mine\n  namespace: {namespace}\n"
                  f"type: kubernetes.io/tls\ndata:\n  tls.crt: {b64(one.cert_pem)}\n  tls.key: {b64(two.key_pem)}\n")
    cluster.apply(manifest("reg", namespace, {"auth": {"users": [{"name": "a"}]},
                                              "tls": {"mode": "Secret", "secretName": "mine"}}))
    c = wait_for(lambda: (condition(kube_client, "reg", namespace, "Degraded") or {}).get("reason") == "TLSKeyMismatch"
                 and condition(kube_client, "reg", namespace, "Degraded"), timeout=30, what="TLSKeyMismatch")
    assert "PRIVATE" not in c["message"]
    # Fixing the Secret fixes the Registry, with no change to the Registry itself.
    kube_client.patch(Secret, "mine", {"data": {"tls.key": b64(one.key_pem)}}, namespace=namespace,
                      patch_type=PatchType.MERGE)
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=30, what="Ready with the fixed Secret")


def test_operator_with_its_own_rbac(cluster, kube_client, namespace, operator_with_rbac, wait_for):
    cluster.apply(password_secret(namespace))
    cluster.apply(manifest("reg", namespace, {**USERS, "auth": {**USERS["auth"], "mode": "token",
                  "access": [{"users": ["alice"], "repositories": ["*"], "actions": ["*"]}]}}))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready (own RBAC)")
    # Only this namespace: the operator also sees other tests' namespaces, some of them being deleted.
    log = [line for line in operator_with_rbac.log().splitlines() if namespace in line]
    assert not [line for line in log if "forbidden" in line.lower()], log[-20:]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"version": "4"}, 'spec.version: Unsupported value: "4"'),
        ({"replicas": 0}, "spec.replicas: Invalid value: 0"),
        ({"replicas": 2, **USERS}, "replicas > 1 needs storage.persistentVolumeClaim"),
        ({"tls": {"mode": "Secret"}, **USERS}, "tls.secretName is required when tls.mode is Secret"),
        ({"tls": {"mode": "Bogus"}, **USERS}, 'spec.tls.mode: Unsupported value: "Bogus"'),
        ({"tls": {"ipAddresses": ["not-an-ip"]}, **USERS}, "must be an IPv4 or IPv6 address"),
        ({"auth": {"mode": "htpasswd"}}, "auth.users must list at least one user"),
        ({"auth": {"users": [{"name": "al:ice"}]}}, "spec.auth.users[0].name: Invalid value"),
        ({"auth": {"users": [{"name": "a"}, {"name": "a"}]}}, 'spec.auth.users[1]: Duplicate value: {"name":"a"}'),
        ({"auth": {"mode": "token", "users": [{"name": "a"}], "access": [{"users": ["a"], "repositories": ["x"],
                                                                          "actions": ["write"]}]}},
         'Unsupported value: "write"'),
        ({"auth": {"users": [{"name": "a", "passwordSecretRef": {"key": "k"}}]}},
         "spec.auth.users[0].passwordSecretRef.name: Required value"),
        ({"auth": {"mode": "token", "users": [{"name": "a"}], "tokenAlgorithm": "HS256"}},
         'spec.auth.tokenAlgorithm: Unsupported value: "HS256"'),
        ({"auth": {"mode": "token", "users": [{"name": "a"}], "access": [{"users": ["a"], "actions": ["pull"]}]}},
         "a rule needs at least one repository pattern, or catalog: true"),
        ({"auth": {"mode": "token", "users": [{"name": "a"}], "tokenTTL": "10s"}}, "between 60s and 24h"),
        ({"auth": {"mode": "token", "users": [{"name": "a"}],
                   "access": [{"serviceAccounts": ["ci"], "repositories": ["x"], "actions": ["pull"]}]}},
         "spec.auth.access[0].serviceAccounts[0]: Invalid value"),
        ({"auth": {"mode": "token", "users": [{"name": "a"}],
                   "access": [{"serviceAccounts": [], "repositories": ["x"], "actions": ["pull"]}]}},
         "a rule must name users, groups, serviceAccounts, or set anonymous: true"),
        ({"auth": {"users": [{"name": "a"}], "access": [{"users": ["a"], "repositories": ["x"],
                                                         "actions": ["pull"]}]}},
         "auth.groups and auth.access are only used when auth.mode is token"),
        ({"storage": {"emptyDir": {}, "persistentVolumeClaim": {}}, **USERS}, "set only one of storage.emptyDir"),
        ({"service": {"nodePort": 30001}, **USERS}, "service.nodePort needs service.type NodePort"),
        ({"networkPolicy": {"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}, **USERS},
         "spec.networkPolicy.from[0].ipBlock.cidr: Invalid value"),
        ({"networkPolicy": {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}, **USERS},
         "a peer is either an ipBlock or namespace/pod selectors"),
        ({"networkPolicy": {"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]},
          **USERS}, "In and NotIn need values"),
        ({"garbageCollection": {"schedule": "0 3 * * *"}, **USERS},
         "spec.garbageCollection: Invalid value: garbageCollection needs storage.persistentVolumeClaim"),
        ({"version": "2.8", "storage": {"persistentVolumeClaim": {}}, "garbageCollection": {"deleteUntagged": True},
          **USERS}, "spec.garbageCollection.deleteUntagged: Invalid value: garbageCollection."
                    "deleteUntagged needs version 3"),
        ({"storage": {"persistentVolumeClaim": {}}, "garbageCollection": {"schedule": "@daily"}, **USERS},
         "spec.garbageCollection.schedule: Invalid value"),
        ({"auth": {"mode": "token", "indexRef": {"name": "idx"}}, "pullSecrets": {"namespaces": ["apps"]}},
         "spec.pullSecrets: Invalid value: pullSecrets needs the Registry's own users"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_registries_are_rejected_by_the_api_server(cluster, namespace, spec, message):
    result = cluster.kubectl("apply", "-f", "-", input=manifest("bad", namespace, spec), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("example", sorted(p.name for p in (Path(__file__).parents[2] / "examples").glob("*.yaml")))
def test_examples_are_accepted_by_the_api_server(cluster, namespace, example):
    path = Path(__file__).parents[2] / "examples" / example
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr
