"""A restart takes settled Registries as verified from the listing at start (`verified`), and only those.

The fast path reads one object per Registry instead of a dozen; these tests prove it is taken when nothing
changed and never when something did while the operator was away.
"""

from __future__ import annotations

import time

from lightkube.resources.core_v1 import ConfigMap, Service
from lightkube.types import PatchType
from registries import get, is_ready, manifest, owned, registry

SIMPLE = {"auth": {"users": [{"name": "alice"}]}}
DEBUG = ["--all-namespaces", "--log-level", "DEBUG"]
HAND_EDIT = "version: 0.1\n"


def _settle(cluster, kube_client, namespace, wait_for, names: list[str]) -> None:
    for name in names:
        cluster.apply(manifest(name, namespace, SIMPLE))
    for name in names:
        wait_for(lambda n=name: is_ready(kube_client, n, namespace), timeout=60, what=f"Registry {name} Ready")
    wait_for(lambda: all((registry(kube_client, n, namespace).get("status") or {}).get("childrenFingerprint")
                         for n in names), timeout=30, what="fingerprints in status")
    time.sleep(2)  # let the last child events settle


def test_a_settled_registry_is_verified_from_the_listing_with_no_write(cluster, kube_client, namespace,
                                                                       operator_factory, wait_for):
    first = operator_factory()
    _settle(cluster, kube_client, namespace, wait_for, ["reg"])
    before = owned(kube_client, namespace, "reg")
    version = registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"]
    first.stop()

    second = operator_factory(args=DEBUG)
    second.wait_for_log(rf"Registry {namespace}/reg: every child is as last verified", timeout=60)
    time.sleep(2)
    assert owned(kube_client, namespace, "reg") == before
    assert registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"] == version
    assert f"Registry {namespace}/reg reconciled:" not in second.log()  # no full reconcile was needed


def test_what_changed_while_the_operator_was_away_is_reconciled_in_full(cluster, kube_client, namespace,
                                                                        operator_factory, wait_for):
    first = operator_factory()
    _settle(cluster, kube_client, namespace, wait_for, ["edited", "removed", "calm"])
    first.stop()
    kube_client.patch(ConfigMap, "edited-config", {"data": {"config.yml": HAND_EDIT}},
                      namespace=namespace, patch_type=PatchType.MERGE)
    kube_client.delete(Service, "removed", namespace=namespace)

    second = operator_factory(args=DEBUG)
    wait_for(lambda: get(kube_client, "Service", "removed", namespace), timeout=60, what="Service back")
    wait_for(lambda: get(kube_client, "ConfigMap", "edited-config", namespace)["data"]["config.yml"] != HAND_EDIT,
             timeout=60, what="config taken back")
    second.wait_for_log(rf"Registry {namespace}/calm: every child is as last verified", timeout=60)
    assert f"Registry {namespace}/edited: every child" not in second.log()
    assert f"Registry {namespace}/removed: every child" not in second.log()
    second.stop()

    # Another operator image renders other token-service pods: a new setting is never taken as verified.
    third = operator_factory(args=DEBUG, env={"REGISTRY_OPERATOR_IMAGE": "registry-operator:9.9.9"})
    third.wait_for_log(rf"Registry {namespace}/calm reconciled:", timeout=60)
    assert "every child is as last verified" not in third.log()
