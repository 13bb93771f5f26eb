"""PodDisruptionBudgets, only where there is more than one pod to keep.

A Registry with several replicas (a ReadWriteMany claim) is meant to stay up while nodes are drained, so at
most one registry pod may be evicted at a time, and its token service runs two pods with one always left: a
registry whose clients cannot get tokens is down too. With one replica a budget could only block drains
(maxUnavailable 0) or say nothing, so none is rendered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..names import COMPONENT_REGISTRY, COMPONENT_TOKEN, ChildNames, selector
from ..spec import RegistrySpec
from .common import Obj, metadata


def token_replicas(spec: RegistrySpec) -> int:
    return 2 if spec.effective_replicas > 1 else 1


def budgets(spec: RegistrySpec, owner: Mapping[str, Any]) -> list[Obj]:
    if spec.effective_replicas <= 1:
        return []
    names = ChildNames(spec.name)
    out = [_budget(names.deployment, owner, COMPONENT_REGISTRY, spec.name)]
    if spec.auth.own_token_service:
        out.append(_budget(names.token, owner, COMPONENT_TOKEN, spec.name))
    return out


def _budget(name: str, owner: Mapping[str, Any], component: str, registry: str) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(name, owner, component),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(registry, component)}},
    }
