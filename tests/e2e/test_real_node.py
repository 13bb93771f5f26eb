"""Registries as real pods on the real node (``--real-node``): the kubelet runs what the operator rendered, kube-proxy
carries the Service, containerd pulls an image from a Registry the operator created (and through a pull-through
cache that spec.nodeTrust made the node's mirror), kube-router enforces the NetworkPolicies the operator rendered.

The egress guard is asserted first: the whole module depends on ``guarded_node``, so no pod of it starts on a node
whose traffic could leave this machine.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import Client
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import PatchType
from localcluster import namespace_manifest, netpol, volumes, wait_until
from localcluster.binaries import REPO
from localcluster.host import JOURNAL, HostChanges
from localcluster.images import BUSYBOX_IMAGE, IMAGE_DIR, IMAGES
from localcluster.network import NODE_IP, egress_guard_problem
from localcluster.node import HOST_CERTS_DIR, NODE_LABEL, NODE_NAME, NODE_SELECTOR_ANNOTATION, RealNode

from registry_operator.names import COMPONENT_TOKEN, selector
from registry_operator.token.config import DEFAULT_PORT as TOKEN_PORT
from tests.support import https, ociimage
from tests.support.clients import CRANE, Crane, Skopeo, docker_config
from tests.support.deployed import VERSIONS, DeployedRegistry, Registry, count_pod
from tests.support.serviceproxy import ServiceProxy

BUSYBOX_TAR = IMAGE_DIR / next(i for i in IMAGES if i.ref == BUSYBOX_IMAGE).filename


@pytest.fixture(scope="module")
def guarded_node(real_node: RealNode) -> RealNode:
    """The real node, once its egress guard is checked: the module's first assertion, before any of its pods."""
    assert egress_guard_problem() is None
    resolv = (real_node.dir / "resolv.conf").read_text()
    assert "nameserver" not in resolv, "pods must never get the host's resolver"
    return real_node


def make_node_namespace(cluster: Any, prefix: str) -> str:
    """A fresh namespace (Pod Security restricted) whose pods go to the real node (PodNodeSelector)."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    cluster.apply(namespace_manifest(name, annotations={NODE_SELECTOR_ANNOTATION: NODE_LABEL}))
    wait_until(lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0, 30,
               f"ServiceAccount default in {name}")  # fmt: skip
    return name


@pytest.fixture(scope="module")
def node_namespace(guarded_node: RealNode, cluster: Any, e2e_operator: Any) -> Iterator[str]:
    """A namespace whose pods go to the real node, watched by the session's operator."""
    name = make_node_namespace(cluster, "e2e-node")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def node_registry(
    kube_client: Client, node_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[DeployedRegistry, str]]:
    """node_registry(version) -> (a Ready Registry on the real node, ``<node IP>:<node port>``), made once.

    Its Service is a NodePort and its certificate names the node IP, so clients on this machine reach it through
    kube-proxy and verify it."""
    made: dict[str, tuple[DeployedRegistry, str]] = {}

    def get(version: str) -> tuple[DeployedRegistry, str]:
        if version not in made:
            name = f"reg{VERSIONS[version].replace('.', '').removeprefix('v')}"
            spec = {"version": version, "service": {"type": "NodePort"}, "tls": {"ipAddresses": [NODE_IP]},
                    "auth": {"users": [{"name": "alice"}]}}  # fmt: skip
            kube_client.create(Registry(metadata={"name": name, "namespace": node_namespace}, spec=spec))
            reg = DeployedRegistry(kube_client, node_namespace, name, tmp_path_factory.mktemp(name))
            started = time.monotonic()
            reg.wait_ready(timeout=120)
            print(f"\nRegistry {version} Ready on the real node {time.monotonic() - started:.1f}s after create")
            pods = kube_client.list(Pod, namespace=node_namespace, labels={"app.kubernetes.io/instance": name})
            assert {p.spec.nodeName for p in pods} == {NODE_NAME}, "the Registry's pods must run on the real node"
            count_pod("real node")
            port = kube_client.get(Service, name, namespace=node_namespace).spec.ports[0].nodePort
            host = f"{NODE_IP}:{port}"
            # kube-proxy programs the NodePort a moment after the Service exists.
            wait_until(lambda: https.request(host, reg.ca_pem(), NODE_IP, "GET", "/v2/").status == 401, 30, host)
            made[version] = (reg, host)
        return made[version]

    return get


