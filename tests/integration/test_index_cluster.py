"""RegistryIndex on a real control plane: Registries join it, a missing or deleted index, the schema."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import yaml
from registries import condition, get, is_ready, manifest, owned, registry

from registry_operator import pki
from registry_operator.kinds import RegistryIndex

INDEX = {
    "users": [{"name": "alice"}, {"name": "ci"}],
    "access": [{"users": ["ci"], "registries": ["prod"], "repositories": ["*"], "actions": ["pull", "push"]},
               {"users": ["alice", "ci"], "repositories": ["*"], "actions": ["pull"]}],
}
JOINED = {"auth": {"mode": "token", "indexRef": {"name": "idx"}}}
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "index.yaml"


def index_manifest(name: str, namespace: str, spec: dict) -> str:
    return yaml.safe_dump({"apiVersion": "registry.operator.dev/v1alpha1", "kind": "RegistryIndex",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def index_status(client, name: str, namespace: str) -> dict:
    return client.get(RegistryIndex, name, namespace=namespace).to_dict().get("status") or {}


def index_ready(client, name: str, namespace: str) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in index_status(client, name, namespace).get("conditions") or ())


def degraded_reason(client, name: str, namespace: str) -> str | None:
    c = condition(client, name, namespace, "Degraded")
    return c["reason"] if c and c["status"] == "True" else None


def test_registries_join_one_index(cluster, kube_client, namespace, operator, wait_for):
    started = time.monotonic()
    cluster.apply(index_manifest("idx", namespace, INDEX))
    cluster.apply(manifest("dev", namespace, JOINED))
    cluster.apply(manifest("prod", namespace, JOINED))
    for name in ("dev", "prod"):
        wait_for(lambda n=name: is_ready(kube_client, n, namespace), timeout=60, what=f"Registry {name} Ready")
    wait_for(lambda: index_ready(kube_client, "idx", namespace)
             and index_status(kube_client, "idx", namespace).get("registryCount") == 2,
             timeout=60, what="RegistryIndex Ready with 2 Registries")
    print(f"index + 2 joined Registries -> Ready: {time.monotonic() - started:.2f}s")

    status = index_status(kube_client, "idx", namespace)
    assert status["registries"] == [{"name": "dev", "endpoint": f"dev.{namespace}.svc:5000"},
                                    {"name": "prod", "endpoint": f"prod.{namespace}.svc:5000"}]
    assert status["userCount"] == 2 and status["tokenRealm"] == f"https://idx-token.{namespace}.svc:5001/token"
    config = json.loads(get(kube_client, "ConfigMap", "idx-token", namespace)["data"]["config.json"])
    assert config["services"] == [f"dev.{namespace}.svc", f"prod.{namespace}.svc"]
    assert config["access"][0]["services"] == [f"prod.{namespace}.svc"]

    for name in ("dev", "prod"):
        reg = registry(kube_client, name, namespace)["status"]
        assert reg["index"] == "idx" and reg["tokenRealm"] == status["tokenRealm"]
        assert not [k for k in owned(kube_client, namespace, name) if k[1].startswith(f"{name}-token")]
        token = yaml.safe_load(get(kube_client, "ConfigMap", f"{name}-config", namespace)["data"]["config.yml"])
        assert token["auth"]["token"]["service"] == f"{name}.{namespace}.svc"
        assert token["auth"]["token"]["realm"] == status["tokenRealm"]

    out = cluster.kubectl("get", "rix", "-n", namespace).stdout
    assert "REGISTRIES" in out and "USERS" in out and "idx" in out, out
    assert out.splitlines()[1].split()[1:4] == ["True", "2", "2"], out

    # Leaving the index: the index stops issuing tokens for that Registry.
    cluster.apply(manifest("dev", namespace, {"auth": {"mode": "htpasswd", "users": [{"name": "a"}]}}))
    wait_for(lambda: index_status(kube_client, "idx", namespace).get("registryCount") == 1, timeout=30,
             what="the index to drop dev")
    config = json.loads(get(kube_client, "ConfigMap", "idx-token", namespace)["data"]["config.json"])
    assert config["services"] == [f"prod.{namespace}.svc"]


def test_missing_then_deleted_index_degrades_without_loop(cluster, kube_client, namespace, operator, wait_for):
    cluster.apply(manifest("prod", namespace, JOINED))
    wait_for(lambda: degraded_reason(kube_client, "prod", namespace) == "IndexNotFound", timeout=30,
             what="Degraded IndexNotFound")
    assert owned(kube_client, namespace, "prod") == {}  # nothing created without the index
    version = registry(kube_client, "prod", namespace)["metadata"]["resourceVersion"]
    time.sleep(3)  # said once: no status rewrites, no retries
    assert registry(kube_client, "prod", namespace)["metadata"]["resourceVersion"] == version
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.kind=Registry,reason=IndexNotFound", "-o", "name").stdout.split()
    assert len(events) == 1, events

    cluster.apply(index_manifest("idx", namespace, INDEX))  # the index appears: the Registry joins by itself
    wait_for(lambda: is_ready(kube_client, "prod", namespace), timeout=60, what="Registry Ready after the index")
    children = owned(kube_client, namespace, "prod")

    cluster.kubectl("delete", "registryindex", "idx", "-n", namespace)
    wait_for(lambda: degraded_reason(kube_client, "prod", namespace) == "IndexNotFound", timeout=30,
             what="Degraded IndexNotFound after deletion")
    c = condition(kube_client, "prod", namespace, "Degraded")
    assert "keeps its last configuration" in c["message"]
    time.sleep(2)
    assert owned(kube_client, namespace, "prod") == children  # the registry keeps running as it was


def test_index_in_another_namespace_is_a_condition(cluster, kube_client, namespace, operator, wait_for):
    spec = {"auth": {"mode": "token", "indexRef": {"name": "idx", "namespace": "elsewhere"}}}
    cluster.apply(manifest("prod", namespace, spec))
    wait_for(lambda: degraded_reason(kube_client, "prod", namespace) == "IndexInOtherNamespace", timeout=30,
             what="Degraded IndexInOtherNamespace")
    assert owned(kube_client, namespace, "prod") == {}


@pytest.mark.parametrize(
    ("kind", "spec", "message"),
    [
        ("Registry", {"auth": {"mode": "htpasswd", "indexRef": {"name": "idx"}}},
         "auth.indexRef needs auth.mode token"),
        ("Registry", {"auth": {"mode": "token", "indexRef": {"name": "idx"}, "users": [{"name": "a"}]}},
         "with auth.indexRef, users, groups, access and tokenRealm are the RegistryIndex's"),
        ("RegistryIndex", {"users": []}, "should have at least 1 items"),
        ("RegistryIndex", {"users": [{"name": "a"}], "tokenTTL": "10s"}, "between 60s and 24h"),
    ],
)
def test_invalid_joins_and_indexes_are_rejected(cluster, namespace, kind, spec, message):
    text = manifest("bad", namespace, spec) if kind == "Registry" else index_manifest("bad", namespace, spec)
    result = cluster.kubectl("apply", "-f", "-", input=text, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_settled_index_and_joined_registry_write_nothing_on_restart(cluster, kube_client, namespace,
                                                                    operator_factory, wait_for):
    first = operator_factory()
    cluster.apply(index_manifest("idx", namespace, INDEX))
    cluster.apply(manifest("prod", namespace, JOINED))
    wait_for(lambda: is_ready(kube_client, "prod", namespace) and index_ready(kube_client, "idx", namespace)
             and index_status(kube_client, "idx", namespace).get("registryCount") == 1, timeout=60, what="settled")
    time.sleep(2)  # let the last child events settle
    before = owned(kube_client, namespace, "idx"), owned(kube_client, namespace, "prod")
    versions = (registry(kube_client, "prod", namespace)["metadata"]["resourceVersion"],
                kube_client.get(RegistryIndex, "idx", namespace=namespace).metadata.resourceVersion)
    first.stop()

    second = operator_factory(args=["--all-namespaces", "--log-level", "DEBUG"])
    second.wait_for_log(rf"RegistryIndex {namespace}/idx reconciled: 0 applied, status unchanged", timeout=30)
    second.wait_for_log(rf"Registry {namespace}/prod reconciled: 0 applied, 0 deleted, status unchanged", timeout=30)
    time.sleep(2)
    assert (owned(kube_client, namespace, "idx"), owned(kube_client, namespace, "prod")) == before
    assert (registry(kube_client, "prod", namespace)["metadata"]["resourceVersion"],
            kube_client.get(RegistryIndex, "idx", namespace=namespace).metadata.resourceVersion) == versions


def test_the_example_applies_and_gets_ready(cluster, kube_client, namespace, operator, wait_for):
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    cluster.apply(yaml.safe_dump_all(docs))
    for doc in docs:
        if doc["kind"] == "Registry":
            name = doc["metadata"]["name"]
            wait_for(lambda n=name: is_ready(kube_client, n, namespace), timeout=60, what=f"Registry {name} Ready")
    wait_for(lambda: index_status(kube_client, "accounts", namespace).get("registryCount") == 2, timeout=30,
             what="the example's index with 2 Registries")


def test_index_changes_reach_joined_registries(cluster, kube_client, namespace, operator, wait_for):
    """A rotated signing key (a new algorithm) is trusted next to the old one and rolls every joined registry;
    a new realm reaches their configs. Both travel as triggers from the index's events, no polling."""
    cluster.apply(index_manifest("idx", namespace, INDEX))
    for name in ("dev", "prod"):
        cluster.apply(manifest(name, namespace, JOINED))
    for name in ("dev", "prod"):
        wait_for(lambda n=name: is_ready(kube_client, n, namespace), timeout=60, what=f"Registry {name} Ready")

    def template_hash(name: str) -> str:
        return get(kube_client, "Deployment", name, namespace)["spec"]["template"]["metadata"]["annotations"][
            "registry.operator.dev/inputs-hash"]

    def trusted() -> list[bytes]:
        data = get(kube_client, "Secret", "idx-token-signing", namespace)["data"]
        return pki.split(base64.b64decode(data["ca.crt"]))

    hashes = {name: template_hash(name) for name in ("dev", "prod")}
    old = trusted()
    assert len(old) == 1
    started = time.monotonic()
    cluster.apply(index_manifest("idx", namespace, {**INDEX, "tokenAlgorithm": "RS256"}))
    wait_for(lambda: all(template_hash(n) != h for n, h in hashes.items()), timeout=30,
             what="both joined registries to roll onto the new trust bundle")
    print(f"index key rotation -> both registries' pod templates updated: {time.monotonic() - started:.2f}s")
    bundle = trusted()
    assert len(bundle) == 2 and bundle[1] == old[0]  # the old key stays trusted for the overlap
    wait_for(lambda: cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                     "involvedObject.kind=RegistryIndex,reason=SigningKeyRotated",
                                     "-o", "name").stdout.strip(), timeout=10, what="SigningKeyRotated Event")

    realm = "https://tokens.example.internal/token"
    cluster.apply(index_manifest("idx", namespace, {**INDEX, "tokenAlgorithm": "RS256", "tokenRealm": realm}))
    for name in ("dev", "prod"):
        wait_for(lambda n=name: yaml.safe_load(get(kube_client, "ConfigMap", f"{n}-config", namespace)["data"][
            "config.yml"])["auth"]["token"]["realm"] == realm, timeout=30, what=f"{name} to use the new realm")
