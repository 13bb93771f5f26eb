"""`python -m bench --datapath-node`: the data path on real pods (issue 12, item 7).

A control plane with the real node (hack/localcluster: containerd, kubelet, kube-proxy; needs root and `hack/build
node`) and the operator, then four registries as pods on that node, each behind a NodePort Service that crane on
this machine reaches through kube-proxy:
- `token`: a Registry with `auth.mode: token` and TLS; the operator renders the registry and its token service.
  Clients outside the cluster reach the token service through a NodePort Service of ours, at `auth.tokenRealm`
  as the CRD says (this host cannot resolve `*.svc` names and must not ask its resolver). The realm names
  `localhost`, a loopback forwarder to that NodePort (tests/support/serviceproxy): crane 0.22 refuses a realm
  on a private IP literal such as the node IP (go-containerregistry#2258), and no other name resolves here;
- `htpasswd`: a Registry with the operator's default authentication, for comparison;
- `tls`: the token Registry's rendered pod template and config.yml minus `auth` (a Deployment of ours);
- `plain`: the same minus `auth` and `http.tls`.
So `tls` is the floor of `token` (same program, certificate, resources and node; only authentication differs) and
`plain` the floor of `tls`. Each iteration builds a new random image (no blob is ever already there), then pushes
and pulls it with crane (a fresh process per operation) to every variant in turn, the order rotated by one each
iteration; iteration 0 warms up and is not counted. Per variant and iteration it also times one `crane digest`
(process start, TLS handshake, token fetch, one manifest request: the fixed cost of a crane process) and, for
`token`, one token request of our own through the realm's Service.
"""

from __future__ import annotations

import copy
import http.client
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import localcluster
import yaml
from lightkube import Client, KubeConfig
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap
from localcluster.network import NODE_IP
from localcluster.node import NODE_LABEL, NODE_SELECTOR_ANNOTATION

from registry_operator.names import ChildNames
from registry_operator.token.config import DEFAULT_PORT as TOKEN_PORT
from tests.support import https, ociimage
from tests.support.clients import Crane
from tests.support.deployed import DeployedRegistry, Registry
from tests.support.serviceproxy import ServiceProxy

from .paths import REPO

NAMESPACE = "bench-dp-node"
USER = "alice"
# In the static band of the NodePort range (its first 86 ports), which random allocations avoid; the realm must
# be known before the token Registry exists.
NODE_PORTS = {"token": 30061, "token-service": 30062, "htpasswd": 30063, "tls": 30064, "plain": 30065}
DERIVED = ("tls", "plain")
Log = Callable[[str], None]


@dataclass(frozen=True)
class NodePlan:
    iterations: int = 5
    mib: int = 100
    layers: int = 4
    htpasswd: bool = True  # the operator's default authentication, for comparison
    nodes: int = 0  # kwok nodes next to the real one (environment() reports them)


def registry_specs(realm_port: int, htpasswd: bool) -> dict[str, dict[str, Any]]:
    """The Registries the operator renders, by variant: NodePort Services, certificates naming the node IP (and
    `localhost`, the realm's host: the token service's certificate carries the same names)."""
    token_auth = {
        "mode": "token",
        "users": [{"name": USER}],
        "access": [{"users": [USER], "repositories": ["bench/*"], "actions": ["pull", "push"]}],
        "tokenRealm": f"https://localhost:{realm_port}/token",
    }
    specs = {"token": {"version": "3", "service": {"type": "NodePort", "nodePort": NODE_PORTS["token"]},
                       "tls": {"ipAddresses": [NODE_IP], "dnsNames": ["localhost"]}, "auth": token_auth}}  # fmt: skip
    if htpasswd:
        specs["htpasswd"] = {"version": "3", "service": {"type": "NodePort", "nodePort": NODE_PORTS["htpasswd"]},
                             "tls": {"ipAddresses": [NODE_IP]}, "auth": {"users": [{"name": USER}]}}  # fmt: skip
    return specs


def variant_config(config: dict[str, Any], variant: str) -> dict[str, Any]:
    """The operator's rendered config.yml for a derived variant: `tls` without `auth`, `plain` without `auth` and
    `http.tls`; everything else (storage, access log, headers, drain timeout) as rendered."""
    if variant not in DERIVED:
        raise ValueError(f"no derived variant {variant!r}: {DERIVED}")
    out = copy.deepcopy(config)
    out.pop("auth", None)
    if variant == "plain":
        out["http"].pop("tls", None)
    return out


