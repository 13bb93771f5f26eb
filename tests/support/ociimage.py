"""Build a multi-layer OCI image layout in pure Python, so pushes need no Docker and no network.

Layers are gzip-compressed tars of random bytes: incompressible, so a layer's size on the wire is what was
asked for (benchmarks rely on that), and random, so two images never share blobs by accident. Pass ``seed``
for byte-identical images across runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class OciImage:
    """An image written as an OCI layout at ``path`` under ``tag``; digests are ``sha256:<hex>``."""

    path: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]

    @property
    def ref(self) -> str:
        """The skopeo transport reference of this image."""
        return f"oci:{self.path}:{self.tag}"

    @property
    def blob_digests(self) -> tuple[str, ...]:
        return (self.config_digest, *self.layer_digests)


def sha256_digest(data: bytes) -> str:
    """The OCI digest (``sha256:<hex>``) of some bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(index: int, payload: bytes) -> tuple[bytes, bytes]:
    """One gzip tar layer holding ``payload`` as a file; returns (tar, gzip(tar)), both reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"layer{index}/data.bin")
        info.size = len(payload)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    return tar_bytes, gzip.compress(tar_bytes, compresslevel=1, mtime=0)


def build(
    path: Path,
    *,
    tag: str = "latest",
    layers: int = 3,
    size: int = 64 * 1024,
    seed: int | None = None,
    created: str = "2024-01-01T00:00:00Z",
) -> OciImage:
    """Write an image of ``layers`` layers totalling about ``size`` bytes of payload (e.g. ``10 * MIB``);
    ``created`` is its config's creation time (what retention orders tags by)."""
    if layers < 1:
        raise ValueError("an image needs at least one layer")
    rng = random.Random(seed) if seed is not None else None
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = sha256_digest(data)
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    sizes = [size // layers + (1 if i < size % layers else 0) for i in range(layers)]
    diff_ids, descriptors = [], []
    for i, n in enumerate(sizes):
        payload = rng.randbytes(n) if rng else os.urandom(n)
        tar_bytes, gz = _layer(i, payload)
        diff_ids.append(sha256_digest(tar_bytes))
        descriptors.append({"mediaType": LAYER, "digest": put(gz), "size": len(gz)})
    config = json.dumps(
        {
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"org.example.e2e": "registry-operator"}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(layers)],
        },
        sort_keys=True,
    ).encode()
    config_digest = put(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config)},
            "layers": descriptors,
        },
        sort_keys=True,
    ).encode()
    manifest_digest = put(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return OciImage(
        path=path,
        tag=tag,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layer_digests=tuple(d["digest"] for d in descriptors),
    )
