"""Run the pod a Deployment describes as a local process, as faithfully as this machine allows.

The test control plane has no kubelet, so nothing the operator renders would ever run. PodRunner plays the
kubelet for one container: it materializes Secret/ConfigMap volumes with the kubelet's atomic-writer layout
(``..<timestamp>`` dir, ``..data`` symlink, per-key symlinks through ``..data``) and fsGroup ownership, mounts
every volume at its real absolute mountPath inside a private mount namespace (``_podexec.py``), honours
runAsUser/runAsGroup/readOnlyRootFilesystem, resolves env and command/args as the kubelet and the image's
entrypoint would, maps the image to a local program and starts it.

The one deliberate deviation: all pods share this machine's network namespace, so listeners move to free
loopback ports through the program's own override (``REGISTRY_HTTP_ADDR``/``REGISTRY_HTTP_DEBUG_ADDR`` for the
registry, ``--listen``/``--metrics-listen`` for the token service). A pod with ``automountServiceAccountToken: true``
gets what the ServiceAccount admission plugin and the kubelet give it: its ServiceAccount's token (TokenRequest,
the plugin's 3607 s), ``ca.crt`` and ``namespace`` at ``/var/run/secrets/kubernetes.io/serviceaccount``, and
``KUBERNETES_SERVICE_HOST``/``PORT`` naming the API server, here on loopback. Anything else it cannot reproduce (unknown
volume types, initContainers of a pod that is start()ed, unknown images or fields) raises ``Unfaithful`` rather
than being approximated.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from localcluster import REPO, bin_dir, read_versions

from .https import VerifiedHTTPSConnection, tls_context

CACHE_BIN = bin_dir()
ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
ACCOUNT_TOKEN_SECONDS = 3607  # what the ServiceAccount admission plugin requests
_PODEXEC = Path(__file__).with_name("_podexec.py")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


DISTRIBUTION_3 = CACHE_BIN / f"distribution-{read_versions()['DISTRIBUTION_VERSION']}" / "registry"
DISTRIBUTION_2 = Path("/usr/bin/docker-registry")  # Debian's distribution 2.8.2


class Unfaithful(Exception):
    """The pod uses something this harness cannot reproduce; running it anyway would prove nothing."""


class Sources(Protocol):
    """Where Secret and ConfigMap contents come from (the API server, or plain data in unit-style tests)."""

    def secret(self, name: str) -> dict[str, bytes] | None: ...

    def config_map(self, name: str) -> dict[str, bytes] | None: ...

    def service_account_token(self, name: str, expiration_seconds: int) -> bytes | None:
        """A token of ServiceAccount ``name`` for the API server's own audience; None if it does not exist."""
        ...

    def api_server(self) -> tuple[str, int] | None:
        """(host, port) where pods reach the API server; None when there is none."""
        ...


@dataclass
class StaticSources:
    """Secrets and ConfigMaps given as plain dicts; mutate them and call ``PodRunner.update()``."""

    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    config_maps: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def secret(self, name: str) -> dict[str, bytes] | None:
        return self.secrets.get(name)

    def config_map(self, name: str) -> dict[str, bytes] | None:
        return self.config_maps.get(name)

    def service_account_token(self, name: str, expiration_seconds: int) -> bytes | None:
        return None  # no API server: a pod that needs its token cannot be run from plain data

    def api_server(self) -> tuple[str, int] | None:
        return None


class ApiSources:
    """Reads Secrets and ConfigMaps of one namespace from the API server through a sync lightkube Client."""

    def __init__(self, client: Any, namespace: str) -> None:
        self._client = client
        self._namespace = namespace

    def _get(self, kind: Any, name: str) -> Any:
        from lightkube import ApiError

        try:
            return self._client.get(kind, name, namespace=self._namespace)
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise

    def secret(self, name: str) -> dict[str, bytes] | None:
        from lightkube.resources.core_v1 import Secret

        obj = self._get(Secret, name)
        return None if obj is None else {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}

    def config_map(self, name: str) -> dict[str, bytes] | None:
        from lightkube.resources.core_v1 import ConfigMap

        obj = self._get(ConfigMap, name)
        if obj is None:
            return None
        data = {k: v.encode() for k, v in (obj.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.binaryData or {}).items()})
        return data

    def service_account_token(self, name: str, expiration_seconds: int) -> bytes | None:
        from lightkube import ApiError
        from lightkube.models.authentication_v1 import TokenRequestSpec
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import ServiceAccountToken

        spec = TokenRequestSpec(audiences=[], expirationSeconds=expiration_seconds)
        request = ServiceAccountToken(metadata=ObjectMeta(), spec=spec)
        try:
            answer = self._client.create(request, name, namespace=self._namespace)
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise
        return answer.status.token.encode()

    def api_server(self) -> tuple[str, int] | None:
        # lightkube keeps the kubeconfig's server only on its inner client.
        url = urllib.parse.urlsplit(self._client._client.config.cluster.server)
        return url.hostname or "", url.port or 443


