"""The harness itself: kubelet-style volumes, refusals, and a hand-written registry pod run for real.

These need no control plane, so a broken harness shows up here rather than as a confusing e2e failure.
The hand-written pod follows the operator's rendering contract (non-root, read-only root filesystem,
fsGroup, Secrets mounted as directories with mode 0440).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from registry_operator import pki
from tests.support import https, ociimage
from tests.support.clients import ClientError, Skopeo
from tests.support.podrunner import (
    DISTRIBUTION_2,
    DISTRIBUTION_3,
    AtomicVolume,
    PodRunner,
    StaticSources,
    Unfaithful,
)

pytestmark = pytest.mark.e2e

NAME, NAMESPACE = "handmade", "e2e"
HOST = f"{NAME}.{NAMESPACE}.svc"
VERSIONS = {
    "2.8": ("registry:2.8.3", "/etc/docker/registry", DISTRIBUTION_2),
    "3": ("registry:3.1.2", "/etc/distribution", DISTRIBUTION_3),
}


def htpasswd(users: dict[str, str]) -> bytes:
    return b"".join(
        user.encode() + b":" + bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=5)) + b"\n"
        for user, pw in users.items()
    )


def handmade(version: str, ca: pki.KeyPair, users: dict[str, str]) -> tuple[dict[str, Any], StaticSources]:
    image, config_dir, _ = VERSIONS[version]
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": "/var/lib/registry"}, "delete": {"enabled": True}},
        "http": {
            "addr": ":5000",
            "tls": {"certificate": "/etc/registry/tls/tls.crt", "key": "/etc/registry/tls/tls.key"},
            "debug": {"addr": ":5001"},
        },
        "auth": {"htpasswd": {"realm": NAME, "path": "/etc/registry/auth/htpasswd"}},
    }
    server = pki.issue_server(ca, [HOST, "127.0.0.1"])
    crt, key = server.cert_pem, server.key_pem
    sources = StaticSources(
        secrets={
            f"{NAME}-tls": {"tls.crt": crt, "tls.key": key, "ca.crt": ca.cert_pem},
            f"{NAME}-htpasswd": {"htpasswd": htpasswd(users)},
            f"{NAME}-http-secret": {"secret": b"0123456789abcdef"},
        },
        config_maps={f"{NAME}-config": {"config.yml": yaml.safe_dump(config).encode()}},
    )

    def secret(name: str, keys: list[str]) -> dict[str, Any]:
        return {"secretName": name, "defaultMode": 0o440, "items": [{"key": k, "path": k} for k in keys]}

    deployment = {
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "template": {
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                        "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "registry",
                            "image": image,
                            "command": ["registry"],
                            "args": ["serve", f"{config_dir}/config.yml"],
                            "env": [
                                {"name": "REGISTRY_HTTP_SECRET", "valueFrom": {
                                    "secretKeyRef": {"name": f"{NAME}-http-secret", "key": "secret"}}},
                                {"name": "OTEL_TRACES_EXPORTER", "value": "none"},
                            ],
                            "ports": [{"name": "registry", "containerPort": 5000}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": "registry", "scheme": "HTTPS"}},
                            "securityContext": {
                                "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [
                                {"name": "config", "mountPath": config_dir, "readOnly": True},
                                {"name": "tls", "mountPath": "/etc/registry/tls", "readOnly": True},
                                {"name": "auth", "mountPath": "/etc/registry/auth", "readOnly": True},
                                {"name": "data", "mountPath": "/var/lib/registry"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "config", "configMap": {"name": f"{NAME}-config"}},
                        {"name": "tls", "secret": secret(f"{NAME}-tls", ["tls.crt", "tls.key"])},
                        {"name": "auth", "secret": secret(f"{NAME}-htpasswd", ["htpasswd"])},
                        {"name": "data", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                }
            }
        },
    }  # fmt: skip
    return deployment, sources


def test_atomic_volume_layout_and_swap(tmp_path: Path) -> None:
    vol = AtomicVolume(tmp_path / "v", 0o440, fs_group=1234)
    assert vol.write({"htpasswd": b"a", "sub/x": b"b"})
    first = os.readlink(tmp_path / "v" / "..data")
    assert first.startswith("..") and (tmp_path / "v" / first).is_dir()
    assert os.readlink(tmp_path / "v" / "htpasswd") == "..data/htpasswd"
    assert os.readlink(tmp_path / "v" / "sub") == "..data/sub"
    st = os.stat(tmp_path / "v" / "htpasswd")
    assert (st.st_mode & 0o777, st.st_gid) == (0o440, 1234)
    assert not vol.write({"htpasswd": b"a", "sub/x": b"b"}), "an unchanged payload must not be swapped"
    assert vol.write({"htpasswd": b"c"})
    assert (tmp_path / "v" / "htpasswd").read_bytes() == b"c"
    assert not (tmp_path / "v" / "sub").exists() and not (tmp_path / "v" / first).exists()
    assert sorted(p.name for p in (tmp_path / "v").iterdir() if not p.name.startswith("..")) == ["htpasswd"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p, c: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (lambda p, c: c.update(image="quay.io/someone/registry:3"), "no local program"),
        (lambda p, c: c.update(stdin=True), "stdin"),
        (lambda p, c: p.update(hostNetwork=True), "hostNetwork"),
        (lambda p, c: p["securityContext"].update(sysctls=[{"name": "a", "value": "b"}]), "sysctls"),
    ],
    ids=["hostPath", "image", "stdin", "hostNetwork", "sysctls"],
)
def test_refuses_what_it_cannot_reproduce(tmp_path: Path, mutate: Any, message: str) -> None:
    deployment, sources = handmade("2.8", pki.issue_ca("test CA"), {"alice": "pw"})
    pod = deployment["spec"]["template"]["spec"]
    mutate(pod, pod["containers"][0])
    with pytest.raises(Unfaithful, match=message):
        PodRunner(deployment, sources, tmp_path)


def test_refuses_to_start_a_pod_with_init_containers(tmp_path: Path) -> None:
    """Only a Job's containers, each run() by name in order, may come from a pod with init containers."""
    ca = pki.issue_ca("test CA")
    deployment, sources = handmade("2.8", ca, {"alice": "pw"})
    deployment["spec"]["template"]["spec"]["initContainers"] = [{"name": "x"}]
    with pytest.raises(Unfaithful, match="initContainers"):
        PodRunner(deployment, sources, tmp_path).start(ca.cert_pem)


