"""A real node next to the kwok ones: containerd + runc (Debian), kubelet and kube-proxy (built from the same
Kubernetes module as the control plane), CoreDNS for ``*.svc`` names, and a CNI bridge, all run as processes of
the cluster with their configuration, state and sockets in ``<workdir>/node``.

This machine may only talk to itself, so the network is part of the node:
- the node IP is a /32 on a bridge of its own (the kubelet refuses a loopback node IP); pods live on another
  bridge (``ro-cni0``, the pod subnet), the Service range is a blackhole route;
- an egress guard (iptables chain ``RO-EGRESS-GUARD``, network.py) drops anything from the pod range that is not
  for the pod range; it is checked before the kubelet starts, so no pod ever runs without it;
- pods resolve names through CoreDNS on the node IP, which knows the cluster only (no upstream); the kubelet's
  ``resolvConf`` is a file of ours, never the host's;
- images are imported from ``.cache/images`` (hack/images), so containerd never pulls from the internet.

NetworkPolicies are enforced when ``hack/build netpol`` made kube-router (netpol.py); without it the node runs
and ``RealNode.netpol_problem`` says why nothing enforces them. PersistentVolumeClaims of StorageClass
``real-node-local`` bind to a small pool of ``local`` volumes on the node, which a non-root registry can write
(volumes.py).

Everything ``up`` changes on the host is written to a journal (``host-changes.json``) before it is changed, and
``down`` undoes exactly that: iptables rules and chains that were not there before (the kubelet's and
kube-proxy's too), sysctls (the kubelet sets some), bridges, routes, mounts, network namespaces, cgroups and the
/var paths the kubelet and containerd create.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import netpol, volumes
from .binaries import bin_dir, read_versions
from .errors import ClusterError
from .host import CGROUP_ROOT, IPTABLES, JOURNAL, SYSTEM_PATH, HostChanges, run, unmount_under
from .images import PAUSE_IMAGE
from .images import build as build_images
from .kubeconfig import b64, dump_yaml, kubeconfig_dict, write_private
from .network import CNI_BRIDGE, NODE_IP, POD_CIDR, POD_SUBNET, assert_egress_guard, set_up
from .pki import write_leaf
from .poll import wait_until
from .ports import pick_free_ports
from .processes import Proc, pid_alive, terminate

if TYPE_CHECKING:
    from .local import LocalCluster

NODE_NAME = "real-node"
NODE_LABEL = "type=real"
KWOK_LABEL = "type=kwok"
# With kwok nodes in the same cluster, PodNodeSelector sends pods to kwok nodes unless their namespace carries
# this annotation with NODE_LABEL.
NODE_SELECTOR_ANNOTATION = "scheduler.alpha.kubernetes.io/node-selector"
CNI_BIN = Path("/usr/lib/cni")
# The hostPath of manifests/node-trust/'s agent (containerd's usual config_path): the node's certs.d is mounted
# there, so `kubectl apply -k manifests/node-trust/` unchanged, as the README says, works on this node too.
HOST_CERTS_DIR = Path("/etc/containerd/certs.d")
NODE_COMPONENTS = ("containerd", "coredns", "kubelet", "kube-proxy", netpol.NAME)  # start order
Log = Callable[[str], None]


class NodeUnavailable(ClusterError):
    """This machine cannot run a real node (not root, a missing package or binary, no cgroups...)."""


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    kube_proxy: Path
    coredns: Path
    containerd: Path
    ctr: Path
    runc: Path

    @classmethod
    def locate(cls) -> NodeBinaries:
        v = read_versions()
        base = bin_dir()
        found = cls(
            kubelet=base / f"k8s-node-{v['KUBERNETES_VERSION']}" / "kubelet",
            kube_proxy=base / f"k8s-node-{v['KUBERNETES_VERSION']}" / "kube-proxy",
            coredns=base / f"coredns-{v['COREDNS_VERSION']}" / "coredns",
            containerd=Path(shutil.which("containerd", path=SYSTEM_PATH) or "/usr/bin/containerd"),
            ctr=Path(shutil.which("ctr", path=SYSTEM_PATH) or "/usr/bin/ctr"),
            runc=Path(shutil.which("runc", path=SYSTEM_PATH) or "/usr/sbin/runc"),
        )
        return found


def preflight() -> NodeBinaries:
    """Everything a real node needs, or NodeUnavailable naming what is missing and how to get it."""
    problems = []
    if os.geteuid() != 0:
        problems.append("it must run as root (network namespaces, mounts, iptables)")
    b = NodeBinaries.locate()
    apt = "hack/install-deps (apt containerd runc containernetworking-plugins)"
    needed = [
        b.kubelet,
        b.kube_proxy,
        b.coredns,
        b.containerd,
        b.ctr,
        b.runc,
        CNI_BIN / "bridge",
        CNI_BIN / "host-local",
    ]
    for path in needed:
        how = "hack/build node" if str(path).startswith(str(bin_dir())) else apt
        if not path.is_file():
            problems.append(f"{path} is missing ({how})")
    for tool in ("ip", "umount", *IPTABLES, *(f"{t}-save" for t in IPTABLES)):
        if not shutil.which(tool, path=SYSTEM_PATH):
            problems.append(f"{tool} is missing (apt iproute2 iptables)")
    if not (CGROUP_ROOT / "memory").is_dir() and not (CGROUP_ROOT / "cgroup.controllers").exists():
        problems.append(f"no memory cgroup under {CGROUP_ROOT}")
    other = HostChanges.load(JOURNAL)
    if other is not None and any(pid_alive(pid, start) for pid, start in other.processes.values()):
        problems.append(f"the real node of the cluster in {other.owner} runs (one per machine): "
                        f"hack/cluster --workdir {other.owner} down")  # fmt: skip
    if problems:
        raise NodeUnavailable("no real node on this machine: " + "; ".join(problems))
    return b


# ------------------------------------------------------------------------------------------------ the node


def _wait(check: Callable[[], object], timeout: float, what: str) -> None:
    wait_until(check, timeout, what, error=ClusterError)


class RealNode:
    """The real node of a LocalCluster: started after the control plane, stopped before it."""

    def __init__(self, cluster: LocalCluster, binaries: NodeBinaries):
        self.cluster = cluster
        self.b = binaries
        self.dir = cluster.workdir / "node"
        self.changes = HostChanges(JOURNAL, owner=str(cluster.workdir))
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.netpol_problem: str | None = "the node was not started by this process"

    # -- paths

    @staticmethod
    def owned_by(workdir: Path) -> bool:
        """Whether the machine's real node (or what it left on the host) belongs to the cluster in ``workdir``."""
        changes = HostChanges.load(JOURNAL)
        return changes is not None and changes.owner == str(Path(workdir).resolve())

    @property
    def socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @staticmethod
    def certs_dir(workdir: Path) -> Path:
        """containerd's registry config directory: ``<host:port>/hosts.toml`` and ``ca.crt``, read live."""
        return workdir / "node" / "certs.d"

    @classmethod
    def shares_certs_dir(cls, workdir: Path) -> bool:
        """Whether HOST_CERTS_DIR is this node's certs.d (``up`` mounts it there unless the host has its own)."""
        try:
            return os.path.samefile(HOST_CERTS_DIR, cls.certs_dir(workdir))
        except OSError:
            return False

    @classmethod
    def node_agent(cls, objects: list[dict], workdir: Path, namespace: str | None = None) -> list[dict]:
        """manifests/node-trust/ (its rendered ``objects``) for this node: the agent's hostPath is the node's
        certs.d, containerd's ``config_path`` here, and it runs on the real node only (not on kwok nodes). With
        ``namespace``, everything goes there instead of its own namespace, whose object is left out (the caller
        makes that one: Pod Security ``privileged``, and the real node's node-selector annotation if kwok nodes
        are in the cluster)."""
        objects = json.loads(json.dumps(objects))
        own = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
        if namespace is not None:
            objects = [o for o in objects if o["kind"] != "Namespace"]
            for obj in objects:
                for ref in [obj["metadata"], *obj.get("subjects", ())]:
                    if ref.get("namespace") == own:
                        ref["namespace"] = namespace
        pod = next(o for o in objects if o["kind"] == "DaemonSet")["spec"]["template"]["spec"]
        pod["nodeSelector"] = {"kubernetes.io/hostname": NODE_NAME}
        [volume] = [v for v in pod["volumes"] if "hostPath" in v]
        volume["hostPath"]["path"] = str(cls.certs_dir(workdir))
        return objects

    @classmethod
    def trust_registry(cls, workdir: Path, host: str, ca_pem: bytes) -> None:
        """Make containerd trust a registry's CA for ``host`` (``<ip>:<port>``) by hand, as the node agent of
        ``spec.nodeTrust`` does (without its marker: the agent never touches this directory); containerd reads it
        at the next pull, without a restart."""
        trust = cls.certs_dir(workdir) / host
        trust.mkdir(parents=True, exist_ok=True)
        (trust / "ca.crt").write_bytes(ca_pem)
        (trust / "hosts.toml").write_text(
            f'server = "https://{host}"\n\n[host."https://{host}"]\n  capabilities = ["pull", "resolve"]\n'
            f'  ca = "{trust / "ca.crt"}"\n'
        )

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(str(self.b.ctr), "--address", str(self.socket), "--namespace", "k8s.io", *args, check=check)

    # -- start

    def start(self, log: Log) -> None:
        started = time.monotonic()
        leftover = HostChanges.load(JOURNAL)
        if leftover is not None:  # an earlier node, dead (preflight refuses a live one), was never taken down
            log(f"undoing what the dead real node of {leftover.owner} left on this machine")
            _stop_processes(leftover, {}, log)
            leftover.undo(log)
        unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)  # no state of an earlier node: its pods, images, pull records
        for sub in ("containerd", "kubelet", "cni", "cni-ipam", "pod-logs", "manifests", "certs.d"):
            (self.dir / sub).mkdir(parents=True)
        step = time.monotonic()
        images = build_images(log=log)
        self.timings["images"] = time.monotonic() - step
        self.changes.snapshot()
        set_up(self.changes)
        assert_egress_guard()  # before any pod can start
        self._write_pki_and_kubeconfigs()
        self._write_configs()
        self._share_certs_dir(log)
        step = time.monotonic()
        self._start_containerd()
        _wait(lambda: self._alive("containerd") and self.ctr("version", check=False).returncode == 0, 30, "containerd")
        for tar in images.values():
            self.ctr("images", "import", str(tar))
        self.timings["containerd+images"] = time.monotonic() - step
        step = time.monotonic()
        self._start_coredns()
        self._start_kubelet()
        _wait(lambda: self._alive("kubelet") and self.ready(), 90, f"node {NODE_NAME} Ready")
        self.timings["kubelet→Ready"] = time.monotonic() - step
        self._start_kube_proxy()
        _wait(lambda: self._alive("kube-proxy") and self._kube_proxy_healthy(), 30, "kube-proxy /healthz")
        _wait(lambda: self._alive("coredns") and self._coredns_ready(), 30, "CoreDNS /ready")
        volumes.make_directories(self.dir)
        self.cluster.apply(volumes.manifests(self.dir, NODE_NAME, default=not self.cluster.nodes))
        self._start_netpol(log)
        self.timings["total"] = time.monotonic() - started
        log(f"real node {NODE_NAME} ({NODE_IP}) Ready: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))

    def _alive(self, name: str) -> bool:
        return self.cluster._alive_or_raise(name)

    def _spawn(self, name: str, args: list[str]) -> None:
        """A process of the node, recorded in the machine-wide journal too (down finds it without our state)."""
        proc = self.cluster._spawn(name, args)
        self.changes.add_process(name, proc.pid, proc.starttime)

    def _write_pki_and_kubeconfigs(self) -> None:
        pki = self.cluster.pki
        write_leaf(pki, "kubelet-client", f"system:node:{NODE_NAME}", org="system:nodes")
        write_leaf(pki, "kubelet-serving", NODE_NAME, server_names=[NODE_NAME, NODE_IP])
        write_leaf(pki, "kube-proxy", "system:kube-proxy")
        self.cluster.apply(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n"
            "metadata: {name: registry-operator-local-nodes}\n"
            "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'system:node'}\n"
            "subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: 'system:nodes'}]\n"
        )
        write_leaf(pki, netpol.NAME, netpol.USER)
        for user in ("kubelet-client", "kube-proxy", netpol.NAME):
            cfg = kubeconfig_dict(
                self.cluster.server,
                b64(pki / "ca.crt"),
                {"client-certificate-data": b64(pki / f"{user}.crt"), "client-key-data": b64(pki / f"{user}.key")},
                "registry-operator-local",
                user,
            )
            write_private(self.dir / f"{user}.kubeconfig", dump_yaml(cfg))

    def _write_configs(self) -> None:
        d = self.dir
        config = CONTAINERD_CONFIG.format(dir=d, socket=self.socket, pause=PAUSE_IMAGE, runc=self.b.runc,
                                          cni_bin=CNI_BIN, certs=self.certs_dir(self.cluster.workdir))  # fmt: skip
        (d / "containerd.toml").write_text(config)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "registry-operator",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": CNI_BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,  # nothing leaves this machine: no address translation for the outside
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(d / "cni-ipam"),
                    },  # fmt: skip
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (d / "cni" / "10-registry-operator.conflist").write_text(json.dumps(conflist, indent=2))
        # Pods' DNS: CoreDNS on the node IP (ClusterFirst) or nothing at all (Default): never the host's resolver.
        # containerd reads it too (_start_containerd).
        (d / "resolv.conf").write_text("# the real node's pods: no upstream resolver (this machine talks to itself)\n")
        self.ports = pick_free_ports(["kubelet-healthz", "kube-proxy-healthz", "kube-proxy-metrics", "coredns-ready"])
        kubelet = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports["kubelet-healthz"],
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.cluster.pki / "ca.crt")},
            },  # fmt: skip
            "authorization": {"mode": "AlwaysAllow"},
            "tlsCertFile": str(self.cluster.pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(self.cluster.pki / "kubelet-serving.key"),
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "imageServiceEndpoint": f"unix://{self.socket}",
            "clusterDNS": [NODE_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": str(d / "resolv.conf"),
            "podLogsDir": str(d / "pod-logs"),
            "staticPodPath": str(d / "manifests"),
            "protectKernelDefaults": False,
            "serializeImagePulls": False,
            # Images are imported, never pulled, unless from a Registry of ours: with the default policy the
            # kubelet re-pulls an imported image for pods without the credentials it was once pulled with, and
            # containerd would look its registry name up in the machine's DNS.
            "imagePullCredentialsVerificationPolicy": "NeverVerify",
            "syncFrequency": "10s",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "maxPods": 110,
        }
        (d / "kubelet.yaml").write_text(dump_yaml(kubelet))
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(d / "kube-proxy.kubeconfig")},
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{self.ports['kube-proxy-healthz']}",
            "metricsBindAddress": f"127.0.0.1:{self.ports['kube-proxy-metrics']}",
            "clusterCIDR": POD_CIDR,
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        (d / "kube-proxy.yaml").write_text(dump_yaml(proxy))
        (d / "Corefile").write_text(
            f".:53 {{\n    bind {NODE_IP}\n    errors\n    ready 127.0.0.1:{self.ports['coredns-ready']}\n"
            f"    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        kubeconfig {self.cluster.kubeconfig}\n"
            "        pods insecure\n        ttl 5\n    }\n    cache 5\n}\n"
        )

    def _share_certs_dir(self, log: Log) -> None:
        """Mount the node's certs.d on HOST_CERTS_DIR, so the node agent installed exactly as users do (its
        hostPath unpatched) writes what this containerd reads. Without it that agent created and filled the
        host's /etc/containerd/certs.d, which no containerd here reads and which ``down`` did not remove, while
        the Registry said ``Published``. The directory is in the journal's paths (absent before: removed by
        ``down``) and the mount is recorded; a host that has its own is left alone (``RealNode.node_agent``
        then patches the hostPath instead)."""
        if HOST_CERTS_DIR.exists() or not HOST_CERTS_DIR.parent.is_dir():
            log(
                f"{HOST_CERTS_DIR} exists (or its parent does not): left alone; install the node agent with "
                "RealNode.node_agent (its hostPath the node's certs.d), not manifests/node-trust/ as it is"
            )
            return
        HOST_CERTS_DIR.mkdir()
        run("mount", "--bind", str(self.certs_dir(self.cluster.workdir)), str(HOST_CERTS_DIR))
        self.changes.add_mount(str(HOST_CERTS_DIR))

    def _start_containerd(self) -> None:
        """containerd sees our empty resolv.conf as /etc/resolv.conf (a mount namespace of its own): a registry
        name it ever had to look up would go to 127.0.0.1:53, where nothing answers, never to the machine's
        resolver. The kubelet mounts pods' volumes later, in the host's namespace: its root directory is made a
        shared mount first, so those mounts propagate to containerd (recorded: down unmounts it and all below)."""
        kubelet_root = str(self.dir / "kubelet")
        run("mount", "--bind", kubelet_root, kubelet_root)
        self.changes.add_mount(kubelet_root)
        run("mount", "--make-rshared", kubelet_root)
        own_resolv_conf = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        self._spawn(
            "containerd",
            ["unshare", "--mount", "--propagation", "slave", "sh", "-c", own_resolv_conf, str(self.dir / "resolv.conf"),
             str(self.b.containerd), "--config", str(self.dir / "containerd.toml")],
        )  # fmt: skip

    def _start_kubelet(self) -> None:
        self._spawn(
            "kubelet",
            [
                str(self.b.kubelet),
                f"--config={self.dir / 'kubelet.yaml'}",
                f"--kubeconfig={self.dir / 'kubelet-client.kubeconfig'}",
                f"--root-dir={self.dir / 'kubelet'}",
                f"--cert-dir={self.dir / 'kubelet' / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--node-labels={NODE_LABEL}",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self) -> None:
        self._spawn("kube-proxy", [str(self.b.kube_proxy), f"--config={self.dir / 'kube-proxy.yaml'}", "--v=1"])

    def _start_netpol(self, log: Log) -> None:
        """kube-router, when built and when it starts; a node without it still runs, and ``netpol_problem`` says
        why. Started last: its first sync needs the node object (its IP) and the pods, which the kubelet reports."""
        self.netpol_problem = netpol.unavailable()
        if self.netpol_problem:
            log(f"NetworkPolicies are not enforced: {self.netpol_problem}")
            return
        step = time.monotonic()
        self.cluster.apply(netpol.RBAC)
        netpol.prepare()
        self._spawn(netpol.NAME, netpol.args(self.dir / f"{netpol.NAME}.kubeconfig", NODE_NAME))
        try:
            _wait(lambda: self._alive(netpol.NAME) and netpol.synced(), 60, "kube-router's first NetworkPolicy sync")
        except ClusterError as e:  # the node is still useful; what it left in iptables goes at down
            proc = self.cluster.procs.pop(netpol.NAME)
            terminate(proc.pid, proc.starttime, popen=proc.popen)
            self.netpol_problem = f"kube-router did not start: {e}"
            log(f"NetworkPolicies are not enforced: {self.netpol_problem}")
            return
        self.netpol_problem = None
        self.timings["kube-router→synced"] = time.monotonic() - step

    def _start_coredns(self) -> None:
        self._spawn("coredns", [str(self.b.coredns), "-conf", str(self.dir / "Corefile")])

    def _get(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _kube_proxy_healthy(self) -> bool:
        return self._get(f"http://127.0.0.1:{self.ports['kube-proxy-healthz']}/healthz")

    def _coredns_ready(self) -> bool:
        return self._get(f"http://127.0.0.1:{self.ports['coredns-ready']}/ready")

    def ready(self) -> bool:
        code, body = self.cluster.api("GET", f"/api/v1/nodes/{NODE_NAME}")
        conditions = (body or {}).get("status", {}).get("conditions", []) if code == 200 else []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # -- stop

    def stop(self, log: Log, timeout: float = 10) -> None:
        """Everything of the node, whether this process started it or only the journal knows it: the kubelet
        first (nothing restarts containers then), every container killed through containerd, containerd and its
        shims, then the host changes undone. The API objects of its pods are left to the control plane's stop."""
        changes = HostChanges.load(JOURNAL)
        if changes is None or changes.owner != str(self.cluster.workdir):
            return
        mine = {n: self.cluster.procs.pop(n) for n in NODE_COMPONENTS if n in self.cluster.procs}
        _stop_processes(changes, mine, log, timeout)
        unmount_under(self.dir)
        volumes.remove_directories(self.dir)
        changes.undo(log)


def _stop_processes(changes: HostChanges, procs: dict[str, Proc], log: Log, timeout: float = 10) -> None:
    """Stop the node's processes (``procs`` when we hold them, else by the journal's PID and start time)."""
    for name in NODE_COMPONENTS[::-1]:
        proc = procs.get(name)
        pid, starttime = (proc.pid, proc.starttime) if proc else changes.processes.get(name, (0, 0))
        if not pid or not pid_alive(pid, starttime):
            continue
        if name == "containerd":
            _kill_containers(Path(changes.owner) / "node" / "containerd" / "containerd.sock")
        log(f"stopping {name} (pid {pid})")
        terminate(pid, starttime, timeout, popen=proc.popen if proc else None)
    _kill_shims(Path(changes.owner) / "node" / "containerd" / "containerd.sock")


def _kill_containers(socket: Path) -> None:
    def ctr(*args: str) -> str:
        return run(str(NodeBinaries.locate().ctr), "--address", str(socket), "--namespace", "k8s.io", *args,
                   check=False).stdout  # fmt: skip

    tasks = ctr("tasks", "ls", "-q").split()
    for task in tasks:
        ctr("tasks", "kill", "--signal", "SIGKILL", task)
    for task in tasks:
        ctr("tasks", "delete", "--force", task)
    for container in ctr("containers", "ls", "-q").split():
        ctr("containers", "delete", container)


def _kill_shims(socket: Path) -> None:
    """containerd's shims outlive it; ours are the ones started with our socket. Their containers go first."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in cmdline:
            for child in run("pgrep", "-P", entry.name, check=False).stdout.split():
                terminate(int(child), timeout=2)
            terminate(int(entry.name), timeout=2)


CONTAINERD_CONFIG = """\
# containerd for the real node of registry-operator's local cluster (hack/localcluster/node.py)
version = 2
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  enable_selinux = false
  # Without it every sandbox fails: runc cannot write /proc/self/oom_score_adj here (no CAP_SYS_RESOURCE).
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{dir}/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"""