# -- images --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """A local stand-in for an image: its executables (argv[0] -> local argv prefix), entrypoint and ENV."""

    kind: str  # "registry" | "operator": decides how listeners are moved to loopback ports
    executables: Mapping[str, list[str]]
    entrypoint: Callable[[list[str]], list[str]] | None
    default_args: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: list[dict[str, Any]] = field(default_factory=list)  # read-only host paths the image carries


# Where a pod sees its "image": the host paths a local program needs (the registry binary, the interpreter,
# the operator package) are bind-mounted here read-only. They are pinned before any pod volume is mounted, so an
# emptyDir at /tmp cannot hide a checkout or a virtualenv under /tmp, and a non-root pod user can reach an
# interpreter that lives under /root.
IMAGE_ROOT = "/opt/registry-operator-image"


def _image_mount(source: Path, name: str) -> dict[str, Any]:
    return {"source": str(source), "target": f"{IMAGE_ROOT}/{name}", "readOnly": True}


def _python_for_pods() -> tuple[str, dict[str, str], list[dict[str, Any]]]:
    """(interpreter, env, mounts) that run this test session's Python and its packages inside a pod.

    The base installation is mounted at ``IMAGE_ROOT/python`` and named by ``PYTHONHOME``: on Linux an
    interpreter finds its installation (and a virtualenv's ``pyvenv.cfg``) from ``argv[0]``, and the pod's
    bare ``python`` would otherwise resolve to whatever ``/usr/bin/python`` is. A virtualenv's site-packages
    are mounted separately and put on ``PYTHONPATH``, so an externally managed system Python behind ``.venv``
    gets the venv's packages; ``LD_LIBRARY_PATH`` because a shared libpython's RUNPATH is absolute.
    """
    base = Path(os.path.realpath(sys.base_prefix))
    interpreter = Path(os.path.realpath(sys.executable))
    if not interpreter.is_relative_to(base):
        raise Unfaithful(f"interpreter {interpreter} is outside its installation {base}")
    home = f"{IMAGE_ROOT}/python"
    mounts = [_image_mount(base, "python"), _image_mount(REPO / "operator", "operator")]
    path = [f"{IMAGE_ROOT}/operator"]
    if sys.prefix != sys.base_prefix:
        mounts.append(_image_mount(Path(sysconfig.get_paths()["purelib"]), "site-packages"))
        path.append(f"{IMAGE_ROOT}/site-packages")
    env = {"PYTHONHOME": home, "LD_LIBRARY_PATH": f"{home}/lib", "PYTHONPATH": os.pathsep.join(path)}
    return f"{home}/{interpreter.relative_to(base)}", env, mounts


def _registry_entrypoint(args: list[str]) -> list[str]:
    """The registry images' /entrypoint.sh: a config path means ``registry serve <path>``."""
    if args and args[0].endswith((".yml", ".yaml")):
        return ["registry", "serve", *args]
    if args and (args[0] in ("serve", "garbage-collect", "help") or args[0].startswith("-")):
        return ["registry", *args]
    return args


