"""A pull Secret the operator copied into another namespace works with real clients, and only as documented.

An admin (alice) pushes an image; crane and skopeo then pull it with nothing but the ``.dockerconfigjson`` and
``ca.crt`` read from ``<registry>.<namespace>-pull`` in the workload namespace. The registry's Service port is
a ``ServiceProxy`` on 127.0.0.1 (the certificate carries that address, the Secret lists ``127.0.0.1:<port>``),
standing in for kube-proxy. With the same credential a push succeeds in htpasswd mode (htpasswd cannot limit
actions) and is denied in token mode (the robot's rule grants pull only).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lightkube.resources.core_v1 import Secret, ServiceAccount
from lightkube.types import PatchType

from tests.support import ociimage
from tests.support.clients import ClientError, Crane, Skopeo
from tests.support.deployed import DeployedRegistry, Registry, secret_data, wait_for
from tests.support.token_clients import ServiceProxy, start_token_service

pytestmark = pytest.mark.e2e
PULL_SECRET_OF = "registry.operator.dev/pull-secret-of"
SYNC = "test_pull_secret_clients: decides when the kubelet's volume sync happens"
TOKEN = "test_pull_secret_clients: the token service is a local process (the pod runner's)"


def copied(reg: DeployedRegistry, namespace: str) -> dict[str, bytes]:
    """The pull Secret in `namespace`, once the operator has put it there and into the default account."""
    name = f"{reg.name}.{reg.namespace}-pull"

    def ready() -> dict[str, bytes] | None:
        account = reg.client.get(ServiceAccount, "default", namespace=namespace)
        if name not in [e.name for e in account.imagePullSecrets or ()]:
            return None
        assert reg.client.get(Secret, name, namespace=namespace).type == "kubernetes.io/dockerconfigjson"
        return secret_data(reg.client, namespace, name)

    return wait_for(ready, f"pull Secret {namespace}/{name}", timeout=60)


def crane_with(workdir: Path, data: dict[str, bytes]) -> Crane:
    """crane whose DOCKER_CONFIG is exactly the copied ``.dockerconfigjson`` and which trusts only ``ca.crt``."""
    crane = Crane(workdir, data["ca.crt"], "unused", None)
    (crane.dir / "config.json").write_bytes(data[".dockerconfigjson"])
    return crane


@pytest.fixture(params=[("htpasswd", ""), ("token", TOKEN)], ids=["htpasswd", "token"])
def pulling(
    request: pytest.FixtureRequest, deploy: Callable[..., DeployedRegistry], make_namespace: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[tuple[str, DeployedRegistry, str, str]]:
    """(mode, Registry, its address through the Service proxy, the workload namespace with the pull Secret).
    The parameter is (mode, why the registry pod needs the pod runner: "" runs it on the real node if any)."""
    mode, pod_runner = request.param
    workload = make_namespace("work")
    service, realm = ServiceProxy(), ServiceProxy()
    auth: dict = {"mode": mode, "users": [{"name": "alice"}]}
    tls: dict = {"ipAddresses": ["127.0.0.1"]}
    if mode == "token":
        auth["tokenRealm"] = f"https://localhost:{realm.port}/token"
        auth["access"] = [{"users": ["alice"], "repositories": ["*"], "actions": ["*"]}]
        tls["dnsNames"] = ["localhost"]
    token = reg = None
    try:
        reg = deploy("3", pod=False, auth=auth, tls=tls, service={"port": service.port},
                     pullSecrets={"namespaces": [workload]}, pod_runner=pod_runner)
        if mode == "token":
            (tmp_path / "token").mkdir()
            token = start_token_service(reg, realm, tmp_path / "token")
        host, port = reg.start_pod().address.rsplit(":", 1)
        service.target = (host, int(port))
        yield mode, reg, f"127.0.0.1:{service.port}", workload
    finally:
        if token is not None:
            token.stop()
        service.close()
        realm.close()
        if reg is not None:  # while the operator runs: its finalizer removes the copy, then lets the Registry go
            reg.client.delete(Registry, reg.name, namespace=reg.namespace)
            wait_for(lambda: not list(reg.client.list(Secret, namespace=workload, labels={PULL_SECRET_OF: None})),
                     f"pull Secret removed from {workload}", timeout=30)


def test_workloads_pull_with_exactly_the_copied_secret(pulling, tmp_path: Path) -> None:
    mode, reg, address, workload = pulling
    image = ociimage.build(tmp_path / "image", tag="v1", layers=2, size=256 * 1024)
    admin = Crane(tmp_path / "admin", reg.ca_pem(), address, ("alice", reg.passwords()["alice"]))
    admin.run("push", str(image.path), f"{address}/apps/web:v1")

    data = copied(reg, workload)
    assert address in json.loads(data[".dockerconfigjson"])["auths"]
    robot = crane_with(tmp_path / "robot", data)
    assert robot.run("digest", f"{address}/apps/web:v1").strip() == image.manifest_digest
    robot.run("pull", "--format=oci", f"{address}/apps/web:v1", str(tmp_path / "pulled"))

    skopeo = Skopeo(tmp_path / "skopeo-robot", data["ca.crt"])
    authfile = skopeo.dir / "pull-secret.json"
    authfile.write_bytes(data[".dockerconfigjson"])
    raw = skopeo.run("inspect", "--raw", "--retry-times", "0", "--cert-dir", str(skopeo.certs),
                     "--authfile", str(authfile), f"docker://{address}/apps/web:v1")
    assert ociimage.sha256_digest(raw.encode()) == image.manifest_digest

    push = ["push", str(image.path), f"{address}/robot/web:v1"]
    if mode == "htpasswd":  # htpasswd has no per-action rules: the robot can push (as documented)
        robot.run(*push)
    else:
        with pytest.raises(ClientError, match=r"401 Unauthorized|UNAUTHORIZED|DENIED|denied"):
            robot.run(*push)
    # Without the copied credential the same pull is refused: the Secret is what authenticates.
    with pytest.raises(ClientError, match=r"(?i)unauthorized|authentication required"):
        Crane(tmp_path / "anonymous", data["ca.crt"], address, None).run("digest", f"{address}/apps/web:v1")
    assert base64.b64decode(json.loads(data[".dockerconfigjson"])["auths"][address]["auth"]).startswith(b"robot$pull:")


def robot_user(data: dict[str, bytes]) -> str:
    auth = next(iter(json.loads(data[".dockerconfigjson"])["auths"].values()))["auth"]
    return base64.b64decode(auth).decode().partition(":")[0]


def htpasswd_users(reg: DeployedRegistry) -> set[str]:
    text = secret_data(reg.client, reg.namespace, f"{reg.name}-htpasswd")["htpasswd"].decode()
    return {line.split(":")[0] for line in text.splitlines()}


@pytest.mark.parametrize("pulling", [("htpasswd", SYNC)], ids=["htpasswd"], indirect=True)
def test_rotation_keeps_pulls_working_and_retires_the_old_credential(pulling, tmp_path: Path) -> None:
    """The running registry accepts the new robot before any copy carries it, and the old one until the copy
    changed; the pod runner syncs the htpasswd volume where the kubelet would."""
    _, reg, address, workload = pulling
    image = ociimage.build(tmp_path / "image", tag="v1", layers=1, size=64 * 1024)
    Crane(tmp_path / "admin", reg.ca_pem(), address, ("alice", reg.passwords()["alice"])).run(
        "push", str(image.path), f"{address}/apps/web:v1")
    old = copied(reg, workload)
    ref = f"{address}/apps/web:v1"
    assert crane_with(tmp_path / "old", old).run("digest", ref).strip() == image.manifest_digest

    reg.client.patch(Registry, reg.name, {"metadata": {"annotations": {
        "registry.operator.dev/rotate-pull-credential": "1"}}}, namespace=reg.namespace, patch_type=PatchType.MERGE)
    wait_for(lambda: htpasswd_users(reg) >= {"robot$pull", "robot$pull2"}, "both robots in htpasswd")
    assert robot_user(copied(reg, workload)) == "robot$pull"  # not handed out before the pods can know it
    assert reg.runner.update()  # the kubelet's sync: the registry now knows both
    assert crane_with(tmp_path / "old-again", old).run("digest", ref).strip() == image.manifest_digest

    new = wait_for(lambda: (d := copied(reg, workload)) and robot_user(d) == "robot$pull2" and d,
                   "the copy carries the new robot", timeout=30)
    assert crane_with(tmp_path / "new", new).run("digest", ref).strip() == image.manifest_digest
    wait_for(lambda: "robot$pull" not in htpasswd_users(reg), "the old robot retired", timeout=30)
    assert reg.runner.update()
    assert crane_with(tmp_path / "new-again", new).run("digest", ref).strip() == image.manifest_digest
    with pytest.raises(ClientError, match=r"(?i)unauthorized|authentication required"):
        crane_with(tmp_path / "old-retired", old).run("digest", ref)
