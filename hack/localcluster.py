"""A real Kubernetes control plane on 127.0.0.1, for the tests and the local quickstart.

etcd, kube-apiserver (RBAC, client-certificate admin in ``system:masters``, ServiceAccount token signing),
kube-controller-manager, kube-scheduler and kwok (fake nodes that move scheduled Pods to Running/Ready),
all built by ``hack/build control-plane`` into ``.cache/bin``. No container engine is needed; Pods never run.

Importable without third-party packages except ``cryptography`` (a dependency of the operator itself), which
is only needed to start a cluster. The CLI is ``hack/cluster`` (``python3 hack/localcluster.py`` works too).

    cluster = LocalCluster(Path("/tmp/c"))
    cluster.start()                   # ~5 s; raises BinariesMissing / PortInUse / ClusterError
    cluster.kubectl("get", "nodes")
    cluster.stop()

Two ways to run it:
- attached (tests): the servers are direct children of the calling process, die with it (PR_SET_PDEATHSIG)
  and are stopped and reaped by ``stop()``;
- detached (``hack/cluster up``): the servers outlive the command; ``state.json`` in the work directory holds
  their PIDs (with their start times, so a reused PID is never killed) for ``status`` and ``down``.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import fnmatch
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HACK = Path(__file__).resolve().parent
REPO = HACK.parent
DEFAULT_WORKDIR = REPO / ".cache" / "cluster"
CONTEXT_NAME = "registry-operator-local"
NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"
FIELD_MANAGER = "registry-operator-hack"
OPERATOR_NAMESPACE = "registry-operator-system"
OPERATOR_SERVICE_ACCOUNT = "registry-operator"
RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
# Components in start order; stop() goes the other way.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The control plane could not be started, or misbehaved."""


class BinariesMissing(ClusterError):
    """The control-plane binaries have not been built."""


class PortInUse(ClusterError):
    """A port the control plane needs is taken."""


# --------------------------------------------------------------------------------------------- binaries


def read_versions(path: Path = HACK / "versions.env") -> dict[str, str]:
    """KEY=VALUE lines of hack/versions.env (comments and blank lines ignored)."""
    versions = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip("'\"")
    return versions


def bin_dir() -> Path:
    return Path(os.environ.get("REGISTRY_OPERATOR_BIN_DIR") or REPO / ".cache" / "bin")


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    kwok_stages: Path
    kwok_storageclass: Path
    versions: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def locate(cls) -> Binaries:
        """The binaries hack/build made for the versions in hack/versions.env; BinariesMissing otherwise."""
        v = read_versions()
        base = bin_dir()
        k8s = base / f"k8s-{v['KUBERNETES_VERSION']}"
        found = cls(
            etcd=base / f"etcd-{v['ETCD_VERSION']}" / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kube_scheduler=k8s / "kube-scheduler",
            kubectl=k8s / "kubectl",
            kwok=base / f"kwok-{v['KWOK_VERSION']}" / "kwok",
            kwok_stages=base / f"kwok-{v['KWOK_VERSION']}" / "stages.yaml",
            kwok_storageclass=base / f"kwok-{v['KWOK_VERSION']}" / "storageclass.yaml",
            versions=v,
        )
        missing = [str(p) for p in found.paths() if not p.is_file()]
        if missing:
            raise BinariesMissing(
                "the local control plane is not built: missing "
                + ", ".join(_show_path(p) for p in missing)
                + ".\nRun `hack/build control-plane` (cold: 10-15 min on 2 idle cores; a second run builds nothing)."
            )
        return found

    def paths(self) -> list[Path]:
        return [
            self.etcd,
            self.kube_apiserver,
            self.kube_controller_manager,
            self.kube_scheduler,
            self.kubectl,
            self.kwok,
            self.kwok_stages,
            self.kwok_storageclass,
        ]


