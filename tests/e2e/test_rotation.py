"""A CA rotation loses no pull: a client that re-reads the published CA bundle keeps pulling while the
operator replaces the CA (its key lost, or unusable), with the real registry serving throughout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from registry_operator import pki
from tests.support import https, ociimage
from tests.support.clients import Skopeo
from tests.support.deployed import DeployedRegistry, wait_for

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Puller(threading.Thread):
    """Fetches the image manifest in a loop, trusting whatever the Registry publishes at that moment."""

    def __init__(self, reg: DeployedRegistry, path: str, creds: tuple[str, str]) -> None:
        super().__init__(daemon=True)
        self.reg, self.path, self.creds = reg, path, creds
        self.pulls = 0
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                status = https.request(self.reg.address, self.reg.ca_pem(), self.reg.host, "GET", self.path,
                                       auth=self.creds, headers={"Accept": MANIFEST}).status
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none may stop the loop
                self.failures.append(f"{type(exc).__name__}: {exc}")
            else:
                self.pulls += 1
                if status != 200:
                    self.failures.append(f"HTTP {status}")
            time.sleep(0.05)


def test_ca_rotations_lose_no_pull(deploy: Callable[..., DeployedRegistry], tmp_path: Path) -> None:
    reg = deploy("3", name="rot")
    alice = ("alice", reg.passwords()["alice"])
    image = ociimage.build(tmp_path / "image", layers=1, size=1024)
    Skopeo(tmp_path, reg.ca_pem()).copy_to(image.ref, f"docker://{reg.address}/e2e/rot:v1", alice)
    template = reg.inputs_hash()

    puller = Puller(reg, "/v2/e2e/rot/manifests/v1", alice)
    puller.start()
    try:
        time.sleep(1)
        # The CA key is lost: a new CA is published next to the old one.
        reg.client.delete(Secret, "rot-ca-key", namespace=reg.namespace)
        wait_for(lambda: len(pki.split(reg.ca_pem())) == 2 or None, "both CAs published")
        time.sleep(1)
        # The CA key pair becomes unusable: another CA joins the bundle.
        garbage = {"data": {"tls.key": "Z2FyYmFnZQ=="}}
        reg.client.patch(Secret, "rot-ca-key", garbage, namespace=reg.namespace, patch_type=PatchType.MERGE)
        wait_for(lambda: len(pki.split(reg.ca_pem())) == 3 or None, "three CAs published")
        time.sleep(1)
    finally:
        puller.done.set()
        puller.join(10)
    print(f"CA rotations: {puller.pulls} pulls, {len(puller.failures)} failed")
    assert puller.pulls > 5 and puller.failures == []
    assert reg.inputs_hash() == template, "a CA rotation rolled the pods"
