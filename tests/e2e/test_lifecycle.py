"""Changes to a running Registry: users come and go without a restart; a new certificate rolls the pods.

Each test gets its own Registry, since it changes the spec.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import PersistentVolume, Pod, Secret

from registry_operator import pki
from tests.support import https, ociimage
from tests.support.clients import ClientError, Skopeo
from tests.support.deployed import VERSIONS, DeployedRegistry, secret_data, wait_for

pytestmark = pytest.mark.parametrize("version", sorted(VERSIONS), ids=VERSIONS.get)
# The real node's kubelet re-reads a pod's Secret volumes every syncFrequency (10 s, localcluster/node.py).
KUBELET_SYNC_TIMEOUT = 120


def htpasswd_users(reg: DeployedRegistry) -> set[str]:
    content = secret_data(reg.client, reg.namespace, f"{reg.name}-htpasswd")["htpasswd"].decode()
    return {line.split(":", 1)[0] for line in content.splitlines() if line}


def login(reg: DeployedRegistry, ca: bytes, user: str, password: str) -> int:
    return https.request(reg.address, ca, reg.host, "GET", "/v2/", auth=(user, password)).status


def serving_process(reg: DeployedRegistry) -> tuple[str, ...]:
    """What a restart would change: the pod and its container on the real node, else the process's PID."""
    if not reg.on_node:
        assert reg.runner.process.poll() is None, "the registry process exited"
        return (str(reg.runner.process.pid),)
    pod = reg.client.get(Pod, reg.runner.name, namespace=reg.namespace)
    (status,) = pod.status.containerStatuses
    assert status.state.running and not pod.metadata.deletionTimestamp, status
    return pod.metadata.uid, status.containerID, str(status.restartCount)


def deliver_volumes(reg: DeployedRegistry) -> float:
    """The kubelet's volume sync: the pod runner does it now; the real node's kubelet does it on its own, so
    the caller waits for its effect (up to this many seconds)."""
    if reg.on_node:
        return KUBELET_SYNC_TIMEOUT
    assert reg.runner.update(), "the kubelet would have swapped the htpasswd volume"
    return 5


def test_users_change_without_restart(deploy: Callable[..., DeployedRegistry], version: str, tmp_path: Path) -> None:
    """Users added and removed reach the running registry through its htpasswd volume alone: on the real node
    as the kubelet delivers Secret updates, on the pod runner when the test syncs the volume."""
    reg = deploy(version)
    ca, passwords = reg.ca_pem(), reg.passwords()
    process, inputs_hash = serving_process(reg), reg.inputs_hash()

    # Deletion is off unless asked for: the registry refuses it, the image stays.
    image = ociimage.build(tmp_path / "image", layers=1, size=1024)
    skopeo = Skopeo(tmp_path, ca)
    ref = f"docker://{reg.address}/e2e/keep"
    skopeo.copy_to(image.ref, f"{ref}:v1", ("alice", passwords["alice"]))
    with pytest.raises(ClientError, match="(?i)unsupported|not allowed|405"):
        skopeo.delete(f"{ref}@{image.manifest_digest}", ("alice", passwords["alice"]))
    assert skopeo.list_tags(ref, ("alice", passwords["alice"])) == ["v1"]

    # Add carol (generated password) and dave (password from his own Secret).
    reg.client.create(Secret(metadata=ObjectMeta(name="dave-password", namespace=reg.namespace),
                             data={"password": base64.b64encode(b"dave-chose-this-pw").decode()}))  # fmt: skip
    reg.patch_spec({"auth": {"mode": "htpasswd", "users": [
        {"name": "alice"}, {"name": "bob"}, {"name": "carol"},
        {"name": "dave", "passwordSecretRef": {"name": "dave-password", "key": "password"}},
    ]}})  # fmt: skip
    reg.wait_ready()
    wait_for(lambda: htpasswd_users(reg) == {"alice", "bob", "carol", "dave"}, "htpasswd with carol and dave")
    passwords = reg.passwords()
    if not reg.on_node:  # the kubelet may already have delivered it
        assert login(reg, ca, "carol", passwords["carol"]) == 401, "the running pod cannot know carol yet"
    wait_for(lambda: login(reg, ca, "carol", passwords["carol"]) == 200, "carol logs in", deliver_volumes(reg))
    assert login(reg, ca, "dave", "dave-chose-this-pw") == 200
    assert login(reg, ca, "alice", passwords["alice"]) == 200

    # Remove bob: refused from the next request on.
    reg.patch_spec({"auth": {"mode": "htpasswd", "users": [
        {"name": "alice"}, {"name": "carol"},
        {"name": "dave", "passwordSecretRef": {"name": "dave-password", "key": "password"}},
    ]}})  # fmt: skip
    reg.wait_ready()
    wait_for(lambda: "bob" not in htpasswd_users(reg), "htpasswd without bob")
    wait_for(lambda: login(reg, ca, "bob", passwords["bob"]) == 401, "bob refused", deliver_volumes(reg))
    assert login(reg, ca, "alice", passwords["alice"]) == 200

    # None of this restarted anything: same process (pod and container), same pod template.
    assert serving_process(reg) == process
    assert reg.inputs_hash() == inputs_hash


