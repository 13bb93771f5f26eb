"""spec.nodeTrust on a real API server: the operator (under its own RBAC, manifests/ + manifests/node-trust/)
keeps one ConfigMap per trusting Registry in the agent's namespace, follows a CA rotation, removes it when
nodeTrust is disabled and when the Registry is deleted, and writes nothing at rest; the node agent (a real
process under its own ServiceAccount) makes a temporary certs.d directory say the same, live."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lightkube import ApiError
from lightkube.resources.core_v1 import ConfigMap, Secret, Service
from lightkube.types import PatchType
from localcluster.cluster import REPO
from registries import condition, get, manifest, registry
from test_metrics import scrape, value

from registry_operator.kinds import Registry

AGENTS = "registry-operator-node-trust"  # manifests/node-trust/'s namespace, the operator's default
NODE_IP = "10.250.0.1"


def config_map(client, name: str) -> dict | None:
    try:
        return client.get(ConfigMap, name, namespace=AGENTS).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def test_config_map_lifecycle_and_the_agent_following_it(
    cluster, kube_client, namespace, operator_factory, operator_rbac_kubeconfig, wait_for, tmp_path: Path
):
    cluster.apply_rbac(REPO / "manifests" / "node-trust", service_account="registry-operator-node-trust")
    agent_kubeconfig = cluster.token_kubeconfig(tmp_path / "agent-kubeconfig", AGENTS, "registry-operator-node-trust")
    certs = tmp_path / "certs.d"
    certs.mkdir()
    (certs / "docker.io").mkdir()  # someone else's: never touched
    (certs / "docker.io" / "hosts.toml").write_text('server = "https://registry-1.docker.io"\n')
    path = os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])
    agent = subprocess.Popen(
        [sys.executable, "-m", "registry_operator.nodetrust", "--namespace", AGENTS, "--certs-dir", str(certs),
         "--resync-seconds", "1"],
        env={**os.environ, "KUBECONFIG": str(agent_kubeconfig), "PYTHONPATH": path},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    op = operator_factory(kubeconfig=operator_rbac_kubeconfig)
    name = f"reg.{namespace}-node-trust"
    try:
        spec = {"auth": {"users": [{"name": "alice"}]}, "service": {"type": "NodePort"},
                "tls": {"ipAddresses": [NODE_IP]}, "nodeTrust": {"enabled": True}}
        started = time.monotonic()
        cluster.apply(manifest("reg", namespace, spec))
        cm = wait_for(lambda: config_map(kube_client, name), timeout=60, what="node-trust ConfigMap")
        print(f"\nRegistry created -> node-trust ConfigMap in {time.monotonic() - started:.2f}s")
        uid = registry(kube_client, "reg", namespace)["metadata"]["uid"]
        assert cm["metadata"]["labels"]["registry.operator.dev/node-trust-of"] == uid
        node_port = kube_client.get(Service, "reg", namespace=namespace).spec.ports[0].nodePort
        host = f"{NODE_IP}:{node_port}"
        assert cm["data"]["hosts"].split() == [
            f"reg.{namespace}.svc:5000", f"reg.{namespace}.svc.cluster.local:5000", host]
        ca = kube_client.get(ConfigMap, "reg-ca", namespace=namespace).data["ca.crt"]
        assert cm["data"]["ca.crt"] == ca
        assert "registry.operator.dev/node-trust" in registry(kube_client, "reg", namespace)["metadata"]["finalizers"]

        # No agent DaemonSet in the namespace: said once in the condition, not Degraded, no loop.
        cond = wait_for(lambda: condition(kube_client, "reg", namespace, "NodeTrust"), timeout=30, what="NodeTrust")
        assert (cond["status"], cond["reason"]) == ("False", "NodeAgentNotInstalled")
        assert condition(kube_client, "reg", namespace, "Degraded")["status"] == "False"
        status = registry(kube_client, "reg", namespace)["status"]["nodeTrust"]
        assert status == {"configMap": f"{AGENTS}/{name}", "hosts": cm["data"]["hosts"].split()}

        # The agent writes the directories, live.
        wait_for(lambda: (certs / host / "ca.crt").is_file(), timeout=30, what=f"certs.d/{host}")
        assert (certs / host / "ca.crt").read_text() == ca
        assert 'ca = "ca.crt"' in (certs / host / "hosts.toml").read_text()
        (certs / host / "ca.crt").unlink()  # removed on the node: the periodic resync puts it back
        wait_for(lambda: (certs / host / "ca.crt").is_file(), timeout=10, what="ca.crt put back")

        # At rest: a restarted operator writes nothing (the agent check is a read).
        time.sleep(2)
        versions = (config_map(kube_client, name)["metadata"]["resourceVersion"],
                    registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"])
        op.stop()
        op = operator_factory(kubeconfig=operator_rbac_kubeconfig, args=["--all-namespaces", "--log-level", "DEBUG"])
        op.wait_for_log(rf"Registry {namespace}/reg reconciled: 0 applied", timeout=30)
        time.sleep(1)
        assert versions == (config_map(kube_client, name)["metadata"]["resourceVersion"],
                            registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"])

        # A new CA (its key lost): the ConfigMap and the node's ca.crt follow.
        kube_client.delete(Secret, "reg-ca-key", namespace=namespace)
        started = time.monotonic()
        wait_for(lambda: config_map(kube_client, name)["data"]["ca.crt"] != ca, timeout=30, what="CA rotated")
        rotated = config_map(kube_client, name)["data"]["ca.crt"]
        wait_for(lambda: (certs / host / "ca.crt").read_text() == rotated, timeout=30, what="ca.crt rotated")
        print(f"CA key deleted -> node's ca.crt rotated in {time.monotonic() - started:.2f}s")
        assert rotated == kube_client.get(ConfigMap, "reg-ca", namespace=namespace).data["ca.crt"]

        # Deleted by hand: restored (its event reaches the Registry named in its annotation).
        kube_client.delete(ConfigMap, name, namespace=AGENTS)
        wait_for(lambda: config_map(kube_client, name), timeout=30, what="ConfigMap restored")

        # nodeTrust disabled: the ConfigMap, the finalizer and the node's directories go; foreign ones stay.
        kube_client.patch(Registry, "reg", {"spec": {"nodeTrust": {"enabled": False}}}, namespace=namespace,
                          patch_type=PatchType.MERGE)
        wait_for(lambda: config_map(kube_client, name) is None, timeout=30, what="ConfigMap removed")
        wait_for(lambda: not (certs / host).exists(), timeout=30, what="certs.d entry removed")
        assert sorted(os.listdir(certs)) == ["docker.io"]
        wait_for(lambda: "registry.operator.dev/node-trust" not in (
            registry(kube_client, "reg", namespace)["metadata"].get("finalizers") or ()), timeout=30,
            what="finalizer removed")
        wait_for(lambda: condition(kube_client, "reg", namespace, "NodeTrust") is None, timeout=10,
                 what="NodeTrust condition gone")  # written just after the finalizer's removal
        assert "nodeTrust" not in registry(kube_client, "reg", namespace)["status"]

        # Enabled again, then the Registry deleted: the finalizer removes the ConfigMap, the agent the files.
        kube_client.patch(Registry, "reg", {"spec": {"nodeTrust": {"enabled": True}}}, namespace=namespace,
                          patch_type=PatchType.MERGE)
        wait_for(lambda: (certs / host / "hosts.toml").is_file(), timeout=30, what="certs.d entry again")
        cluster.kubectl("delete", "registry", "reg", "-n", namespace, "--wait=false")
        started = time.monotonic()
        wait_for(lambda: cluster.kubectl("get", "registry", "reg", "-n", namespace, check=False).returncode != 0,
                 timeout=30, what="Registry gone")
        assert config_map(kube_client, name) is None
        wait_for(lambda: not (certs / host).exists(), timeout=30, what="certs.d entry removed with the Registry")
        print(f"Registry deleted -> certs.d entry gone in {time.monotonic() - started:.2f}s")
        rss = next(line for line in Path(f"/proc/{agent.pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS"))
        print(f"node agent {rss.split(':')[1].strip()} RSS")
        assert sorted(os.listdir(certs)) == ["docker.io"]
    finally:
        cluster.kubectl("delete", "registry", "reg", "-n", namespace, "--ignore-not-found", "--timeout=30s",
                        check=False)
        agent.terminate()
        out, _ = agent.communicate(timeout=10)
        print(f"----- agent log -----\n{out}")


def test_crd_refuses_node_trust_without_tls(cluster, namespace):
    spec = {"auth": {"mode": "none"}, "tls": {"mode": "Disabled"}, "nodeTrust": {"enabled": True}}
    result = cluster.kubectl("apply", "-f", "-", input=manifest("reg", namespace, spec), check=False)
    assert result.returncode != 0 and "nodeTrust needs TLS" in result.stderr, result.stderr


def test_without_the_agents_namespace_it_is_said_once_and_nothing_loops(
    cluster, kube_client, namespace, operator_factory, wait_for
):
    op = operator_factory(env={"REGISTRY_OPERATOR_NODE_TRUST_NAMESPACE": f"{namespace}-missing"})
    cluster.apply(manifest("reg", namespace, {"auth": {"users": [{"name": "alice"}]}, "nodeTrust": {"enabled": True}}))
    wait_for(lambda: (condition(kube_client, "reg", namespace, "NodeTrust") or {}).get("reason")
             == "NodeAgentNotInstalled", timeout=60, what="NodeAgentNotInstalled")
    time.sleep(2)
    rv = registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"]
    time.sleep(3)
    assert registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"] == rv
    assert op.log().count("NodeAgentNotInstalled") == 1
    assert "Retry" not in op.log() and "NodeTrustWriteFailed" not in op.log()
    # A reconcile (here: a child deleted by hand; at rest: the agent check every minute) asks whether the
    # namespace exists with a read, and sends no apply the API server can only refuse.
    applies = value(scrape(op.metrics_url), "registry_operator_api_writes_total", kind="ConfigMap", verb="apply")
    kube_client.delete(Service, "reg", namespace=namespace)
    wait_for(lambda: get(kube_client, "Service", "reg", namespace), timeout=30, what="Service restored")
    time.sleep(1)
    assert value(scrape(op.metrics_url), "registry_operator_api_writes_total", kind="ConfigMap",
                 verb="apply") == applies
    cluster.kubectl("delete", "registry", "reg", "-n", namespace, "--timeout=30s")  # the finalizer lets go


def test_a_host_two_registries_name_stays_with_the_first(cluster, kube_client, namespace, operator, wait_for):
    cluster.apply_rbac(REPO / "manifests" / "node-trust", service_account="registry-operator-node-trust")
    spec = {"auth": {"users": [{"name": "alice"}]}, "tls": {"ipAddresses": [NODE_IP]}, "nodeTrust": {"enabled": True}}
    cluster.apply(manifest("first", namespace, spec))
    wait_for(lambda: config_map(kube_client, f"first.{namespace}-node-trust"), timeout=60, what="first ConfigMap")
    cluster.apply(manifest("second", namespace, spec))
    cond = wait_for(lambda: (c := condition(kube_client, "second", namespace, "NodeTrust")) and
                    c["reason"] == "NodeTrustHostTaken" and c, timeout=60, what="NodeTrustHostTaken")
    assert f"{NODE_IP}:5000 (Registry {namespace}/first)" in cond["message"]
    assert config_map(kube_client, f"second.{namespace}-node-trust")["data"]["hosts"].split() == [
        f"second.{namespace}.svc:5000", f"second.{namespace}.svc.cluster.local:5000"]
    assert f"{NODE_IP}:5000" in config_map(kube_client, f"first.{namespace}-node-trust")["data"]["hosts"].split()
    for name in ("first", "second"):
        cluster.kubectl("delete", "registry", name, "-n", namespace, "--timeout=30s")
    assert config_map(kube_client, f"second.{namespace}-node-trust") is None
