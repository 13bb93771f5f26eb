"""Monitoring on a real control plane: the operator's /metrics follow status and leave with the Registry; a
PodMonitor per Registry exactly when prometheus-operator's CRD is served."""

from __future__ import annotations

import datetime as dt
import urllib.request

import pytest
from lightkube import ApiError
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.networking_v1 import NetworkPolicy
from registries import is_ready, manifest, registry

from registry_operator.kinds import PodMonitor, Registry

CRD = "podmonitors.monitoring.coreos.com"

USERS = {"auth": {"users": [{"name": "alice"}]}}
# prometheus-operator's CRD reduced to what the API server needs to serve the kind.
POD_MONITOR_CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {CRD}}}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {{plural: podmonitors, singular: podmonitor, kind: PodMonitor, listKind: PodMonitorList}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
"""


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, metric: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == metric and want <= ls]
    return sum(found) if found else None


def test_registry_series_follow_status_and_vanish_on_delete(cluster, kube_client, namespace, operator, wait_for):
    assert operator.metrics_url, "start_operator gives every operator a metrics port"
    cluster.apply(manifest("reg", namespace, USERS))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    not_after = dt.datetime.strptime(registry(kube_client, "reg", namespace)["status"]["certificateNotAfter"],
                                     "%Y-%m-%dT%H:%M:%S%z").timestamp()
    ours = {"namespace": namespace, "name": "reg"}

    samples = wait_for(lambda: (s := scrape(operator.metrics_url)) and value(
        s, "registry_operator_registry_condition", condition="Ready", **ours) == 1 and s,
        timeout=10, what="Ready=1 in the operator's metrics")
    assert value(samples, "registry_operator_registry_condition", condition="Degraded", **ours) == 0
    assert value(samples, "registry_operator_certificate_expiration_timestamp_seconds", **ours) == not_after
    assert value(samples, "registry_operator_registries", condition="Ready", status="True") >= 1
    assert value(samples, "registry_operator_api_writes_total", kind="Deployment", verb="apply") >= 1
    assert value(samples, "registry_operator_api_writes_total", kind="Registry", verb="status") >= 1
    assert value(samples, "registry_operator_reconcile_duration_seconds_count", result="success") >= 1
    assert value(samples, "registry_operator_triggers_total", outcome="coalesced") >= 1  # child events fold in
    assert value(samples, "registry_operator_queue_depth") is not None

    kube_client.delete(Registry, "reg", namespace=namespace)
    wait_for(lambda: value(scrape(operator.metrics_url), "registry_operator_registry_condition", **ours) is None,
             timeout=20, what="the deleted Registry's series to vanish")
    samples = scrape(operator.metrics_url)
    assert value(samples, "registry_operator_certificate_expiration_timestamp_seconds", **ours) is None


@pytest.fixture
def pod_monitor_crd(cluster, kube_client, wait_for):
    """PodMonitor served for one test, gone again (not just terminating) before the next operator starts."""
    cluster.apply(POD_MONITOR_CRD)
    wait_for(lambda: any(c.type == "Established" and c.status == "True"
                         for c in kube_client.get(CustomResourceDefinition, CRD).status.conditions or ()),
             timeout=20, what="the PodMonitor CRD established")
    yield
    kube_client.delete(CustomResourceDefinition, CRD)

    def gone() -> bool:
        try:
            kube_client.get(CustomResourceDefinition, CRD)
        except ApiError as exc:
            return exc.status.code == 404
        return False

    wait_for(gone, timeout=60, what="the PodMonitor CRD deleted")


def test_a_pod_monitor_per_registry_when_the_crd_is_served(
    pod_monitor_crd, cluster, kube_client, namespace, operator_factory, operator_rbac_kubeconfig, wait_for
):
    # Started after the CRD (it asks once); only this namespace, so other tests' Registries add no writes.
    operator = operator_factory(kubeconfig=operator_rbac_kubeconfig, args=["--namespace", namespace])
    cluster.apply(manifest("reg", namespace, USERS))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    monitor = kube_client.get(PodMonitor, "reg", namespace=namespace).to_dict()
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "reg"
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "debug"
    (owner,) = monitor["metadata"]["ownerReferences"]
    assert owner["uid"] == registry(kube_client, "reg", namespace)["metadata"]["uid"] and owner["controller"]
    assert "monitoring.coreos.com/v1 serves podmonitors: one PodMonitor per Registry" in operator.log()
    ingress = kube_client.get(NetworkPolicy, "reg", namespace=namespace).to_dict()["spec"]["ingress"]
    assert [rule["ports"][0]["port"] for rule in ingress] == [5000, 5001]  # serving; debug for Prometheus only
    assert ingress[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "prometheus"
    samples = scrape(operator.metrics_url)
    assert value(samples, "registry_operator_api_writes_total", kind="PodMonitor", verb="apply") == 1


def test_no_pod_monitor_without_the_crd(cluster, kube_client, namespace, operator, wait_for):
    cluster.apply(manifest("reg", namespace, USERS))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    assert value(scrape(operator.metrics_url), "registry_operator_api_writes_total", kind="PodMonitor") is None
    assert "PodMonitor" not in operator.log()
