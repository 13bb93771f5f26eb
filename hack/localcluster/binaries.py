"""Where the binaries hack/build made live, and which versions hack/versions.env pins.

Every script and fixture finds binaries through ``bin_dir()``, so ``REGISTRY_OPERATOR_BIN_DIR`` moves all of them
at once.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BinariesMissing

HACK = Path(__file__).resolve().parent.parent
REPO = HACK.parent


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
                + ", ".join(show_path(p) for p in missing)
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


def show_path(path: str | Path) -> str:
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