def run_pod(client: Client, namespace: str, name: str, image: str, script: str, **spec: Any) -> tuple[str, str, float]:
    """A pod running ``script`` with sh; (phase, log, seconds from create to done)."""
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}  # Pod Security restricted
    pod = {"metadata": {"name": name, "namespace": namespace},
           "spec": {"restartPolicy": "Never", **spec,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{"name": "c", "image": image, "command": ["/bin/sh", "-c", script],
                                    "securityContext": restricted}]}}  # fmt: skip
    started = time.monotonic()
    client.create(Pod.from_dict(pod))
    finished = ("Succeeded", "Failed")
    wait_until(lambda: client.get(Pod, name, namespace=namespace).status.phase in finished, 120, f"pod {name}")
    took = time.monotonic() - started
    phase = client.get(Pod, name, namespace=namespace).status.phase
    return phase, "".join(client.log(name, namespace=namespace)), took


@pytest.mark.parametrize("version", sorted(VERSIONS), ids=VERSIONS.get)
def test_containerd_pulls_an_image_from_an_operator_registry(
    guarded_node: RealNode, kube_client: Client, node_namespace: str, node_registry: Any, version: str, tmp_path: Path
) -> None:
    """The reason Registries exist: a node pulls from one (TLS with the Registry's CA, an imagePullSecret)."""
    reg, host = node_registry(version)
    ca, config = reg.ca_pem(), docker_config(host, "alice", reg.passwords()["alice"])
    (tmp_path / "ca.crt").write_bytes(ca)
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "SSL_CERT_FILE": str(tmp_path / "ca.crt"), "DOCKER_CONFIG": str(tmp_path / "docker")}
    image = f"{host}/e2e/busybox:1"
    subprocess.run([str(CRANE), "push", str(BUSYBOX_TAR), image], env=env, check=True, capture_output=True)

    RealNode.trust_registry(guarded_node.cluster.workdir, host, ca)
    pull_secret = base64.b64encode(json.dumps(config).encode()).decode()
    secret = Secret.from_dict({"metadata": {"name": f"pull-{reg.name}", "namespace": node_namespace},
                               "type": "kubernetes.io/dockerconfigjson",
                               "data": {".dockerconfigjson": pull_secret}})  # fmt: skip
    kube_client.create(secret)
    phase, log, took = run_pod(kube_client, node_namespace, f"pulled-{reg.name}", image, "echo pulled and ran",
                               imagePullSecrets=[{"name": secret.metadata.name}])  # fmt: skip
    print(f"pod with an image from Registry {version}: created -> Succeeded in {took:.2f}s")
    assert (phase, log.strip()) == ("Succeeded", "pulled and ran")


@pytest.mark.parametrize("version", sorted(VERSIONS), ids=VERSIONS.get)
def test_skopeo_through_the_node_port(node_registry: Any, version: str, tmp_path: Path) -> None:
    """Push and pull through kube-proxy to the registry the kubelet runs, digests compared end to end."""
    reg, host = node_registry(version)
    creds = ("alice", reg.passwords()["alice"])
    skopeo = Skopeo(tmp_path, reg.ca_pem())
    image = ociimage.build(tmp_path / "image", tag="v1", layers=2, size=2 * ociimage.MIB)
    repo = f"docker://{host}/e2e/skopeo"
    skopeo.copy_to(image.ref, f"{repo}:v1", creds)
    assert ociimage.sha256_digest(skopeo.inspect_raw(f"{repo}:v1", creds)) == image.manifest_digest
    assert skopeo.list_tags(repo, creds) == ["v1"]


def test_pods_resolve_services_through_cluster_dns(
    kube_client: Client, node_namespace: str, node_registry: Any
) -> None:
    """``<name>.<namespace>.svc`` resolves in a pod (CoreDNS on the node IP) and its ClusterIP answers
    (kube-proxy)."""
    reg, _ = node_registry("3")
    cluster_ip = kube_client.get(Service, reg.name, namespace=node_namespace).spec.clusterIP
    fqdn = f"{reg.name}.{node_namespace}.svc.cluster.local"
    script = f"nslookup {fqdn} && nc -w 5 {reg.name}.{node_namespace}.svc 5000 </dev/null && echo open"
    phase, log, _ = run_pod(kube_client, node_namespace, "dns", BUSYBOX_IMAGE, script)
    assert phase == "Succeeded", log
    assert cluster_ip in log and log.strip().endswith("open"), log


