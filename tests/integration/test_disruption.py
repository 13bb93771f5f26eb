"""More than one replica: PodDisruptionBudgets and a second token-service pod; back to one: budgets deleted."""

from __future__ import annotations

from registries import get, manifest

SHARED = {"replicas": 2, "storage": {"persistentVolumeClaim": {"accessModes": ["ReadWriteMany"], "size": "1Gi"}},
          "auth": {"mode": "token", "users": [{"name": "alice"}]}}


def test_budgets_follow_the_replicas(cluster, kube_client, namespace, operator, wait_for):
    cluster.apply(manifest("reg", namespace, SHARED))
    budgets = wait_for(lambda: [get(kube_client, "PodDisruptionBudget", n, namespace) for n in ("reg", "reg-token")]
                       if get(kube_client, "PodDisruptionBudget", "reg-token", namespace) else None,
                       timeout=60, what="PodDisruptionBudgets")  # fmt: skip
    assert all(b["spec"]["maxUnavailable"] == 1 and b["metadata"]["ownerReferences"][0]["kind"] == "Registry"
               for b in budgets)  # fmt: skip
    def token_replicas() -> int | None:
        return (get(kube_client, "Deployment", "reg-token", namespace) or {}).get("spec", {}).get("replicas")

    wait_for(lambda: token_replicas() == 2, timeout=30, what="two token pods")

    cluster.apply(manifest("reg", namespace, {**SHARED, "replicas": 1}))
    wait_for(lambda: get(kube_client, "PodDisruptionBudget", "reg", namespace) is None
             and get(kube_client, "PodDisruptionBudget", "reg-token", namespace) is None,
             timeout=30, what="budgets deleted")  # fmt: skip
    wait_for(lambda: token_replicas() == 1, timeout=30, what="one token pod")
