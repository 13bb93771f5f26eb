"""A PodMonitor per Registry, so prometheus-operator scrapes distribution's `/metrics` on the registry pods'
debug port and, in token mode, the token service pods' `metrics` port.

Rendered only when the cluster serves `podmonitors.monitoring.coreos.com` (`monitoring.detect`, once at
startup): the operator must work without prometheus-operator. A PodMonitor rather than a `<name>-metrics`
Service with a ServiceMonitor, because distribution serves pprof and expvar on the same listener as
`/metrics` (its debug server is Go's default mux): a Service would give that listener a stable name, and
`<name>-metrics` would collide with the Service of a Registry named that way. The pods' debug port stays
what it was, reachable only at pod addresses and never through the user's Service.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import names
from ..names import COMPONENT_REGISTRY, ChildNames
from ..spec import RegistrySpec
from .common import Obj, metadata

API_VERSION = "monitoring.coreos.com/v1"
DEBUG_PORT_NAME = "debug"  # the registry container's port (render/deployment)
TOKEN_METRICS_PORT_NAME = "metrics"  # the token service container's (render/token)
# Who may reach the metrics ports through the NetworkPolicies (render/network): the Prometheus pods that
# prometheus-operator runs, in any namespace, by the labels it gives them.
PROMETHEUS = {
    "namespaceSelector": {},
    "podSelector": {"matchLabels": {
        names.LABEL_NAME: "prometheus", names.LABEL_MANAGED_BY: "prometheus-operator",
    }},
}


def pod_monitor(spec: RegistrySpec, owner: Mapping[str, Any]) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "PodMonitor",
        "metadata": metadata(ChildNames(spec.name).pod_monitor, owner, COMPONENT_REGISTRY),
        "spec": {
            # job="registry" for every Registry, so one set of rules (manifests/monitoring) covers them all;
            # the Registry's name comes along as the `registry` label.
            "jobLabel": names.LABEL_NAME,
            # Every pod of this Registry; each endpoint applies to the pods that have its port.
            "selector": {"matchLabels": {
                names.LABEL_NAME: "registry", names.LABEL_INSTANCE: spec.name, names.LABEL_MANAGED_BY: names.MANAGED_BY,
            }},
            "podMetricsEndpoints": [_endpoint(DEBUG_PORT_NAME), _endpoint(TOKEN_METRICS_PORT_NAME)],
        },
    }


def _endpoint(port: str) -> Obj:
    return {
        "port": port,
        "path": "/metrics",
        "relabelings": [{
            "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
            "targetLabel": "registry",
        }],
    }
