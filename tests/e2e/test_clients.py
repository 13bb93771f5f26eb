"""Real clients push, pull, list and delete a multi-layer OCI image on an operator-configured registry.

Digests are compared end to end: what is pulled back must be byte-identical to what was built locally.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import https, ociimage
from tests.support.clients import ClientError, Crane, Skopeo
from tests.support.deployed import DeployedRegistry

MIB = ociimage.MIB


def layout_blobs(path: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (path / "blobs" / "sha256").iterdir()}


def layout_manifest_digest(path: Path) -> str:
    (entry,) = json.loads((path / "index.json").read_text())["manifests"]
    return entry["digest"]


def tags(reg: DeployedRegistry, ca: bytes, repo: str, creds: tuple[str, str]) -> list[str]:
    resp = https.request(reg.address, ca, reg.host, "GET", f"/v2/{repo}/tags/list", auth=creds)
    assert resp.status == 200, resp.body
    return sorted(json.loads(resp.body).get("tags") or [])


def test_skopeo_push_pull_list_delete(shared_registry: DeployedRegistry, tmp_path: Path) -> None:
    reg = shared_registry
    ca, creds = reg.ca_pem(), ("alice", reg.passwords()["alice"])
    image = ociimage.build(tmp_path / "image", tag="v1", layers=3, size=3 * MIB)
    skopeo = Skopeo(tmp_path, ca)
    repo = f"docker://{reg.address}/e2e/skopeo"

    skopeo.copy_to(image.ref, f"{repo}:v1", creds)
    skopeo.copy_to(image.ref, f"{repo}:v2", creds)
    raw = skopeo.inspect_raw(f"{repo}:v1", creds)
    assert ociimage.sha256_digest(raw) == image.manifest_digest
    assert sorted(skopeo.list_tags(repo, creds)) == ["v1", "v2"]

    skopeo.copy_from(f"{repo}:v2", f"oci:{tmp_path / 'pulled'}:v2", creds)
    assert layout_manifest_digest(tmp_path / "pulled") == image.manifest_digest
    assert layout_blobs(tmp_path / "pulled") == {image.manifest_digest, *image.blob_digests}

    # Deleting by digest removes every tag on it (deleteEnabled is on for this Registry).
    skopeo.delete(f"{repo}@{image.manifest_digest}", creds)
    assert tags(reg, ca, "e2e/skopeo", creds) == []
    gone = https.request(reg.address, ca, reg.host, "GET", f"/v2/e2e/skopeo/manifests/{image.manifest_digest}",
                         auth=creds, headers={"Accept": ociimage.MANIFEST})  # fmt: skip
    assert gone.status == 404


def test_crane_push_pull_list_delete(shared_registry: DeployedRegistry, tmp_path: Path) -> None:
    reg = shared_registry
    ca, creds = reg.ca_pem(), ("bob", reg.passwords()["bob"])
    image = ociimage.build(tmp_path / "image", tag="v1", layers=2, size=2 * MIB)
    crane = Crane(tmp_path, ca, reg.address, creds)
    ref = f"{reg.address}/e2e/crane"

    crane.run("push", str(image.path), f"{ref}:v1")
    assert crane.run("digest", f"{ref}:v1").strip() == image.manifest_digest
    crane.run("tag", f"{ref}:v1", "v2")
    assert sorted(crane.run("ls", ref).split()) == ["v1", "v2"]
    manifest = json.loads(crane.run("manifest", f"{ref}:v2"))
    assert [layer["digest"] for layer in manifest["layers"]] == list(image.layer_digests)

    crane.run("pull", "--format=oci", f"{ref}:v1", str(tmp_path / "pulled"))
    assert layout_manifest_digest(tmp_path / "pulled") == image.manifest_digest
    assert layout_blobs(tmp_path / "pulled") >= set(image.blob_digests)

    # Interoperability: what crane pushed, skopeo reads with the same digest.
    raw = Skopeo(tmp_path, ca).inspect_raw(f"docker://{ref}:v2", creds)
    assert ociimage.sha256_digest(raw) == image.manifest_digest

    crane.run("delete", f"{ref}@{image.manifest_digest}")
    assert tags(reg, ca, "e2e/crane", creds) == []


@pytest.mark.parametrize("client", ["skopeo", "crane"])
def test_anonymous_client_cannot_push(shared_registry: DeployedRegistry, tmp_path: Path, client: str) -> None:
    reg = shared_registry
    ca = reg.ca_pem()
    image = ociimage.build(tmp_path / "image", layers=1, size=1024)
    with pytest.raises(ClientError, match="(?i)unauthorized|authentication required"):
        if client == "skopeo":
            Skopeo(tmp_path, ca).copy_to(image.ref, f"docker://{reg.address}/e2e/anon:v1", None)
        else:
            Crane(tmp_path, ca, reg.address, None).run("push", str(image.path), f"{reg.address}/e2e/anon:v1")