def test_refuses_missing_secret(tmp_path: Path) -> None:
    deployment, sources = handmade("2.8", pki.issue_ca("test CA"), {"alice": "pw"})
    del sources.secrets[f"{NAME}-tls"]
    with pytest.raises(Unfaithful, match="source missing"):
        PodRunner(deployment, sources, tmp_path)


def test_plain_http_registry_is_caught(tmp_path: Path) -> None:
    """The known trap: a mistyped TLS key makes the registry serve HTTP; start() must not call that ready."""
    ca = pki.issue_ca("test CA")
    deployment, sources = handmade("2.8", ca, {"alice": "pw"})
    config = yaml.safe_load(sources.config_maps[f"{NAME}-config"]["config.yml"])
    config["http"]["tls"] = {
        "certficate": config["http"]["tls"]["certificate"],
        "key": "/etc/registry/tls/tls.key",
    }
    sources.config_maps[f"{NAME}-config"]["config.yml"] = yaml.safe_dump(config).encode()
    runner = PodRunner(deployment, sources, tmp_path)
    with pytest.raises(RuntimeError, match="TLS handshake failed"):
        runner.start(ca.cert_pem, timeout=15)
    assert runner.process is not None and runner.process.poll() is not None


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_handmade_pod_serves_tls_auth_and_reloads_htpasswd(tmp_path: Path, version: str) -> None:
    if not VERSIONS[version][2].exists():
        pytest.skip(f"{VERSIONS[version][2]} not built (hack/build registry)")
    ca = pki.issue_ca("test CA")
    deployment, sources = handmade(version, ca, {"alice": "alice-pw"})
    with PodRunner(deployment, sources, tmp_path) as runner:
        runner.start(ca.cert_pem)
        config_dir = VERSIONS[version][1]
        assert runner.argv == ["registry", "serve", f"{config_dir}/config.yml"]
        assert runner.env["REGISTRY_HTTP_SECRET"] == "0123456789abcdef"  # from the secretKeyRef
        assert runner.env["OTEL_TRACES_EXPORTER"] == "none"
        assert https.request(runner.address, ca.cert_pem, HOST, "GET", "/v2/").status == 401
        ok = https.request(runner.address, ca.cert_pem, HOST, "GET", "/v2/", auth=("alice", "alice-pw"))
        assert ok.status == 200, runner.logs()
        # runAsUser 1000 with a read-only root: storage writes must land on the emptyDir.
        image = ociimage.build(tmp_path / "img", layers=2, size=4096)
        skopeo = Skopeo(tmp_path, ca.cert_pem)
        skopeo.copy_to(image.ref, f"docker://{runner.address}/demo/app:v1", ("alice", "alice-pw"))
        assert skopeo.list_tags(f"docker://{runner.address}/demo/app", ("alice", "alice-pw")) == ["v1"]
        with pytest.raises(ClientError, match="unauthorized|authentication required"):
            skopeo.list_tags(f"docker://{runner.address}/demo/app", ("bob", "bob-pw"))

        sources.secrets[f"{NAME}-htpasswd"]["htpasswd"] = htpasswd({"bob": "bob-pw"})
        assert runner.update()  # no restart: the registry re-reads htpasswd when its mtime changes
        assert skopeo.list_tags(f"docker://{runner.address}/demo/app", ("bob", "bob-pw")) == ["v1"]
        bad = https.request(runner.address, ca.cert_pem, HOST, "GET", "/v2/", auth=("alice", "alice-pw"))
        assert bad.status == 401
        assert runner.process is not None and runner.process.poll() is None


def test_subpath_mount_never_sees_updates(tmp_path: Path) -> None:
    """The kubelet trap the operator must avoid, reproduced: a subPath htpasswd misses every later change."""
    ca = pki.issue_ca("test CA")
    deployment, sources = handmade("2.8", ca, {"alice": "alice-pw"})
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    auth = next(m for m in mounts if m["name"] == "auth")
    auth.update(mountPath="/etc/registry/auth/htpasswd", subPath="htpasswd")
    with PodRunner(deployment, sources, tmp_path) as runner:
        runner.start(ca.cert_pem)
        sources.secrets[f"{NAME}-htpasswd"]["htpasswd"] = htpasswd({"bob": "bob-pw"})
        assert runner.update()
        assert https.request(runner.address, ca.cert_pem, HOST, "GET", "/v2/", auth=("bob", "bob-pw")).status == 401
        assert https.request(runner.address, ca.cert_pem, HOST, "GET", "/v2/", auth=("alice", "alice-pw")).status == 200
