"""The operator's settings: read once at startup from the command line and the environment, then passed down.

Nothing else in the package reads the environment: a setting read at import time cannot be changed by a test
or a second operator in the same process, and a typo in a variable would go unnoticed. Every setting is
listed in the README (section "Operator settings").
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_IMAGE = "registry-operator:0.1.0"


class ConfigError(ValueError):
    """A setting has a value the operator cannot use; the message names the setting."""


@dataclass(frozen=True)
class Config:
    # Namespaces (or globs such as 'team-*') to watch; empty: all namespaces.
    namespaces: tuple[str, ...] = ()
    # Image of the token service pods (the operator's own image).
    operator_image: str = DEFAULT_IMAGE
    cluster_domain: str = "cluster.local"
    # Registries reconciled at once; more only queue.
    max_concurrent: int = 16
    # Every Registry is reconciled this often even without events (certificate renewal).
    resync_seconds: float = 3600.0
    # Referenced Secrets without the watch label are read this often (how soon their changes are seen).
    reference_poll_seconds: float = 10.0
    # A rotated pull-Secret robot credential is valid this long before copies get it: the kubelet's Secret
    # volume sync must first bring it to the registry pods.
    pull_rotation_seconds: float = 120.0
    # Retries of a failed reconcile: capped exponential backoff with jitter.
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 60.0
    # One writer: only the holder of a Lease runs handlers (for more than one replica).
    leader_election: bool = False
    leader_election_namespace: str = "registry-operator-system"
    leader_election_name: str = "registry-operator"
    lease_seconds: float = 15.0
    identity: str = ""  # the Lease holder's name; default: the host name and process id
    # Who may create a Registry may run its `spec.image`: glob patterns the image must match (empty: any image).
    allowed_images: tuple[str, ...] = ()
    # Who may create a Registry may put pull Secrets into namespaces (spec.pullSecrets): glob patterns those
    # namespaces must match (empty: any namespace).
    pull_secret_namespaces: tuple[str, ...] = ()
    # spec.nodeTrust: the node agent's namespace (manifests/node-trust/), where the operator keeps one ConfigMap
    # per trusting Registry and looks for the agent's DaemonSet.
    node_trust_namespace: str = "registry-operator-node-trust"
    # Prometheus metrics (/metrics) on this port, all addresses; 0 disables. Not 8080: the manifests' liveness.
    metrics_port: int = 8081

    def image_allowed(self, image: str) -> bool:
        return not self.allowed_images or any(fnmatch.fnmatchcase(image, p) for p in self.allowed_images)

    def pull_secrets_allowed(self, namespace: str) -> bool:
        return not self.pull_secret_namespaces or any(
            fnmatch.fnmatchcase(namespace, p) for p in self.pull_secret_namespaces)

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ConfigError("REGISTRY_OPERATOR_MAX_CONCURRENT must be at least 1")
        if self.resync_seconds <= 0:
            raise ConfigError("REGISTRY_OPERATOR_RESYNC_SECONDS must be positive")
        if self.pull_rotation_seconds < 0:
            raise ConfigError("REGISTRY_OPERATOR_PULL_ROTATION_SECONDS must not be negative")
        if self.reference_poll_seconds <= 0:
            raise ConfigError("REGISTRY_OPERATOR_REFERENCE_POLL_SECONDS must be positive")
        if not 0 < self.retry_base_seconds <= self.retry_max_seconds:
            raise ConfigError("REGISTRY_OPERATOR_RETRY_BASE_SECONDS must be positive and at most the maximum")
        if self.lease_seconds < 3:
            raise ConfigError("REGISTRY_OPERATOR_LEASE_SECONDS must be at least 3")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError("REGISTRY_OPERATOR_METRICS_PORT must be a port number, or 0 or off to disable")

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def sees_all_namespaces(self) -> bool:
        """Whether the operator may list namespaces: all of them, or globs (an exact list needs no such right)."""
        return self.clusterwide or any(set(ns) & set("*?[") for ns in self.namespaces)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def port(text: str) -> int:
    """A port number; `0` or `off` (any false word) for none."""
    return 0 if text.lower() in _FALSE else int(text)


# Environment variable -> (field, parser). The command line overrides what it also offers (namespaces).
_ENV: Mapping[str, tuple[str, Callable[[str], object]]] = {
    "REGISTRY_OPERATOR_IMAGE": ("operator_image", str),
    "REGISTRY_OPERATOR_CLUSTER_DOMAIN": ("cluster_domain", str),
    "REGISTRY_OPERATOR_MAX_CONCURRENT": ("max_concurrent", int),
    "REGISTRY_OPERATOR_RESYNC_SECONDS": ("resync_seconds", float),
    "REGISTRY_OPERATOR_REFERENCE_POLL_SECONDS": ("reference_poll_seconds", float),
    "REGISTRY_OPERATOR_PULL_ROTATION_SECONDS": ("pull_rotation_seconds", float),
    "REGISTRY_OPERATOR_RETRY_BASE_SECONDS": ("retry_base_seconds", float),
    "REGISTRY_OPERATOR_RETRY_MAX_SECONDS": ("retry_max_seconds", float),
    "REGISTRY_OPERATOR_LEADER_ELECTION": ("leader_election", bool),
    "REGISTRY_OPERATOR_LEASE_NAMESPACE": ("leader_election_namespace", str),
    "REGISTRY_OPERATOR_LEASE_NAME": ("leader_election_name", str),
    "REGISTRY_OPERATOR_LEASE_SECONDS": ("lease_seconds", float),
    "POD_NAME": ("identity", str),
    "REGISTRY_OPERATOR_ALLOWED_IMAGES": ("allowed_images", _comma_list),
    "REGISTRY_OPERATOR_PULL_SECRET_NAMESPACES": ("pull_secret_namespaces", _comma_list),
    "REGISTRY_OPERATOR_METRICS_PORT": ("metrics_port", port),
    "REGISTRY_OPERATOR_NODE_TRUST_NAMESPACE": ("node_trust_namespace", str),
}


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _parse(variable: str, value: str, kind: Callable[[str], object]) -> object:
    if kind is bool:
        if value.lower() not in _TRUE | _FALSE:
            raise ConfigError(f"{variable} must be true or false, not {value!r}")
        return value.lower() in _TRUE
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{variable} must be a {getattr(kind, '__name__', 'value')}, not {value!r}") from None


def load(
    environ: Mapping[str, str] | None = None, namespaces: Sequence[str] = (), leader_election: bool | None = None
) -> Config:
    """The configuration from `environ` (default: the process environment) and command-line values."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for variable, (name, kind) in _ENV.items():
        if variable in environ:
            values[name] = _parse(variable, environ[variable], kind)
    if namespaces:
        values["namespaces"] = tuple(namespaces)
    if leader_election is not None:
        values["leader_election"] = leader_election
    if not values.get("identity"):
        values["identity"] = f"{os.uname().nodename}-{os.getpid()}"
    return Config(**values)  # type: ignore[arg-type]
