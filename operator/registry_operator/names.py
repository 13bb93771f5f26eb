"""Names and labels of everything a Registry owns.

One place, because three parties must agree on them: the renderers that create children, the handlers that
map a child's event back to its Registry, and users and tests who look the children up by name.
"""

from __future__ import annotations

import hashlib
import re

GROUP = "registry.operator.dev"
VERSION = "v1alpha1"
PLURAL = "registries"
KIND = "Registry"
INDEX_PLURAL = "registryindexes"
INDEX_KIND = "RegistryIndex"
API_VERSION = f"{GROUP}/{VERSION}"

FIELD_MANAGER = "registry-operator"
MANAGED_BY = "registry-operator"

# Annotations written by the operator.
ANNOTATION_PREFIX = GROUP
APPLIED_HASH = f"{GROUP}/applied-hash"  # on children: hash of the last applied intent
POD_INPUTS_HASH = f"{GROUP}/inputs-hash"  # on pod templates: TLS material + config, so changes roll pods
# Garbage collection: users set the first on a Registry (any new value asks for one run); the GC Job carries
# what it was started for; the registry's pod template carries when the last one ended (a restart clears the
# registry's blob-descriptor cache, which otherwise serves deleted blobs).
GC_REQUESTED = f"{GROUP}/gc-requested"
GC_JOB_REQUEST = f"{GROUP}/gc-request"
GC_JOB_SCHEDULED = f"{GROUP}/gc-scheduled-for"
GC_COLLECTED = f"{GROUP}/gc-collected-at"

# Labels on every child (the recommended app.kubernetes.io set).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
# On Secrets the operator must notice at once: all of ours, and the ones users reference (they add it). The
# operator watches only Secrets carrying it, never every Secret in the cluster.
LABEL_WATCH = f"{GROUP}/watch"

# Image pull Secrets the operator keeps in other namespaces (see `pullsecrets`). Cross-namespace objects
# cannot carry an owner reference: this label (the Registry's UID) is what makes them ours, the annotation
# says which Registry that is for humans (namespace + name can exceed a label value's 63 characters).
LABEL_PULL_SECRET_OF = f"{GROUP}/pull-secret-of"
ANNOTATION_REGISTRY = f"{GROUP}/registry"
PULL_SECRETS_FINALIZER = f"{GROUP}/pull-secrets"
# Node trust (see `nodetrust`): one ConfigMap per trusting Registry in the node agent's namespace, found by the
# Registry's UID in this label (the agent watches only ConfigMaps carrying it), and the DaemonSet whose Ready
# pods say that some node applies them.
LABEL_NODE_TRUST_OF = f"{GROUP}/node-trust-of"
NODE_TRUST_FINALIZER = f"{GROUP}/node-trust"
NODE_AGENT = "registry-operator-node-trust"

MAX_NAME = 63  # the Registry's name is its Service's name and a label value
TOKEN_SUFFIX = "-token"

COMPONENT_REGISTRY = "registry"
COMPONENT_TOKEN = "token-service"
COMPONENT_GC = "garbage-collector"
COMPONENT_RETENTION = "retention"


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
        self.token = f"{registry}{TOKEN_SUFFIX}"  # token service Deployment, Service and ConfigMap
        self.token_tls = f"{registry}-token-tls"
        self.token_signing = f"{registry}-token-signing"
        self.pod_monitor = registry  # a kind of its own: the name cannot collide with another Registry's
        self.gc = f"{registry}-gc"  # the garbage-collection Job
        self.retention = f"{registry}-retention"  # the Job that applies spec.retention first, and its ConfigMap
        self.upstream = f"{registry}-upstream"  # a pull-through cache's upstream credentials and CA (spec.proxy)


def pull_secret_name(registry: str, namespace: str) -> str:
    """The pull Secret's name in every selected namespace: both parts are DNS labels, so the dot keeps
    Registries of different namespaces (`a-b`/`c` and `a`/`b-c`) apart."""
    return f"{registry}.{namespace}-pull"


_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def node_trust_name(registry: str, namespace: str) -> str:
    """The node-trust ConfigMap's name, in the agent's namespace: unique per Registry as `pull_secret_name`."""
    return f"{registry}.{namespace}-node-trust"


def password_key(user: str) -> str:
    """The key of `user`'s generated password in the `-passwords` Secret.

    The user name itself when the API server accepts it as a Secret key; otherwise (an e-mail address such as
    `ci@corp`, or `..`) a stable, readable encoding: the name with other characters replaced by `_`, then a dot
    and 8 hex digits of its SHA-256, so two users never share a key. status.passwordKeys lists these.
    """
    if _SECRET_KEY.match(user) and not user.startswith("..") and user != ".":
        return user
    readable = re.sub(r"[^-_a-zA-Z0-9]", "_", user)
    return f"{readable}.{hashlib.sha256(user.encode()).hexdigest()[:8]}"


def invalid_name(registry: str, token_mode: bool) -> str | None:
    """Why `registry` cannot name a Registry's children, or None. The CRD says the same with CEL rules; this
    covers a CRD installed without them, before anything is written."""
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", registry):
        return "the name must be a DNS label (lowercase letters, digits and '-', starting with a letter)"
    if len(registry) > MAX_NAME:
        return f"the name is longer than {MAX_NAME} characters"
    if token_mode and len(registry + TOKEN_SUFFIX) > MAX_NAME:
        limit = MAX_NAME - len(TOKEN_SUFFIX)
        return f"in token mode the name must be at most {limit} characters (Service <name>-token)"
    if registry.endswith(TOKEN_SUFFIX):
        return f"the name must not end in {TOKEN_SUFFIX!r}: Registry <name> in token mode owns <name>-token"
    return None