@pytest.fixture
def client_namespaces(guarded_node: RealNode, cluster: Any) -> Iterator[tuple[str, str]]:
    """(allowed, denied): two namespaces of client pods on the real node."""
    if guarded_node.netpol_problem:
        pytest.skip(f"no NetworkPolicy engine on the real node: {guarded_node.netpol_problem}")
    names = (make_node_namespace(cluster, "netpol-a"), make_node_namespace(cluster, "netpol-b"))
    yield names
    for name in names:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_network_policy_admits_only_the_namespaces_it_names(
    guarded_node: RealNode,
    kube_client: Client,
    node_namespace: str,
    client_namespaces: tuple[str, str],
    tmp_path: Path,
) -> None:
    """``spec.networkPolicy.from`` selecting namespace A: a pod of A connects to the registry port, a pod of B is
    refused; with ``networkPolicy.enabled: false`` B connects too. Through the Service's ClusterIP (kube-proxy),
    enforced by kube-router on the real node."""
    allowed, denied = client_namespaces
    name = "netpol"
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": allowed}}}]
    kube_client.create(Registry(metadata={"name": name, "namespace": node_namespace},
                                spec={"version": "3", "auth": {"users": [{"name": "alice"}]},
                                      "networkPolicy": {"from": peers}}))  # fmt: skip
    DeployedRegistry(kube_client, node_namespace, name, tmp_path).wait_ready(timeout=120)
    labels = {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "registry"}
    [pod] = kube_client.list(Pod, namespace=node_namespace, labels=labels)
    [policy] = [p.metadata.name for p in kube_client.list(NetworkPolicy, namespace=node_namespace)
                if p.metadata.name == name]  # fmt: skip
    target = f"{kube_client.get(Service, name, namespace=node_namespace).spec.clusterIP} 5000"
    started = time.monotonic()
    wait_until(lambda: netpol.applies(policy, pod.status.podIP), 30, f"kube-router enforcing {policy}")
    print(f"\nNetworkPolicy {policy} enforced {time.monotonic() - started:.2f}s after the Registry was Ready")

    # Denied: three tries, each refused (kube-router REJECTs); none may connect.
    tries = f"for i in 1 2 3; do nc -w 2 {target} </dev/null && echo open; sleep 0.5; done; echo done"
    phase, log, took = run_pod(kube_client, denied, "denied", BUSYBOX_IMAGE, tries)
    assert phase == "Succeeded" and "open" not in log and "done" in log, log
    print(f"namespace B: {log.splitlines()[0]} (3 times), pod created -> done in {took:.2f}s")
    # Allowed: kube-router adds a new pod's IP to the policy's source set at its next sync, moments after
    # the pod starts, so the first tries may still be refused.
    until_open = f"for i in $(seq 40); do nc -w 2 {target} </dev/null && echo open after $i && exit 0; sleep 0.25; done"
    phase, log, took = run_pod(kube_client, allowed, "allowed", BUSYBOX_IMAGE, until_open)
    assert phase == "Succeeded" and "open after" in log, log
    print(f"namespace A: {log.strip()} tries, pod created -> connected in {took:.2f}s")

    kube_client.patch(Registry, name, {"spec": {"networkPolicy": {"enabled": False}}}, namespace=node_namespace,
                      patch_type=PatchType.MERGE)  # fmt: skip
    started = time.monotonic()
    wait_until(lambda: not netpol.applies(policy, pod.status.podIP), 30, f"kube-router dropping {policy}")
    assert name not in {p.metadata.name for p in kube_client.list(NetworkPolicy, namespace=node_namespace)}
    print(f"policy disabled: no longer enforced {time.monotonic() - started:.2f}s after the patch")
    once = f"nc -w 2 {target} </dev/null && echo open"
    phase, log, _ = run_pod(kube_client, denied, "denied-unrestricted", BUSYBOX_IMAGE, once)
    assert (phase, log.strip()) == ("Succeeded", "open"), log


