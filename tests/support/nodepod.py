"""A Registry's pod as the real node's kubelet runs it, offered to the e2e tests like a podrunner PodRunner:
``address`` on loopback (the suite's certificates name 127.0.0.1; a forwarder carries each connection to the
pod's IP, since this machine cannot reach a ClusterIP: the Service range is a blackhole route),
``port``/``debug_port``/``host_port`` (the container's own ports: the pod has its own network), ``logs`` (the
container's, through the API server), ``stop``.

The pod is the Deployment's, from its current template, Ready on the real node: nothing here starts, restarts
or deletes it. The kubelet syncs volumes and the Deployment rolls pods on its own, so what a PodRunner lets a
test drive (``update``, the process, stopping a pod) is not offered; tests that need it stay on podrunner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightkube import Client
from lightkube.resources.core_v1 import Pod
from localcluster import wait_until
from localcluster.node import NODE_NAME

from registry_operator.names import POD_INPUTS_HASH
from registry_operator.render.monitoring import DEBUG_PORT_NAME

from . import https
from .serviceproxy import ServiceProxy


def _ready(pod: Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status and pod.status.conditions) or [])


@dataclass
class NodePod:
    client: Client
    namespace: str
    name: str  # the pod's
    container: dict[str, Any]  # its first container, as the pod spec has it
    proxy: ServiceProxy

    @classmethod
    def start(
        cls, client: Client, deployment: Mapping[str, Any], taken: set[str], ca_pem: bytes, server_hostname: str,
        timeout: float = 120,
    ) -> NodePod:
        """The Deployment's Ready pod of its current template (not one in ``taken``), once a TLS handshake
        verified by ``ca_pem`` passes through the forwarder."""
        namespace = deployment["metadata"]["namespace"]
        template = deployment["spec"]["template"]
        want = template["metadata"]["annotations"][POD_INPUTS_HASH]

        def current() -> Pod | None:
            pods = client.list(Pod, namespace=namespace, labels=deployment["spec"]["selector"]["matchLabels"])
            fresh = [p for p in pods if not p.metadata.deletionTimestamp and p.metadata.name not in taken]
            return next((p for p in fresh if (p.metadata.annotations or {}).get(POD_INPUTS_HASH) == want
                         and _ready(p)), None)  # fmt: skip

        what = f"a Ready pod of the current template of Deployment {namespace}/{deployment['metadata']['name']}"
        pod = wait_until(current, timeout, what)
        assert pod.spec.nodeName == NODE_NAME, f"{pod.metadata.name} runs on {pod.spec.nodeName}, not the real node"
        container = pod.spec.containers[0].to_dict()
        proxy = ServiceProxy()
        node_pod = cls(client, namespace, pod.metadata.name, container, proxy)
        proxy.target = (pod.status.podIP, node_pod.port)
        wait_until(lambda: https.request(node_pod.address, ca_pem, server_hostname, "GET", "/v2/").status, 30,
                   f"{node_pod.name} through {node_pod.address}")  # fmt: skip
        return node_pod

    def host_port(self, container_port: int | str) -> int:
        """The pod's port for a container port (number or name), as a Service's targetPort names it."""
        if isinstance(container_port, int):
            return container_port
        named = {p["name"]: p["containerPort"] for p in self.container.get("ports") or [] if p.get("name")}
        if container_port not in named:
            raise KeyError(f"container has no port named {container_port!r}")
        return named[container_port]

    @property
    def port(self) -> int:
        return self.host_port("registry")

    @property
    def debug_port(self) -> int | None:
        try:
            return self.host_port(DEBUG_PORT_NAME)
        except KeyError:
            return None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def logs(self) -> str:
        return "".join(self.client.log(self.name, namespace=self.namespace, container=self.container["name"]))

    def stop(self) -> None:
        """Close the forwarder; the pod is the Deployment's (the namespace's deletion ends it)."""
        self.proxy.close()