def resolve_image(image: str) -> Program:
    """Map an image reference to a local program; only images with a faithful local build are accepted.

    ``registry:2.*`` runs Debian's distribution 2.8.2 and ``registry:3.*`` the pinned distribution v3 build;
    ``registry-operator:*`` runs this checkout's Python package (the image's content).
    """
    ref = image.split("@", 1)[0]
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/"):
        ref = ref.removeprefix(prefix)
    repo, tag = ref.rsplit(":", 1) if ":" in ref.rsplit("/", 1)[-1] else (ref, "latest")
    if repo == "registry" and re.fullmatch(r"[23](\.\d+)*", tag):
        binary = DISTRIBUTION_2 if tag.startswith("2") else DISTRIBUTION_3
        config = "/etc/docker/registry/config.yml" if tag.startswith("2") else "/etc/distribution/config.yml"
        if not binary.exists():
            raise Unfaithful(f"image {image!r} maps to {binary}, which is not built")
        program = f"{IMAGE_ROOT}/registry"
        return Program(
            kind="registry",
            executables={"registry": [program], "/bin/registry": [program]},
            entrypoint=_registry_entrypoint,
            default_args=[config],
            mounts=[_image_mount(binary, "registry")],
        )
    if repo.rsplit("/", 1)[-1] == "registry-operator":
        interpreter, python_env, python_mounts = _python_for_pods()
        python = [interpreter]
        return Program(
            kind="operator",
            executables={
                "python": python,
                "python3": python,
                "registry-operator": [*python, "-m", "registry_operator"],
                "registry-token-service": [*python, "-m", "registry_operator.token"],
            },
            entrypoint=None,
            default_args=[],
            env={"PYTHONDONTWRITEBYTECODE": "1", **python_env},
            mounts=python_mounts,
        )
    raise Unfaithful(f"no local program for image {image!r}")


# Fields that only restrict a well-behaved program or have no meaning for one local process; any other
# field present in the pod or container spec is refused.
_POD_FIELDS = {
    "containers", "volumes", "securityContext", "restartPolicy", "terminationGracePeriodSeconds", "dnsPolicy",
    "schedulerName", "serviceAccountName", "serviceAccount", "automountServiceAccountToken",
    "enableServiceLinks", "affinity", "nodeSelector", "tolerations", "topologySpreadConstraints",
    "priorityClassName", "imagePullSecrets", "initContainers",
}  # fmt: skip
_CONTAINER_FIELDS = {
    "name", "image", "command", "args", "env", "envFrom", "volumeMounts", "ports", "securityContext",
    "resources", "readinessProbe", "livenessProbe", "startupProbe", "imagePullPolicy", "workingDir",
    "terminationMessagePath", "terminationMessagePolicy", "lifecycle",
}  # fmt: skip
_SECURITY_FIELDS = {
    "allowPrivilegeEscalation", "capabilities", "seccompProfile", "runAsNonRoot", "readOnlyRootFilesystem",
    "runAsUser", "runAsGroup", "fsGroup", "fsGroupChangePolicy", "supplementalGroups",
}  # fmt: skip
_PROBE_FIELDS = {"httpGet", "initialDelaySeconds", "periodSeconds", "timeoutSeconds", "successThreshold",
                 "failureThreshold"}  # fmt: skip


def _present(spec: Mapping[str, Any]) -> set[str]:
    return {k for k, v in spec.items() if v not in (None, [], {})}


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


_GIVEN: set[int] = set()  # ports this process has handed out


def free_port() -> int:
    """A free port on 127.0.0.1 that this process has not handed out before. The kernel readily offers the port
    bind(0) just gave again once that socket is closed, so a pod's two listeners (HTTP and debug) once got the
    same port and the registry died with "bind: address already in use"."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, unknown stay literal."""

    def sub(m: re.Match[str]) -> str:
        return "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


# -- volumes -------------------------------------------------------------------------------------------------


def _set_volume_ownership(root: Path, fs_group: int, read_only: bool) -> None:
    """The kubelet's SetVolumeOwnership: group ``fs_group`` everywhere, group-readable, setgid dirs."""
    mask = 0o440 if read_only else 0o660
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            os.lchown(path, -1, fs_group)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | mask | (0o2110 if os.path.isdir(path) else 0))
    os.lchown(root, -1, fs_group)
    os.chmod(root, os.stat(root).st_mode | mask | 0o2110)