def _show_path(path: str | Path) -> str:
    """Relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def find_kubectl() -> str:
    """The kubectl hack/build made (matches the local apiserver), else the one in PATH."""
    try:
        v = read_versions()
        built = bin_dir() / f"k8s-{v['KUBERNETES_VERSION']}" / "kubectl"
        if built.is_file():
            return str(built)
    except (OSError, KeyError):
        pass
    found = shutil.which("kubectl")
    if not found:
        raise BinariesMissing("no kubectl: run `hack/build control-plane`")
    return found


# --------------------------------------------------------------------------------------------- processes


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the parent
    except Exception:  # noqa: BLE001 - best effort, never block the exec
        pass


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def pid_alive(pid: int, starttime: int | None = None) -> bool:
    """Running (not a zombie) and, when starttime is given, still the same process (PIDs get reused)."""
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return starttime is None or st[1] == starttime


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def terminate(pid: int, starttime: int | None = None, timeout: float = 10.0, popen=None) -> None:
    """SIGTERM, wait, SIGKILL. Reaps it when it is our child (popen given); else waits until it is gone or a
    zombie (this machine's init reaps slowly)."""
    if not pid_alive(pid, starttime):
        if popen is not None:
            popen.poll()
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            return
        if popen is None and not pid_alive(pid, starttime):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)
    else:
        end = time.monotonic() + 5
        while pid_alive(pid, starttime) and time.monotonic() < end:
            time.sleep(0.05)


@dataclass
class Proc:
    name: str
    pid: int
    starttime: int
    args: list[str]
    log: str
    popen: subprocess.Popen | None = None

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return pid_alive(self.pid, self.starttime)

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "starttime": self.starttime, "args": self.args, "log": self.log}


