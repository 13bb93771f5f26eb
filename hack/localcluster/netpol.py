"""The real node's NetworkPolicy engine: kube-router as a network-policy controller only (iptables + ipset).

Why kube-router: it is the one engine the Go module proxy serves that this kind of kernel can run. SIG Network's
kube-network-policies sends packets to user space with the nftables ``queue`` verdict, and these kernels are
built with ``# CONFIG_NFT_QUEUE is not set``; kube-router needs only iptables (``-m set``, ``-m physdev``,
``-m conntrack``, ``-m mark``, REJECT, NFLOG) and ipset hash:ip / hash:net, which they have. Its routing and
service proxy stay off (``--run-router=false --run-service-proxy=false``): the CNI bridge and kube-proxy do that.

Pods on the node share one bridge, so pod-to-pod traffic is filtered only with ``bridge-nf-call-iptables`` on:
set here (the journal restores it). Its health and metrics listeners stay off (they bind every address); it is
ready when its first sync has put the jump to ``KUBE-ROUTER-FORWARD`` in the filter table's FORWARD. ``down``
removes its chains with every other iptables change of the node and destroys the ipsets it made (host.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .binaries import bin_dir, read_versions
from .host import SYSTEM_PATH, run
from .network import SERVICE_CIDR

NAME = "kube-router"
USER = "registry-operator-local:kube-router"
FORWARD_CHAIN = "KUBE-ROUTER-FORWARD"
BRIDGE_SYSCTL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
# What its informers list and watch (pkg/cmd/kube-router.go starts them all, whichever controllers run).
RBAC = f"""\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {USER}}}
rules:
- apiGroups: [""]
  resources: [pods, namespaces, nodes, services, endpoints]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {USER}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: '{USER}'}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: '{USER}'}}]
"""


def binary() -> Path:
    return bin_dir() / f"kube-router-{read_versions()['KUBE_ROUTER_VERSION']}" / "kube-router"


def unavailable() -> str | None:
    """Why the engine cannot run on this machine, or None."""
    if not binary().is_file():
        return f"{binary()} is missing (hack/build netpol)"
    if not shutil.which("ipset", path=SYSTEM_PATH):
        return "ipset is missing (apt ipset; hack/install-deps)"
    if not BRIDGE_SYSCTL.exists():
        return f"{BRIDGE_SYSCTL} does not exist (no br_netfilter: bridged pod traffic would bypass iptables)"
    return None


def prepare() -> None:
    """Bridged pod-to-pod traffic through iptables (the journal's sysctl snapshot restores the old value)."""
    BRIDGE_SYSCTL.write_text("1")


def args(kubeconfig: Path, node_name: str) -> list[str]:
    return [
        "env",
        f"PATH={SYSTEM_PATH}",  # it runs iptables, iptables-save/-restore and ipset by name
        str(binary()),
        f"--kubeconfig={kubeconfig}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        f"--hostname-override={node_name}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--health-port=0",
        "--metrics-port=0",
        "--v=1",
    ]


def synced() -> bool:
    """Its first sync is done: the filter table's FORWARD jumps to its chain."""
    forward = run("iptables", "-t", "filter", "-S", "FORWARD", check=False).stdout.splitlines()
    return any(rule.endswith(f"-j {FORWARD_CHAIN}") for rule in forward)


def applies(policy: str, pod_ip: str) -> bool:
    """kube-router has programmed ``policy`` for the pod at ``pod_ip``: its firewall chain sends the pod's
    ingress through the policy's chain. Policies and pods are synced some time after they change."""
    rules = run("iptables-save", "-t", "filter", check=False).stdout.splitlines()
    return any(f"-d {pod_ip}/32 " in r and f'--comment "run through nw policy {policy}"' in r for r in rules)
