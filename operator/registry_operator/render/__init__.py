"""Pure rendering: typed spec + decided material -> the complete list of desired children (plain dicts).

Every function in this package is deterministic: the same inputs give byte-identical objects, which is what
lets `apply` skip writes on a settled Registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..material import Joined, Material
from ..names import COMPONENT_REGISTRY, COMPONENT_TOKEN, ChildNames
from ..spec import IndexSpec, RegistrySpec
from . import config, deployment, disruption, monitoring, network, secrets, storage, token
from .common import Obj
from .service import service


def desired(
    spec: RegistrySpec, material: Material, owner: Mapping[str, Any], operator_image: str, pod_monitor: bool = False,
    joined: Joined | None = None,
) -> list[Obj]:
    """Everything the Registry should own right now, in the order it is safe to create it. `pod_monitor`: the
    cluster serves prometheus-operator's PodMonitor; `joined`: the index of a Registry that joined one (it then
    runs no token service of its own)."""
    names = ChildNames(spec.name)
    token_mode = spec.auth.own_token_service
    assert spec.auth.index is None or joined is not None, "a joined Registry is rendered with its index"
    realm = token.realm(spec) if token_mode else joined.realm if joined else None
    config_text = config.dump(
        config.render(
            spec, token_realm=realm, token_service=token.service_name(spec) if realm else None, scraped=pod_monitor
        )
    )
    objects = secrets.render(spec, material, owner)
    if material.client_ca_pem:  # the same bundle as the `-ca` Secret, readable without Secret access
        objects.append(deployment.ca_bundle(spec, material.client_ca_pem.decode(), owner))
    claim = storage.claim(spec, owner)
    if claim:
        objects.append(claim)
    objects.append(deployment.config_map(spec, config_text, owner))
    if token_mode:
        objects += token.render(spec, material, owner, operator_image, replicas=disruption.token_replicas(spec))
        objects.append(service(names.token, owner, COMPONENT_TOKEN, token.PORT, "https"))
    objects.append(deployment.deployment(spec, material, config_text, owner))
    svc = spec.service
    objects.append(service(
        names.service, owner, COMPONENT_REGISTRY, svc.port, "registry", svc.type, svc.node_port, svc.annotations
    ))
    objects += network.policies(spec, owner, pod_monitor)
    objects += disruption.budgets(spec, owner)
    if pod_monitor:
        objects.append(monitoring.pod_monitor(spec, owner))
    return objects


def index_desired(
    spec: IndexSpec, material: Material, owner: Mapping[str, Any], operator_image: str, joined: Sequence[str]
) -> list[Obj]:
    """Everything a RegistryIndex owns: its Secrets, CA bundle and the token service for the Registries
    named in `joined`, rendered by the same code as a Registry's own token service."""
    objects = secrets.render(spec, material, owner)
    if material.client_ca_pem:
        objects.append(deployment.ca_bundle(spec, material.client_ca_pem.decode(), owner))
    objects += token.render(spec, material, owner, operator_image, joined)
    objects.append(service(ChildNames(spec.name).token, owner, COMPONENT_TOKEN, token.PORT, "https"))
    objects.append(network.index_policy(spec, owner))
    return objects


def obsolete(spec: RegistrySpec) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of children an earlier spec may have created that this one must not have.

    Only workloads and their wiring: Secrets (keys, passwords) are kept, so switching a mode back and forth
    never rotates a CA that clients already trust. The one exception is the copy of a cache's upstream
    credentials and CA once the spec names neither (or is no cache any more): nothing needs it.
    """
    names = ChildNames(spec.name)
    policy = ("networking.k8s.io/v1", "NetworkPolicy")
    out = [] if spec.network_policy.enabled else [(*policy, names.deployment)]
    if spec.proxy is None or not (spec.proxy.credentials_secret or spec.proxy.ca_secret):
        out.append(("v1", "Secret", names.upstream))
    if not spec.auth.own_token_service or not spec.network_policy.enabled:
        out.append((*policy, names.token))
    if not spec.auth.own_token_service:
        out += [("apps/v1", "Deployment", names.token), ("v1", "Service", names.token),
                ("v1", "ConfigMap", names.token)]
    if spec.storage.shared:  # only shared storage can have had more than one replica, hence budgets
        budget = ("policy/v1", "PodDisruptionBudget")
        if spec.effective_replicas <= 1:
            out.append((*budget, names.deployment))
        if spec.effective_replicas <= 1 or not spec.auth.own_token_service:
            out.append((*budget, names.token))
    return out
