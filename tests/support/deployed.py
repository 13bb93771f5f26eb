"""A Registry created through the API, reconciled by the operator, and its rendered pod run: by the real node's
kubelet when the session has one (``--real-node``) and the test does not need the pod runner, else by podrunner
as a local process. Either way clients reach it on loopback, which the suite's certificates name.

Everything a client needs is read back from what the operator published (``status.caSecretName``, the
``N-passwords`` Secret, the Deployment it rendered), never from the test's own assumptions: if the operator
publishes the wrong thing, the clients fail.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType
from localcluster import wait_until

from .nodepod import NodePod
from .podrunner import ApiSources, PodRunner

Registry = create_namespaced_resource("registry.operator.dev", "v1alpha1", "Registry", "registries")
INPUTS_HASH = "registry.operator.dev/inputs-hash"
# Registry spec.version -> test id. 2.8 runs Debian's distribution 2.8.2, 3 the pinned v3 build.
VERSIONS = {"2.8": "v2.8", "3": "v3"}
T = TypeVar("T")
# Where the session's Registry pods ran: "pod runner" (a local process, tests/support/podrunner) or "real node"
# (the kubelet); the e2e suite prints it at the end, with why the pod runner ran them (RUNNER_REASONS).
POD_COUNTS: Counter[str] = Counter()
RUNNER_REASONS: Counter[str] = Counter()
NO_NODE = "no real node in this session"


def count_pod(where: str, why: str = NO_NODE) -> None:
    POD_COUNTS[where] += 1
    if where == "pod runner":
        RUNNER_REASONS[why] += 1


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy (localcluster's one wait loop, argument order of these
    tests); on timeout AssertionError with the last value or error."""
    return wait_until(check, timeout, what, interval)


def secret_data(client: Client, namespace: str, name: str) -> dict[str, bytes]:
    obj = client.get(Secret, name, namespace=namespace)
    return {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}


@dataclass
class DeployedRegistry:
    """One Registry and its pods (newest last): local processes, or with ``on_node`` the real node's."""

    client: Client
    namespace: str
    name: str
    workdir: Path
    runners: list[PodRunner | NodePod] = field(default_factory=list)
    on_node: bool = False
    pod_runner: str = ""  # why its pods run on the pod runner although the session may have a real node

    @property
    def host(self) -> str:
        """The in-cluster name clients use, which the served certificate must carry."""
        return f"{self.name}.{self.namespace}.svc"

    @property
    def runner(self) -> Any:
        """The newest pod: a PodRunner, or a NodePod (tests that use what only a PodRunner has run on it)."""
        return self.runners[-1]

    @property
    def address(self) -> str:
        return self.runner.address

    def get(self) -> dict[str, Any]:
        return self.client.get(Registry, self.name, namespace=self.namespace).to_dict()

    def patch_spec(self, spec: Mapping[str, Any]) -> None:
        self.client.patch(Registry, self.name, {"spec": spec}, namespace=self.namespace, patch_type=PatchType.MERGE)

    def ready_status(self, generation: int | None = None) -> dict[str, Any] | None:
        """The status once Ready is True for the current generation, else None."""
        obj = self.get()
        status = obj.get("status") or {}
        want = generation or obj["metadata"]["generation"]
        for c in status.get("conditions") or []:
            if c["type"] == "Ready" and c["status"] == "True" and c.get("observedGeneration", want) >= want:
                return status
        return None

    def wait_ready(self, timeout: float = 60) -> dict[str, Any]:
        return wait_for(self.ready_status, f"Registry {self.namespace}/{self.name} Ready", timeout)

    def deployment(self) -> dict[str, Any]:
        return self.client.get(Deployment, self.name, namespace=self.namespace).to_dict()

    def inputs_hash(self) -> str:
        return self.deployment()["spec"]["template"]["metadata"]["annotations"][INPUTS_HASH]

    def ca_pem(self) -> bytes:
        """The CA clients must trust, from the Secret the Registry's status names."""
        name = (self.get().get("status") or {}).get("caSecretName")
        assert name, f"Registry {self.name} publishes no status.caSecretName"
        return secret_data(self.client, self.namespace, name)["ca.crt"]

    def passwords(self) -> dict[str, str]:
        """Generated passwords, from the Secret the status names (``N-passwords``)."""
        name = (self.get().get("status") or {}).get("credentialsSecretName") or f"{self.name}-passwords"
        return {k: v.decode() for k, v in secret_data(self.client, self.namespace, name).items()}

    def start_pod(self) -> Any:
        """Run the pod template currently in the Deployment (a new pod after a rollout). On the real node the
        kubelet runs it: wait for a Ready pod of that template (another one for each call) and reach it."""
        if not self.on_node:
            runner = PodRunner(self.deployment(), ApiSources(self.client, self.namespace), self.workdir)
            self.runners.append(runner)
            count_pod("pod runner", self.pod_runner or NO_NODE)
            runner.start(self.ca_pem(), self.host)
            return runner
        taken = {p.name for p in self.runners if isinstance(p, NodePod)}
        pod = NodePod.start(self.client, self.deployment(), taken, self.ca_pem(), self.host)
        self.runners.append(pod)
        count_pod("real node")
        return pod

    def stop(self) -> None:
        for runner in self.runners:
            runner.stop()


def create_registry(
    client: Client, namespace: str, name: str, spec: Mapping[str, Any], workdir: Path, on_node: bool = False,
    pod_runner: str = "",
) -> DeployedRegistry:
    """Create the Registry and wait until the operator reports it Ready; no pod is started yet. ``on_node``: the
    kubelet starts it, in a namespace whose pods go to the real node; else ``pod_runner`` says why not."""
    client.create(Registry(metadata={"name": name, "namespace": namespace}, spec=dict(spec)))
    deployed = DeployedRegistry(client, namespace, name, workdir, on_node=on_node, pod_runner=pod_runner)
    deployed.wait_ready(timeout=120 if on_node else 60)
    return deployed