def test_user_names_with_plus_and_any_script_log_in(
    deploy: Callable[..., DeployedRegistry], version: str
) -> None:
    """E-mail sub-addresses and non-ASCII names are real user names: the schema takes them, their passwords sit
    under the keys status.passwordKeys names, and the registry checks them as UTF-8 HTTP Basic credentials."""
    users = ["ci+bot@corp.example", "jürgen", "用户"]
    reg = deploy(version, auth={"mode": "htpasswd", "users": [{"name": u} for u in users]})
    ca, passwords, keys = reg.ca_pem(), reg.passwords(), reg.get()["status"]["passwordKeys"]
    assert htpasswd_users(reg) == set(users)
    for user in users:
        assert login(reg, ca, user, passwords[keys[user]]) == 200, user
    assert login(reg, ca, "jurgen", passwords[keys["jürgen"]]) == 401


def served(reg: DeployedRegistry, ca: bytes) -> x509.Certificate:
    return https.peer_certificate(reg.address, ca, reg.host)[0]


def tls_secret_cert(reg: DeployedRegistry, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(secret_data(reg.client, reg.namespace, name)["tls.crt"])


def test_new_certificate_rolls_the_pods(deploy: Callable[..., DeployedRegistry], version: str) -> None:
    reg = deploy(version)
    ca = reg.ca_pem()
    first_pod = reg.runner
    first_hash, first_cert = reg.inputs_hash(), served(reg, ca)

    # 1. Lose the serving certificate: the operator issues a new one from the same CA and rolls the pods.
    reg.client.delete(Secret, f"{reg.name}-tls", namespace=reg.namespace)
    renewed = wait_for(
        lambda: (c := tls_secret_cert(reg, f"{reg.name}-tls")) != first_cert and c, "a re-issued N-tls Secret"
    )
    wait_for(lambda: reg.inputs_hash() != first_hash, "the pod template hash to change")
    reg.wait_ready()
    if not reg.on_node:  # (the kubelet syncs and rolls on its own: the old pod may be gone already)
        # The old pod keeps serving what it loaded at start, even with the new files mounted: hence the roll.
        first_pod.update()
        assert served(reg, ca) == first_cert
    reg.start_pod()
    assert served(reg, reg.ca_pem()) == renewed
    first_pod.stop()

    # 2. Switch to a user-supplied certificate from another CA.
    second_hash = reg.inputs_hash()
    user_ca = pki.issue_ca("user CA")
    server = pki.issue_server(user_ca, [reg.host, f"{reg.name}.{reg.namespace}", "127.0.0.1"])
    crt, key = server.cert_pem, server.key_pem
    reg.client.create(Secret(
        metadata=ObjectMeta(name="user-tls", namespace=reg.namespace), type="kubernetes.io/tls",
        data={k: base64.b64encode(v).decode() for k, v in
              {"tls.crt": crt, "tls.key": key, "ca.crt": user_ca.cert_pem}.items()},
    ))  # fmt: skip
    reg.patch_spec({"tls": {"mode": "Secret", "secretName": "user-tls", "ipAddresses": ["127.0.0.1"]}})
    wait_for(lambda: reg.inputs_hash() != second_hash, "the pod template hash to change")
    reg.wait_ready()
    reg.start_pod()
    published_ca = reg.ca_pem()  # must now let clients verify the user's certificate
    assert served(reg, published_ca) == x509.load_pem_x509_certificate(crt)


def test_claim_keeps_images_across_a_rollout_into_read_only(
    deploy: Callable[..., DeployedRegistry], kube_client: Any, version: str, tmp_path: Path
) -> None:
    """Images on the claim survive a new pod; ``readOnly`` then serves pulls and refuses pushes with 405.

    No provisioner runs here: a statically provisioned PersistentVolume of a class of our own is bound to
    the operator's claim (podrunner keeps the claim's data per claim name, like a real volume).
    """
    storage_class = f"e2e-static-{secrets.token_hex(3)}"
    volume = PersistentVolume(
        metadata=ObjectMeta(name=storage_class),
        spec={"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
              "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/nonexistent/{storage_class}"}},
    )  # fmt: skip
    kube_client.create(volume)
    try:
        claim = {"size": "1Gi", "storageClassName": storage_class}
        reg = deploy(version, storage={"persistentVolumeClaim": claim}, pod_runner="test_lifecycle: a kwok hostPath "
                     "volume, kept per claim by podrunner (the real node's: test_real_node's local volumes)")
        ca, creds = reg.ca_pem(), ("alice", reg.passwords()["alice"])
        image = ociimage.build(tmp_path / "image", layers=2, size=64 * 1024)
        skopeo = Skopeo(tmp_path, ca)
        ref = f"docker://{reg.address}/e2e/kept"
        skopeo.copy_to(image.ref, f"{ref}:v1", creds)
        assert reg.deployment()["spec"]["strategy"]["type"] == "Recreate"  # a ReadWriteOnce claim

        first_hash = reg.inputs_hash()
        reg.patch_spec({"readOnly": True})
        wait_for(lambda: reg.inputs_hash() != first_hash, "the pod template hash to change")
        reg.wait_ready()
        reg.runner.stop()  # Recreate: the old pod is gone before the new one starts
        reg.start_pod()
        ref = f"docker://{reg.address}/e2e/kept"
        raw = skopeo.inspect_raw(f"{ref}:v1", creds)
        assert ociimage.sha256_digest(raw) == image.manifest_digest
        upload = https.request(reg.address, ca, reg.host, "POST", "/v2/e2e/kept/blobs/uploads/", auth=creds)
        assert upload.status == 405, upload.body
        with pytest.raises(ClientError):
            skopeo.copy_to(image.ref, f"{ref}:v2", creds)
    finally:
        kube_client.delete(PersistentVolume, storage_class)
