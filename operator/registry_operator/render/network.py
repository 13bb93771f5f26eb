"""NetworkPolicies: the pods we run accept connections only on the ports they serve.

Without a policy any pod in the cluster can reach every port of a registry pod, the debug listener included.
With one per workload (registry; token service in token mode), ingress is allowed on the serving port only:
from any source by default, since clients come from pods, from nodes (containerd pulls, NodePort) and from
outside, or only from the peers in `spec.networkPolicy.from`. Egress is left alone: a registry may need to reach
object storage or an upstream. A policy only matters where the cluster runs an engine that enforces it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..names import COMPONENT_REGISTRY, COMPONENT_TOKEN, ChildNames, selector
from ..spec import RegistrySpec
from . import config, token
from .common import Obj, metadata


def policies(spec: RegistrySpec, owner: Mapping[str, Any]) -> list[Obj]:
    if not spec.network_policy.enabled:
        return []
    names = ChildNames(spec.name)
    out = [_policy(names.deployment, owner, COMPONENT_REGISTRY, config.PORT, spec)]
    if spec.auth.mode == "token":
        out.append(_policy(names.token, owner, COMPONENT_TOKEN, token.PORT, spec))
    return out


def _policy(name: str, owner: Mapping[str, Any], component: str, port: int, spec: RegistrySpec) -> Obj:
    rule: Obj = {"ports": [{"protocol": "TCP", "port": port}]}
    if spec.network_policy.peers:
        rule["from"] = [dict(peer) for peer in spec.network_policy.peers]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(name, owner, component),
        "spec": {
            "podSelector": {"matchLabels": selector(spec.name, component)},
            "policyTypes": ["Ingress"],
            "ingress": [rule],
        },
    }
