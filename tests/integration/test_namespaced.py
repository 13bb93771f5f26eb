"""The operator scoped to named namespaces starts working at once under the shipped RBAC."""

from __future__ import annotations

import time

from registries import is_ready, manifest


def test_named_namespace_needs_no_namespace_list(cluster, kube_client, namespace, operator_factory,
                                                 operator_rbac_kubeconfig, wait_for):
    started = time.monotonic()
    op = operator_factory(kubeconfig=operator_rbac_kubeconfig, args=["--namespace", namespace])
    cluster.apply(manifest("reg", namespace, {"auth": {"users": [{"name": "alice"}]}}))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=30, what="Registry Ready")
    print(f"operator start to Ready: {time.monotonic() - started:.1f}s")
    assert "Not enough permissions to list namespaces" not in op.log()