def node_port_service(name: str, namespace: str, selector: dict[str, str], port: int, node_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "NodePort", "selector": dict(selector),
                 "ports": [{"port": port, "targetPort": port, "nodePort": node_port, "protocol": "TCP"}]},
    }  # fmt: skip


def variant_objects(
    rendered: dict[str, Any], config: dict[str, Any], variant: str, namespace: str
) -> list[dict[str, Any]]:
    """ConfigMap, Deployment and NodePort Service of a derived variant: the operator's rendered registry
    Deployment (`rendered`, as read back) with its config volume on our ConfigMap, probes in the variant's
    scheme, and labels of its own (neither the operator's Service nor its NetworkPolicy select it)."""
    name = f"{variant}-reg"
    labels = {"app.kubernetes.io/name": "bench-datapath-node", "app.kubernetes.io/instance": name}
    template = copy.deepcopy(rendered["spec"]["template"])
    template["metadata"] = {"labels": labels}
    pod = template["spec"]
    [config_volume] = [v for v in pod["volumes"] if v["name"] == "config"]
    config_volume["configMap"] = {"name": name}
    [container] = [c for c in pod["containers"] if c["name"] == "registry"]
    for probe in ("readinessProbe", "livenessProbe"):
        container[probe]["httpGet"]["scheme"] = "HTTPS" if variant == "tls" else "HTTP"
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "registry")
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
         "data": {"config.yml": yaml.safe_dump(variant_config(config, variant), sort_keys=True)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template}},
        node_port_service(name, namespace, labels, port, NODE_PORTS[variant]),
    ]  # fmt: skip


def summary(samples: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


@dataclass
class Target:
    name: str
    host: str
    crane: Crane
    insecure: bool

    def run(self, *args: str) -> float:
        started = time.perf_counter()
        self.crane.run(*(["--insecure"] if self.insecure else []), *args, timeout=600)
        return time.perf_counter() - started


def _answers(host: str, ca: bytes | None) -> bool:
    """The registry answers `GET /v2/` through kube-proxy (401 with authentication)."""
    try:
        if ca is None:
            address, port = host.rsplit(":", 1)
            conn = http.client.HTTPConnection(address, int(port), timeout=5)
            conn.request("GET", "/v2/")
            return conn.getresponse().status in (200, 401)
        return https.request(host, ca, NODE_IP, "GET", "/v2/").status in (200, 401)
    except OSError:
        return False


def _token_fetch(realm: str, ca: bytes, service: str, password: str) -> float:
    """Seconds for one token (a new TLS connection, basic auth, a push scope) the way crane gets them."""
    url = urlsplit(realm)
    path = f"{url.path}?service={service}&scope=repository:bench/app:pull,push"
    started = time.perf_counter()
    response = https.request(url.netloc, ca, str(url.hostname), "GET", path, auth=(USER, password))
    took = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"token request refused: {response.status}")
    return took