def log_tail(path: str | Path, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


# --------------------------------------------------------------------------------------------- ports


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Something listens on (or is bound to) host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the Go servers do: a port in TIME_WAIT is free, a listening or bound one is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def pick_free_ports(names: Iterable[str], base: int | None = None) -> dict[str, int]:
    """Ports for the named endpoints: consecutive from base when given, else random free ports below the
    kernel's ephemeral range (so no outgoing connection grabs one between picking and binding)."""
    names = list(names)
    if base:
        return {n: base + i for i, n in enumerate(names)}
    chosen: dict[str, int] = {}
    rng = random.Random()
    while len(chosen) < len(names):
        port = rng.randint(20000, 32000)
        if port in chosen.values() or port_taken(port):
            continue
        chosen[names[len(chosen)]] = port
    return chosen


# --------------------------------------------------------------------------------------------- PKI


def _write_pki(pki: Path) -> None:
    """CA, apiserver serving certificate, admin client certificate (O=system:masters), ServiceAccount keys."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    years = datetime.timedelta(days=3650)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(name: str, k) -> None:
        (pki / name).write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        os.chmod(pki / name, 0o600)

    def write_cert(name: str, cert) -> None:
        (pki / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = key()
    ca_name = name("registry-operator-local-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + years)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_key("ca.key", ca_key)
    write_cert("ca.crt", ca)

    def leaf(filename: str, subject: x509.Name, usage, sans: list | None = None) -> None:
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + years)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        write_key(f"{filename}.key", k)
        write_cert(f"{filename}.crt", b.sign(ca_key, hashes.SHA256()))

    import ipaddress

    leaf(
        "apiserver",
        name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        ],
    )
    leaf("admin", name("registry-operator-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH)

    sa_key = key()
    write_key("sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _dump_yaml(obj: Any) -> str:
    try:
        import yaml

        return yaml.safe_dump(obj, sort_keys=False)
    except ImportError:  # JSON is YAML too
        return json.dumps(obj, indent=2) + "\n"


def kubeconfig_dict(server: str, ca_pem_b64: str, user: dict[str, str], context: str, user_name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, "certificate-authority-data": ca_pem_b64}}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user_name}}],
        "current-context": context,
    }


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------------------------- clusters


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - keep polling; report the last error
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def split_yaml_docs(text: str) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def crd_files(crd_dir: Path) -> list[Path]:
    if not crd_dir.is_dir():
        return []
    return sorted(
        p
        for p in list(crd_dir.glob("*.yaml")) + list(crd_dir.glob("*.yml"))
        if p.name not in ("kustomization.yaml", "kustomization.yml")
    )


class Cluster:
    """Any cluster reachable through a kubeconfig: what the fixtures and scripts need from it."""

    def __init__(self, kubeconfig: str | Path, kubectl: str | None = None):
        self.kubeconfig = Path(kubeconfig)
        self.kubectl_bin = kubectl or find_kubectl()

    # -- kubectl

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
        kubeconfig: str | Path | None = None,
    ) -> subprocess.CompletedProcess:
        cmd = [self.kubectl_bin, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise ClusterError(
                f"`kubectl {' '.join(args)}` failed ({res.returncode}):\n{res.stderr.strip() or res.stdout}"
            )
        return res

    def current_context(self) -> str:
        return self.kubectl("config", "current-context").stdout.strip()

    def apply(self, manifest: str, server_side: bool = True) -> str:
        """Apply YAML (possibly several documents) with kubectl; server-side by default."""
        args = ["apply", "-f", "-"]
        if server_side:
            args += ["--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}"]
        return self.kubectl(*args, input=manifest).stdout

    def install_crds(self, crd_dir: Path = REPO / "crds", timeout: float = 30) -> list[str]:
        """Apply crds/*.yaml and wait until they are Established. No files yet: nothing to do."""
        files = crd_files(crd_dir)
        if not files:
            return []
        args = []
        for f in files:
            args += ["-f", str(f)]
        self.kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", *args)
        out = self.kubectl("get", *args, "-o", "name")
        names = [n.split("/", 1)[-1] for n in out.stdout.split() if n.startswith("customresourcedefinition")]
        if names:
            self.kubectl(
                "wait",
                "--for=condition=Established",
                f"--timeout={int(timeout)}s",
                *[f"crd/{n}" for n in names],
            )
        return names

    def render_manifests(self, manifest_dir: Path = REPO / "manifests") -> list[dict]:
        """manifests/ as objects: `kubectl kustomize` when it has a kustomization, else its *.yaml files."""
        if (manifest_dir / "kustomization.yaml").exists() or (manifest_dir / "kustomization.yml").exists():
            text = self.kubectl("kustomize", str(manifest_dir)).stdout
        else:
            text = "\n---\n".join(
                p.read_text() for p in sorted(manifest_dir.glob("*.y*ml")) if p.suffix in (".yaml", ".yml")
            )
        return split_yaml_docs(text)

    def apply_rbac(
        self,
        manifest_dir: Path = REPO / "manifests",
        service_account: str = OPERATOR_SERVICE_ACCOUNT,
    ) -> tuple[str, str]:
        """Apply only the Namespace/ServiceAccount/(Cluster)Role(Binding) objects of manifests/ (not the
        operator's Deployment: here the operator runs as a local process). Returns the operator
        ServiceAccount's (namespace, name)."""
        objs = self.render_manifests(manifest_dir) if manifest_dir.is_dir() else []
        rbac = [o for o in objs if o.get("kind") in RBAC_KINDS]
        accounts = [o for o in rbac if o.get("kind") == "ServiceAccount"]
        if not accounts:
            raise ClusterError(
                f"{manifest_dir} has no ServiceAccount (expected {service_account} in {OPERATOR_NAMESPACE})"
            )
        sa = next((a for a in accounts if a["metadata"]["name"] == service_account), accounts[0])
        import yaml

        rbac.sort(key=lambda o: o["kind"] != "Namespace")  # namespaces first
        self.apply(yaml.safe_dump_all(rbac))
        return sa["metadata"].get("namespace", OPERATOR_NAMESPACE), sa["metadata"]["name"]

    def create_token(self, namespace: str, service_account: str, duration: str = "24h") -> str:
        """A ServiceAccount token from the TokenRequest API."""
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()

    def token_kubeconfig(self, path: Path, namespace: str, service_account: str, duration: str = "24h") -> Path:
        """Write a kubeconfig that authenticates as the ServiceAccount (TokenRequest token)."""
        token = self.create_token(namespace, service_account, duration)
        raw = json.loads(self.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
        cluster = raw["clusters"][0]["cluster"]
        context = f"{service_account}@{namespace}"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": {"token": token}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
        }
        write_private(path, _dump_yaml(cfg))
        return path


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
    ):
        self.workdir = Path(workdir).resolve()
        self.nodes = nodes
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
        self.procs = {
            n: Proc(n, p["pid"], p["starttime"], p.get("args", []), p.get("log", ""))
            for n, p in state.get("processes", {}).items()
        }
        return bool(self.procs) and all(p.alive() for p in self.procs.values())

    def register_process(self, name: str, pid: int, log: str = "") -> None:
        """Record an extra process (e.g. the quickstart's operator) for `down` to stop before the cluster."""
        st = _proc_stat(pid)
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
        _write_pki(self.pki)
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
            # The default StorageClass: kwok's volume stages bind its PersistentVolumeClaims.
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
                preexec_fn=None if self.detach else _set_pdeathsig,
            )
        st = _proc_stat(popen.pid)
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
            _b64(self.pki / "ca.crt"),
            {
                "client-certificate-data": _b64(self.pki / "admin.crt"),
                "client-key-data": _b64(self.pki / "admin.key"),
            },
            CONTEXT_NAME,
            "admin",
        )
        write_private(self.kubeconfig, _dump_yaml(cfg))

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
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
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
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=0",
            ],
        )

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
                f"--cidr={POD_CIDR}",
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


def context_allowed(context: str, allowed: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(context, pattern) for pattern in allowed)


# --------------------------------------------------------------------------------------------- CLI


def _fmt_mib(n: int | None) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "-"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="hack/cluster",
        description="A local Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver, "
        "kube-controller-manager, kube-scheduler, kwok fake nodes). "
        "Build it first: hack/build control-plane.",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("REGISTRY_OPERATOR_CLUSTER_DIR", DEFAULT_WORKDIR)),
        help="state, logs, PKI and kubeconfig (default: .cache/cluster)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane (harmless when it runs already)")
    up.add_argument("--nodes", type=int, default=1, help="number of kwok fake nodes (default 1)")
    up.add_argument(
        "--port-base",
        type=int,
        default=None,
        help="use consecutive ports from this one (etcd, etcd peer, apiserver, controller-manager, "
        "scheduler, kwok) instead of random free ones",
    )
    up.add_argument("--no-crds", action="store_true", help="do not install crds/*.yaml")
    sub.add_parser("down", help="stop what `up` started (by PID)")
    sub.add_parser("status", help="show components, PIDs, RSS and readiness")
    sub.add_parser("kubeconfig", help="print the kubeconfig path")
    rb = sub.add_parser(
        "operator-kubeconfig",
        help="apply the RBAC objects of manifests/ and write a kubeconfig with a TokenRequest token of the "
        "operator's ServiceAccount; prints its path",
    )
    rb.add_argument("--output", type=Path, default=None, help="default: <workdir>/operator.kubeconfig")
    reg = sub.add_parser("register", help="record an extra process (e.g. the operator) for `down` to stop")
    reg.add_argument("name")
    reg.add_argument("pid", type=int)
    reg.add_argument("--log", default="")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[hack/cluster] {msg}", file=sys.stderr)

    cluster = LocalCluster(
        args.workdir,
        detach=True,
        log=log,
        nodes=getattr(args, "nodes", 1),
        port_base=getattr(args, "port_base", None),
        crd_dir=None if getattr(args, "no_crds", False) else REPO / "crds",
    )
    if args.command == "up":
        try:
            cluster.start()
        except ClusterError as e:
            log(f"ERROR: {e}")
            return 1
        st = cluster.status()
        for name, c in st["components"].items():
            log(f"  {name:<24} pid {c['pid']:<8} port {c['port'] or '-':<6} rss {_fmt_mib(c['rss'])}")
        if cluster.crds:
            log(f"  CRDs: {', '.join(cluster.crds)}")
        elif cluster.crd_dir is not None and not crd_files(cluster.crd_dir):
            log(f"  no CRDs installed: {os.path.relpath(cluster.crd_dir, REPO)}/ has no *.yaml files yet")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0
    if args.command == "kubeconfig":
        print(cluster.kubeconfig)
        return 0
    running = cluster.adopt_state()
    if args.command in ("operator-kubeconfig", "register") and not running:
        log(f"the cluster in {args.workdir} is not running: hack/cluster up")
        return 1
    if args.command == "operator-kubeconfig":
        try:
            ns, sa = cluster.apply_rbac()
            out = cluster.token_kubeconfig(args.output or cluster.workdir / "operator.kubeconfig", ns, sa)
        except ClusterError as e:
            log(f"ERROR: {e}")
            return 1
        print(out)
        return 0
    if args.command == "register":
        cluster.register_process(args.name, args.pid, args.log)
        return 0
    if args.command == "down":
        if not cluster.procs:
            log(f"nothing to stop (no {cluster.state_file})")
            return 0
        cluster.stop()
        log("stopped")
        return 0
    if args.command == "status":
        if not cluster.procs:
            print(f"not running (no {cluster.state_file})")
            return 3
        st = cluster.status()
        print(f"server:     {st['server']}  ({'ready' if st['ready'] else 'NOT ready'})")
        print(f"kubeconfig: {st['kubeconfig']}")
        for name, c in st["components"].items():
            print(
                f"  {name:<24} pid {c['pid']:<8} {'running' if c['alive'] else 'DEAD':<8}"
                f" port {c['port'] or '-':<6} rss {_fmt_mib(c['rss'])}"
            )
        return 0 if running and st["ready"] else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