def _pull(crane: Crane, ref: str) -> dict[str, bytes]:
    """The manifest and every blob it names, as the registry serves them: {"manifest" or digest: bytes}."""
    manifest = crane.run("manifest", ref).encode()
    parsed = json.loads(manifest)
    digests = [parsed["config"]["digest"], *(layer["digest"] for layer in parsed["layers"])]
    repo = ref.rsplit(":", 1)[0]
    blobs = {d: subprocess.run([str(CRANE), "blob", f"{repo}@{d}"], env=crane.env, capture_output=True,
                               check=True, timeout=60).stdout for d in digests}  # fmt: skip
    return {"manifest": manifest, **blobs}


def _registry_pod(client: Client, namespace: str, name: str) -> Pod | None:
    """The Registry's one pod once it is Ready, else None."""
    labels = {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "registry"}
    pods = [p for p in client.list(Pod, namespace=namespace, labels=labels) if not p.metadata.deletionTimestamp]
    ready = [p for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
    return ready[0] if len(pods) == 1 and ready else None


@pytest.mark.parametrize("version", sorted(VERSIONS), ids=VERSIONS.get)
def test_images_outlive_the_pod_on_a_local_volume(
    guarded_node: RealNode, kube_client: Client, node_namespace: str, version: str, tmp_path: Path
) -> None:
    """A claim of the node's StorageClass binds a ``local`` volume the kubelet gives the pod's fsGroup: the
    registry (UID 1000) writes it, a recreated pod serves the same bytes, and the files on the node are its own."""
    name = f"pv{VERSIONS[version].replace('.', '').removeprefix('v')}"
    claim = {"storageClassName": volumes.STORAGE_CLASS, "size": "1Gi"}
    spec = {"version": version, "service": {"type": "NodePort"}, "tls": {"ipAddresses": [NODE_IP]},
            "auth": {"users": [{"name": "alice"}]}, "storage": {"persistentVolumeClaim": claim}}  # fmt: skip
    kube_client.create(Registry(metadata={"name": name, "namespace": node_namespace}, spec=spec))
    reg = DeployedRegistry(kube_client, node_namespace, name, tmp_path / "registry")
    started = time.monotonic()
    reg.wait_ready(timeout=120)
    print(f"\nRegistry {version} on a local volume Ready {time.monotonic() - started:.1f}s after create")
    first = wait_until(lambda: _registry_pod(kube_client, node_namespace, name), 30, f"the pod of {name}")
    assert first.spec.nodeName == NODE_NAME
    count_pod("real node")
    port = kube_client.get(Service, name, namespace=node_namespace).spec.ports[0].nodePort
    host = f"{NODE_IP}:{port}"
    ca = reg.ca_pem()

    def answers() -> bool:
        return https.request(host, ca, NODE_IP, "GET", "/v2/").status == 401

    wait_until(answers, 30, host)
    crane = Crane(tmp_path, ca, host, ("alice", reg.passwords()["alice"]))
    image = f"{host}/e2e/kept:1"
    crane.run("push", str(BUSYBOX_TAR), image)
    pushed = _pull(crane, image)

    kube_client.delete(Pod, first.metadata.name, namespace=node_namespace)
    started = time.monotonic()
    second = wait_until(
        lambda: (p := _registry_pod(kube_client, node_namespace, name)) and p.metadata.uid != first.metadata.uid and p,
        120,
        f"a new pod of {name}",
    )
    wait_until(answers, 30, f"{host} after the pod was recreated")
    print(f"pod deleted -> a new pod serving in {time.monotonic() - started:.1f}s")
    assert second.spec.nodeName == NODE_NAME
    assert _pull(crane, image) == pushed, "the recreated pod must serve the pushed image byte for byte"

    pvc = kube_client.get(PersistentVolumeClaim, f"{name}-data", namespace=node_namespace)
    pv = kube_client.get(PersistentVolume, pvc.spec.volumeName)
    assert pv.spec.storageClassName == volumes.STORAGE_CLASS
    root = Path(pv.spec.local.path)
    assert root.stat().st_gid == 1000, "the kubelet applies the pod's fsGroup to a local volume"
    files = [p for p in root.rglob("*") if p.is_file()]
    blobs = [p for p in files if p.name == "data" and p.parent.name in {d.split(":")[1] for d in pushed if ":" in d}]
    assert len(blobs) == len(pushed) - 1, f"every pushed blob is on the node under {root}"
    assert {(p.stat().st_uid, p.stat().st_gid) for p in files} == {(1000, 1000)}, f"files under {root}"


def test_the_node_agent_manifest_as_it_is_writes_the_nodes_certs_d(guarded_node: RealNode, cluster: Any) -> None:
    """`kubectl apply -k manifests/node-trust/`, as the README says, works on this node unchanged: the agent's
    hostPath is the node's certs.d (mounted there by up), not a host directory no containerd here reads."""
    changes = HostChanges.load(JOURNAL)
    if changes is None or str(HOST_CERTS_DIR) not in changes.absent_paths:
        pytest.skip(f"{HOST_CERTS_DIR} was the host's own before up: left alone")
    assert RealNode.shares_certs_dir(guarded_node.cluster.workdir)
    manifests = cluster.render_manifests(REPO / "manifests" / "node-trust")
    pod = next(o for o in manifests if o["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    assert [v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v] == [str(HOST_CERTS_DIR)]
    written = HOST_CERTS_DIR / f"probe-{secrets.token_hex(3)}:5000"
    written.mkdir()
    try:
        assert (RealNode.certs_dir(guarded_node.cluster.workdir) / written.name).is_dir(), "what containerd reads"
    finally:
        written.rmdir()


@pytest.fixture
def node_agent(guarded_node: RealNode, cluster: Any, kube_client: Client) -> Iterator[str]:
    """manifests/node-trust/ in a namespace of its own, its DaemonSet on the real node with the node's certs.d as
    its hostPath (containerd's config_path here): the namespace of the agent's ConfigMaps."""
    name = f"nodetrust-agents-{secrets.token_hex(3)}"
    privileged = {"pod-security.kubernetes.io/enforce": "privileged"}  # hostPath, as manifests/node-trust/ says
    cluster.apply(namespace_manifest(name, labels=privileged, annotations={NODE_SELECTOR_ANNOTATION: NODE_LABEL}))
    manifests = cluster.render_manifests(REPO / "manifests" / "node-trust")
    docs = RealNode.node_agent(manifests, guarded_node.cluster.workdir, name)
    daemonset = next(o for o in docs if o["kind"] == "DaemonSet")
    started = time.monotonic()
    cluster.apply(yaml.safe_dump_all(docs))
    wait_until(lambda: (kube_client.get(DaemonSet, daemonset["metadata"]["name"], namespace=name).status.numberReady
                        or 0) >= 1, 60, "the node agent Ready")  # fmt: skip
    print(f"\nnode agent DaemonSet Ready on the real node {time.monotonic() - started:.1f}s after apply")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_nodes_trust_a_registry_with_node_trust(
    guarded_node: RealNode, cluster: Any, kube_client: Client, node_agent: str, operator_factory: Any,
    tmp_path: Path,
) -> None:
    """spec.nodeTrust, no manual node setup: the agent writes the node's certs.d, containerd pulls over verified
    TLS, and the entry is gone once the Registry is."""
    namespace = make_node_namespace(cluster, "nodetrust")  # not e2e-*: only this test's operator handles it
    operator_factory(args=["--namespace", namespace], env={"REGISTRY_OPERATOR_NODE_TRUST_NAMESPACE": node_agent})
    try:
        name = "trusted"
        spec = {"version": "3", "service": {"type": "NodePort"}, "tls": {"ipAddresses": [NODE_IP]},
                "auth": {"users": [{"name": "alice"}]}, "nodeTrust": {"enabled": True}}  # fmt: skip
        started = time.monotonic()
        kube_client.create(Registry(metadata={"name": name, "namespace": namespace}, spec=spec))
        port = wait_until(lambda: kube_client.get(Service, name, namespace=namespace).spec.ports[0].nodePort, 60,
                          "the Service's NodePort")  # fmt: skip
        host = f"{NODE_IP}:{port}"
        entry = RealNode.certs_dir(guarded_node.cluster.workdir) / host
        wait_until(lambda: (entry / "hosts.toml").is_file(), 30, f"the agent writing {entry}")
        print(f"Registry created -> certs.d/{host} written by the agent in {time.monotonic() - started:.2f}s")
        reg = DeployedRegistry(kube_client, namespace, name, tmp_path / "registry")
        reg.wait_ready(timeout=120)
        print(f"Registry created -> Ready in {time.monotonic() - started:.2f}s")
        count_pod("real node")
        assert (entry / "ca.crt").read_bytes() == reg.ca_pem()
        trust = wait_until(lambda: reg.get()["status"].get("nodeTrust"), 30, "status.nodeTrust")
        assert host in trust["hosts"]
        cond = wait_until(lambda: next((c for c in reg.get()["status"]["conditions"] if c["type"] == "NodeTrust"
                                        and c["status"] == "True"), None), 90, "NodeTrust True")  # fmt: skip
        assert cond["reason"] == "Published"

        ca, password = reg.ca_pem(), reg.passwords()["alice"]
        wait_until(lambda: https.request(host, ca, NODE_IP, "GET", "/v2/").status == 401, 30, host)
        crane = Crane(tmp_path, ca, host, ("alice", password))
        image = f"{host}/e2e/trusted:1"
        crane.run("push", str(BUSYBOX_TAR), image)
        config = base64.b64encode(json.dumps(docker_config(host, "alice", password)).encode()).decode()
        kube_client.create(Secret.from_dict({"metadata": {"name": "pull", "namespace": namespace},
                                             "type": "kubernetes.io/dockerconfigjson",
                                             "data": {".dockerconfigjson": config}}))  # fmt: skip
        phase, log, took = run_pod(kube_client, namespace, "pulled", image, "echo pulled over verified TLS",
                                   imagePullSecrets=[{"name": "pull"}])  # fmt: skip
        print(f"pod with an image from the trusting Registry: created -> Succeeded in {took:.2f}s")
        assert (phase, log.strip()) == ("Succeeded", "pulled over verified TLS")

        kube_client.delete(Registry, name, namespace=namespace)
        started = time.monotonic()
        wait_until(lambda: not entry.exists(), 60, f"{entry} removed")
        print(f"Registry deleted -> certs.d/{host} gone in {time.monotonic() - started:.2f}s")
    finally:
        cluster.kubectl("delete", "registry", "--all", "-n", namespace, "--timeout=30s", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _pull_failure(client: Client, namespace: str, name: str) -> str | None:
    """The kubelet's message once the pod's image pull failed (ErrImagePull, ImagePullBackOff), else None."""
    statuses = client.get(Pod, name, namespace=namespace).status.containerStatuses or []
    waiting = [s.state.waiting for s in statuses if s.state and s.state.waiting]
    failed = [w for w in waiting if w.reason in ("ErrImagePull", "ImagePullBackOff")]
    return failed[0].message or failed[0].reason if failed else None


def _node_port_registry(
    client: Client, namespace: str, name: str, workdir: Path, **spec: Any
) -> tuple[DeployedRegistry, str]:
    """A Registry (version 3, TLS for the node IP, NodePort) Ready on the real node and answering through
    kube-proxy: (it, ``<node IP>:<node port>``)."""
    spec = {"version": "3", "service": {"type": "NodePort"}, "tls": {"ipAddresses": [NODE_IP]}, **spec}
    client.create(Registry(metadata={"name": name, "namespace": namespace}, spec=spec))
    reg = DeployedRegistry(client, namespace, name, workdir)
    reg.wait_ready(timeout=120)
    count_pod("real node")
    host = f"{NODE_IP}:{client.get(Service, name, namespace=namespace).spec.ports[0].nodePort}"
    ca = reg.ca_pem()
    wait_until(lambda: https.request(host, ca, NODE_IP, "GET", "/v2/").status in (200, 401), 30, host)
    return reg, host


def test_a_pull_through_cache_is_the_nodes_mirror_of_its_upstream(
    guarded_node: RealNode, cluster: Any, kube_client: Client, node_agent: str, operator_factory: Any,
    tmp_path: Path,
) -> None:
    """spec.proxy + spec.nodeTrust: a pod whose image names the ORIGIN (``<origin>/e2e/mirrored:1``) starts,
    served by the cache, although the node cannot pull from the origin itself: containerd does not trust the
    origin's CA and the pod has no credentials for it (the origin requires a login; the cache is anonymous and
    logs in to the origin with a Secret of its own). Shown first: before the cache, the same pull fails."""
    namespace = make_node_namespace(cluster, "mirror")
    operator_factory(args=["--namespace", namespace], env={"REGISTRY_OPERATOR_NODE_TRUST_NAMESPACE": node_agent})
    try:
        origin, origin_host = _node_port_registry(kube_client, namespace, "origin", tmp_path / "origin",
                                                  auth={"users": [{"name": "alice"}]})  # fmt: skip
        password = origin.passwords()["alice"]
        image = f"{origin_host}/e2e/mirrored:1"
        Crane(tmp_path, origin.ca_pem(), origin_host, ("alice", password)).run("push", str(BUSYBOX_TAR), image)
        assert not (RealNode.certs_dir(guarded_node.cluster.workdir) / origin_host).exists()

        direct = "direct"
        restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        kube_client.create(Pod.from_dict({
            "metadata": {"name": direct, "namespace": namespace},
            "spec": {"restartPolicy": "Never",
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 65534,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "c", "image": image, "securityContext": restricted}]}}))  # fmt: skip
        refused = wait_until(lambda: _pull_failure(kube_client, namespace, direct), 60, "the direct pull failing")
        print(f"\nwithout the cache, containerd pulling {image}: {refused}")
        assert "x509" in refused or "certificate" in refused, refused
        kube_client.delete(Pod, direct, namespace=namespace, grace_period=0)

        for secret, data in {"upstream-ca": {"ca.crt": origin.ca_pem()},
                             "upstream-login": {"username": b"alice", "password": password.encode()}}.items():
            kube_client.create(Secret.from_dict({"metadata": {"name": secret, "namespace": namespace},
                                                 "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}))
        proxy = {"remoteURL": f"https://{origin_host}", "caSecretName": "upstream-ca",
                 "credentialsSecretName": "upstream-login"}  # fmt: skip
        started = time.monotonic()
        cache, cache_host = _node_port_registry(kube_client, namespace, "cache", tmp_path / "cache",
                                                auth={"mode": "none"}, proxy=proxy,
                                                nodeTrust={"enabled": True})  # fmt: skip
        mirror = RealNode.certs_dir(guarded_node.cluster.workdir) / origin_host
        wait_until(lambda: (mirror / "hosts.toml").is_file(), 30, f"the agent writing {mirror}")
        print(f"cache created -> Ready, and certs.d/{origin_host} written in {time.monotonic() - started:.2f}s")
        hosts_toml = (mirror / "hosts.toml").read_text()
        assert f'server = "https://{origin_host}"' in hosts_toml and f'[host."https://{cache_host}"]' in hosts_toml
        tried = re.findall(r'\[host."https://([^"]+)"\]', hosts_toml)
        assert tried[0] == cache_host and len(tried) == 3, f"the node address is tried first: {tried}"
        assert (mirror / "ca.crt").read_bytes() == cache.ca_pem() != origin.ca_pem()

        phase, log, took = run_pod(kube_client, namespace, "mirrored", image, "echo served by the cache")
        print(f"pod with image {image}: created -> Succeeded in {took:.2f}s")
        assert (phase, log.strip()) == ("Succeeded", "served by the cache")
        catalog = Crane(tmp_path / "catalog", cache.ca_pem(), cache_host, None).run("catalog", cache_host)
        assert catalog.split() == ["e2e/mirrored"], "the cache fetched the repository from the origin and kept it"
        [cache_pod] = kube_client.list(Pod, namespace=namespace, labels={"app.kubernetes.io/instance": "cache"})
        served = "".join(kube_client.log(cache_pod.metadata.name, namespace=namespace, container="registry"))
        # containerd names the image's own registry in `ns` when it asks a mirror.
        ns = origin_host.replace(":", "%3A")
        asked = f'"HEAD /v2/e2e/mirrored/manifests/1?ns={ns} HTTP/1.1" 200 0 "" "containerd/'
        assert asked in served, served[-3000:]

        kube_client.delete(Registry, "cache", namespace=namespace)
        wait_until(lambda: not mirror.exists(), 60, f"{mirror} removed")
    finally:
        cluster.kubectl("delete", "registry", "--all", "-n", namespace, "--timeout=30s", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


DATA_PATH_MIB = 100
DATA_PATH_ROUNDS = 3


def test_data_path_through_the_node_port(
    guarded_node: RealNode, kube_client: Client, node_namespace: str, tmp_path: Path
) -> None:
    """Issue 12 item 7 on real pods: a 100 MiB image (4 layers, random bytes) pushed, then pulled, with crane
    through kube-proxy's NodePort, to three Registries: token auth + TLS, TLS without auth, plain HTTP without
    auth. The token service is a real pod too (its realm on localhost, forwarded to the pod's IP). Prints the
    seconds and MiB/s of each; asserts only that every transfer is byte-identical."""
    proxy = ServiceProxy()
    access = [{"users": ["alice"], "repositories": ["bench/*"], "actions": ["pull", "push"]}]
    variants = {
        "token+tls": {"tls": {"ipAddresses": [NODE_IP], "dnsNames": ["localhost"]},
                      "auth": {"mode": "token", "users": [{"name": "alice"}], "access": access,
                               "tokenRealm": f"https://localhost:{proxy.port}/token"}},
        "tls": {"tls": {"ipAddresses": [NODE_IP]}, "auth": {"mode": "none"}},
        "plain": {"tls": {"mode": "Disabled"}, "auth": {"mode": "none"}},
    }  # fmt: skip
    try:
        targets = {}
        for variant, extra in variants.items():
            name = f"dp-{variant.replace('+', '-')}"
            spec = {"version": "3", "service": {"type": "NodePort"}, **extra}
            kube_client.create(Registry(metadata={"name": name, "namespace": node_namespace}, spec=spec))
            targets[variant] = DeployedRegistry(kube_client, node_namespace, name, tmp_path / name)
        for reg in targets.values():
            reg.wait_ready(timeout=180)
            count_pod("real node")
        token = targets["token+tls"]
        labels = selector(token.name, COMPONENT_TOKEN)
        pod = wait_until(lambda: next((p for p in kube_client.list(Pod, namespace=node_namespace, labels=labels)
                                       if p.status.podIP and any(c.type == "Ready" and c.status == "True"
                                                                 for c in p.status.conditions or [])), None),
                         60, "the token service's pod Ready")  # fmt: skip
        proxy.target = (pod.status.podIP, TOKEN_PORT)
        cranes = {}
        for variant, reg in targets.items():
            host = f"{NODE_IP}:{kube_client.get(Service, reg.name, namespace=node_namespace).spec.ports[0].nodePort}"
            ca = b"" if variant == "plain" else reg.ca_pem()
            creds = ("alice", reg.passwords()["alice"]) if variant == "token+tls" else None
            if variant != "plain":
                wait_until(lambda: https.request(host, ca, NODE_IP, "GET", "/v2/").status, 30, host)  # noqa: B023
            cranes[variant] = (host, Crane(tmp_path / variant, ca, host, creds), ["--insecure"] if ca == b"" else [])
        # Rounds, the variants interleaved; a new random image each round, so no blob is ever already there.
        results: dict[str, list[tuple[float, float]]] = {v: [] for v in targets}
        for n in range(DATA_PATH_ROUNDS):
            image = ociimage.build(tmp_path / f"image-{n}", layers=4, size=DATA_PATH_MIB * ociimage.MIB)
            for variant, (host, crane, flags) in cranes.items():
                ref, pulled = f"{host}/bench/data:{n}", tmp_path / f"{variant}-pulled-{n}"
                started = time.monotonic()
                crane.run(*flags, "push", str(image.path), ref, timeout=600)
                pushed = time.monotonic() - started
                started = time.monotonic()
                crane.run(*flags, "pull", "--format=oci", ref, str(pulled), timeout=600)
                results[variant].append((pushed, time.monotonic() - started))
                got = {p.name for p in (pulled / "blobs" / "sha256").iterdir()}
                assert got == {p.name for p in (image.path / "blobs" / "sha256").iterdir()}, variant
                shutil.rmtree(pulled)
            shutil.rmtree(image.path)
        print(f"\n{DATA_PATH_MIB} MiB through the NodePort (crane, real pods, registry 3), median [min-max] of "
              f"{DATA_PATH_ROUNDS}:")
        for variant, runs in results.items():
            line = []
            for what, seconds in (("push", [r[0] for r in runs]), ("pull", [r[1] for r in runs])):
                line.append(f"{what} {statistics.median(seconds):5.2f} s [{min(seconds):.2f}-{max(seconds):.2f}] "
                            f"({DATA_PATH_MIB / statistics.median(seconds):5.1f} MiB/s)")
            print(f"  {variant:10} " + ", ".join(line))
    finally:
        proxy.close()