class AtomicVolume:
    """A Secret/ConfigMap volume in the kubelet's atomic-writer layout, so live reloads behave the same."""

    def __init__(self, path: Path, mode: int, fs_group: int | None) -> None:
        self.path = path
        self.mode = mode
        self.fs_group = fs_group
        self.files: dict[str, bytes] | None = None
        path.mkdir(mode=0o755)

    def write(self, files: dict[str, bytes]) -> bool:
        """Swap in a new payload atomically (``..data`` rename); an unchanged payload is left alone."""
        if files == self.files:
            return False
        stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
        while (self.path / stamp).exists():
            stamp += "0"
        new = self.path / stamp
        new.mkdir(mode=0o755)
        for rel, content in files.items():
            target = new / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(self.mode)
        if self.fs_group is not None:
            _set_volume_ownership(new, self.fs_group, read_only=True)
        data = self.path / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.path / "..data_tmp"
        tmp.symlink_to(stamp)
        tmp.rename(data)
        wanted = {rel.split("/", 1)[0] for rel in files}
        for top in wanted:
            if not (self.path / top).is_symlink():
                (self.path / top).symlink_to(f"..data/{top}")
        for top in {rel.split("/", 1)[0] for rel in self.files or {}} - wanted:
            (self.path / top).unlink()
        if old:
            shutil.rmtree(self.path / old)
        self.files = dict(files)
        return True


@dataclass
class _Volume:
    name: str
    kind: str  # secret | configMap | emptyDir | persistentVolumeClaim | serviceAccount (the automounted token)
    source: Mapping[str, Any]
    path: Path
    atomic: AtomicVolume | None = None


