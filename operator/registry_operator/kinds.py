"""The resource kinds a Registry owns, mapped to lightkube's resource classes."""

from __future__ import annotations

from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, PersistentVolumeClaim, Secret, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.policy_v1 import PodDisruptionBudget

from . import names

Registry = create_namespaced_resource(names.GROUP, names.VERSION, names.KIND, names.PLURAL)
PodMonitor = create_namespaced_resource("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors")
RegistryIndex = create_namespaced_resource(names.GROUP, names.VERSION, names.INDEX_KIND, names.INDEX_PLURAL)

CHILD_KINDS = {
    ("v1", "Secret"): Secret,
    ("v1", "ConfigMap"): ConfigMap,
    ("v1", "Service"): Service,
    ("v1", "PersistentVolumeClaim"): PersistentVolumeClaim,
    ("apps/v1", "Deployment"): Deployment,
    ("networking.k8s.io/v1", "NetworkPolicy"): NetworkPolicy,
    ("monitoring.coreos.com/v1", "PodMonitor"): PodMonitor,
    ("batch/v1", "Job"): Job,
    ("policy/v1", "PodDisruptionBudget"): PodDisruptionBudget,
}
# The children `watches` follows (metadata only); Secrets are followed by their watch label, PodMonitors not at all.
FOLLOWED = (Deployment, Service, ConfigMap, PersistentVolumeClaim, NetworkPolicy, Job, PodDisruptionBudget)
FOLLOWED_KINDS = frozenset(kind.__name__ for kind in FOLLOWED)


def resource(api_version: str, kind: str) -> type:
    return CHILD_KINDS[(api_version, kind)]