def _measure(
    client: Client, cluster: localcluster.LocalCluster, plan: NodePlan, proxy: ServiceProxy, work: Path, log: Log
) -> dict[str, Any]:
    cluster.apply(localcluster.namespace_manifest(NAMESPACE, annotations={NODE_SELECTOR_ANNOTATION: NODE_LABEL}))
    localcluster.wait_until(lambda: cluster.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False)
                            .returncode == 0, 30, f"ServiceAccount default in {NAMESPACE}")  # fmt: skip
    started = time.monotonic()
    registries: dict[str, DeployedRegistry] = {}
    for variant, spec in registry_specs(proxy.port, plan.htpasswd).items():
        client.create(Registry(metadata={"name": f"{variant}-reg", "namespace": NAMESPACE}, spec=spec))
        registries[variant] = DeployedRegistry(client, NAMESPACE, f"{variant}-reg", work / variant)
    for reg in registries.values():
        reg.wait_ready(timeout=300)
    log(f"datapath-node: Registries Ready on the real node in {time.monotonic() - started:.1f} s")

    token = registries["token"]
    names = ChildNames(token.name)
    token_pods = client.get(Deployment, names.token, namespace=NAMESPACE).spec.selector.matchLabels
    objects = [node_port_service(f"{names.token}-node", NAMESPACE, token_pods, TOKEN_PORT, NODE_PORTS["token-service"])]
    rendered = token.deployment()
    config = yaml.safe_load(client.get(ConfigMap, names.config, namespace=NAMESPACE).data["config.yml"])
    for variant in DERIVED:
        objects += variant_objects(rendered, config, variant, NAMESPACE)
    cluster.apply(yaml.safe_dump_all(objects))
    for variant in DERIVED:
        cluster.kubectl("rollout", "status", f"deployment/{variant}-reg", "-n", NAMESPACE, "--timeout=300s",
                        timeout=330)  # fmt: skip

    ca = token.ca_pem()  # the derived variants serve the token Registry's certificate
    targets = []
    for variant in (*registries, *DERIVED):
        host = f"{NODE_IP}:{NODE_PORTS[variant]}"
        reg = registries.get(variant)
        own_ca = None if variant == "plain" else reg.ca_pem() if reg else ca
        creds = (USER, reg.passwords()[USER]) if reg else None
        # kube-proxy programs a NodePort a moment after its Service exists.
        localcluster.wait_until(lambda: _answers(host, own_ca), 60, host)  # noqa: B023
        crane = Crane(work / "clients" / variant, own_ca or b"", host, creds)
        targets.append(Target(variant, host, crane, insecure=own_ca is None))
    proxy.target = (NODE_IP, NODE_PORTS["token-service"])
    realm, service = token.get()["status"]["tokenRealm"], config["auth"]["token"]["service"]  # as published
    password = token.passwords()[USER]
    localcluster.wait_until(lambda: _token_fetch(realm, ca, service, password), 60, realm)
    log(f"datapath-node: {len(targets)} variants answering through kube-proxy")

    times: dict[str, dict[str, list[float]]] = {t.name: {"push": [], "pull": [], "digest": []} for t in targets}
    token_fetch: list[float] = []
    size = plan.mib * ociimage.MIB
    for i in range(plan.iterations + 1):  # iteration 0 warms up every registry and client: not counted
        image = ociimage.build(work / f"image-{i}", size=size, layers=plan.layers)
        order = targets[i % len(targets) :] + targets[: i % len(targets)]
        for target in order:
            ref = f"{target.host}/bench/app:{i}"
            push = target.run("push", str(image.path), ref)
            dest = work / f"pulled-{target.name}-{i}"
            pull = target.run("pull", "--format=oci", ref, str(dest))
            digest = target.run("digest", ref)
            got = {p.name for p in (dest / "blobs" / "sha256").iterdir()}
            if got != {p.name for p in (image.path / "blobs" / "sha256").iterdir()}:
                raise RuntimeError(f"{target.name}: the pulled image is not the pushed one")
            shutil.rmtree(dest)
            if i:
                for what, seconds in (("push", push), ("pull", pull), ("digest", digest)):
                    times[target.name][what].append(seconds)
        fetch = _token_fetch(realm, ca, service, password)
        if i:
            token_fetch.append(fetch)
        shutil.rmtree(image.path)
        log(f"datapath-node: iteration {i} of {plan.iterations} done" + (" (warm-up)" if not i else ""))
    return {
        "size": size,
        "layers": plan.layers,
        "iterations": plan.iterations,
        "variants": {name: {op: summary(v) for op, v in t.items()} for name, t in times.items()},
        "token_fetch": summary(token_fetch),
    }


def run(plan: NodePlan, workdir: Path, log: Log) -> dict[str, Any]:
    """Start the control plane with the real node and the operator, measure, stop everything."""
    cluster = localcluster.LocalCluster(workdir / "cluster", nodes=plan.nodes, real_node=True, log=log)
    log(f"datapath-node: starting the control plane with the real node in {workdir}")
    cluster.start()
    try:
        ns, sa = cluster.apply_rbac(REPO / "manifests")
        kubeconfig = cluster.token_kubeconfig(workdir / "operator.kubeconfig", ns, sa)
        operator = localcluster.start_operator(kubeconfig, workdir / "operator.log")
        client = Client(KubeConfig.from_file(str(cluster.kubeconfig)), field_manager="bench")
        proxy = ServiceProxy()
        try:
            return _measure(client, cluster, plan, proxy, workdir / "datapath-node", log)
        finally:
            proxy.close()
            operator.stop()
    finally:
        cluster.stop()
