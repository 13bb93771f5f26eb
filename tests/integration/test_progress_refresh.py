"""A Deployment's progress refreshes status without a full reconcile (`progress`), and a hand edit of a
Deployment (its spec, or our metadata) still gets the full one, which repairs it."""

from __future__ import annotations

from lightkube.resources.apps_v1 import Deployment
from lightkube.types import PatchType
from registries import get, is_ready, manifest

from registry_operator.names import APPLIED_HASH

SIMPLE = {"auth": {"users": [{"name": "alice"}]}}
DEBUG = ["--all-namespaces", "--log-level", "DEBUG"]


def test_progress_refreshes_status_and_edits_are_still_repaired(cluster, kube_client, namespace, operator_factory,
                                                                wait_for):
    op = operator_factory(args=DEBUG)
    cluster.apply(manifest("reg", namespace, SIMPLE))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    op.wait_for_log(rf"Registry {namespace}/reg: status refreshed from its Deployments, written", timeout=30)
    applied = get(kube_client, "Deployment", "reg", namespace)["metadata"]["annotations"][APPLIED_HASH]

    # Our intent hash removed by hand (metadata only: the Deployment's generation stays).
    kube_client.patch(Deployment, "reg", {"metadata": {"annotations": {APPLIED_HASH: None}}}, namespace=namespace,
                      patch_type=PatchType.MERGE)
    wait_for(lambda: (get(kube_client, "Deployment", "reg", namespace)["metadata"].get("annotations") or {})
             .get(APPLIED_HASH) == applied, timeout=60, what="intent hash restored")

    # Scaled by hand (a new generation).
    kube_client.patch(Deployment, "reg", {"spec": {"replicas": 3}}, namespace=namespace, patch_type=PatchType.MERGE)
    wait_for(lambda: get(kube_client, "Deployment", "reg", namespace)["spec"]["replicas"] == 1, timeout=60,
             what="replicas taken back")
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready again")
