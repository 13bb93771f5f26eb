"""The metrics contract that alerts and dashboards rely on: names, types, labels, and no stale Registries."""

import asyncio

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from registry_operator import metrics
from registry_operator.coalesce import Coalescer, Retry

STATUS = {
    "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "Progressing", "status": "False"},
        {"type": "Degraded", "status": "False"}, {"type": "Warning", "status": "True"},
    ],
    "certificateNotAfter": "2027-03-01T12:00:00Z",
}


def families() -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}


def sample(metric: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for s in family.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@pytest.mark.parametrize(("name", "type_", "labels"), [
    ("registry_operator_reconcile_duration_seconds", "histogram", {"result"}),
    ("registry_operator_reconcile_errors", "counter", {"reason"}),
    ("registry_operator_api_writes", "counter", {"kind", "verb"}),
    ("registry_operator_queue_depth", "gauge", set()),
    ("registry_operator_triggers", "counter", {"outcome"}),
    ("registry_operator_registry_condition", "gauge", {"namespace", "name", "condition"}),
    ("registry_operator_registries", "gauge", {"condition", "status"}),
    ("registry_operator_certificate_expiration_timestamp_seconds", "gauge", {"namespace", "name"}),
    ("registry_operator_gc_runs", "counter", {"result"}),
    ("registry_operator_gc_freed_bytes", "counter", set()),
])
def test_names_types_and_labels(name, type_, labels):
    metrics.REGISTRIES.record("ns", "typed", STATUS)
    with metrics.reconciling():
        pass
    with pytest.raises(Retry), metrics.reconciling():
        raise Retry("Secret 'x': 503", "ApplyFailed")
    metrics.API_WRITES.labels("Secret", "apply").inc(0)
    metrics.TRIGGERS.labels("started").inc(0)
    metrics.GC_RUNS.labels("Succeeded").inc(0)
    family = families()[name]
    assert family.type == type_
    samples = [s for s in family.samples if not s.name.endswith(("_created", "_bucket"))]
    assert samples and all(set(s.labels) == labels for s in samples)
    metrics.REGISTRIES.forget("ns", "typed")


def test_per_registry_series_follow_the_last_status_and_vanish_with_the_registry():
    # The registry is process-wide: tests that run reconcile in-process (integration) leave their Registries.
    before = sample("registry_operator_registries", condition="Ready", status="True") or 0
    degraded_before = sample("registry_operator_registries", condition="Degraded", status="True") or 0
    metrics.REGISTRIES.record("team", "reg", STATUS)
    assert sample("registry_operator_registry_condition", namespace="team", name="reg", condition="Ready") == 1
    assert sample("registry_operator_registry_condition", namespace="team", name="reg", condition="Degraded") == 0
    assert sample("registry_operator_certificate_expiration_timestamp_seconds", namespace="team",
                  name="reg") == 1803902400  # 2027-03-01T12:00:00Z
    assert sample("registry_operator_registries", condition="Ready", status="True") == before + 1

    degraded = {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Degraded", "status": "True"}]}
    metrics.REGISTRIES.record("team", "reg", degraded)  # computed again, not accumulated
    assert sample("registry_operator_registry_condition", namespace="team", name="reg", condition="Degraded") == 1
    assert sample("registry_operator_certificate_expiration_timestamp_seconds", namespace="team", name="reg") is None
    assert sample("registry_operator_registries", condition="Ready", status="True") == before

    metrics.REGISTRIES.forget("team", "reg")
    assert sample("registry_operator_registry_condition", namespace="team", name="reg") is None
    assert (sample("registry_operator_registries", condition="Degraded", status="True") or 0) == degraded_before


def test_failures_are_counted_by_reason_and_timed_by_result():
    errors = sample("registry_operator_reconcile_errors_total", reason="Forbidden") or 0
    failed = sample("registry_operator_reconcile_duration_seconds_count", result="error") or 0
    with pytest.raises(Retry), metrics.reconciling():
        raise Retry("Deployment 'reg': forbidden", "Forbidden")
    with pytest.raises(KeyError), metrics.reconciling():
        raise KeyError("spec")
    assert sample("registry_operator_reconcile_errors_total", reason="Forbidden") == errors + 1
    assert sample("registry_operator_reconcile_errors_total", reason="KeyError") >= 1
    assert sample("registry_operator_reconcile_duration_seconds_count", result="error") == failed + 2


def test_the_coalescer_counts_folded_triggers_and_its_depth():
    started = sample("registry_operator_triggers_total", outcome="started") or 0
    coalesced = sample("registry_operator_triggers_total", outcome="coalesced") or 0
    depth: list[float | None] = []

    async def run(key):
        depth.append(sample("registry_operator_queue_depth"))
        await asyncio.sleep(0.01)

    async def main():
        c = Coalescer(run)
        for _ in range(5):
            c.trigger("a")
        c.trigger("b")
        await c.idle()

    asyncio.run(main())
    assert sample("registry_operator_triggers_total", outcome="started") == started + 2
    assert sample("registry_operator_triggers_total", outcome="coalesced") == coalesced + 4
    assert depth[0] == 2 and sample("registry_operator_queue_depth") == 0


@pytest.mark.parametrize(("value", "port"), [(None, 8081), ("9102", 9102), ("0", 0), ("off", 0)])
def test_metrics_port_setting(value, port):
    from registry_operator.config import load

    assert load({} if value is None else {"REGISTRY_OPERATOR_METRICS_PORT": value}).metrics_port == port


def test_a_bad_metrics_port_is_refused_by_name():
    from registry_operator.config import ConfigError, load

    with pytest.raises(ConfigError, match="REGISTRY_OPERATOR_METRICS_PORT"):
        load({"REGISTRY_OPERATOR_METRICS_PORT": "70000"})
    with pytest.raises(ConfigError, match="REGISTRY_OPERATOR_METRICS_PORT"):
        load({"REGISTRY_OPERATOR_METRICS_PORT": "http"})


def test_a_taken_metrics_port_is_one_clear_error(caplog):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not metrics.serve(port, "127.0.0.1")
    assert f"cannot serve metrics on port {port} (REGISTRY_OPERATOR_METRICS_PORT)" in caplog.text


def test_rules_and_dashboard_use_only_series_the_operator_defines():
    """Alerts and panels on a misspelt series never fire and stay empty: they must agree with metrics.py."""
    import re
    from pathlib import Path

    monitoring = Path(__file__).resolve().parents[2] / "manifests" / "monitoring"
    text = (monitoring / "prometheus-rules.yaml").read_text() + (monitoring / "grafana-dashboard.json").read_text()
    used = {re.sub(r"_(total|bucket|count|sum)$", "", name)
            for name in re.findall(r"\bregistry_operator_[a-z_]+", text)}
    assert used and used <= set(families()), used - set(families())


def test_a_recorded_collection_counts_its_run_and_the_bytes_it_freed():
    runs = sample("registry_operator_gc_runs_total", result="Failed") or 0
    freed = sample("registry_operator_gc_freed_bytes_total") or 0
    metrics.gc_ended("Failed", 2048)  # a failed run may still have freed some
    metrics.gc_ended("Failed", 0)
    assert sample("registry_operator_gc_runs_total", result="Failed") == runs + 2
    assert sample("registry_operator_gc_freed_bytes_total") == freed + 2048
