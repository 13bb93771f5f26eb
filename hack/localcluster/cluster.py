"""Any cluster reachable through a kubeconfig: what the fixtures and scripts need from it (kubectl, CRDs, the
operator's RBAC from manifests/, ServiceAccount tokens)."""

from __future__ import annotations

import fnmatch
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .binaries import REPO, find_kubectl
from .errors import ClusterError
from .kubeconfig import dump_yaml, write_private

FIELD_MANAGER = "registry-operator-hack"
OPERATOR_NAMESPACE = "registry-operator-system"
OPERATOR_SERVICE_ACCOUNT = "registry-operator"
RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
# Pod Security Admission at `restricted`, enforced: a rendered pod that would not be admitted in a locked-down
# namespace never gets created, so the tests that wait for it fail.
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def namespace_manifest(
    name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> str:
    """A Namespace for tests and scripts: Pod Security `restricted` enforced, plus the given labels/annotations."""
    meta: dict = {"name": name, "labels": {**RESTRICTED, **(labels or {})}}
    if annotations:
        meta["annotations"] = annotations
    return json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})


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
        """Apply crds/*.yaml and wait until they are Established. No files yet: nothing to do.

        A client-side `kubectl apply`, as users install (`kubectl apply -k manifests/`, which includes crds/):
        applied server-side, the CRDs lacked kubectl's last-applied annotation and the README's install
        printed a warning per CRD on every cluster `hack/cluster up` made."""
        files = crd_files(crd_dir)
        if not files:
            return []
        args = []
        for f in files:
            args += ["-f", str(f)]
        self.kubectl("apply", *args)
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
        write_private(path, dump_yaml(cfg))
        return path


def context_allowed(context: str, allowed: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(context, pattern) for pattern in allowed)
