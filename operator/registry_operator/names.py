"""Names and labels of everything a Registry owns.

One place, because three parties must agree on them: the renderers that create children, the handlers that
map a child's event back to its Registry, and users and tests who look the children up by name.
"""

from __future__ import annotations

GROUP = "registry.operator.dev"
VERSION = "v1alpha1"
PLURAL = "registries"
KIND = "Registry"
API_VERSION = f"{GROUP}/{VERSION}"

FIELD_MANAGER = "registry-operator"
MANAGED_BY = "registry-operator"

# Annotations written by the operator.
ANNOTATION_PREFIX = GROUP
APPLIED_HASH = f"{GROUP}/applied-hash"  # on children: hash of the last applied intent
POD_INPUTS_HASH = f"{GROUP}/inputs-hash"  # on pod templates: TLS material + config, so changes roll pods

# Labels on every child (the recommended app.kubernetes.io set).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"

COMPONENT_REGISTRY = "registry"
COMPONENT_TOKEN = "token-service"


def labels(registry: str, component: str) -> dict[str, str]:
    """Labels carried by every child; the first three also select the pods."""
    return {**selector(registry, component), LABEL_MANAGED_BY: MANAGED_BY, LABEL_PART_OF: "registry-operator"}


def selector(registry: str, component: str) -> dict[str, str]:
    return {LABEL_NAME: "registry", LABEL_INSTANCE: registry, LABEL_COMPONENT: component}


class ChildNames:
    """The names of one Registry's children, derived from the Registry's name only."""

    def __init__(self, registry: str) -> None:
        self.registry = registry
        self.deployment = registry
        self.service = registry
        self.config = f"{registry}-config"
        self.ca = f"{registry}-ca"  # public: ca.crt only, what clients trust
        self.ca_key = f"{registry}-ca-key"  # private: the CA key pair
        self.tls = f"{registry}-tls"
        self.htpasswd = f"{registry}-htpasswd"
        self.passwords = f"{registry}-passwords"
        self.http_secret = f"{registry}-http-secret"
        self.claim = f"{registry}-data"
        self.token = f"{registry}-token"  # token service Deployment, Service and ConfigMap
        self.token_tls = f"{registry}-token-tls"
        self.token_signing = f"{registry}-token-signing"
