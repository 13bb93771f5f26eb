"""spec.networkPolicy on the real API server: a policy per workload, peers passed through, disabled deletes."""

from __future__ import annotations

from registries import get, is_ready, manifest

USERS = {"auth": {"mode": "token", "users": [{"name": "alice"}]}}
PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "builds"}}}


def test_policies_follow_the_spec(cluster, kube_client, namespace, operator, wait_for):
    cluster.apply(manifest("reg", namespace, USERS))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    registry, token = (get(kube_client, "NetworkPolicy", n, namespace) for n in ("reg", "reg-token"))
    assert registry and token
    assert registry["metadata"]["ownerReferences"][0]["kind"] == "Registry"
    assert [p["port"] for p in registry["spec"]["ingress"][0]["ports"]] == [5000]
    assert "from" not in registry["spec"]["ingress"][0]  # any source, serving port only

    cluster.apply(manifest("reg", namespace, {**USERS, "networkPolicy": {"from": [PEER]}}))
    wait_for(lambda: get(kube_client, "NetworkPolicy", "reg", namespace)["spec"]["ingress"][0].get("from") == [PEER],
             timeout=30, what="peers applied")

    cluster.apply(manifest("reg", namespace, {**USERS, "networkPolicy": {"enabled": False}}))
    wait_for(lambda: get(kube_client, "NetworkPolicy", "reg", namespace) is None
             and get(kube_client, "NetworkPolicy", "reg-token", namespace) is None,
             timeout=30, what="policies deleted")  # fmt: skip
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=30, what="Registry Ready")
