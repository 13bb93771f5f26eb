"""The control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok.

Two ways to run it:
- attached (tests): the servers are direct children of the calling process, die with it (PR_SET_PDEATHSIG)
  and are stopped and reaped by ``stop()``;
- detached (``hack/cluster up``): the servers outlive the command; ``state.json`` in the work directory holds
  their PIDs (with their start times, so a reused PID is never killed) for ``status`` and ``down``.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .binaries import REPO, Binaries
from .cluster import Cluster
from .errors import ClusterError, PortInUse
from .kubeconfig import b64, dump_yaml, kubeconfig_dict, write_private
from .network import KWOK_POD_CIDR, NODE_IP, SERVICE_CIDR
from .node import KWOK_LABEL, NodeBinaries, RealNode, preflight
from .pki import write_pki
from .poll import wait_until as _poll
from .ports import pick_free_ports, port_taken
from .processes import Proc, log_tail, pid_alive, proc_stat, rss_bytes, set_pdeathsig, terminate

DEFAULT_WORKDIR = REPO / ".cache" / "cluster"
CONTEXT_NAME = "registry-operator-local"
NODE_ANNOTATION = "kwok.x-k8s.io/node"
# Components in start order; stop() goes the other way.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """poll.wait_until failing with ClusterError: a control plane that does not come up is not a test failure."""
    return _poll(check, timeout, what, error=ClusterError)


@dataclass
class Timings:
    steps: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, since: float) -> float:
        self.steps[name] = time.monotonic() - since
        return time.monotonic()

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.2f}s" for k, v in self.steps.items())


class LocalCluster(Cluster):
    """The control plane on loopback. Its work directory holds pki/, etcd/, logs/, kubeconfig, state.json."""

    PORT_NAMES = ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

    def __init__(
        self,
        workdir: str | Path = DEFAULT_WORKDIR,
        *,
        nodes: int = 1,
        crd_dir: Path | None = REPO / "crds",
        port_base: int | None = None,
        detach: bool = False,
        binaries: Binaries | None = None,
        log: Callable[[str], None] | None = None,
        real_node: bool = False,
    ):
        """``nodes`` kwok nodes; ``real_node`` adds a real one (node.py: root, containerd, hack/build node)."""
        self.workdir = Path(workdir).resolve()
        self.nodes = nodes
        self.real_node = real_node
        self.node: RealNode | None = None
        self.crd_dir = crd_dir
        self.port_base = port_base
        self.detach = detach
        self._binaries = binaries
        self.log = log or (lambda msg: None)
        self.procs: dict[str, Proc] = {}
        self.ports: dict[str, int] = {}
        self.timings = Timings()
        self.crds: list[str] = []
        kubeconfig = self.workdir / "kubeconfig"
        super().__init__(kubeconfig, kubectl=str(binaries.kubectl) if binaries else None)

    # -- paths

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = Binaries.locate()
            self.kubectl_bin = str(self._binaries.kubectl)
        return self._binaries

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    # -- state

    def load_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def save_state(self) -> None:
        state = {
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "ports": self.ports,
            "nodes": self.nodes,
            "real_node": self.real_node,
            "detached": self.detach,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {
                k: v
                for k, v in self.binaries.versions.items()
                if k in ("KUBERNETES_VERSION", "ETCD_VERSION", "KWOK_VERSION")
            },
            "startup_seconds": self.timings.steps,
            "processes": {n: p.to_json() for n, p in self.procs.items()},
        }
        extra = (self.load_state() or {}).get("extra_processes", {})
        if extra:
            state["extra_processes"] = extra
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    def adopt_state(self) -> bool:
        """Take over the processes a detached `up` recorded. True when all of them are still running."""
        state = self.load_state()
        if not state:
            return False
        self.ports = {k: int(v) for k, v in state.get("ports", {}).items()}
        self.nodes = state.get("nodes", self.nodes)
        self.real_node = state.get("real_node", False)
        self.procs = {
            n: Proc(n, p["pid"], p["starttime"], p.get("args", []), p.get("log", ""))
            for n, p in state.get("processes", {}).items()
        }
        return bool(self.procs) and all(p.alive() for p in self.procs.values())

    def register_process(self, name: str, pid: int, log: str = "") -> None:
        """Record an extra process (e.g. the quickstart's operator) for `down` to stop before the cluster."""
        st = proc_stat(pid)
        state = self.load_state() or {}
        state.setdefault("extra_processes", {})[name] = {
            "pid": pid,
            "starttime": st[1] if st else None,
            "log": log,
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    # -- HTTP to the apiserver (admin client certificate)

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def _get_ok(self, url: str, context: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    # -- lifecycle

    def running(self) -> bool:
        return bool(self.procs) and all(p.alive() for p in self.procs.values())

    def start(self, timeout: float = 90) -> LocalCluster:
        """Start everything and wait until it works. Harmless when this work directory's cluster runs already
        (it is adopted). Raises BinariesMissing, PortInUse or ClusterError (everything started is stopped)."""
        if self.adopt_state() and self._healthy():
            self.log(f"already running: {self.server} (kubeconfig {self.kubeconfig})")
            return self
        if self.procs:  # a stale or partly dead earlier run in this work directory
            self.log("stopping the leftovers of an earlier run in this work directory")
            self.stop()
        binaries = self.binaries
        node_binaries = preflight() if self.real_node else None  # NodeUnavailable before anything starts
        t0 = step = time.monotonic()
        self.ports = pick_free_ports(self.PORT_NAMES, self.port_base)
        taken = [f"{name} 127.0.0.1:{port}" for name, port in self.ports.items() if port_taken(port)]
        if taken:
            raise PortInUse("cannot start the control plane, port(s) already in use: " + ", ".join(taken))
        for sub in ("etcd", "logs", "kcm", "scheduler", "flexvolume"):
            path = self.workdir / sub
            if sub in ("etcd", "flexvolume", "kcm", "scheduler"):
                shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state_file.unlink(missing_ok=True)
        write_pki(self.pki)
        self._write_kubeconfig()
        step = self.timings.add("pki", step)
        try:
            self._start_etcd(binaries)
            wait_until(lambda: self._alive_or_raise("etcd") and self._etcd_healthy(), 30, "etcd /health")
            step = self.timings.add("etcd", step)

            self._start_apiserver(binaries)
            wait_until(
                lambda: self._alive_or_raise("kube-apiserver") and self.api("GET", "/readyz")[0] == 200,
                timeout,
                "kube-apiserver /readyz",
            )
            step = self.timings.add("kube-apiserver", step)

            # CRDs before the controller-manager: its garbage collector only knows the resource kinds that
            # existed when it last looked (every 30 s).
            if self.crd_dir is not None:
                self.crds = self.install_crds(self.crd_dir)
            # The default StorageClass: kwok's volume stages bind its PersistentVolumeClaims. Its hostPath
            # volumes are for kwok nodes only: with a real node alone, the node's own class is the default
            # (volumes.py), whose volumes a non-root registry can write.
            if self.nodes:
                self.apply(binaries.kwok_storageclass.read_text())
            step = self.timings.add("crds", step)

            self._start_controller_manager(binaries)
            self._start_scheduler(binaries)
            self._create_nodes()
            self._start_kwok(binaries)
            wait_until(
                lambda: (
                    self._alive_or_raise("kube-controller-manager")
                    and self._get_ok(f"https://127.0.0.1:{self.ports['kube-controller-manager']}/healthz", _insecure())
                ),
                30,
                "kube-controller-manager /healthz",
            )
            wait_until(
                lambda: (
                    self._alive_or_raise("kube-scheduler")
                    and self._get_ok(f"https://127.0.0.1:{self.ports['kube-scheduler']}/healthz", _insecure())
                ),
                30,
                "kube-scheduler /healthz",
            )
            wait_until(
                lambda: self._alive_or_raise("kwok") and self._get_ok(f"http://127.0.0.1:{self.ports['kwok']}/healthz"),
                30,
                "kwok /healthz",
            )
            wait_until(self._nodes_ready, 30, f"{self.nodes} kwok node(s) Ready")
            wait_until(self._default_sa_exists, 30, "the ServiceAccount default/default")
            step = self.timings.add("controllers+nodes", step)
            if node_binaries is not None:
                self.node = RealNode(self, node_binaries)
                self.node.start(self.log)
                step = self.timings.add("real node", step)
        except BaseException:
            self.stop()
            raise
        self.timings.steps["total"] = time.monotonic() - t0
        self.save_state()
        self.log(
            f"control plane up in {self.timings.steps['total']:.1f}s ({self.timings}); kubeconfig {self.kubeconfig}"
        )
        return self

    def stop(self, timeout: float = 10) -> None:
        """Stop exactly what start() (or a detached `up`) started, by PID, newest first."""
        state = self.load_state() or {}
        for name, p in reversed(list(state.get("extra_processes", {}).items())):
            self.log(f"stopping {name} (pid {p['pid']})")
            terminate(p["pid"], p.get("starttime"), timeout)
        if self.node is None and RealNode.owned_by(self.workdir):
            self.node = RealNode(self, NodeBinaries.locate())
        if self.node is not None:  # before the control plane, which its kubelet and kube-proxy talk to
            self.node.stop(self.log, timeout)
            self.node = None
        for name in reversed(COMPONENTS):
            proc = self.procs.get(name)
            if proc is None:
                continue
            if proc.alive():
                self.log(f"stopping {name} (pid {proc.pid})")
            terminate(proc.pid, proc.starttime, timeout, popen=proc.popen)
        self.procs = {}
        self.state_file.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        """Components with PID, liveness and RSS (bytes), and whether the apiserver is ready."""
        comps = {}
        for name, p in self.procs.items():
            alive = p.alive()
            comps[name] = {
                "pid": p.pid,
                "alive": alive,
                "rss": rss_bytes(p.pid) if alive else None,
                "port": self.ports.get(name),
            }
        for name, p in (self.load_state() or {}).get("extra_processes", {}).items():
            alive = pid_alive(p["pid"], p.get("starttime"))
            comps[name] = {
                "pid": p["pid"],
                "alive": alive,
                "rss": rss_bytes(p["pid"]) if alive else None,
                "port": None,
            }
        return {
            "components": comps,
            "ready": bool(self.procs) and self._healthy(),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server if self.ports else None,
        }

    def rss(self) -> dict[str, int | None]:
        return {name: rss_bytes(p.pid) for name, p in self.procs.items()}

    # -- internals

    def _healthy(self) -> bool:
        try:
            return self.running() and self.api("GET", "/readyz", timeout=3)[0] == 200
        except (OSError, ssl.SSLError, urllib.error.URLError):
            return False

    def _alive_or_raise(self, name: str) -> bool:
        p = self.procs[name]
        if not p.alive():
            code = p.popen.poll() if p.popen else "?"
            raise ClusterError(f"{name} exited (code {code}); last lines of {p.log}:\n{log_tail(p.log)}")
        return True

    def _spawn(self, name: str, args: Sequence[str]) -> Proc:
        logfile = self.logs / f"{name}.log"
        with open(logfile, "wb") as out:  # a fresh log per start
            popen = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # Ctrl-C goes to the caller, who stops us in order
                preexec_fn=None if self.detach else set_pdeathsig,
            )
        st = proc_stat(popen.pid)
        proc = Proc(
            name,
            popen.pid,
            st[1] if st else 0,
            list(args),
            str(logfile),
            popen=None if self.detach else popen,
        )
        if self.detach:
            self._detached_popens.append(popen)  # keep a reference: no ResourceWarning, no early reaping
        self.procs[name] = proc
        return proc

    _detached_popens: list = []

    def _write_kubeconfig(self) -> None:
        cfg = kubeconfig_dict(
            f"https://127.0.0.1:{self.ports['kube-apiserver']}",
            b64(self.pki / "ca.crt"),
            {
                "client-certificate-data": b64(self.pki / "admin.crt"),
                "client-key-data": b64(self.pki / "admin.key"),
            },
            CONTEXT_NAME,
            "admin",
        )
        write_private(self.kubeconfig, dump_yaml(cfg))

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['etcd']}/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _start_etcd(self, b: Binaries) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._spawn(
            "etcd",
            [
                str(b.etcd),
                "--name=local",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=local={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self, b: Binaries) -> None:
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                str(b.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                *self._apiserver_address_args(),
                f"--secure-port={self.ports['kube-apiserver']}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=0",
            ],
        )

    def _apiserver_address_args(self) -> list[str]:
        """Loopback only, without a real node. With one, pods reach the apiserver through the ``kubernetes``
        Service (whose endpoint is the node IP), so it listens on all local addresses; ``kubectl logs/exec``
        dial the kubelet by InternalIP (its hostname would ask the machine's DNS); with kwok nodes too, pods go
        to kwok nodes unless their namespace asks for the real one (PodNodeSelector)."""
        if not self.real_node:
            return ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        pki = self.pki
        args = [
            "--bind-address=0.0.0.0",
            f"--advertise-address={NODE_IP}",
            "--endpoint-reconciler-type=lease",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki / 'admin.crt'}",
            f"--kubelet-client-key={pki / 'admin.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        ]
        if self.nodes:
            selector = self.workdir / "podnodeselector.yaml"
            selector.write_text(f"podNodeSelectorPluginConfig:\n  clusterDefaultNodeSelector: {KWOK_LABEL}\n")
            admission = self.workdir / "admission.yaml"
            admission.write_text(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n"
                f"  - name: PodNodeSelector\n    path: {selector}\n"
            )
            args += ["--enable-admission-plugins=PodNodeSelector", f"--admission-control-config-file={admission}"]
        return args

    def _component_kubeconfig(self) -> str:
        return str(self.kubeconfig)

    def _start_controller_manager(self, b: Binaries) -> None:
        pki, kc = self.pki, self._component_kubeconfig()
        self._spawn(
            "kube-controller-manager",
            [
                str(b.kube_controller_manager),
                f"--kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['kube-controller-manager']}",
                f"--cert-dir={self.workdir / 'kcm'}",
                "--controllers=*",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--flex-volume-plugin-dir={self.workdir / 'flexvolume'}",
                f"--cluster-name={CONTEXT_NAME}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                "--profiling=false",
            ],
        )

    def _start_scheduler(self, b: Binaries) -> None:
        kc = self._component_kubeconfig()
        self._spawn(
            "kube-scheduler",
            [
                str(b.kube_scheduler),
                f"--kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['kube-scheduler']}",
                f"--cert-dir={self.workdir / 'scheduler'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )

    def _start_kwok(self, b: Binaries) -> None:
        self._spawn(
            "kwok",
            [
                str(b.kwok),
                f"--kubeconfig={self._component_kubeconfig()}",
                f"--config={b.kwok_stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake",
                f"--cidr={KWOK_POD_CIDR}",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{self.ports['kwok']}",
                "--node-lease-duration-seconds=40",
            ],
        )

    def node_names(self) -> list[str]:
        return [f"kwok-node-{i}" for i in range(self.nodes)]

    def _create_nodes(self) -> None:
        for node in self.node_names():
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node,
                    "annotations": {NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": node,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                    },
                },
                "status": {
                    "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                },
            }
            code, resp = self.api("POST", "/api/v1/nodes", body)
            if code not in (201, 409):
                raise ClusterError(f"creating node {node}: HTTP {code}: {resp}")

    def _nodes_ready(self) -> bool:
        code, body = self.api("GET", "/api/v1/nodes")
        if code != 200:
            return False
        ready = {
            n["metadata"]["name"]
            for n in body.get("items", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        }
        return set(self.node_names()) <= ready

    def _default_sa_exists(self) -> bool:
        return self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # controller-manager/scheduler serve self-signed certs on loopback
    return ctx
