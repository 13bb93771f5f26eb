"""NetworkPolicies: the pods we run accept connections only on the ports they serve.

Without a policy any pod in the cluster can reach every port of a registry pod, the debug listener included.
With one per workload (registry; token service in token mode; a RegistryIndex's token service), ingress is
allowed on the serving port only: from any source by default, since clients come from pods, from nodes
(containerd pulls, NodePort) and from outside, or only from the peers in `spec.networkPolicy.from`. Egress is
left alone: a registry may need to reach object storage or an upstream. A policy only matters where the
cluster runs an engine that enforces it.

Where a PodMonitor is rendered (render/monitoring), the metrics ports are opened to Prometheus pods only: the
registry's debug listener serves pprof next to `/metrics`, so it stays closed to everyone else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..names import COMPONENT_REGISTRY, COMPONENT_RETENTION, COMPONENT_TOKEN, ChildNames, selector
from ..spec import IndexSpec, RegistrySpec
from ..token import config as token_config
from . import config, monitoring, token
from .common import Obj, metadata


def policies(spec: RegistrySpec, owner: Mapping[str, Any], scraped: bool = False) -> list[Obj]:
    """`scraped`: a PodMonitor is rendered, so Prometheus must reach the metrics ports."""
    if not spec.network_policy.enabled:
        return []
    names = ChildNames(spec.name)
    metrics = config.DEBUG_PORT if scraped else None
    peers = spec.network_policy.peers
    if peers and spec.retention is not None:  # the retention Job talks to the registry (and its token service)
        peers = (*peers, {"podSelector": {"matchLabels": selector(spec.name, COMPONENT_RETENTION)}})
    out = [_policy(names.deployment, owner, COMPONENT_REGISTRY, config.PORT, spec.name, peers, metrics)]
    if spec.auth.own_token_service:
        metrics = token_config.METRICS_PORT if scraped else None
        out.append(_policy(names.token, owner, COMPONENT_TOKEN, token.PORT, spec.name, peers, metrics))
    return out


def index_policy(spec: IndexSpec, owner: Mapping[str, Any]) -> Obj:
    """A RegistryIndex's token service: its port only, from anywhere (its clients are every joined
    registry's clients, wherever they are)."""
    return _policy(ChildNames(spec.name).token, owner, COMPONENT_TOKEN, token.PORT, spec.name, (), None)


def _policy(
    name: str, owner: Mapping[str, Any], component: str, port: int, instance: str,
    peers: Sequence[Mapping[str, Any]], metrics_port: int | None,
) -> Obj:
    rule: Obj = {"ports": [{"protocol": "TCP", "port": port}]}
    if peers:
        rule["from"] = [dict(peer) for peer in peers]
    ingress = [rule]
    if metrics_port is not None:
        ingress.append({"ports": [{"protocol": "TCP", "port": metrics_port}], "from": [monitoring.PROMETHEUS]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(name, owner, component),
        "spec": {
            "podSelector": {"matchLabels": selector(instance, component)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
