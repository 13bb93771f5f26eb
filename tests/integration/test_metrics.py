"""The operator's /metrics on a real control plane: per-Registry series follow status and leave with the Registry."""

from __future__ import annotations

import datetime as dt
import urllib.request

from registries import is_ready, manifest, registry

from registry_operator.kinds import Registry


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
    cluster.apply(manifest("reg", namespace, {"auth": {"users": [{"name": "alice"}]}}))
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