class PodRunner:
    """One container of a Deployment's (or a Job's) pod template, run as a local process in its own mount
    namespace.

    ``workdir`` holds the materialized volumes; PersistentVolumeClaims live in ``workdir/pvc/<claim>`` so a
    second runner on the same workdir (a rolled-out pod) sees the same data, as a real PVC would.
    """

    def __init__(self, deployment: Any, sources: Sources, workdir: Path, *, container: str | None = None,
                 same_pod: PodRunner | None = None):
        dep = _as_dict(deployment)
        self.name: str = dep["metadata"]["name"]
        self.namespace: str = dep["metadata"].get("namespace") or "default"
        self.template: dict[str, Any] = dep["spec"]["template"]
        self.sources = sources
        self.workdir = Path(workdir)
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.debug_port: int | None = None
        self.container_ports: dict[int, int] = {}
        self.argv: list[str] = []  # what the container runs (argv[0] as the image names it), set by start()
        self.env: dict[str, str] = {}
        pod = self.template["spec"]
        if unknown := _present(pod) - _POD_FIELDS:
            raise Unfaithful(f"pod spec fields not reproduced: {sorted(unknown)}")
        self.container = self._pick_container(pod["containers"], pod.get("initContainers") or [], container)
        if unknown := _present(self.container) - _CONTAINER_FIELDS:
            raise Unfaithful(f"container fields not reproduced: {sorted(unknown)}")
        self.program = resolve_image(self.container["image"])
        self.pod_security: dict[str, Any] = pod.get("securityContext") or {}
        self.container_security: dict[str, Any] = self.container.get("securityContext") or {}
        if unknown := (_present(self.pod_security) | _present(self.container_security)) - _SECURITY_FIELDS:
            raise Unfaithful(f"securityContext fields not reproduced: {sorted(unknown)}")
        self.fs_group: int | None = self.pod_security.get("fsGroup")
        self._same_pod = same_pod  # another container of the same pod: its emptyDirs are this one's too
        self._pod_dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.workdir))
        (self._pod_dir / "volumes").mkdir()
        self.volumes = {v["name"]: self._volume(v) for v in pod.get("volumes") or []}
        self.account = self._account_volume(pod)
        self.log_path = self._pod_dir / "container.log"

    @staticmethod
    def _pick_container(containers: list[dict[str, Any]], init: list[dict[str, Any]], name: str | None
                        ) -> dict[str, Any]:
        """The only container, or the one named; an init container only by name, to run() to its end (the
        caller runs a Job's containers in order)."""
        if name is None and len(containers) == 1:
            return containers[0]
        for c in [*init, *containers]:
            if c["name"] == name:
                return c
        raise Unfaithful(f"container {name!r} not found among {[c['name'] for c in [*init, *containers]]}")

    def _security(self, key: str) -> Any:
        value = self.container_security.get(key)
        return self.pod_security.get(key) if value is None else value

    def _volume(self, spec: Mapping[str, Any]) -> _Volume:
        kinds = sorted(k for k, v in spec.items() if v is not None and k != "name")  # emptyDir: {} counts
        if kinds not in (["secret"], ["configMap"], ["emptyDir"], ["persistentVolumeClaim"]):
            raise Unfaithful(f"volume {spec['name']!r}: type {kinds} not reproduced")
        kind = kinds[0]
        source = spec[kind]
        if kind in ("emptyDir", "persistentVolumeClaim"):
            if kind == "emptyDir" and self._same_pod is not None:
                return self._same_pod.volumes[spec["name"]]
            if kind == "emptyDir":
                path = self._pod_dir / "volumes" / spec["name"]
                path.mkdir()
            else:
                path = self.workdir / "pvc" / source["claimName"]
                path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)
            if self.fs_group is not None:
                _set_volume_ownership(path, self.fs_group, read_only=False)
            return _Volume(spec["name"], kind, source, path)
        path = self._pod_dir / "volumes" / spec["name"]
        atomic = AtomicVolume(path, source.get("defaultMode") or 0o644, self.fs_group)
        volume = _Volume(spec["name"], kind, source, path, atomic)
        if self._refresh(volume) is None:
            raise Unfaithful(f"volume {spec['name']!r}: source missing (the kubelet would not start the pod)")
        return volume

    def _account_volume(self, pod: Mapping[str, Any]) -> _Volume | None:
        """The ServiceAccount admission plugin's ``kube-api-access`` volume, when the pod asks for its token."""
        if "automountServiceAccountToken" not in pod:
            raise Unfaithful("automountServiceAccountToken unset: it would depend on the ServiceAccount")
        if not pod["automountServiceAccountToken"]:
            return None
        if self.sources.api_server() is None:
            raise Unfaithful("the pod mounts its ServiceAccount token, but there is no API server")
        path = self._pod_dir / "volumes" / "kube-api-access"
        volume = _Volume("kube-api-access", "serviceAccount", {}, path, AtomicVolume(path, 0o644, self.fs_group))
        if self._refresh(volume) is None:
            raise Unfaithful("ServiceAccount or kube-root-ca.crt missing (the pod would not be admitted or start)")
        return volume

    def _refresh(self, volume: _Volume) -> bool | None:
        """Write the volume's current payload, telling if it changed; None if a required source is missing."""
        if volume.kind == "serviceAccount":
            account = self.template["spec"].get("serviceAccountName") or "default"
            token = self.sources.service_account_token(account, ACCOUNT_TOKEN_SECONDS)
            root_ca = (self.sources.config_map("kube-root-ca.crt") or {}).get("ca.crt")
            if token is None or root_ca is None:
                return None
            assert volume.atomic is not None
            # Written once, at start: the kubelet refreshes it at 80% of its hour, longer than any test runs.
            return volume.atomic.write({"token": token, "ca.crt": root_ca, "namespace": self.namespace.encode()})
        if volume.kind == "secret":
            data = self.sources.secret(volume.source["secretName"])
        else:
            data = self.sources.config_map(volume.source["name"])
        optional = bool(volume.source.get("optional"))
        if data is None and not optional:
            return None
        data = data or {}
        files: dict[str, bytes] = {}
        for item in volume.source.get("items") or [{"key": k, "path": k} for k in data]:
            if item.get("mode") is not None:
                raise Unfaithful(f"volume {volume.name!r}: per-item mode not reproduced")
            if item["key"] in data:
                files[item["path"]] = data[item["key"]]
            elif not optional:
                return None  # the kubelet fails the mount on a missing key
        assert volume.atomic is not None
        return volume.atomic.write(files)

    def update(self) -> bool:
        """Re-read every Secret/ConfigMap volume and atomically swap in changed ones, as the kubelet syncs."""
        changed = False
        for volume in self.volumes.values():
            if volume.atomic is not None:
                result = self._refresh(volume)
                if result is None:
                    raise Unfaithful(f"volume {volume.name!r}: source or key gone while running")
                changed |= result
        return changed

    def _mounts(self) -> list[dict[str, Any]]:
        mounts = []
        for vm in self.container.get("volumeMounts") or []:
            volume = self.volumes.get(vm["name"])
            if volume is None:
                raise Unfaithful(f"volumeMount of undeclared volume {vm['name']!r}")
            if vm.get("subPathExpr") or vm.get("mountPropagation"):
                raise Unfaithful(f"volumeMount {vm['name']!r}: subPathExpr/mountPropagation not reproduced")
            source = volume.path
            if vm.get("subPath"):
                # The kubelet resolves a subPath once, at start: later ..data swaps never reach it.
                source = Path(os.path.realpath(volume.path / vm["subPath"]))
                if not source.exists():
                    raise Unfaithful(f"subPath {vm['subPath']!r} missing in volume {vm['name']!r}")
            read_only = bool(vm.get("readOnly")) or volume.atomic is not None  # Secret/ConfigMap: always ro
            mounts.append({"source": str(source), "target": vm["mountPath"], "readOnly": read_only})
        if self.account is not None:
            mounts.append({"source": str(self.account.path), "target": ACCOUNT_DIR, "readOnly": True})
        mounts += self.program.mounts
        targets = sorted(m["target"].rstrip("/") for m in mounts)
        for a, b in zip(targets, targets[1:], strict=False):
            if b == a or b.startswith(a + "/"):
                raise Unfaithful(f"nested or duplicate mountPaths {a!r}, {b!r} not reproduced")
        return mounts

    def host_path(self, container_path: str) -> Path:
        """Where a file the container sees at ``container_path`` lives on this machine."""
        for m in self._mounts():
            target = m["target"].rstrip("/")
            if container_path == target or container_path.startswith(target + "/"):
                return Path(m["source"] + container_path[len(target) :])
        raise Unfaithful(f"{container_path} is not on a volume: it would come from the image")

    # -- env, command, listeners -----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        uid = self._security("runAsUser")
        env = {"PATH": _PATH, "HOSTNAME": f"{self.name}-local", "HOME": "/root" if not uid else "/"}
        env.update(self.program.env)
        if self.account is not None:
            host, port = self.sources.api_server() or ("", 0)
            env.update({"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port)})
        for ef in self.container.get("envFrom") or []:
            if ef.get("secretRef"):
                ref, data = ef["secretRef"], self.sources.secret(ef["secretRef"]["name"])
            elif ef.get("configMapRef"):
                ref, data = ef["configMapRef"], self.sources.config_map(ef["configMapRef"]["name"])
            else:
                raise Unfaithful(f"envFrom {ef} not reproduced")
            if data is None and not ref.get("optional"):
                raise Unfaithful(f"envFrom source {ref['name']!r} missing")
            env.update({(ef.get("prefix") or "") + k: v.decode() for k, v in (data or {}).items()})
        for e in self.container.get("env") or []:
            vf = e.get("valueFrom")
            if vf is None:
                env[e["name"]] = _expand(e.get("value") or "", env)
            elif vf.get("secretKeyRef") or vf.get("configMapKeyRef"):
                ref = vf.get("secretKeyRef") or vf["configMapKeyRef"]
                getter = self.sources.secret if vf.get("secretKeyRef") else self.sources.config_map
                data = getter(ref["name"]) or {}
                if ref["key"] in data:
                    env[e["name"]] = data[ref["key"]].decode()
                elif not ref.get("optional"):
                    raise Unfaithful(f"env {e['name']}: {ref['name']}/{ref['key']} missing")
            elif vf.get("fieldRef"):
                path = vf["fieldRef"]["fieldPath"]
                values = {"metadata.namespace": self.namespace, "metadata.name": f"{self.name}-local"}
                if path not in values:
                    raise Unfaithful(f"env {e['name']}: fieldRef {path} not reproduced")
                env[e["name"]] = values[path]
            else:
                raise Unfaithful(f"env {e['name']}: valueFrom {vf} not reproduced")
        return env

    def _argv(self, env: Mapping[str, str]) -> list[str]:
        command = self.container.get("command")
        args = self.container.get("args")
        if command:
            argv = [_expand(a, env) for a in command + (args or [])]
        elif self.program.entrypoint is not None:
            argv = self.program.entrypoint([_expand(a, env) for a in args or self.program.default_args])
        else:
            raise Unfaithful(f"image {self.container['image']!r}: entrypoint unknown, give a command")
        if not argv or argv[0] not in self.program.executables:
            raise Unfaithful(f"command {argv[:1]} is not an executable of image {self.container['image']!r}")
        return argv

    def _listen(self, argv: list[str], env: dict[str, str]) -> list[str]:
        """Move the program's listeners to free loopback ports; returns the argv to execute."""
        local = [*self.program.executables[argv[0]], *argv[1:]]
        if self.program.kind == "registry":
            if argv[1:2] != ["serve"] or len(argv) != 3:
                raise Unfaithful(f"registry invocation {argv} not understood")
            if "REGISTRY_HTTP_ADDR" in env or "REGISTRY_HTTP_DEBUG_ADDR" in env:
                raise Unfaithful("listen address set through env: overriding it would hide what the pod does")
            http_cfg = (yaml.safe_load(self.host_path(argv[2]).read_text()) or {}).get("http") or {}
            if http_cfg.get("net", "tcp") != "tcp":
                raise Unfaithful(f"http.net {http_cfg.get('net')!r} not reproduced")
            self.port = free_port()
            self.container_ports = {_port_of(http_cfg.get("addr") or ":5000"): self.port}
            env["REGISTRY_HTTP_ADDR"] = f"127.0.0.1:{self.port}"
            if debug := (http_cfg.get("debug") or {}).get("addr"):
                self.debug_port = free_port()
                self.container_ports[_port_of(debug)] = self.debug_port
                env["REGISTRY_HTTP_DEBUG_ADDR"] = f"127.0.0.1:{self.debug_port}"
            return local
        if argv[1:3] == ["-m", "registry_operator.token"] or argv[0] == "registry-token-service":
            if "--listen" in argv:
                raise Unfaithful("--listen given by the pod: overriding it would hide what the pod does")
            config = (
                argv[argv.index("--config") + 1] if "--config" in argv else "/etc/registry-token/config/config.json"
            )
            settings = json.loads(self.host_path(config).read_text())
            self.port = free_port()
            self.container_ports = {_port_of(settings.get("listen", "0.0.0.0:5001")): self.port}
            moved = [*local, "--listen", f"127.0.0.1:{self.port}"]
            if metrics := settings.get("metricsListen"):
                if "--metrics-listen" in argv:
                    raise Unfaithful("--metrics-listen given by the pod: overriding it would hide what the pod does")
                self.container_ports[_port_of(metrics)] = free_port()
                moved += ["--metrics-listen", f"127.0.0.1:{self.container_ports[_port_of(metrics)]}"]
            return moved
        raise Unfaithful(f"operator image entry point {argv} not reproduced")

    # -- process ---------------------------------------------------------------------------------------------

    def start(self, ca_pem: bytes, server_hostname: str | None = None, timeout: float = 30) -> None:
        """Start the container; return once its port completes a TLS handshake verified by ``ca_pem`` and
        its readinessProbe passes.

        ``server_hostname`` defaults to the Service name ``<name>.<namespace>.svc``, which the operator's
        certificate must carry. A registry that serves plain HTTP (a mistyped TLS key) fails here.
        """
        if self.template["spec"].get("initContainers"):
            raise Unfaithful("a pod with initContainers: start() would skip them")
        env = self._env()
        argv = self._argv(env)
        self._spawn(argv, self._listen(argv, env), env)
        self._wait_ready(ca_pem, server_hostname or f"{self.name}.{self.namespace}.svc", timeout)

    def run(self, timeout: float = 120) -> int:
        """Run a container that ends by itself (a Job's) to its end; its exit code.

        Only the registry's `garbage-collect` and the operator image's cache flush and storage measurement are
        understood: they open no listener, so nothing is moved. A Job's containers (init ones first) are each
        run by their own runner."""
        env = self._env()
        argv = self._argv(env)
        collect = self.program.kind == "registry" and argv[1:2] == ["garbage-collect"]
        helper = self.program.kind == "operator" and argv[1:3] in (["-m", "registry_operator.cacheflush"],
                                                                    ["-m", "registry_operator.storageusage"])
        if not (collect or helper):
            raise Unfaithful(f"run-to-completion of {argv} not reproduced")
        self._spawn(argv, [*self.program.executables[argv[0]], *argv[1:]], env)
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def termination_message(self) -> str:
        """What the kubelet would put into the container's terminated state: its terminationMessagePath file.
        Only a path on one of the pod's volumes is reproduced (the kubelet's default, /dev/termination-log, is
        a file it mounts, which this harness does not)."""
        return self.host_path(self.container.get("terminationMessagePath") or "/dev/termination-log").read_text()

    def _spawn(self, argv: list[str], local_argv: list[str], env: dict[str, str]) -> None:
        """Start the process in its mount namespace, as the container's user, logging to ``log_path``."""
        uid = self._security("runAsUser")
        gid = self._security("runAsGroup")
        if self._security("runAsNonRoot") and not uid:
            raise Unfaithful("runAsNonRoot with root or the image's (root) user: the kubelet refuses to start")
        groups = list(self.pod_security.get("supplementalGroups") or [])
        if self.fs_group is not None:
            groups.append(self.fs_group)
        spec = {
            "scratch": str(self._pod_dir / "overlays"),
            "mounts": self._mounts(),
            "readOnlyRootFilesystem": bool(self._security("readOnlyRootFilesystem")),
            # Numeric users unknown to the image get group 0, as container runtimes do.
            "uid": uid,
            "gid": gid if gid is not None else (0 if uid is not None else None),
            "supplementalGroups": groups,
            "cwd": self.container.get("workingDir"),
            "program": local_argv[0],
            "argv": [argv[0], *local_argv[1:]],
            "env": env,
        }
        (self._pod_dir / "overlays").mkdir(exist_ok=True)
        spec_path = self._pod_dir / "podexec.json"
        spec_path.write_text(json.dumps(spec))
        spec_path.chmod(0o600)
        self.env, self.argv = env, spec["argv"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(_PODEXEC), str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait_ready(self, ca_pem: bytes, server_hostname: str, timeout: float) -> None:
        ctx = tls_context(ca_pem)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as raw:
                    with ctx.wrap_socket(raw, server_hostname=server_hostname):
                        break
            except ssl.SSLError as e:
                self.stop()
                raise RuntimeError(f"{self.name}: TLS handshake failed: {e}\n{self.logs()}") from e
            except OSError as e:
                last = e
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name}: nothing listens on {self.port} ({last}):\n{self.logs()}")
            time.sleep(0.05)
        self._probe(self.container.get("readinessProbe"), ctx, server_hostname, deadline)

    def _probe(self, probe: Mapping[str, Any] | None, ctx: ssl.SSLContext, host: str, deadline: float) -> None:
        """Run the readinessProbe as the kubelet would (stricter: HTTPS is verified) until it succeeds."""
        if not probe:
            return
        get = probe.get("httpGet")
        if get is None or _present(probe) - _PROBE_FIELDS:
            raise Unfaithful(f"readinessProbe {probe} not reproduced")
        try:
            port = self.host_port(get["port"])
        except KeyError as e:
            raise Unfaithful(f"readinessProbe port {get['port']!r} is not a port the program listens on") from e
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
        status = None
        while time.monotonic() < deadline:
            conn: http.client.HTTPConnection
            if get.get("scheme", "HTTP") == "HTTPS":
                conn = VerifiedHTTPSConnection("127.0.0.1", port, ctx, host)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", get.get("path", "/"), headers=headers)
                status = conn.getresponse().status
            finally:
                conn.close()
            if 200 <= status < 400:
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name}: readinessProbe {get} kept failing ({status}):\n{self.logs()}")

    def host_port(self, container_port: int | str) -> int:
        """The local port standing in for a container port (number or name), as a Service's targetPort."""
        if isinstance(container_port, str):
            named = {p.get("name"): p["containerPort"] for p in self.container.get("ports") or []}
            if container_port not in named:
                raise KeyError(f"container has no port named {container_port!r}")
            container_port = named[container_port]
        return self.container_ports[container_port]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the pod's terminationGracePeriodSeconds, by PID, as the kubelet does."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(self.template["spec"].get("terminationGracePeriodSeconds", 30))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> PodRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_pod(job: Any, sources: Sources, workdir: Path, timeout: float = 120) -> list[tuple[PodRunner, int]]:
    """Run every container of a Job's pod to its end, sharing the pod's emptyDirs, as the kubelet does with
    `restartPolicy: Never`: init containers one after the other, stopping at the first that fails, then the
    containers (here one after the other too: they only run to completion). (runner, exit code) of each run."""
    pod = _as_dict(job)["spec"]["template"]["spec"]
    done: list[tuple[PodRunner, int]] = []
    for i, container in enumerate([*(pod.get("initContainers") or []), *pod["containers"]]):
        runner = PodRunner(job, sources, workdir, container=container["name"], same_pod=done[0][0] if done else None)
        done.append((runner, runner.run(timeout)))
        if done[-1][1] != 0 and i < len(pod.get("initContainers") or []):
            break
    return done


def _port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])
