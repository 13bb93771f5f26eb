"""The operator's Prometheus metrics: every name, type and label in one place, counted by one line per call site.

Names, types and labels are a contract that alerts and dashboards (manifests/monitoring/) depend on, so they
are defined together and checked by tests/unit/test_metrics.py. Label values are bounded: kinds, verbs,
results and reasons come from fixed sets in our code; only the per-Registry gauges carry namespace/name, and
they are computed from the last status of each Registry this process reconciled, so a deleted Registry's
series vanish with it (`forget`) instead of lingering at their last value.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "registry_operator"
CONDITIONS = ("Ready", "Progressing", "Degraded", "Warning")

RECONCILE_SECONDS = Histogram(
    f"{PREFIX}_reconcile_duration_seconds", "Time of one reconcile of one Registry, by result (success, error).",
    ["result"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RECONCILE_ERRORS = Counter(
    f"{PREFIX}_reconcile_errors_total",
    "Failed reconciles (each is retried with backoff), by reason: the failed write's problem reason "
    "(ApplyFailed, Forbidden, QuotaExceeded, NamespaceTerminating, EventNotPosted) or the exception's class.",
    ["reason"],
)
API_WRITES = Counter(
    f"{PREFIX}_api_writes_total", "Write requests sent to the API server, by kind and verb (apply, delete, status, "
    "create). A settled Registry causes none.", ["kind", "verb"],
)
QUEUE_DEPTH = Gauge(
    f"{PREFIX}_queue_depth", "Registries being reconciled, waiting for a reconcile slot, or waiting to retry.",
)
TRIGGERS = Counter(
    f"{PREFIX}_triggers_total", "Reconcile triggers, by outcome: started a run, or coalesced into a pending one.",
    ["outcome"],
)

GC_RUNS = Counter(
    f"{PREFIX}_gc_runs_total", "Garbage collections recorded in a Registry's status, by result (Succeeded, Failed).",
    ["result"],
)
GC_FREED_BYTES = Counter(
    f"{PREFIX}_gc_freed_bytes_total", "Blob bytes garbage collections removed from storage, as the GC Job measured.",
)


def gc_ended(result: str, freed_bytes: int) -> None:
    """One collection's result reached status (said once: its Job is deleted right after)."""
    GC_RUNS.labels(result).inc()
    if freed_bytes > 0:
        GC_FREED_BYTES.inc(freed_bytes)


class _Registries(Collector):
    """Per-Registry gauges computed at scrape time from the last status each Registry was given."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # scrapes run on the HTTP server's thread
        self._last: dict[tuple[str, str], tuple[dict[str, bool], float | None]] = {}

    def record(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        conditions = {c["type"]: c["status"] == "True" for c in status.get("conditions") or ()
                      if c.get("type") in CONDITIONS}
        not_after = status.get("certificateNotAfter")
        expiry = dt.datetime.strptime(not_after, "%Y-%m-%dT%H:%M:%S%z").timestamp() if not_after else None
        with self._lock:
            self._last[(namespace, name)] = (conditions, expiry)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._last.pop((namespace, name), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            last = sorted(self._last.items())
        per_registry = GaugeMetricFamily(
            f"{PREFIX}_registry_condition", "1 when the Registry's condition is True, else 0.",
            labels=["namespace", "name", "condition"])
        counts = GaugeMetricFamily(
            f"{PREFIX}_registries", "Registries by condition and its status (True, False).",
            labels=["condition", "status"])
        expiry = GaugeMetricFamily(
            f"{PREFIX}_certificate_expiration_timestamp_seconds",
            "When the Registry's serving certificate expires (notAfter, seconds since the epoch).",
            labels=["namespace", "name"])
        totals = {(c, s): 0 for c in CONDITIONS for s in ("True", "False")}
        for (namespace, name), (conditions, not_after) in last:
            for condition, true in conditions.items():
                per_registry.add_metric([namespace, name, condition], 1.0 if true else 0.0)
                totals[(condition, "True" if true else "False")] += 1
            if not_after is not None:
                expiry.add_metric([namespace, name], not_after)
        for (condition, status), count in totals.items():
            counts.add_metric([condition, status], count)
        yield per_registry
        yield counts
        yield expiry


REGISTRIES = _Registries()
REGISTRY.register(REGISTRIES)


@contextlib.contextmanager
def reconciling() -> Iterator[None]:
    """Time one reconcile; a failure is counted by reason and re-raised for the coalescer to retry."""
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:
        RECONCILE_SECONDS.labels("error").observe(time.perf_counter() - start)
        reason = getattr(exc, "reason", None)  # Retry carries one; other exceptions count by class
        RECONCILE_ERRORS.labels(reason if isinstance(reason, str) else type(exc).__name__).inc()
        raise
    RECONCILE_SECONDS.labels("success").observe(time.perf_counter() - start)


def serve(port: int, address: str = "0.0.0.0") -> bool:
    """Serve /metrics on `port` from a thread of its own, so a scrape never waits for the event loop; False
    (said in one log line) when the port cannot be had."""
    try:
        start_http_server(port, address)
    except OSError as exc:
        log.error("cannot serve metrics on port %d (REGISTRY_OPERATOR_METRICS_PORT): %s", port, exc.strerror)
        return False
    return True
