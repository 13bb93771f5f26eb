"""The quickstart's last step: push and pull a real image through a Registry the operator created.

With a real node (``hack/cluster up --real-node``): the Registry is a NodePort Service whose certificate names the
node IP, with ``spec.nodeTrust``; the node agent of manifests/node-trust/ (its hostPath the node's certs.d) makes
containerd trust the Registry's CA, crane pushes a busybox image to it through kube-proxy, and a pod on the real
node runs that image, pulled by containerd from the Registry over verified TLS with an imagePullSecret.

Without one (kwok nodes only), the Registry's pod is run the way the e2e tests run it (tests/support/podrunner:
the Deployment's pod template, its Secret and ConfigMap volumes, the real registry program on 127.0.0.1) and
skopeo pushes and pulls through it.

Everything the client needs comes from what the operator published: the CA Secret named in status and the
generated password.

    python hack/demo.py [--namespace default] [--name demo]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "hack"), str(REPO / "operator")]

import yaml  # noqa: E402
from lightkube import Client  # noqa: E402
from lightkube.resources.core_v1 import Pod, Secret  # noqa: E402
from localcluster import DEFAULT_WORKDIR, LocalCluster, bin_dir, read_versions, wait_until  # noqa: E402
from localcluster.images import BUSYBOX_IMAGE, IMAGE_DIR, IMAGES  # noqa: E402
from localcluster.network import NODE_IP  # noqa: E402
from localcluster.node import RealNode  # noqa: E402

from tests.support import https, ociimage  # noqa: E402
from tests.support.clients import Skopeo, docker_config  # noqa: E402
from tests.support.deployed import DeployedRegistry, Registry  # noqa: E402

# In the static band of the NodePort range (its first 86 ports), which random allocations avoid.
NODE_PORT = 30050


def real_node_demo(client: Client, cluster: LocalCluster, namespace: str, name: str, work: Path) -> None:
    """Push busybox to a NodePort Registry, then run it on the real node, pulled by containerd."""
    spec = {
        "service": {"type": "NodePort", "nodePort": NODE_PORT},
        "tls": {"ipAddresses": [NODE_IP]},
        "auth": {"users": [{"name": "demo"}]},
        "nodeTrust": {"enabled": True},
    }
    if RealNode.shares_certs_dir(cluster.workdir):  # as users do, so their own apply later changes nothing
        cluster.kubectl("apply", "-k", str(REPO / "manifests" / "node-trust"))
        print("node agent: kubectl apply -k manifests/node-trust/ (/etc/containerd/certs.d is the node's certs.d)")
    else:
        agent = RealNode.node_agent(cluster.render_manifests(REPO / "manifests" / "node-trust"), cluster.workdir)
        cluster.apply(yaml.safe_dump_all(agent))
        print("node agent: manifests/node-trust/, its hostPath patched to the real node's certs.d")
    started = time.monotonic()
    client.apply(Registry(metadata={"name": name, "namespace": namespace}, spec=spec), force=True)
    reg = DeployedRegistry(client, namespace, name, work)
    reg.wait_ready(timeout=180)
    ready = time.monotonic() - started
    host = f"{NODE_IP}:{NODE_PORT}"
    password = reg.passwords()["demo"]
    ca = work / "ca.crt"
    ca.write_bytes(reg.ca_pem())
    print(f"Registry {namespace}/{name} Ready in {ready:.1f}s (a real pod on the real node), Service NodePort {host}")

    config = docker_config(host, "demo", password)
    (work / "docker").mkdir()
    (work / "docker" / "config.json").write_text(json.dumps(config))
    crane = bin_dir() / f"crane-{read_versions()['CRANE_VERSION']}" / "crane"
    busybox = IMAGE_DIR / next(i for i in IMAGES if i.ref == BUSYBOX_IMAGE).filename
    image = f"{host}/demo/busybox:1"
    # kube-proxy programs the NodePort a moment after the Service exists.
    wait_until(lambda: https.request(host, reg.ca_pem(), NODE_IP, "GET", "/v2/").status == 401, 30, f"{host}")
    step = time.monotonic()
    env = {**os.environ, "SSL_CERT_FILE": str(ca), "DOCKER_CONFIG": str(work / "docker")}
    subprocess.run([str(crane), "push", str(busybox), image], env=env, check=True, capture_output=True)
    print(f"pushed {image} with crane over TLS through kube-proxy in {time.monotonic() - step:.2f}s")

    entry = RealNode.certs_dir(cluster.workdir) / host
    wait_until(lambda: (entry / "hosts.toml").is_file(), 60, f"the node agent writing {entry}")
    print(f"the node agent wrote {entry}/ (hosts.toml, ca.crt): containerd trusts the Registry's CA")
    pull_secret = base64.b64encode(json.dumps(config).encode()).decode()
    secret = {"metadata": {"name": f"{name}-pull", "namespace": namespace}, "type": "kubernetes.io/dockerconfigjson",
              "data": {".dockerconfigjson": pull_secret}}  # fmt: skip
    client.apply(Secret.from_dict(secret), force=True)
    pod_name = f"{name}-hello"
    if _exists(client, pod_name, namespace):  # an earlier quickstart's
        client.delete(Pod, pod_name, namespace=namespace, grace_period=0)
    wait_until(lambda: not _exists(client, pod_name, namespace), 60, f"the old pod {pod_name} to go")
    message = f"hello from {image}, pulled by containerd from Registry {namespace}/{name}"
    pod = {
        "metadata": {"name": pod_name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "imagePullSecrets": [{"name": f"{name}-pull"}],
            "containers": [
                {
                    "name": "hello",
                    "image": image,
                    "imagePullPolicy": "Always",
                    "command": ["/bin/sh", "-c", f"echo {message}"],
                }
            ],  # fmt: skip
        },
    }
    step = time.monotonic()
    client.create(Pod.from_dict(pod))
    done = wait_until(
        lambda: client.get(Pod, pod_name, namespace=namespace).status.phase in ("Succeeded", "Failed"),
        120,
        f"pod {pod_name} to finish",
    )
    phase = client.get(Pod, pod_name, namespace=namespace).status.phase
    took = time.monotonic() - step
    logs = "".join(client.log(pod_name, namespace=namespace)).strip()
    assert done and phase == "Succeeded" and logs == message, (phase, logs)
    print(f"pod {namespace}/{pod_name} on the real node: created -> Succeeded in {took:.2f}s; it said: {logs}")


def _exists(client: Client, name: str, namespace: str) -> bool:
    from lightkube import ApiError

    try:
        client.get(Pod, name, namespace=namespace)
        return True
    except ApiError as e:
        if e.status.code == 404:
            return False
        raise


def local_process_demo(client: Client, namespace: str, name: str, work: Path) -> None:
    """No real node: run the Registry's pod as a local process and push/pull through it with skopeo."""
    spec = {"tls": {"ipAddresses": ["127.0.0.1"]}, "auth": {"users": [{"name": "demo"}]}}
    client.apply(Registry(metadata={"name": name, "namespace": namespace}, spec=spec), force=True)
    reg = DeployedRegistry(client, namespace, name, work)
    status = reg.wait_ready(timeout=120)
    print(f"Registry {namespace}/{name} Ready: endpoint {status['endpoint']}, "
          f"CA in Secret {status['caSecretName']}, password in Secret {status['credentialsSecretName']}")  # fmt: skip
    runner = reg.start_pod()
    try:
        creds = ("demo", reg.passwords()["demo"])
        skopeo = Skopeo(work, reg.ca_pem())
        image = ociimage.build(work / "image", layers=3, size=4 * 1024 * 1024)
        ref = f"docker://{runner.address}/demo/hello:1"
        started = time.monotonic()
        skopeo.copy_to(image.ref, ref, creds)
        pushed = time.monotonic() - started
        skopeo.copy_from(ref, f"oci:{work / 'pulled'}:1", creds)
        pulled = json.loads((work / "pulled" / "index.json").read_text())["manifests"][0]["digest"]
        assert pulled == image.manifest_digest, (pulled, image.manifest_digest)
        tags = skopeo.list_tags(f"docker://{runner.address}/demo/hello", creds)
        print(f"pushed a 3-layer 4 MiB image over TLS as user demo in {pushed:.2f}s to {runner.address} "
              f"(the registry pod, run locally), pulled it back: digest {pulled} matches; tags {tags}")  # fmt: skip
    finally:
        runner.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--name", default="demo")
    args = parser.parse_args()
    client = Client(field_manager="registry-operator-demo")
    work = Path(tempfile.mkdtemp(prefix="registry-demo-"))
    cluster = LocalCluster(Path(os.environ.get("REGISTRY_OPERATOR_CLUSTER_DIR") or DEFAULT_WORKDIR))
    if cluster.adopt_state() and cluster.real_node:
        real_node_demo(client, cluster, args.namespace, args.name, work)
    else:
        local_process_demo(client, args.namespace, args.name, work)


if __name__ == "__main__":
    main()
